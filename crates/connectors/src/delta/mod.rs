//! Delta Lake tables: settings, the column layout of txpipe's tables, row builders, the
//! appending writer with Kafka positions in its commits, a reader, and maintenance
//! (compaction, vacuum).

mod config;
mod maintenance;
mod read;
mod rows;
mod table;
mod tail;

pub use config::TablesConfig;
/// A loaded Delta table (as `TableTail` hands it out).
pub use deltalake::DeltaTable;
/// The Arrow version delta-rs is built with, for callers that build batches.
pub use deltalake::arrow;
/// A data file's `add` action, as a written batch hands it to its commit.
pub use deltalake::kernel::Add;
/// The Parquet version delta-rs is built with, for callers that write files of their own.
pub use deltalake::parquet;
pub use maintenance::{CompactReport, compact, vacuum};
pub use read::{DataFile, Projection, data_files, read_columns, read_file, read_rows, string_values};
pub use rows::{CleanRows, EVENT_DATE, QuarantineRows, arrow_type, clean_schema, quarantine_schema};
pub use table::{DeltaError, Table, TableWriter, open_existing};
pub use tail::{TableTail, TailBatch, has_columns, table_id};
