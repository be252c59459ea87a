//! Data files being written for one commit: batches encoded to Parquet and uploaded as they
//! come; nothing is visible until [`Table::commit`] takes their `add` actions.

use delta_kernel::expressions::Scalar;
use deltalake::arrow::array::{Array, Date32Array, RecordBatch};
use deltalake::arrow::datatypes::DataType as ArrowType;
use deltalake::kernel::Add;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use indexmap::IndexMap;

use super::errors::{DeltaError, Result};
use super::table::Table;

impl Table {
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
