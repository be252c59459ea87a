//! Train from files: the steps of [`spill`]'s module documentation, for a table of more rows
//! than `train.max_rows_in_memory`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use txpipe_connectors::delta;
use txpipe_core::event::Value;
use txpipe_core::features::{FeatureSpec, History};

use super::spill::{self, Record, SpilledSlice};
use super::{Prepared, SliceData, Slicing, Stages, TrainJob, no_rows, stage_done};
use crate::rows::Rows;
use crate::{JobError, Result};

/// Bytes of rows sorted in memory at once (a run).
const RUN_BYTES: usize = 64 << 20;

/// Every row of the table read into runs sorted by id, in a folder removed at the end.
pub(super) struct Sorted {
    dir: Arc<tempfile::TempDir>,
    by_id: spill::Sorter,
    /// Every data file had the Kafka position columns: the table order is by position.
    positions: bool,
    version: u64,
    read: u64,
}

fn io(dir: &std::path::Path) -> impl Fn(std::io::Error) -> JobError + '_ {
    move |e| JobError::io(dir, e)
}

/// Reads the table a data file at a time into runs sorted by id: the files read here, their
/// rows encoded and sorted on a blocking thread (two files in hand at most).
pub(super) async fn read(job: &TrainJob, label: usize, scan: delta::Scan) -> Result<Sorted> {
    use futures::StreamExt;

    let c = &job.settings.config;
    let base = if c.spill_dir.is_empty() { std::env::temp_dir() } else { PathBuf::from(&c.spill_dir) };
    let dir = tempfile::Builder::new()
        .prefix("txpipe-train-")
        .tempdir_in(&base)
        .map_err(|e| JobError::io(&base, e))?;
    let version = scan.version;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (schema, at) = (job.schema.clone(), dir.path().to_path_buf());
    let sorting = tokio::task::spawn_blocking(move || sort_by_id(&schema, label, &at, rx));
    let mut files = std::pin::pin!(scan.files(c.read_parallelism));
    let mut read = Ok(());
    while let Some(batches) = files.next().await {
        match batches {
            // A closed channel: the sorting side failed; its error is the one to report.
            Ok(b) => {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                read = Err(e);
                break;
            }
        }
    }
    drop(tx);
    let sorted = sorting.await.map_err(|e| JobError::Internal(format!("the sorting task: {e}")))?;
    read?;
    let (by_id, positions, read) = sorted?;
    Ok(Sorted { dir: Arc::new(dir), by_id, positions, version, read })
}

/// Every row with an id, as a record, into runs sorted by id; whether every file had the Kafka
/// positions, and the rows read.
fn sort_by_id(
    schema: &txpipe_core::schema::Schema,
    label: usize,
    dir: &std::path::Path,
    mut files: tokio::sync::mpsc::Receiver<Vec<txpipe_connectors::delta::arrow::array::RecordBatch>>,
) -> Result<(spill::Sorter, bool, u64)> {
    let mut by_id = spill::Sorter::new(dir, "id", RUN_BYTES, spill::by_id);
    let id = schema.id_index();
    let (mut positions, mut seq, mut read) = (true, 0u64, 0u64);
    let (mut rec, mut room): (Vec<u8>, Vec<Value<'static>>) = (Vec::new(), Vec::new());
    while let Some(batches) = files.blocking_recv() {
        let (rows, at) = Rows::unordered(schema, &batches, Some(label))?;
        positions &= at.is_some();
        read += rows.read;
        let mut values = recycle(std::mem::take(&mut room));
        for (k, &r) in rows.order.iter().enumerate() {
            seq += 1;
            // A row without an id is not used (as in memory).
            let Some(tx) = rows.str_of(id, r) else { continue };
            rows.values_into(r, &mut values);
            // In memory the ids are let go of once the rows are ordered: the features never
            // see them.
            values[id] = Value::Null;
            rec.clear();
            let position = at.as_ref().map_or((0, 0), |a| a[k]);
            Record::encode(&mut rec, position, rows.time_of(r), seq, tx, &values);
            by_id.push(&rec).map_err(io(dir))?;
        }
        room = recycle(values);
    }
    Ok((by_id, positions, read))
}

/// A row's values borrowed from the next record: the vector's room kept from row to row.
fn recycle<'b>(mut v: Vec<Value<'_>>) -> Vec<Value<'b>> {
    v.clear();
    v.into_iter().map(|_| Value::Null).collect()
}

/// The first row of each id in table order, into one file in table order, and their event
/// times into another; returns the file of rows and the times' range.
fn order(
    sorted: &mut Option<spill::Sorter>,
    dir: &std::path::Path,
    positions: bool,
) -> std::io::Result<(spill::RecordFile, i64, i64)> {
    let order: spill::Order = if positions { spill::by_position } else { spill::by_time };
    let mut by_id = sorted.take().expect("sorted once").finish()?;
    let mut table = spill::Sorter::new(dir, "table", RUN_BYTES, order);
    let mut first: Vec<u8> = Vec::new();
    while let Some(rec) = by_id.next_record()? {
        let same = !first.is_empty() && Record::of(&first).id == Record::of(rec).id;
        if !same && !first.is_empty() {
            table.push(&first)?;
        }
        if !same || order(rec, &first).is_lt() {
            first.clear();
            first.extend_from_slice(rec);
        }
    }
    if !first.is_empty() {
        table.push(&first)?;
    }
    drop(by_id);
    let mut merged = table.finish()?;
    let mut rows = spill::RecordWriter::create(dir.join("ordered"))?;
    let mut times = BufWriter::with_capacity(1 << 20, File::create(dir.join("times"))?);
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    while let Some(rec) = merged.next_record()? {
        let t = Record::of(rec).time;
        (lo, hi) = (lo.min(t), hi.max(t));
        times.write_all(&t.to_le_bytes())?;
        rows.push(rec)?;
    }
    times.flush()?;
    drop(merged);
    // The runs are read: their room on disk back.
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "run") {
            std::fs::remove_file(path)?;
        }
    }
    Ok((rows.finish()?, lo, hi))
}

/// A spilled slice and the folder its file is in.
struct InFiles {
    slice: SpilledSlice,
    _dir: Arc<tempfile::TempDir>,
}

impl txpipe_core::model::Chunks for InFiles {
    fn rows(&self) -> usize {
        self.slice.rows()
    }

    fn each(&self, each: &mut dyn FnMut(&txpipe_core::model::Matrix, &[u8])) -> std::io::Result<()> {
        self.slice.each(each)
    }
}

impl SliceData for InFiles {
    fn labels(&self) -> &[u8] {
        &self.slice.labels
    }

    fn read_from_files(&self) -> bool {
        true
    }
}

/// Orders the rows read, then computes the feature statistics and every row's features, a
/// pass over the ordered file each.
pub(super) fn prepare(
    job: &TrainJob,
    spec: &FeatureSpec,
    label: usize,
    sorted: Sorted,
    started: Instant,
    stages: &Stages,
) -> Result<Prepared> {
    let Sorted { dir, by_id, positions, version, read } = sorted;
    let d = dir.path();
    stages.begin(format!("ordering {read} rows in files"))?;
    let (ordered, lo, hi) = order(&mut Some(by_id), d, positions).map_err(io(d))?;
    let rows_used = ordered.records;
    no_rows(job, version, rows_used)?;
    let read_s = started.elapsed().as_secs_f64();
    stage_done("read", read_s);

    stages.begin(format!("features of {rows_used} rows, from files"))?;
    let started = Instant::now();
    let [validation, holdout] = Slicing::ranks(rows_used as usize, &job.settings.config);
    let times = d.join("times");
    let slicing = Slicing {
        validation_from: spill::select(&times, lo, hi, validation as u64).map_err(io(d))?,
        holdout_from: spill::select(&times, lo, hi, holdout as u64).map_err(io(d))?,
        time_from: lo,
        time_to: hi,
    };
    // The statistics from the fitted rows, in table order.
    let mut fitter = spec.fitter(&job.schema);
    let mut reader = ordered.reader().map_err(io(d))?;
    let mut room: Vec<Value<'static>> = Vec::new();
    while let Some(rec) = reader.next_record().map_err(io(d))? {
        let r = Record::of(rec);
        if r.time < slicing.validation_from {
            let mut values = recycle(std::mem::take(&mut room));
            r.values_into(&mut values).map_err(io(d))?;
            fitter.add(&values);
            room = recycle(values);
        }
    }
    let fitted = fitter.finish();
    let features = fitted.bind(&job.schema)?;
    let (width, groups) = (features.width(), features.one_hot_groups());
    let mut slices = Vec::with_capacity(3);
    for s in 0..3 {
        slices.push(SpilledSlice::create(d.join(format!("slice-{s}")), width, &groups).map_err(io(d))?);
    }
    // Every row's features, the account history carried through the table.
    let (mut history, mut out) = (History::new(), vec![0f32; width]);
    let mut reader = ordered.reader().map_err(io(d))?;
    while let Some(rec) = reader.next_record().map_err(io(d))? {
        let r = Record::of(rec);
        let mut values = recycle(std::mem::take(&mut room));
        r.values_into(&mut values).map_err(io(d))?;
        features.row(&values, &mut history, &mut out);
        if let Value::Bool(y) = values[label] {
            slices[slicing.of(r.time)].push(&out, u8::from(y)).map_err(io(d))?;
        }
        room = recycle(values);
    }
    drop(history);
    for s in &mut slices {
        s.seal().map_err(io(d))?;
    }
    std::fs::remove_file(&ordered.path).map_err(io(d))?;
    std::fs::remove_file(&times).map_err(io(d))?;
    let features_s = started.elapsed().as_secs_f64();
    stage_done("features", features_s);
    let names = features.names().to_vec();
    let mut slices =
        slices.into_iter().map(|slice| Box::new(InFiles { slice, _dir: dir.clone() }) as Box<dyn SliceData>);
    let slices = [(); 3].map(|_| slices.next().expect("three slices"));
    Ok(Prepared {
        delta_version: version,
        rows_read: read,
        rows_used,
        slicing,
        fitted,
        names,
        slices,
        read_s,
        features_s,
    })
}
