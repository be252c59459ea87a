//! The reader stage of ingest: one thread that takes messages from the consumer, up to 1,024 at
//! a time, and copies them into batches for the parse stage; it polls the consumer's own queue
//! once a turn, where rebalances arrive.
//!
//! In: Kafka messages and partition changes; control messages from the writer (move back to the
//! table's positions, committed positions as a group-offset hint). Out: [`RawBatch`]es whose
//! spans say, per partition, what the table must hold right before them (the *anchor*: the
//! stored offset the partition was positioned after, then the last offset handed over), and
//! barriers that make the writer commit before partitions are taken away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use txpipe_connectors::delta::{DeltaError, Table};
use txpipe_connectors::kafka::{
    Consumer, KafkaConfig, KafkaError, MissingOffsets, OffsetSource, PartitionEvent, Positioning,
};
use txpipe_connectors::retry::Backoff;
use txpipe_core::schema::Schema;

use super::Positions;
use super::lag::Held;
use super::parse::{self, Limits, Raw, RawBatch, Staged};
use crate::telemetry::{Beat, names};
use crate::{JobError, Result};

/// Messages per batch handed to the parse stage (fewer when the flush size is smaller).
const BATCH_ROWS: usize = 16_384;
/// Payload bytes at which a batch is handed over before it has `BATCH_ROWS` messages: large
/// messages must not make a batch (and the Arrow chunk built from it) grow without bound.
const BATCH_BYTES: usize = 16 << 20;
/// Age at which a partial batch is handed over anyway.
const BATCH_AGE: Duration = Duration::from_millis(50);
/// How long one read of a batch of messages waits when nothing came last time (also the
/// longest a rebalance waits to be served then).
const IDLE_POLL: Duration = Duration::from_millis(20);

/// Writer → reader.
pub(super) enum Control {
    /// Drop what is read but not handed over, move every partition back to the table's
    /// positions, and tag the batches from there on with this token.
    Reseek(u64),
    /// These positions are committed: record them in the consumer group (monitoring only).
    Committed(HashMap<i32, i64>),
}

/// When the reader last saw a message, and whether it ever held partitions.
pub(super) struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    assigned: AtomicBool,
    lag: AtomicI64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Messages behind the end of the assigned partitions, from the client's statistics (-1
    /// before the first).
    pub fn lag(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Whether the consumer has held partitions at some point.
    pub fn ever_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Time since the last message or rebalance (or since the start, before any).
    pub fn idle(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

pub(super) struct ReaderSetup {
    pub kafka: KafkaConfig,
    pub schema: Schema,
    pub positioning: Positioning,
    pub limits: Limits,
    pub positions: Table,
    pub runtime: tokio::runtime::Handle,
    pub chunks: tokio::sync::mpsc::Sender<Staged>,
    pub control: Receiver<Control>,
    pub stop: Arc<AtomicBool>,
    /// The writer's flush size: no chunk is larger.
    pub flush_rows: usize,
    /// How long a revocation waits for the writer to commit (None: it does not ask).
    pub revoke_wait: Option<Duration>,
    pub hooks: super::Hooks,
    /// Where the lag metric learns the partitions held and the table's positions of them.
    pub held: Arc<Held>,
}

/// What the reader did.
pub(super) struct ReaderOutcome {
    pub read: u64,
    /// Offsets passed over because retention had deleted them (`missing_offsets = "skip"`).
    pub skipped: u64,
}

pub(super) struct ReaderHandle {
    thread: JoinHandle<Result<ReaderOutcome>>,
    parse: JoinHandle<Result<()>>,
    activity: Arc<Activity>,
}

impl ReaderHandle {
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Waits for both threads; the reader's failure is reported first.
    pub fn join(self) -> Result<ReaderOutcome> {
        let read =
            self.thread.join().map_err(|_| JobError::Internal("the ingest reader thread panicked".into()))?;
        let parsed =
            self.parse.join().map_err(|_| JobError::Internal("the ingest parse thread panicked".into()))?;
        let read = read?;
        parsed?;
        Ok(read)
    }
}

/// The clean table's side of the consumer group: where partitions start, and a commit before
/// partitions are taken away.
struct TablePositions {
    table: Mutex<Table>,
    runtime: tokio::runtime::Handle,
    /// The way to the writer, for barriers.
    raw: SyncSender<Raw>,
    revoke_wait: Option<Duration>,
    /// Set when the run stops: the retries of the storage below give up then.
    stop: Arc<AtomicBool>,
}

impl OffsetSource for TablePositions {
    fn stored(&self, partitions: &[i32]) -> std::result::Result<HashMap<i32, Option<i64>>, String> {
        let mut table = self.table.lock().map_err(|_| "positions table lock poisoned".to_string())?;
        let go = || !self.stop.load(Ordering::SeqCst);
        Backoff::default()
            .retry_blocking_while("reading the table's positions", DeltaError::retryable, go, || {
                self.runtime.block_on(async {
                    table.refresh().await?;
                    table.positions(partitions).await
                })
            })
            .map_err(|e| e.to_string())
    }

    fn pin(&self, positions: &HashMap<i32, i64>) -> std::result::Result<HashMap<i32, Option<i64>>, String> {
        let mut table = self.table.lock().map_err(|_| "positions table lock poisoned".to_string())?;
        let partitions: Vec<i32> = positions.keys().copied().collect();
        let mut metadata = serde_json::Map::new();
        metadata.insert("txpipe.start".into(), "latest".into());
        let go = || !self.stop.load(Ordering::SeqCst);
        Backoff::default()
            .retry_blocking_while("storing start positions", DeltaError::retryable, go, || {
                self.runtime.block_on(async {
                    table.refresh().await?;
                    let held = table.positions(&partitions).await?;
                    let unset: Positions = positions
                        .iter()
                        .filter(|(p, _)| held.get(p).copied().flatten().is_none())
                        .map(|(&p, &o)| (p, o))
                        .collect();
                    if unset.is_empty() {
                        return Ok(held);
                    }
                    match table.commit(Vec::new(), &unset, metadata.clone()).await {
                        Ok(version) => {
                            tracing::info!(?unset, version, "start positions stored (start = latest)")
                        }
                        // Another member stored positions first: theirs count.
                        Err(DeltaError::Conflict { .. }) => table.refresh().await?,
                        Err(e) => return Err(e),
                    }
                    table.positions(&partitions).await
                })
            })
            .map_err(|e| e.to_string())
    }

    fn revoking(&self, partitions: &[i32]) {
        if let Some(wait) = self.revoke_wait {
            barrier(&self.raw, wait, &format!("partitions {partitions:?} are taken away"));
        }
    }
}

/// Asks the writer to commit everything handed over so far, and waits for it at most `wait`.
fn barrier(raw: &SyncSender<Raw>, wait: Duration, why: &str) {
    let (ack, done) = std::sync::mpsc::sync_channel(1);
    let started = Instant::now();
    // Behind a writer that cannot commit (storage down), the way in can be full: wait for it
    // no longer than for the answer.
    let mut item = Raw::Barrier(ack);
    loop {
        match raw.try_send(item) {
            Ok(()) => break,
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return, // the writer is gone
            Err(std::sync::mpsc::TrySendError::Full(back)) if started.elapsed() < wait => {
                item = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                tracing::warn!(
                    why,
                    wait_s = wait.as_secs_f64(),
                    "the writer is busy; not waiting for its commit"
                );
                return;
            }
        }
    }
    match done.recv_timeout(wait.saturating_sub(started.elapsed())) {
        Ok(()) => {
            tracing::info!(why, wait_ms = started.elapsed().as_millis() as u64, "committed what was read")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
            why,
            wait_s = wait.as_secs_f64(),
            "the commit of what was read did not finish in time; the partitions' next owner may read \
             some messages again (a commit that would overlap is refused)"
        ),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
    }
}

/// Subscribes and starts the reader thread and the parse thread behind it.
pub(super) fn spawn(setup: ReaderSetup) -> Result<ReaderHandle> {
    // Two batches in flight: one being parsed, one ready.
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel(1);
    let source = Arc::new(TablePositions {
        table: Mutex::new(setup.positions),
        runtime: setup.runtime.clone(),
        raw: raw_tx.clone(),
        revoke_wait: setup.revoke_wait,
        stop: setup.stop.clone(),
    });
    let consumer = Consumer::subscribe(&setup.kafka, source, setup.positioning)?;
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
        assigned: AtomicBool::new(false),
        lag: AtomicI64::new(-1),
    });
    let parse = parse::spawn(setup.schema, setup.kafka.topic.clone(), setup.limits, raw_rx, setup.chunks)?;
    let thread_activity = activity.clone();
    let thread = std::thread::Builder::new()
        .name("ingest-reader".into())
        .spawn(move || {
            let mut reader = Reader {
                consumer,
                batches: raw_tx,
                control: setup.control,
                batch_rows: BATCH_ROWS.min(setup.flush_rows),
                max_message_bytes: setup.limits.max_message_bytes,
                missing: setup.positioning.missing,
                revoke_wait: setup.revoke_wait,
                hooks: setup.hooks,
                anchors: HashMap::new(),
                token: 0,
                read: 0,
                skipped: 0,
                beat: Beat::new("ingest-reader"),
                rebalance_errors: 0,
                held: setup.held,
            };
            reader.run(&setup.stop, &thread_activity)
        })
        .map_err(|e| JobError::io("starting the reader thread", e))?;
    Ok(ReaderHandle { thread, parse, activity })
}

/// The reader thread's state.
struct Reader {
    consumer: Consumer,
    batches: SyncSender<Raw>,
    control: Receiver<Control>,
    batch_rows: usize,
    max_message_bytes: usize,
    missing: MissingOffsets,
    revoke_wait: Option<Duration>,
    hooks: super::Hooks,
    /// Per assigned partition, what the table must hold right before the next message read:
    /// set at assignment or reseek, then moved to the last offset of each batch handed over.
    anchors: HashMap<i32, Option<i64>>,
    /// The writer's last reseek, carried by every batch read after it.
    token: u64,
    read: u64,
    skipped: u64,
    beat: Beat,
    /// Rebalance errors counted so far (each bumps the consumer's generation, as a rebalance does).
    rebalance_errors: u64,
    held: Arc<Held>,
}

impl Reader {
    fn run(&mut self, stop: &AtomicBool, activity: &Activity) -> Result<ReaderOutcome> {
        // Room for a full batch of messages of the size seen so far.
        let mut room = self.batch_rows * 256;
        let mut batch = RawBatch::with_capacity(self.token, self.batch_rows, room);
        let mut generation = self.consumer.generation();
        let mut last_error_log: Option<Instant> = None;
        let mut idle = true;
        while !stop.load(Ordering::SeqCst) {
            self.beat.turn();
            activity.lag.store(self.consumer.lag(), Ordering::Relaxed);
            while let Ok(c) = self.control.try_recv() {
                match c {
                    Control::Reseek(token) => {
                        self.token = token;
                        batch = RawBatch::with_capacity(token, self.batch_rows, room);
                        self.reseek()?;
                    }
                    Control::Committed(positions) => self.consumer.commit_hint(&positions),
                }
            }
            // Rebalances (and errors) arrive here, without waiting; messages come in batches
            // below (one would come here only from a partition not forwarded: it is copied).
            // Partitions assigned or revoked inside this poll: nothing is handled before their
            // positions are known to be good.
            let polled = self
                .consumer
                .poll(Duration::ZERO)
                .map(|r| r.map(|m| (m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec))));
            let now = self.consumer.generation();
            if now != generation {
                generation = now;
                self.rebalanced(&mut batch, activity)?;
            }
            let mut error = None;
            let mut got = 0;
            match polled {
                Some(Ok((partition, offset, payload))) => {
                    got += 1;
                    self.read += 1;
                    batch.push(partition, offset, payload.as_deref(), self.max_message_bytes);
                }
                Some(Err(e)) => error = Some(e),
                None => {}
            }
            if error.is_none() {
                // No more messages than the batch has room for, in count and (at the size of
                // those so far) in bytes.
                let per_message = if batch.is_empty() { 256 } else { batch.bytes() / batch.len() };
                let bytes_left = BATCH_BYTES.saturating_sub(batch.bytes());
                let room =
                    self.batch_rows.saturating_sub(batch.len()).min(bytes_left / per_message.max(1)).max(1);
                // While messages flow, ask without waiting.
                let wait = if idle && got == 0 { IDLE_POLL } else { Duration::ZERO };
                let (read, max_bytes) = (&mut self.read, self.max_message_bytes);
                got += self.consumer.poll_batch(wait, room, |m| match m {
                    Ok((partition, offset, payload)) => {
                        *read += 1;
                        batch.push(partition, offset, payload, max_bytes);
                    }
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                });
            }
            if got > 0 {
                metrics::counter!(names::INGEST_MESSAGES_READ).increment(got as u64);
            }
            // The end of a run of messages: idleness counts from here.
            if got > 0 || !idle {
                activity.touch();
            }
            idle = got == 0;
            match error {
                Some(e @ KafkaError::OffsetsLost { .. }) => {
                    if self.missing == MissingOffsets::Fail {
                        return Err(e.into());
                    }
                    // Placed again from the table, where the skip is counted.
                    tracing::warn!(error = %e, "read position lost; moving back to the table's positions");
                    batch = RawBatch::with_capacity(self.token, self.batch_rows, room);
                    self.reseek()?;
                }
                // librdkafka reconnects by itself; say so at most every 5 s.
                Some(e) if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) => {
                    tracing::warn!(error = %e, "kafka consumer error (retrying)");
                    last_error_log = Some(Instant::now());
                }
                Some(_) | None => {}
            }
            let full = batch.len() >= self.batch_rows || batch.bytes() >= BATCH_BYTES;
            let due = !batch.is_empty() && batch.since.elapsed() >= BATCH_AGE;
            if full || due {
                room = room.max(batch.bytes()).min(BATCH_BYTES);
                let next = RawBatch::with_capacity(self.token, self.batch_rows, room);
                if !self.hand_over(std::mem::replace(&mut batch, next)) {
                    // The parse thread is gone: the writer stopped, and says why.
                    return Ok(self.outcome());
                }
            }
        }
        if !batch.is_empty() {
            self.hand_over(batch);
        }
        // Leave the group only once what was read is committed, so that the partitions' next
        // owners start after it.
        if let Some(wait) = self.revoke_wait {
            barrier(&self.batches, wait, "leaving the group");
        }
        Ok(self.outcome())
    }

    /// Takes in the partition changes of a rebalance: the new anchors, and the batch without
    /// the partitions taken away. A partition that could not be positioned stops the reader.
    fn rebalanced(&mut self, batch: &mut RawBatch, activity: &Activity) -> Result<()> {
        if let Some(failure) = self.consumer.failure() {
            let topic = self.consumer.topic().to_string();
            return Err(JobError::Kafka(KafkaError::Position { topic, detail: failure }));
        }
        let errors = self.consumer.rebalance_errors();
        if errors > self.rebalance_errors {
            metrics::counter!(names::INGEST_REBALANCES, "kind" => "error")
                .increment(errors - self.rebalance_errors);
            self.rebalance_errors = errors;
        }
        let events = self.consumer.take_events();
        for (kind, seen) in [
            ("assign", events.iter().any(|e| matches!(e, PartitionEvent::Assigned { .. }))),
            ("revoke", events.iter().any(|e| matches!(e, PartitionEvent::Revoked { .. }))),
        ] {
            if seen {
                metrics::counter!(names::INGEST_REBALANCES, "kind" => kind).increment(1);
            }
        }
        if let Some(gate) = &self.hooks.assigned
            && events.iter().any(|e| matches!(e, PartitionEvent::Assigned { .. }))
        {
            gate.arrive();
        }
        apply(&mut self.anchors, &mut self.skipped, &self.held, events);
        batch.retain_partitions(|p| self.anchors.contains_key(&p));
        // New positions may bring input: idleness counts from here.
        activity.touch();
        if !self.anchors.is_empty() {
            activity.assigned.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn outcome(&self) -> ReaderOutcome {
        ReaderOutcome { read: self.read, skipped: self.skipped }
    }

    /// Moves every assigned partition back to the table's positions.
    fn reseek(&mut self) -> Result<()> {
        let events = self.consumer.reseek()?;
        apply(&mut self.anchors, &mut self.skipped, &self.held, events);
        Ok(())
    }

    /// Seals a batch with its spans and sends it on; false when the parse thread is gone.
    fn hand_over(&mut self, mut batch: RawBatch) -> bool {
        batch.seal(|p| self.anchors.get(&p).copied().flatten());
        if let Some(stray) = batch.spans.iter().find(|s| !self.anchors.contains_key(&s.partition)) {
            // Not a partition of this consumer (never expected): its messages are not ours to write.
            tracing::warn!(partition = stray.partition, "messages of a partition not assigned here; dropped");
            batch.retain_partitions(|p| self.anchors.contains_key(&p));
            batch.seal(|p| self.anchors.get(&p).copied().flatten());
        }
        if batch.is_empty() {
            return true;
        }
        for span in &batch.spans {
            self.anchors.insert(span.partition, Some(span.last));
        }
        self.batches.send(Raw::Batch(batch)).is_ok()
    }
}

/// Records partition changes: where assigned partitions start, and which ones left.
fn apply(
    anchors: &mut HashMap<i32, Option<i64>>,
    skipped_total: &mut u64,
    held: &Held,
    events: Vec<PartitionEvent>,
) {
    for event in events {
        match event {
            PartitionEvent::Assigned { partition, anchor, skipped } => {
                anchors.insert(partition, anchor);
                held.assigned(partition, anchor);
                *skipped_total += skipped;
                if skipped > 0 {
                    metrics::counter!(names::INGEST_OFFSETS_SKIPPED).increment(skipped);
                }
            }
            PartitionEvent::Revoked { partition } => {
                anchors.remove(&partition);
                held.revoked(partition);
            }
        }
    }
}
