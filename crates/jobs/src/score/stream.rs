//! The stream: new commits of the table → the current model → the sink, until a stop (or idle
//! with `exit_when_idle`).
//!
//! Each turn: look for a new model (used from the next micro-batch), poll the log for the next
//! micro-batch, score it off the async runtime, and hand the rows to the sink when its flush is
//! due (one insert in flight while the next micro-batch is read and scored). While catching up
//! from the log, a commit that turns out unreadable (its file vacuumed after a compaction) makes
//! the run score the table whole instead.

use std::collections::VecDeque;
use std::time::Instant;

use txpipe_connectors::delta::{DeltaError, TableTail, TailBatch};

use super::model_watch::ModelWatch;
use super::report::ScoreReport;
use super::restore::{self, State};
use super::sink::Sink;
use super::snapshot::Snapshots;
use super::start::HandedOut;
use super::{Run, sleep_or_shutdown};
use crate::predict::{Stamp, Take, predict};
use crate::rows::Rows;
use crate::telemetry::names;
use crate::{JobError, Result};

/// How far score is behind the table, as metrics: the micro-batches handed out and not yet
/// complete in ClickHouse (their last version, and when their first commit was made).
#[derive(Default)]
pub(super) struct Lag {
    behind: VecDeque<(u64, Option<i64>)>,
}

impl Lag {
    fn handed_out(&mut self, batch: &TailBatch) {
        if let Some(v) = batch.complete_through {
            self.behind.push_back((v, batch.first_commit_ms));
        }
    }

    /// Sets the lag gauges: `newest` is the newest version read from the log.
    fn show(&mut self, complete: Option<u64>, newest: Option<u64>) {
        while self.behind.front().is_some_and(|(v, _)| complete.is_some_and(|c| c >= *v)) {
            self.behind.pop_front();
        }
        let versions = match (newest, complete) {
            (Some(n), Some(c)) => n.saturating_sub(c),
            (Some(n), None) => n + 1,
            (None, _) => 0,
        };
        let seconds = match self.behind.front() {
            Some((_, Some(ms))) => (chrono::Utc::now().timestamp_millis() - ms).max(0) as f64 / 1e3,
            _ => 0.0,
        };
        metrics::gauge!(names::SCORE_LAG_VERSIONS).set(versions as f64);
        metrics::gauge!(names::SCORE_LAG_SECONDS).set(seconds);
    }
}

pub(super) struct Stream<'r, 'a> {
    pub run: &'r Run<'a>,
    pub tail: TableTail,
    pub sink: Sink,
    pub watch: ModelWatch,
    pub state: State,
    pub snapshots: Option<Snapshots>,
    /// While catching up from the log: the commits to hand out before the fallback ends.
    pub catch_up: Option<HandedOut>,
    /// The last version whose rows are all in the history (None: none yet).
    pub history_through: Option<u64>,
    pub lag: Lag,
    /// Whether the last poll had to wait for the table's storage (the wait is not idleness).
    pub waited_for_storage: bool,
}

impl Stream<'_, '_> {
    /// Runs until a stop or idle; then sends what is pending and writes the state.
    pub async fn run(mut self, report: &mut ScoreReport) -> Result<()> {
        let settings = &self.run.job.settings;
        // Since when polls have found nothing new (time spent inserting does not count).
        let mut idle_since = Some(Instant::now());
        let mut stats_at = Instant::now();
        while !self.run.shutdown.is_triggered() {
            self.sink.turned();
            // An answered insert is counted (and its version recorded) at once, not at the next.
            self.sink.settle_answered(report).await?;
            let newest = self.tail.next_version().checked_sub(1);
            self.lag.show(report.complete_through, newest);
            self.check_model(report)?;
            let Some(polled) = self.poll(report).await? else { continue };
            if std::mem::take(&mut self.waited_for_storage) && idle_since.is_some() {
                idle_since = Some(Instant::now());
            }
            let got = polled.is_some();
            if let Some(batch) = polled {
                idle_since = None;
                self.score(batch, report)?;
            }
            if self.sink.due() {
                self.sink.flush(report).await?;
                self.snapshot_if_due(report).await?;
                // A flush can wait long (ClickHouse away): look at the log again before calling
                // the stream idle.
                if idle_since.is_some() {
                    idle_since = Some(Instant::now());
                }
            }
            if stats_at.elapsed() >= settings.stats {
                stats_at = Instant::now();
                tracing::info!(
                    scored = report.scored,
                    written = report.written,
                    inserts = report.inserts,
                    complete_through = ?report.complete_through,
                    next_version = self.tail.next_version(),
                    model = %self.watch.id(),
                    "score"
                );
            }
            if !got && idle_since.is_none() {
                idle_since = Some(Instant::now());
            }
            // Time spent inserting does not count as idle (ClickHouse may be away).
            if idle_since.is_some() && self.sink.inserting() {
                idle_since = Some(Instant::now());
            }
            // Idleness counts once nothing upstream still writes (a poll after its last commit).
            if !self.run.job.idle_counts() && idle_since.is_some() {
                idle_since = Some(Instant::now());
            }
            if let Some(idle) = settings.exit_when_idle
                && idle_since.is_some_and(|t| t.elapsed() >= idle)
                && self.sink.pending().rows.is_empty()
            {
                tracing::info!(idle_s = idle.as_secs_f64(), "no new commits; stopping");
                break;
            }
            if !got {
                sleep_or_shutdown(settings.poll, self.run.shutdown).await;
            }
        }
        self.sink.finish(report).await?;
        let version = self.state_version(report);
        if let Some(snaps) = &mut self.snapshots
            && let Some(v) = version
            && snaps.version.is_none_or(|s| s < v)
        {
            snaps.save(v, &self.state.recent, &self.state.history, report);
        }
        Ok(())
    }

    /// The version the state is written at once every row scored is acknowledged: the progress,
    /// or the last version in the history when that is older (progress recorded past the
    /// table's newest version).
    fn state_version(&self, report: &ScoreReport) -> Option<u64> {
        match (report.complete_through, self.history_through) {
            (Some(done), Some(held)) => Some(done.min(held)),
            _ => None,
        }
    }

    /// A new model from the next micro-batch on; a model whose history differs stops the
    /// state file (a restart builds the history it needs).
    fn check_model(&mut self, report: &mut ScoreReport) -> Result<()> {
        let (schema, every) = (&self.run.job.schema, self.run.job.settings.model_poll);
        // Reading the pointer and loading a model are blocking I/O (a file, or requests to an
        // object store): off the runtime's worker, and only when a look is due.
        if !self.watch.due(every) || !tokio::task::block_in_place(|| self.watch.check(schema, every)) {
            return Ok(());
        }
        report.models.push(self.watch.id().to_string());
        super::check_shard(self.run.job, self.watch.scorer())?;
        let key = self.watch.scorer().history_key(schema);
        if self.snapshots.as_ref().is_some_and(|s| s.history_key != key) {
            tracing::info!(
                "the new model's history reads other fields or another window: no state file is written until \
                 a restart builds its history"
            );
            self.snapshots = None;
        }
        Ok(())
    }

    /// The tail's next micro-batch, retried with the run's backoff while the table's storage
    /// cannot be read (an object store away, a disk error); the tail keeps what it has not
    /// handed out, so a retry reads the same commits. Asked to stop meanwhile: nothing new (the
    /// loop then stops; the rows after the resume point are read again at the next start).
    async fn poll_tail(&mut self) -> std::result::Result<Option<TailBatch>, DeltaError> {
        let backoff = self.run.job.backoff;
        let mut attempt = 1;
        loop {
            match self.tail.poll().await {
                Err(e) if e.retryable() && self.run.shutdown.is_triggered() => {
                    tracing::warn!(error = %e, "stopping as asked while the table's storage is unreachable");
                    return Ok(None);
                }
                Err(e) if e.retryable() && (backoff.attempts == 0 || attempt < backoff.attempts) => {
                    let wait = backoff.delay(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e, "reading the table failed; retrying");
                    metrics::counter!(names::SCORE_READ_RETRIES).increment(1);
                    self.waited_for_storage = true;
                    self.run.beat.turn();
                    sleep_or_shutdown(wait, self.run.shutdown).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The next micro-batch (Some(None): nothing new); None when the catch-up fell back to
    /// scoring the table whole (the turn starts again).
    async fn poll(&mut self, report: &mut ScoreReport) -> Result<Option<Option<TailBatch>>> {
        let batch = match self.poll_tail().await {
            Ok(b) => b,
            Err(e @ DeltaError::Gone { .. }) if self.catch_up.is_some() => {
                tracing::warn!(
                    error = %e,
                    "the table's early commits cannot all be read one by one any more; scoring the table as it \
                     is now instead (rows already written are replaced, not repeated)"
                );
                report.scored -= self.sink.discard() as u64;
                let table = self
                    .tail
                    .load_newest()
                    .await?
                    .ok_or_else(|| JobError::data(self.run.location.clone(), "the table is gone"))?;
                let scorer = self.watch.scorer().clone();
                self.history_through = table.version();
                self.state = restore::score_whole_table(
                    self.run,
                    &mut self.sink,
                    &mut self.tail,
                    table,
                    &scorer,
                    report,
                )
                .await?;
                self.catch_up = None;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        // Caught up once the commits up to the start's newest version are handed out.
        if let Some(until) = &mut self.catch_up
            && until.batch(batch.as_ref().and_then(|b| b.complete_through))
        {
            self.catch_up = None;
        }
        Ok(Some(batch))
    }

    /// Scores a micro-batch into the sink's pending rows, off the async runtime.
    fn score(&mut self, batch: TailBatch, report: &mut ScoreReport) -> Result<()> {
        report.micro_batches += 1;
        self.lag.handed_out(&batch);
        report.largest_micro_batch = report.largest_micro_batch.max(batch.rows as u64);
        let (layout, state) = (&self.run.layout, &mut self.state);
        let scorer = self.watch.scorer_mut();
        let pending = self.sink.pending();
        pending.touch();
        let counts = tokio::task::block_in_place(|| -> Result<_> {
            let rows = Rows::new(&layout.schema, &batch.batches, None)?;
            let recent = &mut state.recent;
            let take = |id: &str, _| if recent.first(id) { Take::Score } else { Take::Skip };
            let times = &mut pending.times;
            let note = |_: &mut _, t| {
                times.push(t);
                true
            };
            Ok(predict(
                layout,
                scorer,
                &mut state.history,
                &rows,
                Stamp::now(),
                &mut pending.rows,
                take,
                note,
            ))
        })?;
        if batch.complete_through.is_some() {
            pending.complete_through = batch.complete_through;
            self.history_through = batch.complete_through;
        }
        report.scored += counts.scored;
        report.repeats += counts.skipped;
        metrics::counter!(names::SCORE_REPEATS).increment(counts.skipped);
        metrics::gauge!(names::SCORE_HISTORY_ACCOUNTS).set(self.state.history.len() as f64);
        metrics::counter!(crate::telemetry::names::SCORE_ROWS_SCORED).increment(counts.scored);
        Ok(())
    }

    /// Writes the state when due, once every row scored so far is acknowledged (the state of a
    /// version must hold the rows of that version and no later one).
    async fn snapshot_if_due(&mut self, report: &mut ScoreReport) -> Result<()> {
        if self.snapshots.as_ref().is_none_or(|s| s.last.elapsed() < s.every) {
            return Ok(());
        }
        self.sink.settle(report).await?;
        let version = self.state_version(report);
        if let Some(snaps) = &mut self.snapshots
            && let Some(v) = version
            && self.sink.pending().rows.is_empty()
            && snaps.due(Some(v))
        {
            snaps.save(v, &self.state.recent, &self.state.history, report);
        }
        Ok(())
    }
}
