//! The writer stage of ingest: buffers chunks and commits them to the two tables.
//!
//! In: [`Chunk`]s and barriers from the parse stage. Out: commits. Clean rows are encoded into
//! Parquet and uploaded as chunks arrive, so the buffer holds compressed files rather than Arrow
//! arrays; the commit makes them visible. A commit happens on max rows, max bytes, max latency,
//! a barrier (partitions are being taken away), shutdown or idle exit.
//!
//! The rule that keeps every Kafka position exactly once: per partition, a buffer holds one
//! unbroken run of offsets and the *anchor* it follows (the offset the table must hold right
//! before it). A chunk that does not continue the buffer's run, and a commit whose anchors are
//! not what the table holds (an overlap: another writer, or an own commit that landed
//! although its answer was lost; a gap: positions read before a commit that landed later), drop
//! the buffer and move the reader back to the table's positions. Delta's own conflict check on
//! the `txn` actions guards the moment between the look and the commit. Quarantine rows at or
//! below the quarantine table's own position are already there (a crash between the two
//! commits) and are skipped; the quarantine commit comes first, so that the clean table's
//! positions never run ahead of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use txpipe_connectors::delta::arrow::array::{Array, BooleanArray, Int32Array, Int64Array, RecordBatch};
use txpipe_connectors::delta::arrow::compute::filter_record_batch;
use txpipe_connectors::delta::{Add, DeltaError, Table, TableWriter};
use txpipe_connectors::retry::Backoff;

use super::lag::Held;
use super::parse::{Chunk, Span, Staged};
use super::reader::{Activity, Control};
use super::{Hooks, IngestReport, IngestSettings, Positions};
use crate::telemetry::{Beat, names};
use crate::{Result, Shutdown};

/// One partition's offsets in a buffer: `first..=last`, unbroken, following `anchor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    anchor: Option<i64>,
    first: i64,
    last: i64,
}

/// What this writer knows of the positions the clean table holds.
///
/// Invariant: for every partition in `stored`, the table at `version` holds that value (None:
/// nothing). When the loaded table is at another version, everything is read again; after this
/// writer's own commit, the partitions it committed hold their new values, and the others stay
/// known only if no other commit came in between.
#[derive(Debug, Default)]
struct Ledger {
    version: Option<u64>,
    stored: HashMap<i32, Option<i64>>,
}

impl Ledger {
    /// What the table (loaded at its newest version) holds for `partitions`.
    async fn read(
        &mut self,
        table: &Table,
        partitions: &[i32],
    ) -> std::result::Result<HashMap<i32, Option<i64>>, DeltaError> {
        if table.version() != self.version {
            self.stored.clear();
            self.version = table.version();
        }
        let unknown: Vec<i32> = partitions.iter().copied().filter(|p| !self.stored.contains_key(p)).collect();
        if !unknown.is_empty() {
            self.stored.extend(table.positions(&unknown).await?);
        }
        Ok(partitions.iter().map(|p| (*p, self.stored.get(p).copied().flatten())).collect())
    }

    /// This writer committed `positions` as `version`, having checked them at `read_version`.
    fn committed(&mut self, read_version: Option<u64>, version: u64, positions: &Positions) {
        if read_version.map(|v| v + 1) != Some(version) {
            self.stored.clear();
        }
        self.version = Some(version);
        self.stored.extend(positions.iter().map(|(&p, &o)| (p, Some(o))));
    }
}

#[derive(Default)]
struct Buffer {
    /// Clean rows, being written as data files.
    clean: Option<TableWriter>,
    /// The finished data files, kept while their commit is retried.
    files: Option<Vec<Add>>,
    clean_rows: usize,
    quarantine: Vec<RecordBatch>,
    runs: BTreeMap<i32, Run>,
    rows: usize,
    bytes: u64,
    messages: u64,
    since: Option<Instant>,
}

impl Buffer {
    fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// The first span that does not continue this buffer's run of its partition.
    fn break_in<'a>(&self, spans: &'a [Span]) -> Option<(&'a Span, i64)> {
        spans.iter().find_map(|s| {
            self.runs.get(&s.partition).filter(|run| s.anchor != Some(run.last)).map(|run| (s, run.last))
        })
    }

    /// Takes in a chunk (which continues the buffer); returns its clean rows.
    fn add(&mut self, chunk: Chunk) -> RecordBatch {
        self.since.get_or_insert(chunk.since);
        for s in &chunk.spans {
            self.runs.entry(s.partition).and_modify(|run| run.last = s.last).or_insert(Run {
                anchor: s.anchor,
                first: s.first,
                last: s.last,
            });
        }
        self.rows += chunk.clean.num_rows() + chunk.quarantine.num_rows();
        self.clean_rows += chunk.clean.num_rows();
        self.quarantine.push(chunk.quarantine);
        self.bytes += chunk.bytes;
        self.messages += chunk.messages;
        chunk.clean
    }

    /// The last offset per partition.
    fn last(&self) -> Positions {
        self.runs.iter().map(|(&p, run)| (p, run.last)).collect()
    }

    /// Whether a failed commit can be tried again: the clean rows are still in a writer or in
    /// finished files (or there are none).
    fn can_retry(&self) -> bool {
        self.files.is_some() || self.clean.is_some() || self.clean_rows == 0
    }
}

pub(super) struct Writer {
    clean: Table,
    quarantine: Table,
    settings: IngestSettings,
    topic: String,
    control: Sender<Control>,
    hooks: Hooks,
    buffer: Buffer,
    /// The last reseek asked of the reader: chunks read before it (an older token) are stale.
    token: u64,
    ledger: Ledger,
    report: IngestReport,
    /// A stop asked during a storage outage ends the commit retries (the rows not committed are
    /// read again at the next start: their positions are not in the table).
    shutdown: Shutdown,
    beat: Beat,
    /// What the lag metric counts from: the positions committed.
    held: Arc<Held>,
    /// Each commit's duration (ms), for the report's percentiles.
    commit_ms: Vec<f32>,
    /// Races lost by both tables' handles, as last counted.
    races: u64,
}

impl Writer {
    pub fn new(
        clean: Table,
        quarantine: Table,
        settings: IngestSettings,
        topic: String,
        control: Sender<Control>,
        hooks: Hooks,
        shutdown: Shutdown,
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
            hooks,
            buffer: Buffer::default(),
            token: 0,
            ledger: Ledger::default(),
            report,
            shutdown,
            beat: Beat::new("ingest-writer"),
            held: Arc::default(),
            commit_ms: Vec::new(),
            races: 0,
        }
    }

    /// Records each commit's positions where the lag metric reads them.
    pub fn showing_lag(mut self, held: Arc<Held>) -> Writer {
        self.held = held;
        self
    }

    pub fn report(&self) -> IngestReport {
        let mut report = self.report.clone();
        let mut ms = self.commit_ms.clone();
        ms.sort_by(f32::total_cmp);
        let at = |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).map(|&v| f64::from(v));
        (report.commit_ms_p50, report.commit_ms_p99, report.commit_ms_max) = (at(0.5), at(0.99), at(1.0));
        report
    }

    /// Receives and commits until shutdown, idle exit, or the reader stops.
    pub async fn run(
        &mut self,
        mut staged: Receiver<Staged>,
        shutdown: &Shutdown,
        stop_reader: &AtomicBool,
        activity: Arc<Activity>,
    ) -> Result<()> {
        let mut stats = tokio::time::interval(self.settings.stats_interval);
        stats.tick().await;
        let mut last_stats = (Instant::now(), 0u64);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.beat.turn();
            metrics::gauge!(names::INGEST_BUFFERED_ROWS).set(self.buffer.rows as f64);
            metrics::gauge!(names::INGEST_BUFFERED_BYTES).set(self.buffer.bytes as f64);
            let deadline = self.buffer.since.map(|s| s + self.settings.flush_latency);
            let idle_check = self.settings.exit_when_idle.map(|_| Duration::from_millis(100));
            tokio::select! {
                item = staged.recv() => match item {
                    Some(item) => self.take(item).await?,
                    None => break,
                },
                _ = sleep_until(deadline), if deadline.is_some() => self.flush().await?,
                _ = heartbeat.tick() => {}
                _ = stats.tick() => {
                    let (at, written) = last_stats;
                    let rate = (self.report.written - written) as f64 / at.elapsed().as_secs_f64().max(1e-9);
                    tracing::info!(
                        lag = activity.lag(),
                        written = self.report.written,
                        quarantined = self.report.quarantined,
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
        while let Some(item) = staged.recv().await {
            self.take(item).await?;
        }
        self.flush().await
    }

    async fn take(&mut self, item: Staged) -> Result<()> {
        match item {
            Staged::Chunk(chunk) => {
                self.accept(chunk).await?;
                if self.buffer.rows >= self.settings.flush_rows
                    || self.buffer.bytes >= self.settings.flush_bytes
                {
                    self.flush().await?;
                }
                Ok(())
            }
            Staged::Barrier(ack) => {
                // Partitions are being taken away: commit what was read of them first.
                let flushed = self.flush().await;
                let _ = ack.send(());
                flushed
            }
        }
    }

    async fn accept(&mut self, chunk: Chunk) -> Result<()> {
        if chunk.token < self.token {
            // Read before the reader moved back to the table's positions.
            self.discarded(chunk.messages);
            return Ok(());
        }
        if let Some((span, last)) = self.buffer.break_in(&chunk.spans) {
            // A partition was revoked and assigned again, or moved, while this buffer held it.
            tracing::info!(
                partition = span.partition,
                buffered_to = last,
                chunk_after = ?span.anchor,
                "input does not follow on from the buffer"
            );
            self.discarded(chunk.messages);
            self.reseek("input does not follow on");
            return Ok(());
        }
        let clean = self.buffer.add(chunk);
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
            self.reseek("writing data files failed");
        }
        Ok(())
    }

    /// Counts messages read and dropped before a commit (they are read again).
    fn discarded(&mut self, messages: u64) {
        self.report.discarded += messages;
        metrics::counter!(names::INGEST_MESSAGES_DISCARDED).increment(messages);
    }

    /// Drops the buffer and moves the reader back to the clean table's positions: chunks read
    /// before that are dropped as they arrive.
    fn reseek(&mut self, why: &str) {
        let dropped = std::mem::take(&mut self.buffer);
        tracing::info!(
            messages = dropped.messages,
            why,
            "dropping uncommitted rows; they will be read again"
        );
        self.discarded(dropped.messages);
        self.token += 1;
        // The reader stops only after the writer: a closed channel means it failed, and says why.
        let _ = self.control.send(Control::Reseek(self.token));
    }

    /// Commits the buffer (quarantine first, then clean), retrying storage failures with
    /// backoff for as long as the storage is away — unless a stop is asked: then the attempt
    /// under way (or one more, right away) is the last, and the rows not committed are left to
    /// the next start, which reads them again from the positions in the table.
    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let backoff = Backoff { attempts: 0, ..Backoff::default() };
        let mut attempt = 1;
        loop {
            match self.try_flush().await {
                Ok(()) => return Ok(()),
                Err(e) if e.retryable() && self.buffer.can_retry() && self.shutdown.is_triggered() => {
                    let dropped = std::mem::take(&mut self.buffer);
                    tracing::warn!(
                        error = %e,
                        messages = dropped.messages,
                        "stopping as asked while the table's storage is unreachable: these messages are not \
                         committed, and the next start reads them again"
                    );
                    self.discarded(dropped.messages);
                    self.report.stopped_in_outage = true;
                    return Ok(());
                }
                // Retry while the finished files are kept (or nothing was finished yet).
                Err(e) if e.retryable() && self.buffer.can_retry() => {
                    let wait = backoff.delay(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "commit failed; keeping the rows and retrying");
                    metrics::counter!(names::INGEST_COMMIT_RETRIES).increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.wait() => {}
                    }
                    // Retrying is the loop turning: the job is alive, its storage is not.
                    self.beat.turn();
                    attempt += 1;
                }
                Err(e) if e.retryable() => {
                    tracing::warn!(error = %e, "finishing data files failed; reading the rows again");
                    self.reseek("finishing data files failed");
                    return Ok(());
                }
                Err(DeltaError::Conflict { location }) => {
                    self.count_races();
                    metrics::counter!(names::INGEST_COMMIT_CONFLICTS).increment(1);
                    self.report.conflicts += 1;
                    tracing::info!(%location, "the table's positions are not where this buffer follows on");
                    self.reseek("positions moved");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn try_flush(&mut self) -> std::result::Result<(), DeltaError> {
        if let Some(e) = self.hooks.storage_outage.as_ref().and_then(|o| o.attempt()) {
            return Err(DeltaError::commit_io(self.clean.location(), e));
        }
        let started = Instant::now();
        let read_version = self.check().await?;
        let quarantined = self.commit_quarantine().await?;
        if let Some(gate) = &self.hooks.before_commit {
            gate.pass().await;
        }
        self.commit_clean(read_version, quarantined, started).await
    }

    /// Every partition of the buffer must follow on from what the clean table holds, exactly:
    /// more is an overlap, less a gap. Returns the version looked at.
    async fn check(&mut self) -> std::result::Result<Option<u64>, DeltaError> {
        self.clean.refresh().await?;
        let partitions: Vec<i32> = self.buffer.runs.keys().copied().collect();
        let stored = self.ledger.read(&self.clean, &partitions).await?;
        for (p, run) in &self.buffer.runs {
            let held = stored.get(p).copied().flatten();
            if held != run.anchor {
                let what = if held > run.anchor { "overlap" } else { "gap" };
                tracing::info!(
                    partition = p,
                    table_holds = ?held,
                    buffer_follows = ?run.anchor,
                    first = run.first,
                    last = run.last,
                    what,
                    "the buffer does not follow on from the table"
                );
                return Err(DeltaError::Conflict { location: self.clean.location().to_string() });
            }
        }
        Ok(self.clean.version())
    }

    /// Commits the quarantined rows the quarantine table does not hold yet; returns their count
    /// per reason code.
    async fn commit_quarantine(&mut self) -> std::result::Result<BTreeMap<String, u64>, DeltaError> {
        if self.buffer.quarantine.iter().all(|b| b.num_rows() == 0) {
            return Ok(BTreeMap::new());
        }
        let partitions: Vec<i32> = self.buffer.runs.keys().copied().collect();
        self.quarantine.refresh().await?;
        let held = self.quarantine.positions(&partitions).await?;
        let mut bad: Vec<RecordBatch> = Vec::with_capacity(self.buffer.quarantine.len());
        for b in &self.buffer.quarantine {
            bad.push(skip_held(b, &held)?);
        }
        let rows: usize = bad.iter().map(RecordBatch::num_rows).sum();
        if rows > 0 {
            let metadata = self.commit_metadata();
            self.report.quarantine_version =
                Some(self.quarantine.append(&bad, &self.buffer.last(), metadata).await?);
        }
        Ok(reasons(&bad))
    }

    async fn commit_clean(
        &mut self,
        read_version: Option<u64>,
        quarantined: BTreeMap<String, u64>,
        started: Instant,
    ) -> std::result::Result<(), DeltaError> {
        let files = match (self.buffer.files.take(), self.buffer.clean.take()) {
            (Some(files), _) => files,
            (None, Some(writer)) => writer.finish().await?,
            (None, None) => Vec::new(),
        };
        self.buffer.files = Some(files.clone());
        let last = self.buffer.last();
        let version = self.clean.commit(files, &last, self.commit_metadata()).await?;
        self.ledger.committed(read_version, version, &last);
        self.held.committed(&last);
        let good_rows = self.buffer.clean_rows;
        let latency = started.elapsed();
        let buffered_for = self.buffer.since.map(|s| s.elapsed()).unwrap_or_default();
        for (reason, n) in &quarantined {
            metrics::counter!(names::INGEST_ROWS_QUARANTINED, "reason" => reason.clone()).increment(*n);
        }
        let quarantined: u64 = quarantined.values().sum();
        tracing::debug!(
            version,
            rows = good_rows,
            quarantined,
            commit_ms = latency.as_millis() as u64,
            "committed"
        );
        metrics::counter!(names::INGEST_ROWS_WRITTEN).increment(good_rows as u64);
        metrics::counter!(names::INGEST_COMMITS).increment(1);
        metrics::histogram!(names::INGEST_COMMIT_DURATION).record(latency.as_secs_f64());
        self.commit_ms.push(latency.as_secs_f32() * 1e3);
        self.count_races();
        metrics::histogram!(names::INGEST_BUFFER_AGE).record(buffered_for.as_secs_f64());
        metrics::gauge!(names::INGEST_TABLE_VERSION).set(version as f64);
        metrics::gauge!(names::INGEST_LAST_COMMIT).set(unix_now());
        self.report.written += good_rows as u64;
        self.report.quarantined += quarantined;
        self.report.commits += 1;
        self.report.clean_version = Some(version);
        let _ = self.control.send(Control::Committed(last.into_iter().collect()));
        self.buffer = Buffer::default();
        Ok(())
    }

    /// Counts the version races both handles lost since the last count.
    fn count_races(&mut self) {
        let races = self.clean.lost_races() + self.quarantine.lost_races();
        metrics::counter!(names::INGEST_COMMIT_RACES).increment(races - self.races);
        self.report.commit_races += races - self.races;
        self.races = races;
    }

    fn commit_metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("txpipe.topic".into(), self.topic.clone().into());
        m.insert(
            "txpipe.offsets".into(),
            serde_json::json!(
                self.buffer
                    .runs
                    .iter()
                    .map(|(p, run)| (p.to_string(), [run.first, run.last]))
                    .collect::<BTreeMap<_, _>>()
            ),
        );
        m.insert("txpipe.messages".into(), self.buffer.messages.into());
        m
    }
}

/// Rows per reason code (the text before the first `:` of the reason) in quarantine batches.
fn reasons(batches: &[RecordBatch]) -> BTreeMap<String, u64> {
    use txpipe_connectors::delta::arrow::array::StringArray;
    let mut out = BTreeMap::new();
    for b in batches {
        let Some(errors) = b.column_by_name("error").and_then(|c| c.as_any().downcast_ref::<StringArray>())
        else {
            *out.entry("unknown".to_string()).or_default() += b.num_rows() as u64;
            continue;
        };
        for e in errors.iter().flatten() {
            let code = e.split(':').next().unwrap_or(e).trim();
            *out.entry(code.to_string()).or_default() += 1;
        }
    }
    out
}

/// Now as Unix seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn span(partition: i32, anchor: Option<i64>, first: i64, last: i64) -> Span {
        Span { partition, anchor, first, last }
    }

    #[test]
    fn a_chunk_must_follow_on_from_the_buffer_in_every_partition() {
        let mut buffer = Buffer::default();
        buffer.runs.insert(0, Run { anchor: Some(9), first: 10, last: 20 });
        buffer.runs.insert(1, Run { anchor: None, first: 0, last: 5 });
        // Continues both, and brings a new partition with its own anchor.
        let ok = [span(0, Some(20), 21, 30), span(1, Some(5), 6, 6), span(2, Some(99), 100, 100)];
        assert_eq!(buffer.break_in(&ok), None);
        // Overlap (read again from an older position) and gap (skipped ahead).
        let overlap = [span(0, Some(20), 21, 22), span(1, Some(3), 4, 9)];
        assert_eq!(buffer.break_in(&overlap).map(|(s, last)| (s.partition, last)), Some((1, 5)));
        let gap = [span(0, Some(25), 26, 27)];
        assert_eq!(buffer.break_in(&gap).map(|(s, last)| (s.partition, last)), Some((0, 20)));
        // A partition assigned again with nothing stored, while the buffer holds it.
        assert!(buffer.break_in(&[span(1, None, 0, 3)]).is_some());
    }

    #[test]
    fn the_ledger_keeps_only_what_it_knows_at_the_version() {
        let mut ledger = Ledger { version: Some(4), stored: HashMap::from([(0, Some(10)), (1, None)]) };
        // Committed right after the version looked at: the other partitions are still known.
        ledger.committed(Some(4), 5, &BTreeMap::from([(0, 20)]));
        assert_eq!(ledger.version, Some(5));
        assert_eq!(ledger.stored, HashMap::from([(0, Some(20)), (1, None)]));
        // Another writer's commit came in between: only what this writer committed is known.
        ledger.committed(Some(5), 7, &BTreeMap::from([(2, 3)]));
        assert_eq!((ledger.version, ledger.stored.clone()), (Some(7), HashMap::from([(2, Some(3))])));
    }
}
