//! ClickHouse, the serving layer: settings, the tables and view predictions are served from,
//! and inserts into them.

mod config;
mod serving;

pub use config::ClickHouseConfig;
pub use serving::{
    BATCH, ClickHouseError, PROGRESS, Prediction, PredictionRows, REALTIME, SERVING, SealedRows, Serving,
    ServingColumn, Target,
};
