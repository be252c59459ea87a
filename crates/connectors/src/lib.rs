//! txpipe-connectors: the systems txpipe talks to, one module per system, each with its
//! settings, its errors and its integration tests.
//!
//! - [`kafka`]: producer, consumer and admin for the events' topic;
//! - [`delta`]: the Delta Lake tables;
//! - [`clickhouse`]: the serving layer;
//! - [`objects`]: small whole files on an object store (the model directory beside the tables);
//! - [`retry`]: exponential backoff for failures that a retry can help.

pub mod clickhouse;
pub mod delta;
pub mod kafka;
pub mod objects;
pub mod retry;
