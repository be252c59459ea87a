//! `txpipe ingest` (Job 1): Kafka → Delta table `transactions_clean`, exactly once; rejected
//! messages → `transactions_quarantine` with their reason.
//!
//! In: the topic's messages, the schema, the two tables. Out: Delta commits, each holding the
//! data and, per Kafka partition, the last offset it covers (`txn` actions), and an
//! [`IngestReport`].
//!
//! Two stages: a reader thread polls the consumer and parses messages into Arrow chunks
//! (`reader.rs`); the writer task buffers chunks and commits them on max rows, max bytes or
//! max latency (`writer.rs`). Positions live only in the tables: at every assignment the
//! reader starts each partition after the clean table's last offset, and the writer commits
//! only if no other writer stored a position at or past its first buffered offset; otherwise it
//! drops the buffer and the reader seeks back to the table's positions.

mod dedup;
mod parse;
mod reader;
mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use txpipe_connectors::delta::{
    DeltaError, EVENT_DATE, Table, TablesConfig, clean_schema, quarantine_schema,
};
use txpipe_connectors::kafka::{KafkaConfig, StartAt};
use txpipe_connectors::retry::Backoff;
use txpipe_core::Error as ConfigError;
use txpipe_core::schema::{FieldType, Schema};
use txpipe_core::units::parse_duration_us;

use crate::{Result, Shutdown};

/// `[ingest]`: when to commit and where to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Commit when this many rows are buffered.
    pub flush_rows: usize,
    /// Commit when this many payload bytes are buffered.
    pub flush_bytes: u64,
    /// Commit at the latest this long after the oldest buffered row arrived (`1s`, `500ms`).
    pub flush_latency: String,
    /// Where a partition with no position in the table starts: `earliest` or `latest`.
    pub start: String,
    /// Write a Delta checkpoint every this many commits.
    pub checkpoint_interval: u32,
    /// Log the counters at this interval.
    pub stats_interval: String,
    /// Stop after this many seconds without input (absent: run until stopped).
    pub exit_when_idle: Option<f64>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            flush_rows: 250_000,
            flush_bytes: 64 << 20,
            flush_latency: "1s".into(),
            start: "earliest".into(),
            checkpoint_interval: 100,
            stats_interval: "10s".into(),
            exit_when_idle: None,
        }
    }
}

/// Validated ingest settings.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub flush_rows: usize,
    pub flush_bytes: u64,
    pub flush_latency: Duration,
    pub start: StartAt,
    pub checkpoint_interval: u32,
    pub stats_interval: Duration,
    pub exit_when_idle: Option<Duration>,
}

impl IngestConfig {
    pub fn validate(&self) -> std::result::Result<IngestSettings, ConfigError> {
        let duration = |key: &str, text: &str| {
            parse_duration_us(text)
                .filter(|&us| us > 0)
                .map(|us| Duration::from_micros(us as u64))
                .ok_or_else(|| ConfigError::config(key, text, "a positive duration such as 1s or 500ms"))
        };
        if self.flush_rows == 0 {
            return Err(ConfigError::config("ingest.flush_rows", 0, "at least 1"));
        }
        if self.flush_bytes == 0 {
            return Err(ConfigError::config("ingest.flush_bytes", 0, "at least 1"));
        }
        let start = match self.start.as_str() {
            "earliest" => StartAt::Earliest,
            "latest" => StartAt::Latest,
            other => return Err(ConfigError::config("ingest.start", other, "earliest or latest")),
        };
        if self.checkpoint_interval == 0 {
            return Err(ConfigError::config("ingest.checkpoint_interval", 0, "at least 1"));
        }
        let exit_when_idle = match self.exit_when_idle {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(ConfigError::config("ingest.exit_when_idle", s, "a positive number of seconds"));
            }
        };
        Ok(IngestSettings {
            flush_rows: self.flush_rows,
            flush_bytes: self.flush_bytes,
            flush_latency: duration("ingest.flush_latency", &self.flush_latency)?,
            start,
            checkpoint_interval: self.checkpoint_interval,
            stats_interval: duration("ingest.stats_interval", &self.stats_interval)?,
            exit_when_idle,
        })
    }
}

/// Everything an ingest run needs.
#[derive(Debug, Clone)]
pub struct IngestJob {
    pub settings: IngestSettings,
    pub kafka: KafkaConfig,
    pub tables: TablesConfig,
    pub schema: Schema,
}

/// What an ingest run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngestReport {
    /// Messages read from Kafka (including ones read again after a rebalance or conflict).
    pub read: u64,
    /// Rows committed to the clean table.
    pub written: u64,
    /// Rows committed to the quarantine table.
    pub quarantined: u64,
    /// Repeated transaction ids inside one commit, written once.
    pub duplicates: u64,
    /// Rows dropped before commit (rebalance or another writer) and read again.
    pub discarded: u64,
    /// Commits of the clean table.
    pub commits: u64,
    pub clean_version: Option<u64>,
    pub quarantine_version: Option<u64>,
    pub elapsed_s: f64,
}

/// The prefix of the `txn` app ids of a topic: `txpipe-ingest:<topic>`; the partition follows.
pub fn app_prefix(topic: &str) -> String {
    format!("txpipe-ingest:{topic}")
}

/// Clean-table columns whose values rarely repeat within a file: the id, numbers with a
/// fraction, times, and Kafka offsets. A dictionary for them costs time and is given up by the
/// writer after its first megabyte anyway.
fn distinct_columns(schema: &Schema) -> Vec<&str> {
    let mut columns: Vec<&str> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            *i == schema.id_index() || matches!(f.kind, FieldType::Double | FieldType::Timestamp)
        })
        .map(|(_, f)| f.name.as_str())
        .collect();
    columns.push("kafka_offset");
    columns
}

/// Opens (or creates) both tables, retrying storage failures.
async fn open_tables(job: &IngestJob) -> Result<(Table, Table)> {
    let prefix = app_prefix(&job.kafka.topic);
    let interval = job.settings.checkpoint_interval;
    let backoff = Backoff::default();
    let clean = backoff
        .retry("opening the clean table", DeltaError::retryable, || {
            Table::open_or_create(
                &job.tables.clean,
                &job.tables.storage_options,
                clean_schema(&job.schema),
                Some(EVENT_DATE),
                &prefix,
                interval,
            )
        })
        .await?
        .with_distinct_columns(&distinct_columns(&job.schema));
    let quarantine = backoff
        .retry("opening the quarantine table", DeltaError::retryable, || {
            Table::open_or_create(
                &job.tables.quarantine,
                &job.tables.storage_options,
                quarantine_schema(),
                None,
                &prefix,
                interval,
            )
        })
        .await?
        .with_distinct_columns(&["raw", "raw_bytes"]);
    Ok((clean, quarantine))
}

/// Runs ingest until `shutdown` (or idle, with `exit_when_idle`); commits what it holds first.
pub async fn run(job: IngestJob, shutdown: Shutdown) -> Result<IngestReport> {
    let started = std::time::Instant::now();
    if txpipe_connectors::kafka::wait_for_broker(&job.kafka, job.kafka.connect_backoff()).await?.is_none() {
        tracing::warn!(topic = %job.kafka.topic, "topic does not exist yet; waiting for it");
    }
    let (clean, quarantine) = open_tables(&job).await?;
    tracing::info!(
        topic = %job.kafka.topic,
        group = %job.kafka.group_id,
        clean = %job.tables.clean,
        quarantine = %job.tables.quarantine,
        version = ?clean.version(),
        "ingest starting"
    );
    // The reader's own handle on the clean table answers "where does partition p start?".
    let (positions_table, _) = open_tables(&job).await?;
    let stop = Arc::new(AtomicBool::new(false));
    // Room for the chunks that arrive while a commit runs.
    let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel(4);
    let (control_tx, control_rx) = std::sync::mpsc::channel();
    let reader = reader::spawn(reader::ReaderSetup {
        kafka: job.kafka.clone(),
        schema: job.schema.clone(),
        start: job.settings.start,
        positions: positions_table,
        runtime: tokio::runtime::Handle::current(),
        chunks: chunks_tx,
        control: control_rx,
        stop: stop.clone(),
        flush_rows: job.settings.flush_rows,
    })?;
    let mut writer = writer::Writer::new(
        clean,
        quarantine,
        job.settings.clone(),
        job.kafka.topic.clone(),
        control_tx,
        job.schema.id_index(),
    );
    let outcome = writer.run(chunks_rx, &shutdown, &stop, reader.activity()).await;
    stop.store(true, Ordering::SeqCst);
    let reader_outcome = reader.join();
    let mut report = writer.report();
    report.read = reader_outcome.as_ref().map(|r| r.read).unwrap_or(0);
    report.elapsed_s = started.elapsed().as_secs_f64();
    outcome?;
    reader_outcome?;
    tracing::info!(?report, "ingest stopped");
    Ok(report)
}

/// Kafka partition → last offset, for logs and commit metadata.
pub(crate) type Positions = BTreeMap<i32, i64>;
