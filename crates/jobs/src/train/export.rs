//! `train.export_features` (`--export-features FILE`): the feature matrix a run fitted and
//! evaluated on, as one Parquet file, so that another tool (scikit-learn in
//! `scripts/check_sklearn.py`) can fit the same rows and compare.
//!
//! Columns: one `Float32` column per feature, named as in `model.json` (`features.names`), in
//! the same order; then `_label` (`UInt8`, 0 or 1) and `_slice` (`UInt8`: 0 fitted,
//! 1 validation, 2 held out). Rows: the fitted slice, then the validation slice, then the
//! held-out slice, each in table order. The file is written beside its final path and renamed
//! into place, so a reader never sees half of it.

use std::path::Path;
use std::sync::Arc;

use txpipe_connectors::delta::arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt8Array};
use txpipe_connectors::delta::arrow::datatypes::{DataType, Field, Schema};
use txpipe_connectors::delta::parquet::arrow::ArrowWriter;
use txpipe_core::model::Chunks;

use crate::{JobError, Result};

/// The label column's name.
pub const LABEL: &str = "_label";
/// The slice column's name (0 fitted, 1 validation, 2 held out).
pub const SLICE: &str = "_slice";

/// Writes the slices (features, labels) under `names` to `path`.
pub fn write(path: &Path, names: &[String], slices: [&dyn Chunks; 3]) -> Result<()> {
    if let Some(clash) = names.iter().find(|n| *n == LABEL || *n == SLICE) {
        return Err(JobError::Config(txpipe_core::Error::config(
            "train.export_features",
            path.display(),
            format!("features not named {clash:?}: the export keeps {LABEL} and {SLICE} for itself"),
        )));
    }
    let mut fields: Vec<Field> = names.iter().map(|n| Field::new(n, DataType::Float32, false)).collect();
    fields.push(Field::new(LABEL, DataType::UInt8, false));
    fields.push(Field::new(SLICE, DataType::UInt8, false));
    let schema = Arc::new(Schema::new(fields));
    let partial = path.with_extension("parquet.partial");
    let file = std::fs::File::create(&partial).map_err(|e| JobError::io(&partial, e))?;
    let failed = |e: &dyn std::fmt::Display| JobError::io(&partial, std::io::Error::other(e.to_string()));
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| failed(&e))?;
    // A slice at a time, in blocks of rows, so the copy in Arrow arrays stays small.
    const BLOCK: usize = 1 << 20;
    let mut scratch = Vec::new();
    let mut written = Ok(());
    for (slice, chunks) in slices.into_iter().enumerate() {
        chunks
            .each(&mut |x, y| {
                let mut from = 0;
                while from < y.len() && written.is_ok() {
                    let to = (from + BLOCK).min(y.len());
                    let mut columns: Vec<ArrayRef> = (0..x.cols())
                        .map(|j| {
                            Arc::new(Float32Array::from(x.column_values(j, from..to, &mut scratch).to_vec()))
                                as ArrayRef
                        })
                        .collect();
                    columns.push(Arc::new(UInt8Array::from(y[from..to].to_vec())));
                    columns.push(Arc::new(UInt8Array::from(vec![slice as u8; to - from])));
                    written = RecordBatch::try_new(schema.clone(), columns)
                        .map_err(|e| failed(&e))
                        .and_then(|batch| writer.write(&batch).map_err(|e| failed(&e)));
                    from = to;
                }
            })
            .map_err(|e| JobError::io(&partial, e))?;
        std::mem::replace(&mut written, Ok(()))?;
    }
    writer.close().map_err(|e| failed(&e))?;
    std::fs::rename(&partial, path).map_err(|e| JobError::io(path, e))
}
