//! Delta Lake tables: settings, the column layout of txpipe's tables and row builders (the
//! table writer and reader come with the ingest job).

mod config;
mod read;
mod rows;
mod table;

pub use config::TablesConfig;
/// The Arrow version delta-rs is built with, for callers that build batches.
pub use deltalake::arrow;
pub use read::read_rows;
pub use rows::{CleanRows, EVENT_DATE, QuarantineRows, clean_schema, quarantine_schema};
pub use table::{DeltaError, Table};
