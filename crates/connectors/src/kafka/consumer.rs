//! The consumer-group consumer of `txpipe ingest`, whose start positions come from the sink.
//!
//! In: the topic's messages. Out: messages in partition order, from the positions an
//! [`OffsetSource`] (the Delta table) gives at every assignment, and [`PartitionEvent`]s that
//! say, for every partition assigned or moved, what the sink must hold right before its first
//! message (its *anchor*). Kafka's committed group offsets are written only as a monitoring hint
//! and never read.
//!
//! Works with the eager protocols (`range`, `roundrobin`), the incremental one
//! (`cooperative-sticky`) and Kafka 4's consumer protocol (`group.protocol=consumer`): an
//! assignment positions only the partitions it adds, a revocation touches only the partitions it
//! takes away, and before partitions are taken away the source may commit what it holds of them.
//!
//! A stored position whose next offset the broker no longer holds (retention deleted it) is an
//! error by default, or with [`MissingOffsets::Skip`] a warning and a count of the offsets
//! skipped; a stored position past the end of the partition (topic recreated) is an error.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::bindings as rd;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{KafkaConfig, KafkaError, Result};

/// Where a partition with nothing stored starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The earliest offset the broker holds.
    Earliest,
    /// Only messages that arrive from the first assignment on: the end of the partition at
    /// that moment is stored in the sink at once, so later rebalances and restarts start there.
    Latest,
}

/// What to do when the offset after a stored position was deleted from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingOffsets {
    /// Stop with an error naming the partition and the offsets lost.
    Fail,
    /// Go on from the earliest offset held, with a warning and the count of offsets skipped.
    Skip,
}

/// How the consumer positions a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positioning {
    pub start: StartAt,
    pub missing: MissingOffsets,
}

/// A change of the consumer's partitions, in the order they happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionEvent {
    /// The partition is read from here on; the sink must hold `anchor` (its last stored offset,
    /// None: nothing) right before the first message read, or the read overlaps or leaves a gap.
    /// `skipped` offsets were deleted by retention and are passed over.
    Assigned { partition: i32, anchor: Option<i64>, skipped: u64 },
    /// The partition is no longer read by this consumer.
    Revoked { partition: i32 },
}

/// The sink's side of the group: what it holds, and a chance to commit before losing partitions.
pub trait OffsetSource: Send + Sync + 'static {
    /// The last offset the sink holds per partition (None: nothing), read fresh (blocking; may
    /// retry inside).
    fn stored(&self, partitions: &[i32]) -> std::result::Result<HashMap<i32, Option<i64>>, String>;

    /// Records `positions` (partition → the offset to count as the last one held) for
    /// partitions where the sink holds nothing, so that a start at the end of a partition stays
    /// where it was taken across rebalances and restarts. Returns what the sink holds for them
    /// afterwards (another member may have stored a position first).
    fn pin(&self, positions: &HashMap<i32, i64>) -> std::result::Result<HashMap<i32, Option<i64>>, String>;

    /// Called before `partitions` are taken away: returns once the sink has committed what it
    /// read of them, or has given up waiting. Correctness never depends on it; it saves reading
    /// the partitions again.
    fn revoking(&self, partitions: &[i32]);
}

/// A message as read, borrowed from the client until the next poll.
pub struct Polled<'a>(BorrowedMessage<'a>);

impl Polled<'_> {
    pub fn partition(&self) -> i32 {
        self.0.partition()
    }

    pub fn offset(&self) -> i64 {
        self.0.offset()
    }

    /// The value; None for a null value (a tombstone).
    pub fn payload(&self) -> Option<&[u8]> {
        self.0.payload()
    }
}

/// Consumer callbacks: assignments positioned from the source, lag from statistics.
pub struct IngestContext {
    topic: String,
    source: Arc<dyn OffsetSource>,
    positioning: Positioning,
    generation: AtomicU64,
    assigned: Mutex<BTreeSet<i32>>,
    events: Mutex<Vec<PartitionEvent>>,
    lag: AtomicI64,
    /// Rebalances that failed (librdkafka's rebalance errors).
    rebalance_errors: AtomicU64,
    failure: Mutex<Option<String>>,
    /// The queue every assigned partition's messages are forwarded to (owned by [`Consumer`];
    /// null once it is gone).
    fetched: AtomicPtr<rd::rd_kafka_queue_t>,
}

impl ClientContext for IngestContext {
    fn stats(&self, stats: Statistics) {
        if let Some(t) = stats.topics.get(&self.topic) {
            let lag: i64 =
                t.partitions.values().filter(|p| p.partition >= 0).map(|p| p.consumer_lag.max(0)).sum();
            self.lag.store(lag, Ordering::Relaxed);
        }
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> =
                    tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                match self.placements(consumer, &partitions) {
                    Ok(placements) => {
                        for mut elem in tpl.elements_for_topic(&self.topic) {
                            let placed = placements.iter().find(|p| p.partition == elem.partition());
                            let Some(placed) = placed else { continue };
                            if let Err(e) = elem.set_offset(placed.offset) {
                                self.fail(format!("positioning partition {}: {e}", elem.partition()));
                            }
                        }
                        self.forward(consumer, &partitions);
                        tracing::info!(topic = %self.topic, ?placements, "partitions assigned");
                        self.record(placements.iter().map(Placement::event), &partitions, &[]);
                    }
                    Err(e) => self.fail(format!("positioning partitions {partitions:?}: {e}")),
                }
            }
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<i32> =
                    tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                tracing::info!(topic = %self.topic, ?revoked, "partitions revoked");
                self.source.revoking(&revoked);
                let events = revoked.iter().map(|&partition| PartitionEvent::Revoked { partition });
                self.record(events, &[], &revoked);
            }
            Rebalance::Error(e) => {
                self.rebalance_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "rebalance error");
            }
        }
        // Bumped last: whoever sees the new generation also sees its events (or the failure).
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Where one partition is put, and why.
#[derive(Debug, Clone, Copy)]
struct Placement {
    partition: i32,
    offset: Offset,
    anchor: Option<i64>,
    skipped: u64,
}

impl Placement {
    fn event(&self) -> PartitionEvent {
        PartitionEvent::Assigned { partition: self.partition, anchor: self.anchor, skipped: self.skipped }
    }
}

impl IngestContext {
    /// Sends the messages of `partitions` to the one queue [`Consumer::poll_batch`] reads. Done
    /// before the partitions are assigned: librdkafka then leaves the forward in place when it
    /// starts fetching them (it clears it when it stops), so every message of an assignment
    /// comes through that queue, in order.
    fn forward(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) {
        let queue = self.fetched.load(Ordering::Acquire);
        let Ok(topic) = CString::new(self.topic.as_str()) else { return };
        if queue.is_null() {
            return;
        }
        let client = consumer.client().native_ptr();
        for &partition in partitions {
            // SAFETY: the client and the queue are alive (the queue is nulled before it is
            // destroyed), and the partition's handle is given back once forwarded.
            unsafe {
                let own = rd::rd_kafka_queue_get_partition(client, topic.as_ptr(), partition);
                if !own.is_null() {
                    rd::rd_kafka_queue_forward(own, queue);
                    rd::rd_kafka_queue_destroy(own);
                }
            }
        }
    }

    fn fail(&self, message: String) {
        tracing::error!(%message, "consumer cannot position its partitions");
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(message);
        }
    }

    fn record(&self, events: impl Iterator<Item = PartitionEvent>, added: &[i32], removed: &[i32]) {
        if let Ok(mut a) = self.assigned.lock() {
            a.extend(added);
            for p in removed {
                a.remove(p);
            }
        }
        if let Ok(mut e) = self.events.lock() {
            e.extend(events);
        }
    }

    /// Reads the stored positions of `partitions` and checks them against the broker's.
    fn placements(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
    ) -> std::result::Result<Vec<Placement>, String> {
        let watermarks = |partition: i32| {
            crate::retry::Backoff::default()
                .retry_blocking("reading the offsets a partition holds", super::error::transient, || {
                    consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
                })
                .map_err(|e| format!("reading the offsets partition {partition} holds: {e}"))
        };
        let mut stored = self.source.stored(partitions)?;
        if self.positioning.start == StartAt::Latest {
            // The end, taken now and stored, so that it does not move on with every rebalance.
            let mut pins = HashMap::new();
            for &p in partitions.iter().filter(|p| stored.get(p).copied().flatten().is_none()) {
                pins.insert(p, watermarks(p)?.1 - 1);
            }
            if !pins.is_empty() {
                stored.extend(self.source.pin(&pins)?);
            }
        }
        let mut out = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let anchor = stored.get(&partition).copied().flatten();
            let (offset, skipped) = match anchor {
                None => (Offset::Beginning, 0),
                Some(last) => place_after(
                    &self.topic,
                    self.positioning.missing,
                    partition,
                    last,
                    watermarks(partition)?,
                )?,
            };
            out.push(Placement { partition, offset, anchor, skipped });
        }
        Ok(out)
    }
}

/// Where to read after stored offset `last` of `partition`, given the broker holds `low..high`,
/// and how many offsets that skips.
fn place_after(
    topic: &str,
    missing: MissingOffsets,
    partition: i32,
    last: i64,
    (low, high): (i64, i64),
) -> std::result::Result<(Offset, u64), String> {
    let next = last + 1;
    if next > high {
        return Err(format!(
            "partition {partition} of `{topic}`: the table holds offset {last} but the partition ends \
             before offset {high}; was the topic deleted and created again?"
        ));
    }
    if next >= low {
        return Ok((Offset::Offset(next), 0));
    }
    let lost = (low - next) as u64;
    match missing {
        MissingOffsets::Fail => Err(format!(
            "partition {partition} of `{topic}`: the table holds offset {last} but the broker's earliest \
             is {low}: {lost} offsets ({next}..={}) were deleted before they were ingested; set \
             `ingest.missing_offsets = \"skip\"` to go on from offset {low}",
            low - 1
        )),
        MissingOffsets::Skip => {
            tracing::warn!(
                topic,
                partition,
                stored = last,
                earliest = low,
                skipped = lost,
                "offsets deleted by retention before they were ingested; skipping them"
            );
            Ok((Offset::Offset(low), lost))
        }
    }
}

/// A subscribed consumer whose positions come from an [`OffsetSource`].
pub struct Consumer {
    inner: BaseConsumer<IngestContext>,
    topic: String,
}

/// Messages [`Consumer::poll_batch`] takes from librdkafka at most per call.
const BATCH: usize = 1024;

impl Drop for Consumer {
    fn drop(&mut self) {
        let queue = self.inner.context().fetched.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !queue.is_null() {
            // SAFETY: created in `subscribe`, destroyed only here, before the client (partitions
            // still forwarded to it hold their own reference).
            unsafe { rd::rd_kafka_queue_destroy(queue) };
        }
    }
}

/// librdkafka settings that txpipe sets for its consumer: the consumer protocol decides session
/// and heartbeat on the broker and refuses them here.
fn consumer_settings(config: &KafkaConfig) -> Vec<(&'static str, &str)> {
    let mut s = vec![
        ("group.id", config.group_id.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        // A position that runs out of range is an error the reader handles, never a silent jump.
        ("auto.offset.reset", "error"),
        // Prefetch: enough to keep the reader busy, bounded in memory. A fetch answer is
        // compressed and becomes several times its size once unpacked into messages, so fetches
        // stay moderate: 1 MiB per partition, 4 MiB per request (half that measured 7 % slower
        // at full speed, BENCHMARKS.md), at most 2 MiB waiting per partition, and the fetcher
        // looks again 10 ms (not the default 1 s) after the reader caught up.
        ("fetch.max.bytes", "4194304"),
        ("max.partition.fetch.bytes", "1048576"),
        ("queued.min.messages", "10000"),
        ("queued.max.messages.kbytes", "2048"),
        ("fetch.queue.backoff.ms", "10"),
        ("statistics.interval.ms", "5000"),
    ];
    if !config.consumer_protocol() {
        s.extend([("session.timeout.ms", "10000"), ("heartbeat.interval.ms", "2000")]);
    }
    s
}

impl Consumer {
    /// Subscribes to `config.topic` in group `config.group_id`.
    pub fn subscribe(
        config: &KafkaConfig,
        source: Arc<dyn OffsetSource>,
        positioning: Positioning,
    ) -> Result<Consumer> {
        let context = IngestContext {
            topic: config.topic.clone(),
            source,
            positioning,
            generation: AtomicU64::new(0),
            assigned: Mutex::new(BTreeSet::new()),
            events: Mutex::new(Vec::new()),
            lag: AtomicI64::new(-1),
            rebalance_errors: AtomicU64::new(0),
            failure: Mutex::new(None),
            fetched: AtomicPtr::new(std::ptr::null_mut()),
        };
        let inner: BaseConsumer<IngestContext> = config
            .client_config(&consumer_settings(config))
            .create_with_context(context)
            .map_err(|source| config.client_error(source))?;
        // SAFETY: a new queue of a live client, destroyed once, in `Drop`, before the client.
        let fetched = unsafe { rd::rd_kafka_queue_new(inner.client().native_ptr()) };
        inner.context().fetched.store(fetched, Ordering::Release);
        inner.subscribe(&[&config.topic]).map_err(|source| config.client_error(source))?;
        Ok(Consumer { inner, topic: config.topic.clone() })
    }

    /// The next message, if one arrives within `timeout`. Rebalance callbacks run in here.
    pub fn poll(&self, timeout: Duration) -> Option<Result<Polled<'_>>> {
        self.inner.poll(timeout).map(|r| r.map(Polled).map_err(|source| self.consume_error(source)))
    }

    /// Up to `max` messages of the assigned partitions, waiting at most `timeout` for the first,
    /// each handed to `each` (payload None: a tombstone) and then released. Reads many messages
    /// per call where [`Consumer::poll`] reads one (half the consumer's CPU at full speed).
    /// Rebalances do not arrive here: [`Consumer::poll`] must still be called between batches.
    /// Returns how many messages and errors were handed over.
    pub fn poll_batch(
        &self,
        timeout: Duration,
        max: usize,
        mut each: impl FnMut(Result<(i32, i64, Option<&[u8]>)>),
    ) -> usize {
        let queue = self.inner.context().fetched.load(Ordering::Acquire);
        if queue.is_null() || max == 0 {
            return 0;
        }
        let mut messages: [*mut rd::rd_kafka_message_t; BATCH] = [std::ptr::null_mut(); BATCH];
        let wait = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: the queue lives as long as `self`; librdkafka fills at most `BATCH` slots and
        // says how many; each message is read, then destroyed once.
        let got =
            unsafe { rd::rd_kafka_consume_batch_queue(queue, wait, messages.as_mut_ptr(), max.min(BATCH)) };
        let got = usize::try_from(got).unwrap_or(0);
        for &m in &messages[..got] {
            // SAFETY: a message librdkafka just returned, not yet destroyed.
            unsafe {
                let message = &*m;
                if message.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    let payload = (!message.payload.is_null())
                        .then(|| std::slice::from_raw_parts(message.payload as *const u8, message.len));
                    each(Ok((message.partition, message.offset, payload)));
                } else {
                    let source = RdKafkaError::MessageConsumption(RDKafkaErrorCode::from(message.err));
                    each(Err(self.consume_error(source)));
                }
                rd::rd_kafka_message_destroy(m);
            }
        }
        got
    }

    fn consume_error(&self, source: RdKafkaError) -> KafkaError {
        if source.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) {
            KafkaError::OffsetsLost { topic: self.topic.clone(), detail: source.to_string() }
        } else {
            KafkaError::Consume { topic: self.topic.clone(), source }
        }
    }

    /// Bumped at every assignment and revocation, after its events are recorded.
    pub fn generation(&self) -> u64 {
        self.inner.context().generation.load(Ordering::SeqCst)
    }

    /// The partition changes since the last call, in order.
    pub fn take_events(&self) -> Vec<PartitionEvent> {
        self.inner.context().events.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }

    /// Partitions currently assigned to this consumer.
    pub fn assigned(&self) -> BTreeSet<i32> {
        self.inner.context().assigned.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A positioning failure of the last assignment, if any: the caller must stop before it
    /// handles another message.
    pub fn failure(&self) -> Option<String> {
        self.inner.context().failure.lock().ok().and_then(|f| f.clone())
    }

    /// Rebalances that failed so far.
    pub fn rebalance_errors(&self) -> u64 {
        self.inner.context().rebalance_errors.load(Ordering::Relaxed)
    }

    /// Total lag of the assigned partitions from the last statistics (-1 before the first).
    pub fn lag(&self) -> i64 {
        self.inner.context().lag.load(Ordering::Relaxed)
    }

    /// Moves every assigned partition back to the sink's stored position (read fresh), and
    /// returns where each now starts.
    pub fn reseek(&self) -> Result<Vec<PartitionEvent>> {
        let context = self.inner.context();
        let partitions: Vec<i32> = self.assigned().into_iter().collect();
        let placements = context
            .placements(&self.inner, &partitions)
            .map_err(|detail| KafkaError::Position { topic: self.topic.clone(), detail })?;
        for placed in &placements {
            self.inner
                .seek(&self.topic, placed.partition, placed.offset, Duration::from_secs(10))
                .map_err(|source| KafkaError::Consume { topic: self.topic.clone(), source })?;
        }
        tracing::info!(topic = %self.topic, ?placements, "partitions moved to the table's positions");
        Ok(placements.iter().map(Placement::event).collect())
    }

    /// Records committed positions in the consumer group, for monitoring tools only.
    pub fn commit_hint(&self, last_written: &HashMap<i32, i64>) {
        let assigned = self.assigned();
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in last_written.iter().filter(|(p, _)| assigned.contains(p)) {
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o + 1));
        }
        if tpl.count() > 0
            && let Err(e) = self.inner.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "group offset hint not committed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_protocol_gets_no_session_or_heartbeat_setting() {
        let classic = KafkaConfig::default();
        let keys = |c: &KafkaConfig| consumer_settings(c).iter().map(|(k, _)| *k).collect::<Vec<_>>();
        assert!(keys(&classic).contains(&"session.timeout.ms"));
        let mut modern = KafkaConfig::default();
        modern.properties.insert("group.protocol".into(), "consumer".into());
        assert!(!keys(&modern).contains(&"session.timeout.ms"));
        assert!(!keys(&modern).contains(&"heartbeat.interval.ms"));
        assert!(keys(&modern).contains(&"auto.offset.reset"));
    }

    #[test]
    fn a_stored_position_is_checked_against_what_the_broker_holds() {
        let place = |missing, last, held| place_after("t", missing, 3, last, held);
        // Next offset held: read from it.
        assert_eq!(place(MissingOffsets::Fail, 9, (0, 20)).unwrap(), (Offset::Offset(10), 0));
        assert_eq!(place(MissingOffsets::Fail, 19, (0, 20)).unwrap(), (Offset::Offset(20), 0));
        assert_eq!(place(MissingOffsets::Fail, 9, (10, 20)).unwrap(), (Offset::Offset(10), 0));
        // Offsets 10..=14 deleted by retention: an error that names them, or skipped and counted.
        let e = place(MissingOffsets::Fail, 9, (15, 20)).unwrap_err();
        assert!(e.contains("partition 3") && e.contains("5 offsets (10..=14)"), "{e}");
        assert!(e.contains("ingest.missing_offsets"), "{e}");
        assert_eq!(place(MissingOffsets::Skip, 9, (15, 20)).unwrap(), (Offset::Offset(15), 5));
        // The table is past the end of the partition: never a silent restart.
        let e = place(MissingOffsets::Skip, 30, (0, 20)).unwrap_err();
        assert!(e.contains("created again"), "{e}");
    }
}
