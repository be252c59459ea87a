//! One Delta table that txpipe appends to, with Kafka positions kept in the same commits.
//!
//! In: record batches and, per Kafka partition, the last offset they cover. Out: one Delta
//! commit holding the data files and one application-transaction (`txn`) action per partition,
//! so that data and position land together or not at all. Reading the positions back is how
//! ingest knows where to resume.

use std::collections::{BTreeMap, HashMap};

use delta_kernel::expressions::Scalar;
use deltalake::arrow::array::{Array, Date32Array, RecordBatch};
use deltalake::arrow::datatypes::{DataType as ArrowType, SchemaRef, TimeUnit};
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, DataType, StructField, Transaction};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError, TableProperty, ensure_table_uri};
use indexmap::IndexMap;

/// What can go wrong with a table.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta table {location}: opening or creating failed: {source}")]
    Open { location: String, source: Box<DeltaTableError> },
    #[error("delta table {location}: its columns {found} do not match txpipe's {expected}")]
    Layout { location: String, found: String, expected: String },
    #[error("delta table {location}: writing data files failed: {source}")]
    Write { location: String, source: Box<DeltaTableError> },
    /// Another writer committed positions for the same partitions since our snapshot.
    #[error("delta table {location}: another writer moved the positions of these partitions")]
    Conflict { location: String },
    #[error("delta table {location}: commit failed after version {version:?}: {source}")]
    Commit { location: String, version: Option<u64>, source: Box<DeltaTableError> },
    #[error("delta table {location}: reading the log failed: {source}")]
    Read { location: String, source: Box<DeltaTableError> },
    #[error("delta table {location}: {operation} failed: {source}")]
    Maintenance { location: String, operation: &'static str, source: Box<DeltaTableError> },
}

impl DeltaError {
    /// Whether trying again can succeed (storage hiccups), as opposed to a conflict or a bad
    /// table.
    pub fn retryable(&self) -> bool {
        match self {
            DeltaError::Open { source, .. }
            | DeltaError::Write { source, .. }
            | DeltaError::Commit { source, .. }
            | DeltaError::Read { source, .. }
            | DeltaError::Maintenance { source, .. } => matches!(
                **source,
                DeltaTableError::ObjectStore { .. }
                    | DeltaTableError::Io { .. }
                    | DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(_) }
            ),
            DeltaError::Conflict { .. } | DeltaError::Layout { .. } => false,
        }
    }
}

pub type Result<T, E = DeltaError> = std::result::Result<T, E>;

/// Delta type of an Arrow type used by txpipe's tables.
fn delta_type(t: &ArrowType) -> DataType {
    match t {
        ArrowType::Utf8 => DataType::STRING,
        ArrowType::Float64 => DataType::DOUBLE,
        ArrowType::Int64 => DataType::LONG,
        ArrowType::Int32 => DataType::INTEGER,
        ArrowType::Boolean => DataType::BOOLEAN,
        ArrowType::Date32 => DataType::DATE,
        ArrowType::Binary => DataType::BINARY,
        ArrowType::Timestamp(TimeUnit::Microsecond, _) => DataType::TIMESTAMP,
        // txpipe's layouts use only the types above (see rows.rs).
        other => unreachable!("no Delta mapping for {other}"),
    }
}

fn describe(schema: &SchemaRef) -> String {
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}{}", f.name(), f.data_type(), if f.is_nullable() { "?" } else { "" }))
        .collect();
    format!("[{}]", cols.join(", "))
}

/// Opens an existing table at its newest version; a missing table is an error.
pub async fn open_existing(location: &str, storage_options: &BTreeMap<String, String>) -> Result<DeltaTable> {
    let open_err = |source| DeltaError::Open { location: location.to_string(), source: Box::new(source) };
    let url = ensure_table_uri(location).map_err(open_err)?;
    let options: HashMap<String, String> = storage_options.clone().into_iter().collect();
    let mut table = DeltaTable::try_from_url_with_storage_options(url, options).await.map_err(open_err)?;
    if table.version().is_none() {
        return Err(open_err(DeltaTableError::NotATable(format!("no Delta table at {location}"))));
    }
    table.update_state().await.map_err(open_err)?;
    Ok(table)
}

/// A table txpipe appends to.
pub struct Table {
    table: DeltaTable,
    location: String,
    app_prefix: String,
    partition_by: Option<Vec<String>>,
    /// Columns whose values are (nearly) all distinct: written without a dictionary.
    distinct: Vec<String>,
}

impl Table {
    /// Opens the table at `location` (a path or URL), creating it with the given layout when it
    /// does not exist. An existing table must have the same columns.
    pub async fn open_or_create(
        location: &str,
        storage_options: &BTreeMap<String, String>,
        layout: SchemaRef,
        partition_by: Option<&str>,
        app_prefix: &str,
        checkpoint_interval: u32,
    ) -> Result<Table> {
        let open_err = |source| DeltaError::Open { location: location.to_string(), source: Box::new(source) };
        let url = ensure_table_uri(location).map_err(open_err)?;
        let options: HashMap<String, String> = storage_options.clone().into_iter().collect();
        let table = DeltaTable::try_from_url_with_storage_options(url.clone(), options.clone())
            .await
            .map_err(open_err)?;
        let table = if table.version().is_some() {
            table
        } else {
            let columns: Vec<StructField> = layout
                .fields()
                .iter()
                .map(|f| StructField::new(f.name(), delta_type(f.data_type()), f.is_nullable()))
                .collect();
            let created = table
                .create()
                .with_columns(columns)
                .with_partition_columns(partition_by.into_iter().map(str::to_string))
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(checkpoint_interval.to_string()),
                )
                .with_save_mode(SaveMode::Ignore)
                .await;
            match created {
                Ok(t) => {
                    tracing::info!(location, "created delta table");
                    t
                }
                // Another process created it at the same moment: open theirs.
                Err(e) => {
                    let mut t = DeltaTable::try_from_url_with_storage_options(url, options)
                        .await
                        .map_err(open_err)?;
                    t.update_state().await.map_err(|_| open_err(e))?;
                    t
                }
            }
        };
        let this = Table {
            table,
            location: location.to_string(),
            app_prefix: app_prefix.to_string(),
            partition_by: partition_by.map(|p| vec![p.to_string()]),
            distinct: Vec::new(),
        };
        this.check_layout(&layout)?;
        Ok(this)
    }

    fn check_layout(&self, expected: &SchemaRef) -> Result<()> {
        let found = self.arrow_schema()?;
        let same = found.fields().len() == expected.fields().len()
            && found.fields().iter().zip(expected.fields()).all(|(a, b)| {
                a.name() == b.name() && a.data_type() == b.data_type() && a.is_nullable() == b.is_nullable()
            });
        if same {
            Ok(())
        } else {
            Err(DeltaError::Layout {
                location: self.location.clone(),
                found: describe(&found),
                expected: describe(expected),
            })
        }
    }

    fn arrow_schema(&self) -> Result<SchemaRef> {
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        Ok(snapshot.snapshot().arrow_schema())
    }

    fn read_err(&self, source: DeltaTableError) -> DeltaError {
        DeltaError::Read { location: self.location.clone(), source: Box::new(source) }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Declares columns whose values are (nearly) all distinct, such as ids: their data is
    /// written without a dictionary.
    pub fn with_distinct_columns(mut self, columns: &[&str]) -> Table {
        self.distinct = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// The loaded version.
    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// The table as delta-rs sees it (for readers and maintenance).
    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    fn app_id(&self, partition: i32) -> String {
        format!("{}-{partition}", self.app_prefix)
    }

    /// Loads the newest version of the log.
    pub async fn refresh(&mut self) -> Result<()> {
        let r = self.table.update_state().await;
        r.map_err(|source| self.read_err(source))
    }

    /// The last offset stored per partition, in the loaded version (None: nothing stored).
    pub async fn positions(&self, partitions: &[i32]) -> Result<HashMap<i32, Option<i64>>> {
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        let log_store = self.table.log_store();
        let mut out = HashMap::with_capacity(partitions.len());
        for &p in partitions {
            let v = snapshot
                .transaction_version(log_store.as_ref(), self.app_id(p))
                .await
                .map_err(|source| self.read_err(source))?;
            out.insert(p, v);
        }
        Ok(out)
    }

    /// A writer of data files for this table: batches written to it are encoded and uploaded
    /// as they come; nothing is visible until [`Table::commit`] gets its files.
    pub fn writer(&self) -> Result<TableWriter> {
        let location = self.location.clone();
        let mut properties = WriterProperties::builder()
            .set_created_by(format!("txpipe {}", env!("CARGO_PKG_VERSION")))
            .set_compression(Compression::SNAPPY);
        for column in &self.distinct {
            // A dictionary of unique values only costs time before the writer gives it up.
            properties = properties.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false);
        }
        let inner = RecordBatchWriter::for_table(&self.table)
            .map_err(|source| DeltaError::Write { location: location.clone(), source: Box::new(source) })?
            .with_writer_properties(properties.build());
        let date_partition = match self.partition_by.as_deref() {
            Some([column]) => {
                let schema = self.arrow_schema()?;
                let is_date =
                    schema.field_with_name(column).is_ok_and(|f| f.data_type() == &ArrowType::Date32);
                is_date.then(|| column.clone())
            }
            _ => None,
        };
        Ok(TableWriter { inner, location, rows: 0, date_partition })
    }

    /// Appends `batches` and records `positions` in one commit (see [`Table::commit`]).
    pub async fn append(
        &mut self,
        batches: &[RecordBatch],
        positions: &BTreeMap<i32, i64>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        let mut writer = self.writer()?;
        for b in batches {
            writer.write(b).await?;
        }
        let files = writer.finish().await?;
        self.commit(files, positions, metadata).await
    }

    /// Commits written `files` and records `positions` (partition → last offset covered) in
    /// one commit, checked against the loaded snapshot: if another writer stored a position
    /// for any of these partitions since, nothing is committed and [`DeltaError::Conflict`]
    /// comes back. Returns the new version.
    pub async fn commit(
        &mut self,
        files: Vec<Add>,
        positions: &BTreeMap<i32, i64>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        let actions: Vec<Action> = files.into_iter().map(Action::Add).collect();
        let txns: Vec<Transaction> =
            positions.iter().map(|(&p, &o)| Transaction::new(self.app_id(p), o)).collect();
        let properties = CommitProperties::default()
            .with_application_transactions(txns)
            .with_metadata(metadata)
            .with_max_retries(15);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: self.partition_by.clone(),
            predicate: None,
        };
        let read_version = self.table.version();
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        let prepared = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .into_prepared_commit_future()
            .await;
        let commit_err = |location: &str, source: DeltaTableError| match source {
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
            } => DeltaError::Conflict { location: location.to_string() },
            source => DeltaError::Commit {
                location: location.to_string(),
                version: read_version,
                source: Box::new(source),
            },
        };
        let post = prepared
            .map_err(|e| commit_err(&self.location, e))?
            .await
            .map_err(|e| commit_err(&self.location, e))?;
        let version = post.version;
        // The commit is durable now; a failed checkpoint or log clean-up only costs read speed.
        match post.await {
            Ok(done) => self.table.state = Some(done.snapshot),
            Err(e) => {
                tracing::warn!(location = %self.location, version, error = %e, "post-commit work failed; reloading");
                self.refresh().await?;
            }
        }
        Ok(version)
    }
}

/// The value of a non-null Date32 column when every row has the same one.
fn single_date(batch: &RecordBatch, column: &str) -> Option<i32> {
    let dates = batch.column_by_name(column)?.as_any().downcast_ref::<Date32Array>()?;
    if dates.null_count() > 0 {
        return None;
    }
    let values = dates.values();
    let first = *values.first()?;
    values.iter().all(|&d| d == first).then_some(first)
}

/// Data files being written for one commit.
pub struct TableWriter {
    inner: RecordBatchWriter,
    location: String,
    rows: usize,
    /// The partition column, when the table is partitioned by one date column.
    date_partition: Option<String>,
}

impl TableWriter {
    /// Encodes and uploads a batch (split by partition values).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows();
        let location = &self.location;
        let write_err = |source| DeltaError::Write { location: location.clone(), source: Box::new(source) };
        // A stream's batch is usually all one day: then it goes to its partition as it is,
        // without the sort and copy of the general split.
        if let Some((column, day)) =
            self.date_partition.as_ref().and_then(|c| Some((c, single_date(batch, c)?)))
        {
            let values = IndexMap::from([(column.clone(), Scalar::Date(day))]);
            return self
                .inner
                .write_partition(batch.clone(), &values, WriteMode::Default)
                .await
                .map(drop)
                .map_err(write_err);
        }
        self.inner.write(batch.clone()).await.map_err(write_err)
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Closes the files; their `add` actions go to [`Table::commit`].
    pub async fn finish(mut self) -> Result<Vec<Add>> {
        if self.rows == 0 {
            return Ok(Vec::new());
        }
        let location = self.location.clone();
        self.inner.flush().await.map_err(|source| DeltaError::Write { location, source: Box::new(source) })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use deltalake::arrow::array::{Array, Date32Array, TimestampMicrosecondArray};
    use txpipe_core::event::{EventParser, Value};
    use txpipe_core::schema::Schema;

    use super::*;
    use crate::delta::{CleanRows, EVENT_DATE, clean_schema, data_files, read_rows};

    /// A clean batch of one event per time, ids made of the time and the position.
    pub(in crate::delta) fn rows(parser: &EventParser, times: &[&str]) -> RecordBatch {
        let mut rows = CleanRows::new(parser.schema());
        for (i, time) in times.iter().enumerate() {
            let event = format!(
                r#"{{"transaction_id":"t{time}{i}","account_id":"a","merchant_category":"fuel","amount":1.0,"currency":"EUR","event_time":"{time}"}}"#
            );
            let mut values: Vec<Value> = Vec::new();
            parser.parse(event.as_bytes(), &mut values).unwrap();
            rows.push(&values, 0, i as i64);
        }
        rows.finish(0).unwrap()
    }

    #[tokio::test]
    async fn one_day_and_mixed_day_batches_land_in_their_date_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::default_schema();
        let parser = EventParser::new(schema.clone());
        let location = dir.path().join("t").to_string_lossy().into_owned();
        let mut table = Table::open_or_create(
            &location,
            &BTreeMap::new(),
            clean_schema(&schema),
            Some(EVENT_DATE),
            "test",
            10,
        )
        .await
        .unwrap();
        // One day (written straight to its partition), then three rows over two days (split).
        let one_day = rows(&parser, &["2026-11-01T08:00:00Z", "2026-11-01T23:59:59Z"]);
        let mixed = rows(&parser, &["2026-11-02T00:00:00Z", "2026-11-01T12:00:00Z", "2026-11-02T09:30:00Z"]);
        table.append(&[one_day, mixed], &BTreeMap::from([(0, 2)]), serde_json::Map::new()).await.unwrap();

        let days: Vec<Option<String>> = data_files(table.delta())
            .unwrap()
            .iter()
            .map(|f| f.partition_values[EVENT_DATE].clone())
            .collect();
        assert!(
            days.contains(&Some("2026-11-01".into())) && days.contains(&Some("2026-11-02".into())),
            "{days:?}"
        );
        let mut seen = 0;
        for batch in read_rows(table.delta()).await.unwrap() {
            let dates =
                batch.column_by_name(EVENT_DATE).unwrap().as_any().downcast_ref::<Date32Array>().unwrap();
            let times = batch
                .column_by_name("event_time")
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..batch.num_rows() {
                assert_eq!(dates.value(i) as i64, times.value(i).div_euclid(86_400_000_000), "row {i}");
                seen += 1;
            }
        }
        assert_eq!(seen, 5);
    }
}
