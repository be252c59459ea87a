//! Delta Lake tables, a file per concern:
//!
//! - `errors`: what can go wrong, and whether a retry can help;
//! - `log`: the one reader of the log (entries, `_last_checkpoint`), for the writer and the tail;
//! - `table`: the appending handle (open or create, follow the log, Kafka positions);
//! - `writer` and `commit`: data files for a commit, and the commit with its conflict rule;
//! - `checkpoints`: checkpoints and log clean-up beside the commits;
//! - `tail`: the table read as a stream of commits; `read`: projections of a version;
//! - `rows`: the column layout of txpipe's tables and their row builders; `config`: settings;
//! - `maintenance`: compaction and vacuum.

mod checkpoints;
mod commit;
mod config;
mod errors;
mod log;
mod maintenance;
mod read;
mod rows;
mod table;
mod tail;
mod writer;

pub use config::{TablesConfig, is_object_store, store_options};
/// A loaded Delta table (as `TableTail` hands it out).
pub use deltalake::DeltaTable;
/// The Arrow version delta-rs is built with, for callers that build batches.
pub use deltalake::arrow;
/// A data file's `add` action, as a written batch hands it to its commit.
pub use deltalake::kernel::Add;
/// The Parquet version delta-rs is built with, for callers that write files of their own.
pub use deltalake::parquet;
pub use errors::DeltaError;
pub use maintenance::{CompactReport, compact, vacuum};
pub use read::{DataFile, Projection, Scan, data_files, read_columns, read_file, read_rows, string_values};
pub use rows::{CleanRows, EVENT_DATE, QuarantineRows, arrow_type, clean_schema, quarantine_schema};
pub use table::{Table, commit_time, open_existing, probe, transaction_versions};
pub use tail::{TableTail, TailBatch, has_columns, table_id};
pub use writer::TableWriter;
