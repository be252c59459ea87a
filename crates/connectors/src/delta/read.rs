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
