//! ClickHouse, the serving layer: settings (client and tables come with the score and train
//! jobs).

mod config;

pub use config::ClickHouseConfig;
