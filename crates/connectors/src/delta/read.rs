//! Reading a table's rows at its loaded version, without a query engine: every active data
//! file through the Parquet reader, with the partition column put back from the log.
//!
//! In: a loaded table. Out: record batches in the table's own column order.

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, Date32Array, RecordBatch};
use deltalake::arrow::datatypes::DataType;
use deltalake::datafile::DataFileReader;
use deltalake::datafile::reader::ParquetFileReader;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;

fn date_days(text: &str) -> Option<i32> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((date - epoch).num_days() as i32)
}

/// Every row of the loaded version.
pub async fn read_rows(table: &DeltaTable) -> Result<Vec<RecordBatch>, DeltaTableError> {
    let snapshot = table.snapshot()?;
    let schema = snapshot.snapshot().arrow_schema();
    let files: Vec<_> = snapshot.log_data().iter().collect();
    let reader = ParquetFileReader::new(table.object_store());
    let mut out = Vec::new();
    for file in files {
        let partition_values = file.partition_values_map();
        let batches: Vec<RecordBatch> =
            reader.read_file(file.object_store_path()).await?.try_collect().await?;
        for b in batches {
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
            for field in schema.fields() {
                let column = match b.column_by_name(field.name()) {
                    Some(c) => c.clone(),
                    None if field.data_type() == &DataType::Date32 => {
                        let days =
                            partition_values.get(field.name()).cloned().flatten().and_then(|v| date_days(&v));
                        Arc::new(Date32Array::from(vec![days; b.num_rows()])) as ArrayRef
                    }
                    None => {
                        return Err(DeltaTableError::Generic(format!(
                            "column {} missing from {}",
                            field.name(),
                            file.path()
                        )));
                    }
                };
                columns.push(column);
            }
            out.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
    }
    Ok(out)
}
