//! `model.json`: a trained model with everything needed to score with it and to know where it
//! came from (DESIGN §3). `train` writes it, `score` reads it; both go through these types.

use serde::{Deserialize, Serialize};

use super::logistic::{FitOptions, LogisticModel};
use super::metrics::{Evaluation, ThresholdTarget};
use crate::features::FittedFeatures;
use crate::schema::SchemaConfig;

/// The format this code writes and reads.
pub const FORMAT: u32 = 1;

/// Where the training data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// The table's location, as given.
    pub table: String,
    /// The Delta version read.
    pub delta_version: u64,
    /// Rows read, and rows left once each transaction id counts once (the first copy in table
    /// order wins).
    pub rows_read: u64,
    pub rows_used: u64,
    /// Event-time range of the rows used (UTC microseconds).
    pub time_from_us: i64,
    pub time_to_us: i64,
    /// Rows with an event time at or after this are validation (up to `holdout_from_us`) or
    /// held out (from it on).
    pub validation_from_us: i64,
    pub holdout_from_us: i64,
}

/// The settings of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HyperParameters {
    pub fit: FitOptions,
    pub threshold_target: ThresholdTarget,
    pub holdout_fraction: f64,
    pub validation_fraction: f64,
}

/// Evaluations of the model on the slices it was not fitted on (and on the one it was).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub train: Evaluation,
    pub validation: Evaluation,
    pub holdout: Evaluation,
}

/// One published model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArtifact {
    pub format: u32,
    /// The version id (the directory's name).
    pub version: String,
    /// RFC 3339.
    pub created_at: String,
    pub lineage: Lineage,
    /// The event schema the features read.
    pub schema: SchemaConfig,
    pub features: FittedFeatures,
    pub model: LogisticModel,
    /// Rows with a probability at or above it are flagged.
    pub threshold: f64,
    pub hyper_parameters: HyperParameters,
    pub metrics: Metrics,
}
