//! txpipe-core: the pure domain of txpipe, with no I/O.
//!
//! - [`schema`]: the event schema, declared as data, and its validation;
//! - [`event`]: JSON payload → cleaned values or a quarantine reason;
//! - [`generator`]: the deterministic synthetic transaction stream with known fraud truth;
//! - [`features`]: features as data, one module for training and scoring;
//! - [`model`]: the feature matrix, logistic regression and its evaluation.

pub mod error;
pub mod event;
pub mod features;
pub mod generator;
pub mod model;
pub mod schema;
pub mod units;

pub use error::{Error, Result};
