//! `txpipe ingest` (Job 1): Kafka → Delta table `transactions_clean`, exactly once; rejected
//! messages → `transactions_quarantine` with their reason.
//!
//! In: the topic's messages, the schema, the two tables. Out: Delta commits, each holding the
//! data and, per Kafka partition, the last offset it covers (`txn` actions), and an
//! [`IngestReport`].
//!
//! Three stages: a reader thread takes messages from the consumer, many at a time, into batches
//! (`reader.rs`), a parse thread turns them into Arrow chunks (`parse.rs`), and the writer task
//! buffers chunks and commits them on max rows, max bytes or max latency (`writer.rs`).
//! Positions live only in the tables: at every assignment the reader starts each partition
//! after the clean table's last offset, and the writer commits a partition only if the table
//! holds exactly the offset its buffer follows on from (no overlap, no gap); otherwise it drops
//! the buffer and the reader moves back to the table's positions. Before partitions are taken
//! away, the writer commits what it read of them, so a rebalance reads nothing again.

mod compact;
mod hooks;
mod lag;
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
use txpipe_connectors::kafka::{KafkaConfig, MissingOffsets, Positioning, StartAt};
use txpipe_connectors::retry::Backoff;
use txpipe_core::Error as ConfigError;
use txpipe_core::schema::{FieldType, Schema};
use txpipe_core::units::{parse_duration_us, parse_time_us};

use crate::{Result, Shutdown};

pub use hooks::{Gate, Hooks, Outage};
pub use parse::Limits;

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
    /// A stored position whose next offsets the broker deleted (retention) before they were
    /// ingested: `fail` (stop with an error naming them) or `skip` (go on from the earliest
    /// offset held, with a warning and the count in `txpipe_ingest_offsets_skipped_total`).
    pub missing_offsets: String,
    /// How long a revocation waits for the commit of what was read of the partitions taken away
    /// (`0s`: no commit, those rows are read again by the next owner).
    pub revoke_commit_timeout: String,
    /// Event times before this (RFC 3339) are quarantined as `time_out_of_range`.
    pub earliest_event_time: String,
    /// Event times more than this far ahead of the ingest clock are quarantined as
    /// `time_out_of_range`.
    pub max_event_time_ahead: String,
    /// Message values over this many bytes are quarantined as `too_large` (their first KiB
    /// kept); no more than that is copied out of the client.
    pub max_message_bytes: usize,
    /// Write a Delta checkpoint every this many commits.
    pub checkpoint_interval: u32,
    /// Rewrite the tables' small files into larger ones this often, beside ingest (`0s`: never;
    /// then run `txpipe optimize` on a schedule).
    pub compact_interval: String,
    /// The size (bytes) compaction writes files of; smaller files are rewritten.
    pub compact_target_file_size: u64,
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
            flush_latency: "250ms".into(),
            start: "earliest".into(),
            missing_offsets: "fail".into(),
            revoke_commit_timeout: "10s".into(),
            earliest_event_time: "2000-01-01T00:00:00Z".into(),
            max_event_time_ahead: "1d".into(),
            max_message_bytes: 1 << 20,
            checkpoint_interval: 100,
            compact_interval: "10m".into(),
            compact_target_file_size: 128 << 20,
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
    pub positioning: Positioning,
    /// None: revocations do not wait for a commit.
    pub revoke_wait: Option<Duration>,
    pub limits: parse::Limits,
    pub checkpoint_interval: u32,
    /// None: no compaction beside ingest.
    pub compact_interval: Option<Duration>,
    pub compact_target_file_size: u64,
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
        let missing = match self.missing_offsets.as_str() {
            "fail" => MissingOffsets::Fail,
            "skip" => MissingOffsets::Skip,
            other => return Err(ConfigError::config("ingest.missing_offsets", other, "fail or skip")),
        };
        // A duration where zero means "off".
        let optional = |key: &str, text: &str, off: &str| {
            parse_duration_us(text).map(|us| (us > 0).then(|| Duration::from_micros(us as u64))).ok_or_else(
                || ConfigError::config(key, text, format!("a duration such as 10s or 5m (0s: {off})")),
            )
        };
        let revoke_wait = optional(
            "ingest.revoke_commit_timeout",
            &self.revoke_commit_timeout,
            "no commit before a revocation",
        )?;
        let earliest_us = parse_time_us(&self.earliest_event_time).ok_or_else(|| {
            ConfigError::config(
                "ingest.earliest_event_time",
                &self.earliest_event_time,
                "an RFC 3339 time such as 2000-01-01T00:00:00Z",
            )
        })?;
        let ahead_us = parse_duration_us(&self.max_event_time_ahead).ok_or_else(|| {
            ConfigError::config(
                "ingest.max_event_time_ahead",
                &self.max_event_time_ahead,
                "a duration such as 1d or 6h",
            )
        })?;
        let compact_interval =
            optional("ingest.compact_interval", &self.compact_interval, "no compaction beside ingest")?;
        if self.compact_target_file_size < 1 << 20 {
            return Err(ConfigError::config(
                "ingest.compact_target_file_size",
                self.compact_target_file_size,
                "at least 1048576 bytes",
            ));
        }
        if !(parse::TOO_LARGE_HEAD..=1 << 30).contains(&self.max_message_bytes) {
            return Err(ConfigError::config(
                "ingest.max_message_bytes",
                self.max_message_bytes,
                "a number of bytes from 1024 to 1073741824",
            ));
        }
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
            positioning: Positioning { start, missing },
            revoke_wait,
            limits: parse::Limits { earliest_us, ahead_us, max_message_bytes: self.max_message_bytes },
            checkpoint_interval: self.checkpoint_interval,
            compact_interval,
            compact_target_file_size: self.compact_target_file_size,
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
    /// Points where tests hold ingest to force an interleaving; none by default.
    pub hooks: Hooks,
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
    /// Messages dropped before commit (positions moved: another writer, a partition taken away
    /// without its commit) and read again.
    pub discarded: u64,
    /// Offsets passed over because retention deleted them before they were ingested
    /// (`missing_offsets = "skip"`).
    pub skipped_offsets: u64,
    /// Commits of the clean table.
    pub commits: u64,
    /// Commits given up because another writer had moved the positions of their partitions
    /// (the rows are read again from the new positions).
    pub conflicts: u64,
    /// Commits (of either table) that found their version taken by another writer and landed
    /// as a later one.
    pub commit_races: u64,
    /// Time to commit a buffer (write the files' tails, check the positions, commit both
    /// tables), in ms: median, 99th percentile, longest (None: no commit).
    pub commit_ms_p50: Option<f64>,
    pub commit_ms_p99: Option<f64>,
    pub commit_ms_max: Option<f64>,
    pub clean_version: Option<u64>,
    pub quarantine_version: Option<u64>,
    /// Stopped as asked while the table's storage was unreachable, with messages not committed
    /// (read again at the next start).
    pub stopped_in_outage: bool,
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

/// Opens (or creates) both tables, retrying storage failures (not once a stop is asked).
async fn open_tables(job: &IngestJob, shutdown: &Shutdown) -> Result<(Table, Table)> {
    let prefix = app_prefix(&job.kafka.topic);
    let interval = job.settings.checkpoint_interval;
    let backoff = Backoff::default();
    let go = || !shutdown.is_triggered();
    let clean = backoff
        .retry_while("opening the clean table", DeltaError::retryable, go, || {
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
        .retry_while("opening the quarantine table", DeltaError::retryable, go, || {
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
    let (clean, quarantine) = open_tables(&job, &shutdown).await?;
    tracing::info!(
        topic = %job.kafka.topic,
        group = %job.kafka.group_id,
        clean = %job.tables.clean,
        quarantine = %job.tables.quarantine,
        version = ?clean.version(),
        "ingest starting"
    );
    // The reader's own handle on the clean table answers "where does partition p start?".
    let (positions_table, _) = open_tables(&job, &shutdown).await?;
    let stop = Arc::new(AtomicBool::new(false));
    // Dropped with this future (a task aborted, a select that went the other way), the run
    // still stops its threads: the reader leaves the group instead of holding partitions.
    let _stop_on_drop = StopOnDrop(stop.clone());
    let held = Arc::new(lag::Held::default());
    // Room for the chunks that arrive while a commit runs.
    let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel(4);
    let (control_tx, control_rx) = std::sync::mpsc::channel();
    let reader = reader::spawn(reader::ReaderSetup {
        kafka: job.kafka.clone(),
        schema: job.schema.clone(),
        positioning: job.settings.positioning,
        limits: job.settings.limits,
        positions: positions_table,
        runtime: tokio::runtime::Handle::current(),
        chunks: chunks_tx,
        control: control_rx,
        stop: stop.clone(),
        flush_rows: job.settings.flush_rows,
        revoke_wait: job.settings.revoke_wait,
        hooks: job.hooks.clone(),
        held: held.clone(),
    })?;
    let mut writer = writer::Writer::new(
        clean,
        quarantine,
        job.settings.clone(),
        job.kafka.topic.clone(),
        control_tx,
        job.hooks.clone(),
        shutdown.clone(),
    )
    .showing_lag(held.clone());
    let lag_stop = Shutdown::new();
    let lag_watch = lag::spawn(&job.kafka, held, lag_stop.clone(), stop.clone());
    let compactor = match job.settings.compact_interval {
        Some(every) => {
            Some(compact::Compactor::spawn(job.tables.clone(), every, job.settings.compact_target_file_size)?)
        }
        None => None,
    };
    let outcome = writer.run(chunks_rx, &shutdown, &stop, reader.activity()).await;
    stop.store(true, Ordering::SeqCst);
    if let Some(c) = compactor {
        let _ = tokio::task::spawn_blocking(move || c.stop()).await;
    }
    let reader_outcome = reader.join();
    lag_stop.trigger();
    if let Some(w) = lag_watch {
        let _ = w.await;
    }
    let mut report = writer.report();
    if let Ok(r) = &reader_outcome {
        report.read = r.read;
        report.skipped_offsets = r.skipped;
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    outcome?;
    reader_outcome?;
    tracing::info!(?report, "ingest stopped");
    Ok(report)
}

/// Sets the reader's stop flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Kafka partition → last offset, for logs and commit metadata.
pub(crate) type Positions = BTreeMap<i32, i64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_key_and_the_expected_form() {
        let defaults = IngestConfig::default().validate().unwrap();
        assert_eq!(defaults.positioning.missing, MissingOffsets::Fail);
        assert_eq!(defaults.revoke_wait, Some(Duration::from_secs(10)));
        assert_eq!(defaults.limits.earliest_us, 946_684_800_000_000);
        assert_eq!(defaults.limits.ahead_us, 86_400_000_000);
        let off = IngestConfig {
            revoke_commit_timeout: "0s".into(),
            compact_interval: "0".into(),
            ..Default::default()
        };
        let off = off.validate().unwrap();
        assert_eq!((off.revoke_wait, off.compact_interval), (None, None));
        let bad = |edit: fn(&mut IngestConfig)| {
            let mut c = IngestConfig::default();
            edit(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(
            bad(|c| c.missing_offsets = "ignore".into())
                .contains("`ingest.missing_offsets` = \"ignore\": expected fail or skip")
        );
        assert!(bad(|c| c.revoke_commit_timeout = "soon".into()).contains("ingest.revoke_commit_timeout"));
        assert!(bad(|c| c.earliest_event_time = "2000".into()).contains("RFC 3339"));
        assert!(bad(|c| c.max_event_time_ahead = "-1d".into()).contains("ingest.max_event_time_ahead"));
        assert!(bad(|c| c.max_message_bytes = 10).contains("from 1024"));
        assert!(bad(|c| c.compact_target_file_size = 1).contains("ingest.compact_target_file_size"));
        assert!(bad(|c| c.flush_latency = "0s".into()).contains("positive duration"));
    }
}
