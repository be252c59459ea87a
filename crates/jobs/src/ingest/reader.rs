//! The reader stage of ingest: one thread that polls the consumer, parses each message against
//! the schema and builds Arrow chunks of clean and quarantined rows.
//!
//! In: Kafka messages; control messages from the writer (seek back to the table's positions,
//! committed positions as a group-offset hint). Out: [`Chunk`]s tagged with the consumer's
//! generation, so that the writer can drop chunks built before a rebalance or a seek.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::Message;
use txpipe_connectors::delta::arrow::array::RecordBatch;
use txpipe_connectors::delta::{CleanRows, DeltaError, QuarantineRows, Table};
use txpipe_connectors::kafka::{Consumer, KafkaConfig, OffsetSource, StartAt};
use txpipe_connectors::retry::Backoff;
use txpipe_core::event::EventParser;
use txpipe_core::schema::Schema;

use crate::{JobError, Result};

/// Rows per chunk handed to the writer (fewer when the flush size is smaller).
const CHUNK_ROWS: usize = 16_384;
/// Age at which a partial chunk is handed over anyway.
const CHUNK_AGE: Duration = Duration::from_millis(100);
/// How long one poll waits when nothing came last time.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// Messages between two looks at the control channel and the consumer's state.
const HOUSEKEEPING_EVERY: u32 = 256;

/// Parsed messages of one consumer generation.
pub(super) struct Chunk {
    pub generation: u64,
    pub clean: RecordBatch,
    pub quarantine: RecordBatch,
    /// Per partition, the first and last offset in the chunk.
    pub first: BTreeMap<i32, i64>,
    pub last: BTreeMap<i32, i64>,
    pub messages: u64,
    pub bytes: u64,
    /// When the first message of the chunk was read.
    pub since: Instant,
}

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
    activity: Arc<Activity>,
}

impl ReaderHandle {
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    pub fn join(self) -> Result<ReaderOutcome> {
        self.thread.join().map_err(|_| JobError::Internal("the ingest reader thread panicked".into()))?
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

struct ChunkBuilder {
    generation: u64,
    clean: CleanRows,
    quarantine: QuarantineRows,
    first: BTreeMap<i32, i64>,
    last: BTreeMap<i32, i64>,
    messages: u64,
    bytes: u64,
    since: Instant,
}

impl ChunkBuilder {
    fn new(schema: &Schema, generation: u64) -> ChunkBuilder {
        ChunkBuilder {
            generation,
            clean: CleanRows::new(schema),
            quarantine: QuarantineRows::default(),
            first: BTreeMap::new(),
            last: BTreeMap::new(),
            messages: 0,
            bytes: 0,
            since: Instant::now(),
        }
    }

    fn push(&mut self, parser: &EventParser, topic: &str, partition: i32, offset: i64, payload: &[u8]) {
        if self.messages == 0 {
            self.since = Instant::now();
        }
        self.first.entry(partition).or_insert(offset);
        self.last.insert(partition, offset);
        let mut values = Vec::with_capacity(parser.schema().fields().len());
        match parser.parse(payload, &mut values) {
            Ok(()) => self.clean.push(&values, partition, offset),
            Err(reason) => self.quarantine.push(payload, &reason.to_string(), topic, partition, offset),
        }
        self.messages += 1;
        self.bytes += payload.len() as u64;
    }

    fn finish(&mut self, schema: &Schema) -> Result<Chunk> {
        let now = chrono::Utc::now().timestamp_micros();
        let clean =
            self.clean.finish(now).map_err(|e| JobError::Internal(format!("building a clean batch: {e}")))?;
        let quarantine = self
            .quarantine
            .finish(now)
            .map_err(|e| JobError::Internal(format!("building a quarantine batch: {e}")))?;
        let done = std::mem::replace(self, ChunkBuilder::new(schema, self.generation));
        Ok(Chunk {
            generation: done.generation,
            clean,
            quarantine,
            first: done.first,
            last: done.last,
            messages: done.messages,
            bytes: done.bytes,
            since: done.since,
        })
    }
}

/// Subscribes and starts the reader thread.
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
    let thread_activity = activity.clone();
    let thread = std::thread::Builder::new()
        .name("ingest-reader".into())
        .spawn(move || {
            let chunk_rows = CHUNK_ROWS.min(setup.flush_rows);
            let io = (setup.chunks, setup.control, setup.stop);
            read_loop(consumer, setup.kafka.topic, setup.schema, io, chunk_rows, &thread_activity)
        })
        .map_err(|e| JobError::Internal(format!("starting the reader thread: {e}")))?;
    Ok(ReaderHandle { thread, activity })
}

/// Chunks out, control in, and the stop flag.
type ReaderIo = (tokio::sync::mpsc::Sender<Chunk>, Receiver<Control>, Arc<AtomicBool>);

fn read_loop(
    consumer: Consumer,
    topic: String,
    schema: Schema,
    (chunks, control, stop): ReaderIo,
    chunk_rows: usize,
    activity: &Activity,
) -> Result<ReaderOutcome> {
    let parser = EventParser::new(schema.clone());
    let mut chunk = ChunkBuilder::new(&schema, consumer.generation());
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
        // built before it will be read again from the table's positions.
        let generation = consumer.generation();
        if generation != chunk.generation {
            chunk = ChunkBuilder::new(&schema, generation);
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
                chunk.push(&parser, &topic, m.partition(), m.offset(), m.payload().unwrap_or_default());
            }
            // librdkafka reconnects by itself; say so at most every 5 s.
            Some(Err(e)) if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) => {
                tracing::warn!(error = %e, "kafka consumer error (retrying)");
                last_error_log = Some(Instant::now());
            }
            Some(Err(_)) | None => {}
        }
        let full = chunk.messages as usize >= chunk_rows;
        // Reading the clock per message costs more than parsing some; look every 256.
        let look = polled_nothing || chunk.messages.is_multiple_of(256);
        let due = look && chunk.messages > 0 && chunk.since.elapsed() >= CHUNK_AGE;
        if (full || due) && chunks.blocking_send(chunk.finish(&schema)?).is_err() {
            // The writer is gone: it stopped, and says why.
            return Ok(ReaderOutcome { read });
        }
    }
    if chunk.messages > 0 {
        let _ = chunks.blocking_send(chunk.finish(&schema)?);
    }
    Ok(ReaderOutcome { read })
}
