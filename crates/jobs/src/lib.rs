//! txpipe-jobs: the jobs of txpipe, each `run(job, shutdown) -> Result<Report>`, so that the
//! binary and the tests call them the same way, in process.
//!
//! - [`produce`]: synthetic events into Kafka or a file;
//! - [`ingest`]: Job 1, Kafka → Delta, exactly once;
//! - [`optimize`]: compaction and vacuum of the tables;
//! - [`score`]: Job 2, the clean table as a stream → features → model → ClickHouse;
//! - [`train`]: Job 3, Delta history → features → logistic regression → a published model;
//! - [`models`]: the model directory, versions switched atomically.

pub mod ingest;
pub mod models;
pub mod optimize;
pub mod produce;
pub mod score;
mod shutdown;
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
    /// Train published its model, then failed at batch scoring.
    #[error("model version {published} is published, but its batch scores were not written: {source}")]
    BatchScore { published: String, source: Box<JobError> },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The job ran as asked but will not do its work, and says why (train: no labels, one
    /// class, too few positives, a model under the quality gate).
    #[error("{0}")]
    Refused(String),
    /// A bug or a panicked task; the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

impl JobError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        JobError::Io { path: path.as_ref().display().to_string(), source }
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
