//! The model: a column-major feature matrix, logistic regression (fit and score), and the measures of
//! how good its probabilities are.

pub mod artifact;
mod kernels;
pub mod logistic;
pub mod matrix;
pub mod metrics;
mod onehot;
pub mod scorer;

pub use artifact::{HyperParameters, Lineage, Metrics, ModelArtifact};
pub use logistic::{
    CHUNK_MULTIPLE, Chunks, ClassWeight, FitError, FitOptions, LogisticModel, fit, fit_chunks, sigmoid,
};
pub use matrix::{ColumnRef, Layout, Matrix, MatrixBuilder, OneHot};
pub use metrics::{AtThreshold, Evaluation, ThresholdTarget, choose_threshold, evaluate};
pub use scorer::{Scored, Scorer};
