//! The reader stage of ingest: one thread that polls the consumer and copies messages into
//! batches for the parse stage.
//!
//! In: Kafka messages; control messages from the writer (seek back to the table's positions,
//! committed positions as a group-offset hint). Out: [`RawBatch`]es tagged with the consumer's
//! generation, so that the writer can drop what was read before a rebalance or a seek.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::Message;
use txpipe_connectors::delta::{DeltaError, Table};
use txpipe_connectors::kafka::{Consumer, KafkaConfig, OffsetSource, StartAt};
use txpipe_connectors::retry::Backoff;
use txpipe_core::schema::Schema;

use super::parse::{self, Chunk, RawBatch};
use crate::{JobError, Result};

/// Messages per batch handed to the parse stage (fewer when the flush size is smaller).
const BATCH_ROWS: usize = 16_384;
/// Payload bytes at which a batch is handed over before it has `BATCH_ROWS` messages: large
/// messages must not make a batch (and the Arrow chunk built from it) grow without bound.
const BATCH_BYTES: usize = 16 << 20;
/// Age at which a partial batch is handed over anyway.
const BATCH_AGE: Duration = Duration::from_millis(100);
/// How long one poll waits when nothing came last time.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// Messages between two looks at the control channel and the consumer's state.
const HOUSEKEEPING_EVERY: u32 = 256;

/// Writer → reader.
pub(super) enum Control {
    /// Move these partitions back to the table's positions.
    Reseek(HashMap<i32, StartAt>),
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
    pub start: StartAt,
    pub positions: Table,
    pub runtime: tokio::runtime::Handle,
    pub chunks: tokio::sync::mpsc::Sender<Chunk>,
    pub control: Receiver<Control>,
    pub stop: Arc<AtomicBool>,
    /// The writer's flush size: no chunk is larger.
    pub flush_rows: usize,
}

/// What the reader did.
pub(super) struct ReaderOutcome {
    pub read: u64,
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

/// Answers the consumer's "where does partition p start?" from the clean table.
struct TablePositions {
    table: Mutex<Table>,
    runtime: tokio::runtime::Handle,
    start: StartAt,
}

impl OffsetSource for TablePositions {
    fn start_offsets(&self, partitions: &[i32]) -> std::result::Result<HashMap<i32, StartAt>, String> {
        let mut table = self.table.lock().map_err(|_| "positions table lock poisoned".to_string())?;
        let backoff = Backoff::default();
        let mut attempt = 1;
        let read = loop {
            let r = self.runtime.block_on(async {
                table.refresh().await?;
                table.positions(partitions).await
            });
            match r {
                Err(e) if e.retryable() && attempt < backoff.attempts => {
                    tracing::warn!(attempt, error = %e, "reading positions failed; retrying");
                    std::thread::sleep(backoff.delay(attempt));
                    attempt += 1;
                }
                other => break other,
            }
        };
        let stored = read.map_err(|e: DeltaError| e.to_string())?;
        Ok(stored.into_iter().map(|(p, v)| (p, v.map_or(self.start, StartAt::After))).collect())
    }
}

/// Subscribes and starts the reader thread and the parse thread behind it.
pub(super) fn spawn(setup: ReaderSetup) -> Result<ReaderHandle> {
    let source = Arc::new(TablePositions {
        table: Mutex::new(setup.positions),
        runtime: setup.runtime.clone(),
        start: setup.start,
    });
    let consumer = Consumer::subscribe(&setup.kafka, source)?;
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
        assigned: AtomicBool::new(false),
        lag: AtomicI64::new(-1),
    });
    // Two batches in flight: one being parsed, one ready.
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel(1);
    let parse = parse::spawn(setup.schema, setup.kafka.topic.clone(), raw_rx, setup.chunks)?;
    let thread_activity = activity.clone();
    let thread = std::thread::Builder::new()
        .name("ingest-reader".into())
        .spawn(move || {
            let batch_rows = BATCH_ROWS.min(setup.flush_rows);
            read_loop(consumer, (raw_tx, setup.control, setup.stop), batch_rows, &thread_activity)
        })
        .map_err(|e| JobError::Internal(format!("starting the reader thread: {e}")))?;
    Ok(ReaderHandle { thread, parse, activity })
}

/// Batches out, control in, and the stop flag.
type ReaderIo = (SyncSender<RawBatch>, Receiver<Control>, Arc<AtomicBool>);

fn read_loop(
    consumer: Consumer,
    (batches, control, stop): ReaderIo,
    batch_rows: usize,
    activity: &Activity,
) -> Result<ReaderOutcome> {
    // Room for a full batch of messages of the size seen so far.
    let mut room = batch_rows * 256;
    let mut batch = RawBatch::with_capacity(consumer.generation(), batch_rows, room);
    let mut read = 0u64;
    let mut last_error_log: Option<Instant> = None;
    // Messages since the control channel and the consumer's state were last looked at.
    let mut unchecked = HOUSEKEEPING_EVERY;
    let mut polled_nothing = true;
    while !stop.load(Ordering::SeqCst) {
        if polled_nothing || unchecked >= HOUSEKEEPING_EVERY {
            unchecked = 0;
            if let Some(failure) = consumer.failure() {
                return Err(JobError::Internal(format!("kafka consumer: {failure}")));
            }
            activity.lag.store(consumer.lag(), Ordering::Relaxed);
            while let Ok(c) = control.try_recv() {
                match c {
                    Control::Reseek(starts) => consumer.seek(&starts)?,
                    Control::Committed(positions) => consumer.commit_hint(&positions),
                }
            }
        }
        unchecked += 1;
        // While messages flow, ask without waiting (no clock reads in the client).
        let polled = consumer.poll(if polled_nothing { IDLE_POLL } else { Duration::ZERO });
        // A rebalance or seek (inside poll or just above) starts a new generation: what was
        // read before it will be read again from the table's positions.
        let generation = consumer.generation();
        if generation != batch.generation {
            batch = RawBatch::with_capacity(generation, batch_rows, room);
            // New positions may bring input: idleness counts from here.
            activity.touch();
            if !consumer.assigned().is_empty() {
                activity.assigned.store(true, Ordering::Relaxed);
            }
        }
        // The end of a run of messages: idleness counts from here.
        if polled.is_none() && !polled_nothing {
            activity.touch();
        }
        polled_nothing = polled.is_none();
        match polled {
            Some(Ok(m)) => {
                read += 1;
                if read.is_multiple_of(256) {
                    activity.touch();
                }
                batch.push(m.partition(), m.offset(), m.payload().unwrap_or_default());
            }
            // librdkafka reconnects by itself; say so at most every 5 s.
            Some(Err(e)) if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) => {
                tracing::warn!(error = %e, "kafka consumer error (retrying)");
                last_error_log = Some(Instant::now());
            }
            Some(Err(_)) | None => {}
        }
        let full = batch.len() >= batch_rows || batch.bytes() >= BATCH_BYTES;
        // Reading the clock per message costs more than copying some; look every 256.
        let look = polled_nothing || batch.len().is_multiple_of(256);
        let due = look && !batch.is_empty() && batch.since.elapsed() >= BATCH_AGE;
        if full || due {
            room = room.max(batch.bytes()).min(BATCH_BYTES);
            let next = RawBatch::with_capacity(batch.generation, batch_rows, room);
            if batches.send(std::mem::replace(&mut batch, next)).is_err() {
                // The parse thread is gone: the writer stopped, and says why.
                return Ok(ReaderOutcome { read });
            }
        }
    }
    if !batch.is_empty() {
        let _ = batches.send(batch);
    }
    Ok(ReaderOutcome { read })
}
