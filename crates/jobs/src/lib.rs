//! txpipe-jobs: the jobs of txpipe, each `run(job, shutdown) -> Result<Report>` (optimize, a
//! one-shot maintenance run, takes no shutdown), so that the binary and the tests call them the
//! same way, in process.
//!
//! - [`produce`]: synthetic events into Kafka or a file;
//! - [`ingest`]: Job 1, Kafka → Delta, exactly once;
//! - [`optimize`]: compaction and vacuum of the tables;
//! - [`score`]: Job 2, the clean table as a stream → features → model → ClickHouse;
//! - [`train`]: Job 3, Delta history → features → logistic regression → a published model;
//! - [`predict`]: the one path from table rows and a model to serving rows, for `score` and
//!   for batch scoring (`train --batch-score`);
//! - [`rows`]: the clean table's rows in table order, each transaction id once;
//! - [`models`]: the model directory, versions switched atomically.

pub mod ingest;
pub mod models;
pub mod optimize;
pub mod pipeline;
pub mod predict;
pub mod produce;
pub mod rows;
pub mod score;
mod shutdown;
pub mod status;
pub mod telemetry;
pub mod train;

pub use shutdown::Shutdown;

use std::path::Path;

/// What can stop a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A setting out of its expected form.
    #[error(transparent)]
    Config(#[from] txpipe_core::Error),
    #[error(transparent)]
    Kafka(#[from] txpipe_connectors::kafka::KafkaError),
    #[error(transparent)]
    Delta(#[from] txpipe_connectors::delta::DeltaError),
    #[error(transparent)]
    ClickHouse(#[from] txpipe_connectors::clickhouse::ClickHouseError),
    /// The model directory on an object store.
    #[error(transparent)]
    Objects(#[from] txpipe_connectors::objects::ObjectsError),
    /// Train published its model, then failed at batch scoring.
    #[error("model version {published} is published, but its batch scores were not written: {source}")]
    BatchScore { published: String, source: Box<JobError> },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The job ran as asked but will not do its work, and says why (train: no labels, one
    /// class, too few positives, a model under the quality gate).
    #[error("{why}")]
    Refused {
        /// A short stable code of the reason (`no_rows`, `one_class`, `auc_floor`, ...).
        code: &'static str,
        why: String,
    },
    /// The data is not what the job can read: a column of another type than the schema says,
    /// a model file that is not txpipe's, a table that is gone.
    #[error("{what}: {detail}")]
    Data { what: String, detail: String },
    /// Stopped as asked (SIGINT/SIGTERM) before the work was done; nothing half done is left.
    #[error("stopped as asked {at}")]
    Stopped { at: String },
    /// A bug: a task that panicked or a thread that could not start; the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

impl JobError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        JobError::Io { path: path.as_ref().display().to_string(), source }
    }

    pub fn data(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        JobError::Data { what: what.into(), detail: detail.to_string() }
    }

    /// Whether running the job again later can succeed without a change of data or settings:
    /// a service or the storage away, as opposed to bad settings, bad data or a refusal.
    pub fn retryable(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            JobError::Kafka(e) => e.retryable(),
            JobError::Delta(e) => e.retryable(),
            JobError::ClickHouse(e) => e.retryable(),
            JobError::Objects(e) => e.retryable(),
            JobError::BatchScore { source, .. } => source.retryable(),
            JobError::Io { source, .. } => {
                matches!(source.kind(), ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock)
            }
            JobError::Config(_)
            | JobError::Refused { .. }
            | JobError::Data { .. }
            | JobError::Stopped { .. }
            | JobError::Internal(_) => false,
        }
    }
}

/// The process's resident memory and its peak so far, in bytes (Linux; None elsewhere).
pub fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    Some((kb("VmRSS:")? << 10, kb("VmHWM:")? << 10))
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;
