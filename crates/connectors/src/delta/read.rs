//! Reading a table's rows at its loaded version, without a query engine: every active data
//! file through the Parquet reader, with the partition column put back from the log.
//!
//! In: a loaded table. Out: record batches in the table's own column order.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, Date32Array, RecordBatch};
use deltalake::arrow::datatypes::DataType;
use deltalake::datafile::DataFileReader;
use deltalake::datafile::reader::ParquetFileReader;
use deltalake::{DeltaTable, DeltaTableError, Path};
use futures::TryStreamExt;

fn date_days(text: &str) -> Option<i32> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((date - epoch).num_days() as i32)
}

/// One active data file: where it is and the partition values the log gives it.
#[derive(Debug, Clone)]
pub struct DataFile {
    pub path: Path,
    pub size: i64,
    pub partition_values: HashMap<String, Option<String>>,
}

/// The active data files of the loaded version.
pub fn data_files(table: &DeltaTable) -> Result<Vec<DataFile>, DeltaTableError> {
    let snapshot = table.snapshot()?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| DataFile {
            path: f.object_store_path(),
            size: f.size(),
            partition_values: f.partition_values_map(),
        })
        .collect())
}

/// The rows of one data file, in the table's column order (partition columns put back).
pub async fn read_file(table: &DeltaTable, file: &DataFile) -> Result<Vec<RecordBatch>, DeltaTableError> {
    let schema = table.snapshot()?.snapshot().arrow_schema();
    let reader = ParquetFileReader::new(table.object_store());
    let batches: Vec<RecordBatch> = reader.read_file(file.path.clone()).await?.try_collect().await?;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column = match b.column_by_name(field.name()) {
                Some(c) => c.clone(),
                None if field.data_type() == &DataType::Date32 => {
                    let days = file
                        .partition_values
                        .get(field.name())
                        .cloned()
                        .flatten()
                        .and_then(|v| date_days(&v));
                    Arc::new(Date32Array::from(vec![days; b.num_rows()])) as ArrayRef
                }
                None => {
                    return Err(DeltaTableError::Generic(format!(
                        "column {} missing from {}",
                        field.name(),
                        file.path
                    )));
                }
            };
            columns.push(column);
        }
        out.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    Ok(out)
}

/// Every row of the loaded version.
pub async fn read_rows(table: &DeltaTable) -> Result<Vec<RecordBatch>, DeltaTableError> {
    let mut out = Vec::new();
    for file in data_files(table)? {
        out.extend(read_file(table, &file).await?);
    }
    Ok(out)
}

/// The values of a string column across batches (nulls left out); None when a batch lacks the
/// column or it is not a string column.
pub fn string_values(batches: &[RecordBatch], column: &str) -> Option<Vec<String>> {
    use deltalake::arrow::array::{Array, StringArray};
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(column)?.as_any().downcast_ref::<StringArray>()?;
        out.extend(c.iter().flatten().map(str::to_string));
    }
    Some(out)
}

/// A table read for training: the version read, and the requested columns of every row.
#[derive(Debug)]
pub struct Projection {
    pub version: u64,
    /// One batch per data file piece, each with exactly the requested columns in the requested
    /// order; a column the table does not have is all null (the caller decides whether that is
    /// allowed).
    pub batches: Vec<RecordBatch>,
    /// Requested columns the table does not have.
    pub absent: Vec<String>,
}

/// Reads `columns` of every row of the table at `location`, at `version` (None: the newest),
/// decoding only those columns of each Parquet file, `parallel` files at a time (in file order).
pub async fn read_columns(
    location: &str,
    storage_options: &std::collections::BTreeMap<String, String>,
    version: Option<u64>,
    columns: &[&str],
    parallel: usize,
) -> Result<Projection, super::DeltaError> {
    let scan = Scan::new(location, storage_options, version, columns).await?;
    let (version, absent) = (scan.version, scan.absent.clone());
    let mut batches = Vec::new();
    scan.each_file(parallel, |b| {
        batches.extend(b);
        Ok::<_, super::DeltaError>(())
    })
    .await?;
    Ok(Projection { version, batches, absent })
}

/// `columns` of a table's rows at a version, read a data file at a time (see [`read_columns`]).
pub struct Scan {
    location: String,
    pub version: u64,
    /// Requested columns the table does not have (all null in the batches).
    pub absent: Vec<String>,
    store: deltalake::logstore::ObjectStoreRef,
    out_schema: deltalake::arrow::datatypes::SchemaRef,
    partition_columns: Vec<String>,
    files: Vec<DataFile>,
    rows: u64,
    rows_estimated: bool,
}

/// Bytes of Parquet a row is taken to fill when no file of the table says its row count: fewer
/// than txpipe's own files take (about 25), so that an estimate errs towards more rows.
const ESTIMATED_BYTES_PER_ROW: u64 = 8;

/// The rows of data files given as (row count in the log, size in bytes): the counts where the
/// log has them; a file without one estimated from its size, at the bytes a row takes in the
/// counted files (or [`ESTIMATED_BYTES_PER_ROW`] when none is counted). Also whether any file
/// was estimated.
fn count_rows(files: impl Iterator<Item = (Option<u64>, u64)>) -> (u64, bool) {
    let (mut counted_rows, mut counted_bytes, mut uncounted_bytes, mut estimated) = (0u64, 0u64, 0u64, false);
    for (rows, size) in files {
        match rows {
            Some(n) => {
                counted_rows += n;
                counted_bytes += size;
            }
            None => {
                uncounted_bytes += size;
                estimated = true;
            }
        }
    }
    let per_row = counted_bytes.checked_div(counted_rows).map_or(ESTIMATED_BYTES_PER_ROW, |b| b.max(1));
    (counted_rows + uncounted_bytes.div_ceil(per_row), estimated)
}

impl Scan {
    pub async fn new(
        location: &str,
        storage_options: &std::collections::BTreeMap<String, String>,
        version: Option<u64>,
        columns: &[&str],
    ) -> Result<Scan, super::DeltaError> {
        use deltalake::arrow::datatypes::{Field, Schema};

        let mut table = super::open_existing(location, storage_options).await?;
        let read_err = |source: DeltaTableError| super::DeltaError::Read {
            location: location.to_string(),
            source: Box::new(source),
        };
        if let Some(v) = version {
            table.load_version(v).await.map_err(read_err)?;
        }
        let version =
            table.version().ok_or_else(|| read_err(DeltaTableError::NotATable(location.to_string())))?;
        let snapshot = table.snapshot().map_err(read_err)?;
        let table_schema = snapshot.snapshot().arrow_schema();
        let partition_columns: Vec<String> = snapshot.metadata().partition_columns().to_vec();
        let (rows, rows_estimated) = count_rows(
            snapshot.log_data().iter().map(|f| (f.num_records().map(|n| n as u64), f.size().max(0) as u64)),
        );
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| match table_schema.field_with_name(c) {
                Ok(f) => f.clone().with_nullable(true),
                Err(_) => Field::new(*c, DataType::Null, true),
            })
            .collect();
        let absent: Vec<String> =
            fields.iter().filter(|f| f.data_type() == &DataType::Null).map(|f| f.name().clone()).collect();
        Ok(Scan {
            location: location.to_string(),
            version,
            absent,
            store: table.object_store(),
            out_schema: Arc::new(Schema::new(fields)),
            partition_columns,
            files: data_files(&table).map_err(read_err)?,
            rows,
            rows_estimated,
        })
    }

    /// The rows of the version, as its log counts them; the files whose statistics do not say
    /// are estimated from their size (see [`Scan::rows_estimated`]).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether [`Scan::rows`] estimated some files' rows from their size.
    pub fn rows_estimated(&self) -> bool {
        self.rows_estimated
    }

    /// The batches of each data file, in file order, `parallel` files read at once — each as a
    /// task of its own, so that their decoding runs on the runtime's threads side by side (the
    /// futures of one stream are polled on one thread). Called within a Tokio runtime.
    pub fn files(
        self,
        parallel: usize,
    ) -> impl futures::Stream<Item = Result<Vec<RecordBatch>, super::DeltaError>> + Send {
        use futures::StreamExt;

        let Scan { location, store, out_schema, partition_columns, files, .. } = self;
        futures::stream::iter(files)
            .map(move |file: DataFile| {
                let (store, out_schema, partition_columns) =
                    (store.clone(), out_schema.clone(), partition_columns.clone());
                tokio::spawn(
                    async move { read_projected(store, &file, &out_schema, &partition_columns).await },
                )
            })
            .buffered(parallel.max(1))
            .map(move |joined| {
                let read = joined
                    .map_err(|e| DeltaTableError::Generic(format!("a task reading a data file ended: {e}")))
                    .and_then(|read| read);
                read.map_err(|source| super::DeltaError::Read {
                    location: location.clone(),
                    source: Box::new(source),
                })
            })
    }

    /// Calls `each` with the batches of each data file, in file order, `parallel` files read
    /// at once.
    pub async fn each_file<E: From<super::DeltaError>>(
        self,
        parallel: usize,
        mut each: impl FnMut(Vec<RecordBatch>) -> Result<(), E>,
    ) -> Result<(), E> {
        use futures::StreamExt;

        let mut files = std::pin::pin!(self.files(parallel));
        while let Some(batches) = files.next().await {
            each(batches?)?;
        }
        Ok(())
    }
}

// parquet 59 deprecates `ParquetObjectReader` in favour of a hand-written `AsyncFileReader`;
// delta-rs 1.1 reads its own files with it, and so does this until delta-rs moves.
/// The rows of one data file with exactly the columns of `out_schema`, in its order: only those
/// columns are decoded; a date partition column comes back from the log's partition values, and
/// a column the file lacks is all null.
#[allow(deprecated)]
pub(crate) async fn read_projected(
    store: deltalake::logstore::ObjectStoreRef,
    file: &DataFile,
    out_schema: &deltalake::arrow::datatypes::SchemaRef,
    partition_columns: &[String],
) -> Result<Vec<RecordBatch>, DeltaTableError> {
    use deltalake::arrow::array::new_null_array;
    use deltalake::parquet::arrow::ProjectionMask;
    use deltalake::parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};

    let reader = ParquetObjectReader::new(store, file.path.clone()).with_file_size(file.size as u64);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let wanted: Vec<&str> = out_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| builder.schema().field_with_name(n).is_ok())
        .collect();
    let mask = ProjectionMask::columns(builder.parquet_schema(), wanted.iter().copied());
    let batches: Vec<RecordBatch> = builder.with_projection(mask).build()?.try_collect().await?;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let n = b.num_rows();
        let columns: Vec<ArrayRef> = out_schema
            .fields()
            .iter()
            .map(|f| match b.column_by_name(f.name()) {
                Some(c) => c.clone(),
                None if partition_columns.contains(f.name()) && f.data_type() == &DataType::Date32 => {
                    let days =
                        file.partition_values.get(f.name()).cloned().flatten().and_then(|v| date_days(&v));
                    Arc::new(Date32Array::from(vec![days; n])) as ArrayRef
                }
                None => new_null_array(f.data_type(), n),
            })
            .collect();
        out.push(RecordBatch::try_new(out_schema.clone(), columns)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_a_row_count_are_estimated_from_their_size() {
        // Every file counted: the counts.
        assert_eq!(count_rows([(Some(100), 2_500), (Some(50), 1_250)].into_iter()), (150, false));
        // One not counted: at the counted files' 25 bytes a row (rounded up).
        assert_eq!(count_rows([(Some(100), 2_500), (None, 1_001)].into_iter()), (141, true));
        // None counted: at 8 bytes a row, more rows than such files hold.
        assert_eq!(count_rows([(None, 800), (None, 1)].into_iter()), (101, true));
        // Counted files of no rows do not divide by zero.
        assert_eq!(count_rows([(Some(0), 100), (None, 10)].into_iter()), (2, true));
        assert_eq!(count_rows(std::iter::empty()), (0, false));
    }
}
