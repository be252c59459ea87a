//! The consumer-group consumer of `txpipe ingest`, whose start positions come from the sink.
//!
//! In: the topic's messages. Out: messages in partition order, from the positions an
//! [`OffsetSource`] (the Delta table) gives at every assignment. Kafka's committed group
//! offsets are written only as a monitoring hint and never read.
//!
//! On every assignment the rebalance callback asks the source for each partition's position and
//! puts it into the assignment itself, so no message is fetched from any other place; every
//! assignment or revocation bumps a generation number, which lets the caller drop work built
//! before it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{KafkaConfig, KafkaError, Result};

/// Where a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The sink holds everything up to and including this offset.
    After(i64),
    /// Nothing stored yet: the earliest offset the broker holds.
    Earliest,
    /// Nothing stored yet: only messages that arrive from now on.
    Latest,
}

/// The sink's record of what it holds, asked at every assignment (blocking; may retry inside).
pub trait OffsetSource: Send + Sync + 'static {
    fn start_offsets(&self, partitions: &[i32]) -> std::result::Result<HashMap<i32, StartAt>, String>;
}

/// Consumer callbacks: assignments positioned from the source, lag from statistics.
pub struct IngestContext {
    topic: String,
    source: Arc<dyn OffsetSource>,
    generation: AtomicU64,
    assigned: Mutex<BTreeSet<i32>>,
    lag: AtomicI64,
    failure: Mutex<Option<String>>,
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
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> =
                    tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                match self.source.start_offsets(&partitions) {
                    Ok(starts) => {
                        for mut elem in tpl.elements_for_topic(&self.topic) {
                            let offset =
                                match starts.get(&elem.partition()).copied().unwrap_or(StartAt::Earliest) {
                                    StartAt::After(o) => Offset::Offset(o + 1),
                                    StartAt::Earliest => Offset::Beginning,
                                    StartAt::Latest => Offset::End,
                                };
                            if let Err(e) = elem.set_offset(offset) {
                                self.fail(format!("positioning partition {}: {e}", elem.partition()));
                            }
                        }
                        tracing::info!(topic = %self.topic, ?partitions, ?starts, "partitions assigned");
                        if let Ok(mut a) = self.assigned.lock() {
                            a.extend(partitions);
                        }
                    }
                    Err(e) => self.fail(format!("reading start offsets for partitions {partitions:?}: {e}")),
                }
            }
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<i32> =
                    tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                tracing::info!(topic = %self.topic, ?revoked, "partitions revoked");
                if let Ok(mut a) = self.assigned.lock() {
                    for p in &revoked {
                        a.remove(p);
                    }
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

impl IngestContext {
    fn fail(&self, message: String) {
        tracing::error!(%message, "consumer cannot position its partitions");
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(message);
        }
    }
}

/// A subscribed consumer whose positions come from an [`OffsetSource`].
pub struct Consumer {
    inner: BaseConsumer<IngestContext>,
    topic: String,
}

impl Consumer {
    /// Subscribes to `config.topic` in group `config.group_id`.
    pub fn subscribe(config: &KafkaConfig, source: Arc<dyn OffsetSource>) -> Result<Consumer> {
        let context = IngestContext {
            topic: config.topic.clone(),
            source,
            generation: AtomicU64::new(0),
            assigned: Mutex::new(BTreeSet::new()),
            lag: AtomicI64::new(-1),
            failure: Mutex::new(None),
        };
        let inner: BaseConsumer<IngestContext> = config
            .client_config(&[
                ("group.id", &config.group_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "2000"),
                // Prefetch: enough to keep the reader busy, bounded in memory. A fetch answer
                // is compressed and becomes several times its size once unpacked into
                // messages, so fetches stay small and frequent: 512 KiB per partition, 2 MiB
                // per request, at most 2 MiB waiting per partition, and the fetcher looks
                // again 10 ms (not the default 1 s) after the reader caught up.
                ("fetch.max.bytes", "2097152"),
                ("max.partition.fetch.bytes", "524288"),
                ("queued.min.messages", "10000"),
                ("queued.max.messages.kbytes", "2048"),
                ("fetch.queue.backoff.ms", "10"),
                ("statistics.interval.ms", "5000"),
            ])
            .create_with_context(context)
            .map_err(|source| KafkaError::Client { brokers: config.brokers.clone(), source })?;
        inner
            .subscribe(&[&config.topic])
            .map_err(|source| KafkaError::Client { brokers: config.brokers.clone(), source })?;
        Ok(Consumer { inner, topic: config.topic.clone() })
    }

    /// The next message, if one arrives within `timeout`. Rebalance callbacks run in here.
    pub fn poll(&self, timeout: Duration) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        self.inner.poll(timeout)
    }

    /// Bumped at every assignment and revocation.
    pub fn generation(&self) -> u64 {
        self.inner.context().generation.load(Ordering::SeqCst)
    }

    /// Partitions currently assigned to this consumer.
    pub fn assigned(&self) -> BTreeSet<i32> {
        self.inner.context().assigned.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// A positioning failure of the last assignment, if any: the caller must stop.
    pub fn failure(&self) -> Option<String> {
        self.inner.context().failure.lock().ok().and_then(|f| f.clone())
    }

    /// Total lag of the assigned partitions from the last statistics (-1 before the first).
    pub fn lag(&self) -> i64 {
        self.inner.context().lag.load(Ordering::Relaxed)
    }

    /// Moves assigned partitions to new positions, and bumps the generation.
    pub fn seek(&self, starts: &HashMap<i32, StartAt>) -> Result<()> {
        self.inner.context().generation.fetch_add(1, Ordering::SeqCst);
        let assigned = self.assigned();
        for (&p, &start) in starts {
            if !assigned.contains(&p) {
                continue;
            }
            let offset = match start {
                StartAt::After(o) => Offset::Offset(o + 1),
                StartAt::Earliest => Offset::Beginning,
                StartAt::Latest => Offset::End,
            };
            self.inner
                .seek(&self.topic, p, offset, Duration::from_secs(10))
                .map_err(|source| KafkaError::Consume { topic: self.topic.clone(), source })?;
        }
        Ok(())
    }

    /// Records committed positions in the consumer group, for monitoring tools only.
    pub fn commit_hint(&self, last_written: &HashMap<i32, i64>) {
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in last_written {
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o + 1));
        }
        if tpl.count() > 0
            && let Err(e) = self.inner.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "group offset hint not committed");
        }
    }
}
