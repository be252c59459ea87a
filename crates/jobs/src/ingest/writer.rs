//! The writer stage of ingest: buffers chunks and commits them to the two tables.
//!
//! In: [`Chunk`]s from the reader. Out: commits. Clean rows are encoded into Parquet and
//! uploaded as chunks arrive, so the buffer holds compressed files rather than Arrow arrays;
//! the commit makes them visible. A commit happens on max rows, max bytes, max latency,
//! shutdown or idle exit. Before committing, the clean table is reloaded: if it
//! already holds a position at or past the first buffered offset of a partition (another
//! writer, or a commit whose answer was lost), the buffer is dropped and the reader seeks back
//! to the table's positions. Quarantine rows at or below the quarantine table's own position
//! are already there (a crash between the two commits) and are skipped. The quarantine commit
//! comes first, so that the clean table's positions never run ahead of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use txpipe_connectors::delta::arrow::array::{
    Array, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use txpipe_connectors::delta::arrow::compute::filter_record_batch;
use txpipe_connectors::delta::{Add, DeltaError, Table, TableWriter};
use txpipe_connectors::kafka::StartAt;
use txpipe_connectors::retry::Backoff;

use super::dedup::IdSet;
use super::parse::Chunk;
use super::reader::{Activity, Control};
use super::{IngestReport, IngestSettings, Positions};
use crate::{JobError, Result, Shutdown};

#[derive(Default)]
struct Buffer {
    generation: u64,
    /// Clean rows, being written as data files.
    clean: Option<TableWriter>,
    /// The finished data files, kept while their commit is retried.
    files: Option<Vec<Add>>,
    clean_rows: usize,
    quarantine: Vec<RecordBatch>,
    /// Ids in this buffer.
    ids: IdSet,
    first: Positions,
    last: Positions,
    rows: usize,
    bytes: u64,
    messages: u64,
    duplicates: u64,
    since: Option<Instant>,
}

impl Buffer {
    fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Takes in a chunk's positions and quarantine rows; returns its clean rows, deduplicated.
    fn add(&mut self, chunk: Chunk, id_column: usize) -> Result<RecordBatch> {
        self.since.get_or_insert(chunk.since);
        for (&p, &o) in &chunk.first {
            self.first.entry(p).or_insert(o);
        }
        self.last.extend(chunk.last);
        let clean = self.dedup(chunk.clean, id_column)?;
        self.rows += clean.num_rows() + chunk.quarantine.num_rows();
        self.clean_rows += clean.num_rows();
        self.quarantine.push(chunk.quarantine);
        self.bytes += chunk.bytes;
        self.messages += chunk.messages;
        Ok(clean)
    }

    /// Whether a failed commit can be tried again: the clean rows are still in a writer or in
    /// finished files (or there are none).
    fn can_retry(&self) -> bool {
        self.files.is_some() || self.clean.is_some() || self.clean_rows == 0
    }

    /// Keeps the first row of each transaction id in the buffer.
    fn dedup(&mut self, batch: RecordBatch, id_column: usize) -> Result<RecordBatch> {
        let ids = batch
            .column(id_column)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| JobError::Internal("the id column is not a string column".into()))?;
        let keep = self.ids.insert_column(ids);
        let dropped = keep.iter().filter(|k| !**k).count();
        if dropped == 0 {
            return Ok(batch);
        }
        self.duplicates += dropped as u64;
        filter_record_batch(&batch, &BooleanArray::from(keep))
            .map_err(|e| JobError::Internal(format!("dropping duplicate ids: {e}")))
    }
}

pub(super) struct Writer {
    clean: Table,
    quarantine: Table,
    settings: IngestSettings,
    topic: String,
    control: Sender<Control>,
    buffer: Buffer,
    /// Chunks of an older generation than this are stale.
    floor: u64,
    report: IngestReport,
    id_column: usize,
    /// The clean table's version after this writer's last commit: while the table is still
    /// there, no other writer has committed since, and the positions need no second look.
    own_version: Option<u64>,
}

impl Writer {
    pub fn new(
        clean: Table,
        quarantine: Table,
        settings: IngestSettings,
        topic: String,
        control: Sender<Control>,
        id_column: usize,
    ) -> Writer {
        let report = IngestReport {
            clean_version: clean.version(),
            quarantine_version: quarantine.version(),
            ..IngestReport::default()
        };
        Writer {
            clean,
            quarantine,
            settings,
            topic,
            control,
            buffer: Buffer::default(),
            floor: 0,
            report,
            id_column,
            own_version: None,
        }
    }

    pub fn report(&self) -> IngestReport {
        self.report.clone()
    }

    /// Receives and commits until shutdown, idle exit, or the reader stops.
    pub async fn run(
        &mut self,
        mut chunks: Receiver<Chunk>,
        shutdown: &Shutdown,
        stop_reader: &AtomicBool,
        activity: Arc<Activity>,
    ) -> Result<()> {
        let mut stats = tokio::time::interval(self.settings.stats_interval);
        stats.tick().await;
        let mut last_stats = (Instant::now(), 0u64);
        loop {
            let deadline = self.buffer.since.map(|s| s + self.settings.flush_latency);
            let idle_check = self.settings.exit_when_idle.map(|_| Duration::from_millis(100));
            tokio::select! {
                chunk = chunks.recv() => match chunk {
                    Some(chunk) => {
                        self.accept(chunk).await?;
                        if self.buffer.rows >= self.settings.flush_rows || self.buffer.bytes >= self.settings.flush_bytes {
                            self.flush().await?;
                        }
                    }
                    None => break,
                },
                _ = sleep_until(deadline), if deadline.is_some() => self.flush().await?,
                _ = stats.tick() => {
                    let (at, written) = last_stats;
                    let rate = (self.report.written - written) as f64 / at.elapsed().as_secs_f64().max(1e-9);
                    metrics::gauge!("txpipe_ingest_consumer_lag").set(activity.lag() as f64);
                    tracing::info!(
                        lag = activity.lag(),
                        written = self.report.written,
                        quarantined = self.report.quarantined,
                        duplicates = self.report.duplicates,
                        discarded = self.report.discarded,
                        commits = self.report.commits,
                        version = ?self.report.clean_version,
                        rows_per_s = rate as u64,
                        "ingest progress"
                    );
                    last_stats = (Instant::now(), self.report.written);
                }
                _ = tokio::time::sleep(idle_check.unwrap_or(Duration::MAX)), if idle_check.is_some() => {
                    // Before the first assignment the group may still be waiting for dead
                    // members to time out: allow a minute more.
                    let limit = self.settings.exit_when_idle.map(|idle| {
                        if activity.ever_assigned() { idle } else { idle + Duration::from_secs(60) }
                    });
                    if let Some(idle) = limit
                        && activity.idle() >= idle
                        && self.buffer.is_empty()
                    {
                        tracing::info!(idle_s = idle.as_secs_f64(), "no input; stopping");
                        break;
                    }
                }
                _ = shutdown.wait() => break,
            }
        }
        // Let the reader hand over what it holds, then commit everything.
        stop_reader.store(true, Ordering::SeqCst);
        while let Some(chunk) = chunks.recv().await {
            self.accept(chunk).await?;
        }
        self.flush().await
    }

    async fn accept(&mut self, chunk: Chunk) -> Result<()> {
        if chunk.generation < self.floor.max(self.buffer.generation) {
            // Built before a seek or rebalance that this buffer already follows.
            self.report.discarded += chunk.messages;
            return Ok(());
        }
        if chunk.generation > self.buffer.generation && !self.buffer.is_empty() {
            // A rebalance: the reader restarted its partitions from the table's positions.
            self.discard("rebalance");
        }
        self.buffer.generation = chunk.generation;
        let clean = self.buffer.add(chunk, self.id_column)?;
        if clean.num_rows() == 0 {
            return Ok(());
        }
        if self.buffer.clean.is_none() {
            self.buffer.clean = Some(self.clean.writer()?);
        }
        let written = match self.buffer.clean.as_mut() {
            Some(w) => w.write(&clean).await,
            None => Ok(()),
        };
        if let Err(e) = written {
            // The files of this buffer are lost; its rows will be read again.
            tracing::warn!(error = %e, "writing data files failed");
            return self.reseek().await;
        }
        Ok(())
    }

    fn discard(&mut self, why: &str) {
        let dropped = std::mem::take(&mut self.buffer);
        tracing::info!(
            messages = dropped.messages,
            why,
            "dropping uncommitted rows; they will be read again"
        );
        self.report.discarded += dropped.messages;
        self.buffer.generation = dropped.generation;
    }

    /// Commits the buffer (quarantine first, then clean), retrying storage failures.
    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let backoff = Backoff { attempts: 0, ..Backoff::default() };
        let mut attempt = 1;
        loop {
            match self.try_flush().await {
                Ok(()) => return Ok(()),
                // Retry while the finished files are kept (or nothing was finished yet).
                Err(e) if e.retryable() && self.buffer.can_retry() => {
                    let wait = backoff.delay(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "commit failed; keeping the rows and retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) if e.retryable() => {
                    tracing::warn!(error = %e, "finishing data files failed; reading the rows again");
                    return self.reseek().await;
                }
                Err(DeltaError::Conflict { location }) => {
                    tracing::warn!(%location, "another writer committed these partitions");
                    return self.reseek().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn try_flush(&mut self) -> std::result::Result<(), DeltaError> {
        let started = Instant::now();
        let partitions: Vec<i32> = self.buffer.first.keys().copied().collect();
        self.clean.refresh().await?;
        // Another writer may have committed these partitions since this one last did; if the
        // version is still the one this writer committed, nobody has. (Delta's own check at
        // commit time catches a commit that lands between this look and ours.)
        let stored = if self.own_version.is_some() && self.clean.version() == self.own_version {
            HashMap::new()
        } else {
            self.clean.positions(&partitions).await?
        };
        if let Some((p, v)) =
            self.buffer.first.iter().find_map(|(p, &first)| {
                stored.get(p).copied().flatten().filter(|&v| v >= first).map(|v| (*p, v))
            })
        {
            tracing::info!(
                partition = p,
                stored = v,
                first = self.buffer.first[&p],
                "table already holds these offsets"
            );
            return Err(DeltaError::Conflict { location: self.clean.location().to_string() });
        }
        let metadata = self.commit_metadata();
        // Quarantine first, minus rows it already holds.
        let mut bad: Vec<RecordBatch> = Vec::new();
        if self.buffer.quarantine.iter().any(|b| b.num_rows() > 0) {
            self.quarantine.refresh().await?;
            let held = self.quarantine.positions(&partitions).await?;
            for b in &self.buffer.quarantine {
                bad.push(skip_held(b, &held)?);
            }
        }
        let bad_rows: usize = bad.iter().map(RecordBatch::num_rows).sum();
        if bad_rows > 0 {
            let positions: Positions = self.buffer.last.clone();
            self.report.quarantine_version =
                Some(self.quarantine.append(&bad, &positions, metadata.clone()).await?);
        }
        let files = match (self.buffer.files.take(), self.buffer.clean.take()) {
            (Some(files), _) => files,
            (None, Some(writer)) => writer.finish().await?,
            (None, None) => Vec::new(),
        };
        self.buffer.files = Some(files.clone());
        let version = self.clean.commit(files, &self.buffer.last, metadata).await?;
        self.own_version = Some(version);
        let good_rows = self.buffer.clean_rows;
        let latency = started.elapsed();
        let buffered_for = self.buffer.since.map(|s| s.elapsed()).unwrap_or_default();
        tracing::debug!(
            version,
            rows = good_rows,
            quarantined = bad_rows,
            commit_ms = latency.as_millis() as u64,
            "committed"
        );
        metrics::counter!("txpipe_ingest_rows_written_total").increment(good_rows as u64);
        metrics::counter!("txpipe_ingest_rows_quarantined_total").increment(bad_rows as u64);
        metrics::counter!("txpipe_ingest_duplicates_total").increment(self.buffer.duplicates);
        metrics::counter!("txpipe_ingest_commits_total").increment(1);
        metrics::histogram!("txpipe_ingest_commit_seconds").record(latency.as_secs_f64());
        metrics::histogram!("txpipe_ingest_buffer_age_seconds").record(buffered_for.as_secs_f64());
        metrics::gauge!("txpipe_ingest_table_version").set(version as f64);
        self.report.written += good_rows as u64;
        self.report.quarantined += bad_rows as u64;
        self.report.duplicates += self.buffer.duplicates;
        self.report.commits += 1;
        self.report.clean_version = Some(version);
        let committed: HashMap<i32, i64> = self.buffer.last.iter().map(|(&p, &o)| (p, o)).collect();
        let _ = self.control.send(Control::Committed(committed));
        let generation = self.buffer.generation;
        let mut ids = std::mem::take(&mut self.buffer.ids);
        ids.clear();
        self.buffer = Buffer { generation, ids, ..Buffer::default() };
        Ok(())
    }

    /// Drops the buffer and moves the reader back to the clean table's positions.
    async fn reseek(&mut self) -> Result<()> {
        let partitions: Vec<i32> = self.buffer.first.keys().copied().collect();
        self.clean.refresh().await?;
        let stored = self.clean.positions(&partitions).await?;
        let starts: HashMap<i32, StartAt> =
            stored.into_iter().map(|(p, v)| (p, v.map_or(self.settings.start, StartAt::After))).collect();
        tracing::info!(?starts, "moving the reader back to the table's positions");
        self.discard("positions moved");
        // Chunks of the current generation were built from the old positions.
        self.floor = self.buffer.generation + 1;
        self.control
            .send(Control::Reseek(starts))
            .map_err(|_| JobError::Internal("the reader stopped".into()))
    }

    fn commit_metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("txpipe.topic".into(), self.topic.clone().into());
        m.insert(
            "txpipe.offsets".into(),
            serde_json::json!(
                self.buffer
                    .first
                    .iter()
                    .map(|(p, f)| (p.to_string(), [*f, self.buffer.last[p]]))
                    .collect::<BTreeMap<_, _>>()
            ),
        );
        m.insert("txpipe.messages".into(), self.buffer.messages.into());
        m
    }
}

/// Rows of a quarantine batch whose offset is above what the table holds for their partition.
fn skip_held(
    batch: &RecordBatch,
    held: &HashMap<i32, Option<i64>>,
) -> std::result::Result<RecordBatch, DeltaError> {
    if held.values().all(Option::is_none) {
        return Ok(batch.clone());
    }
    let column = |name: &str| batch.column_by_name(name).map(|c| c.as_any());
    let (Some(partitions), Some(offsets)) = (
        column("kafka_partition").and_then(|c| c.downcast_ref::<Int32Array>()),
        column("kafka_offset").and_then(|c| c.downcast_ref::<Int64Array>()),
    ) else {
        return Ok(batch.clone());
    };
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|i| Some(held.get(&partitions.value(i)).copied().flatten().is_none_or(|h| offsets.value(i) > h)))
        .collect();
    Ok(filter_record_batch(batch, &keep).unwrap_or_else(|_| batch.clone()))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
