//! `txpipe run`: ingest and score in one process, and train on a schedule, for small
//! deployments. Each job runs as it does alone (the same code, the same guarantees); they share
//! one shutdown, and one fails → the others stop.
//!
//! With `exit_when_idle`, ingest ends after that long without input, then score ends once it
//! has found nothing new for that long *after* ingest ended (so ingest's last commit is
//! scored), then the training schedule ends.

use std::time::Duration;

use serde::Serialize;

use crate::ingest::{self, IngestJob, IngestReport};
use crate::score::{self, ScoreJob, ScoreReport};
use crate::train::{self, TrainJob};
use crate::{JobError, Result, Shutdown};

/// The jobs of one `txpipe run`.
pub struct PipelineJob {
    pub ingest: IngestJob,
    pub score: ScoreJob,
    /// Train on this schedule (the first run at the start).
    pub train: Option<(TrainJob, Duration)>,
}

/// One scheduled training run, as `txpipe run` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct TrainRun {
    /// `published`, `refused` or `failed`.
    pub outcome: String,
    pub published: Option<String>,
    pub holdout_auc: Option<f64>,
    pub detail: Option<String>,
}

/// What a `txpipe run` did.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub ingest: IngestReport,
    pub score: ScoreReport,
    pub train: Vec<TrainRun>,
}

/// Runs ingest and score (and the training schedule) until `shutdown`, idleness, or a failure.
pub async fn run(job: PipelineJob, shutdown: Shutdown) -> Result<PipelineReport> {
    let ingest_done = Shutdown::new();
    let schedule_done = Shutdown::new();
    let score_job = ScoreJob { upstream: Some(ingest_done.clone()), ..job.score };
    let ingest = async {
        let r = ingest::run(job.ingest, shutdown.clone()).await;
        ingest_done.trigger();
        if r.is_err() {
            shutdown.trigger();
        }
        r
    };
    let score = async {
        let r = score::run(score_job, shutdown.clone()).await;
        if r.is_err() {
            shutdown.trigger();
        }
        r
    };
    let streams = async {
        let out = tokio::join!(ingest, score);
        schedule_done.trigger();
        out
    };
    let schedule = async {
        let Some((train_job, every)) = job.train else { return Vec::new() };
        tokio::select! {
            runs = train_schedule(train_job, every, &schedule_done) => runs,
            // A stop asked ends the schedule as it ends the streams (a run between two stages).
            _ = async { shutdown.wait().await; schedule_done.trigger(); std::future::pending::<()>().await } => Vec::new(),
        }
    };
    let ((ingested, scored), train) = tokio::join!(streams, schedule);
    Ok(PipelineReport { ingest: ingested?, score: scored?, train })
}

/// Trains now and then every `every` until `done`.
async fn train_schedule(job: TrainJob, every: Duration, done: &Shutdown) -> Vec<TrainRun> {
    let mut runs = Vec::new();
    while !done.is_triggered() {
        let started = tokio::time::Instant::now();
        let run = match train::run(job.clone(), done.clone()).await {
            Ok(r) => TrainRun {
                outcome: if r.published.is_some() { "published" } else { "refused" }.into(),
                published: r.published.clone(),
                holdout_auc: Some(r.holdout_auc),
                detail: None,
            },
            Err(JobError::Stopped { .. }) => break,
            Err(e) => {
                let outcome = if matches!(e, JobError::Refused { .. }) { "refused" } else { "failed" };
                tracing::warn!(error = %e, "this scheduled training run did not publish");
                TrainRun {
                    outcome: outcome.into(),
                    published: None,
                    holdout_auc: None,
                    detail: Some(e.to_string()),
                }
            }
        };
        tracing::info!(outcome = %run.outcome, model = ?run.published, "scheduled training run done");
        runs.push(run);
        // Between runs the schedule is the loop that turns (a run turns at each stage).
        let beat = crate::telemetry::Beat::new("train-schedule");
        let next = started + every;
        while tokio::time::Instant::now() < next && !done.is_triggered() {
            beat.turn();
            let slice = (next - tokio::time::Instant::now()).min(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(slice) => {}
                _ = done.wait() => {}
            }
        }
    }
    runs
}
