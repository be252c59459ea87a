//! Where scored rows go, and the one rule of score's delivery: ClickHouse acknowledges the rows
//! of a version, then that version is recorded as score's progress — never the other way
//! round. A crash in between replays rows already there (the tables are ReplacingMergeTree
//! keyed by id and the view groups by it, so a replay never shows twice).
//!
//! One insert is in flight while the next rows are scored: [`Sink::flush`] waits for the
//! insert before it (and its progress record), then sends the new one on a task of its own.
//! Retries of ClickHouse give up once a stop is asked (the rows not written are scored again
//! at the next start, as the progress did not move).

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use txpipe_connectors::clickhouse::{ClickHouseError, PredictionRows, SealedRows, Serving, Target};
use txpipe_connectors::retry::Backoff;

use super::report::{Latency, ScoreReport};
use crate::telemetry::{Beat, names};
use crate::{JobError, Result, Shutdown};

/// Rows scored and waiting for their insert, and the version they complete.
pub(super) struct Pending {
    pub rows: PredictionRows,
    /// The rows' event times (UTC µs), for the latency.
    pub times: Vec<i64>,
    pub complete_through: Option<u64>,
    since: Option<Instant>,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            rows: PredictionRows::new(Target::Realtime),
            times: Vec::new(),
            complete_through: None,
            since: None,
        }
    }

    /// Notes that rows are being added (the flush latency counts from the first).
    pub fn touch(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }
}

/// What an insert and its progress record did: the rows written (0 when the insert failed),
/// their event times and when they were acknowledged, the version recorded, and the failure
/// that ended it, if any (the rows of a failed progress record are written all the same).
struct Acked {
    rows: u64,
    times: Vec<i64>,
    at_us: i64,
    progress: Option<u64>,
    failed: Option<ClickHouseError>,
}

pub(super) struct Sink {
    serving: Serving,
    backoff: Backoff,
    shutdown: Shutdown,
    location: String,
    insert_rows: usize,
    flush_latency: Duration,
    pending: Pending,
    in_flight: Option<JoinHandle<Acked>>,
    latency: Latency,
    /// Score's loop, for `/livez`: it turns while score streams, restores, or waits for
    /// ClickHouse to acknowledge.
    beat: Beat,
}

impl Sink {
    pub(super) fn new(
        serving: Serving,
        backoff: Backoff,
        shutdown: Shutdown,
        location: String,
        insert_rows: usize,
        flush_latency: Duration,
        beat: Beat,
    ) -> Sink {
        Sink {
            serving,
            backoff,
            shutdown,
            location,
            insert_rows,
            flush_latency,
            pending: Pending::new(),
            in_flight: None,
            latency: Latency::new(),
            beat,
        }
    }

    /// The loop turned.
    pub(super) fn turned(&self) {
        self.beat.turn();
    }

    pub(super) fn pending(&mut self) -> &mut Pending {
        &mut self.pending
    }

    /// Drops the rows waiting (they are scored again); how many.
    pub(super) fn discard(&mut self) -> usize {
        let n = self.pending.rows.len();
        self.pending = Pending::new();
        n
    }

    /// Whether the rows waiting should go: the flush latency passed, or enough rows wait.
    pub(super) fn due(&self) -> bool {
        self.pending.since.is_some_and(|t| t.elapsed() >= self.flush_latency)
            || self.pending.rows.len() >= self.insert_rows
    }

    /// Sends what is pending (after the insert in flight is acknowledged); the version it
    /// completes is recorded once it is acknowledged in turn.
    pub(super) async fn flush(&mut self, report: &mut ScoreReport) -> Result<()> {
        // The rows' buffer stays, with its room, for the next rows.
        let rows = self.pending.rows.take();
        let times = std::mem::take(&mut self.pending.times);
        let through = self.pending.complete_through.take();
        self.pending.since = None;
        self.send(rows, times, through, report).await
    }

    /// Sends a chunk of rows that completes no version (scoring the table whole).
    pub(super) async fn send_rows(&mut self, rows: SealedRows, report: &mut ScoreReport) -> Result<()> {
        self.send(rows, Vec::new(), None, report).await
    }

    async fn send(
        &mut self,
        rows: SealedRows,
        times: Vec<i64>,
        progress: Option<u64>,
        report: &mut ScoreReport,
    ) -> Result<()> {
        self.settle(report).await?;
        let progress = progress.filter(|&v| report.complete_through != Some(v));
        if rows.is_empty() && progress.is_none() {
            return Ok(());
        }
        let (serving, backoff, shutdown) = (self.serving.clone(), self.backoff, self.shutdown.clone());
        let location = self.location.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let go = || !shutdown.is_triggered();
            let retryable = ClickHouseError::retryable;
            let mut acked = Acked { rows: 0, times, at_us: 0, progress: None, failed: None };
            if !rows.is_empty() {
                let started = Instant::now();
                let inserted = backoff
                    .retry_while("inserting predictions", retryable, go, || counted(serving.insert(&rows)));
                if let Err(e) = inserted.await {
                    acked.failed = Some(e);
                    return acked;
                }
                metrics::histogram!(names::SCORE_INSERT_DURATION).record(started.elapsed().as_secs_f64());
                acked.rows = rows.len() as u64;
            }
            acked.at_us = chrono::Utc::now().timestamp_micros();
            if let Some(v) = progress {
                let recorded = backoff.retry_while("recording progress", retryable, go, || {
                    counted(serving.record_progress(&location, v))
                });
                match recorded.await {
                    Ok(()) => acked.progress = Some(v),
                    Err(e) => acked.failed = Some(e),
                }
            }
            acked
        }));
        Ok(())
    }

    /// Counts the insert in flight if it has been answered (without waiting for it).
    pub(super) async fn settle_answered(&mut self, report: &mut ScoreReport) -> Result<()> {
        if self.in_flight.as_ref().is_some_and(|t| t.is_finished()) {
            self.settle(report).await?;
        }
        Ok(())
    }

    /// Whether an insert is under way (sent, not acknowledged yet).
    pub(super) fn inserting(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Waits for the insert in flight, if any, and counts it.
    pub(super) async fn settle(&mut self, report: &mut ScoreReport) -> Result<()> {
        let Some(mut task) = self.in_flight.take() else {
            return Ok(());
        };
        // Waiting for ClickHouse (retried while it is away) is the loop turning too.
        let acked = loop {
            self.beat.turn();
            tokio::select! {
                acked = &mut task => break acked,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        let acked = acked.map_err(|e| JobError::Internal(format!("the insert task: {e}")))?;
        if acked.rows > 0 {
            metrics::counter!(names::SCORE_ROWS_WRITTEN).increment(acked.rows);
            metrics::counter!(names::SCORE_INSERTS).increment(1);
            report.written += acked.rows;
            report.inserts += 1;
        }
        for &t in &acked.times {
            let seconds = (acked.at_us - t) as f64 / 1e6;
            self.latency.add(seconds);
            if seconds < 60.0 {
                metrics::histogram!(names::SCORE_END_TO_END).record(seconds);
            }
        }
        if let Some(v) = acked.progress {
            report.complete_through = Some(v);
            metrics::gauge!(names::SCORE_COMPLETE_VERSION).set(v as f64);
        }
        match acked.failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Records `version` as complete once everything sent before is acknowledged.
    pub(super) async fn record(&mut self, version: u64, report: &mut ScoreReport) -> Result<()> {
        self.send(PredictionRows::new(Target::Realtime).seal(), Vec::new(), Some(version), report).await?;
        self.settle(report).await
    }

    /// Sends what is pending and waits for every acknowledgement; the latency into the report.
    /// (Dropped without it, on an error of the run, the insert under way is stopped: its rows
    /// are scored again at the next start, as their progress is not recorded.)
    pub(super) async fn finish(&mut self, report: &mut ScoreReport) -> Result<()> {
        self.flush(report).await?;
        self.settle(report).await?;
        report.latency_p50_s = self.latency.quantile(0.5);
        report.latency_p99_s = self.latency.quantile(0.99);
        report.latency_over_60s = self.latency.over;
        Ok(())
    }
}

/// A request to ClickHouse, its failure counted (each failure is retried, or ends the run).
async fn counted<T>(
    request: impl std::future::Future<Output = std::result::Result<T, ClickHouseError>>,
) -> std::result::Result<T, ClickHouseError> {
    let outcome = request.await;
    if outcome.is_err() {
        metrics::counter!(names::SCORE_INSERT_ERRORS).increment(1);
    }
    outcome
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
    }
}
