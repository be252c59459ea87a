//! Training beyond memory: the rows and the feature matrices in files, so that train's memory
//! does not grow with the row count.
//!
//! The same steps as in memory, each a pass over files:
//!
//! 1. every data file's rows, as read, into runs sorted by transaction id ([`Sorter`]);
//! 2. the runs merged by id: the first row of each id in table order kept (as [`Rows::new`]
//!    keeps it), into runs sorted in table order (Kafka position, or event time and id);
//! 3. those merged into one file of the rows in table order, and a file of their event times,
//!    whose quantiles (the slices' bounds) are found in a few passes ([`select`]);
//! 4. the feature statistics from the fitted rows, then every row's features with the account
//!    history carried, written a chunk of rows at a time into one file per slice
//!    ([`SpilledSlice`]), which the fit and the evaluation read back chunk by chunk.
//!
//! The rows come out in the order, with the values, that [`Rows::new`] gives, and the fit
//! over chunks is the fit over one matrix (see `txpipe_core::model::Chunks`): the model is the
//! in-memory path's, bit for bit. What stays in memory per row: the labels (1 byte) and, at
//! the evaluation, the probabilities of a slice (8 bytes, and 8 for their sort); per account,
//! the history (as in score).
//!
//! [`Rows::new`]: crate::rows::Rows::new

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use txpipe_core::event::Value;
use txpipe_core::model::{Chunks, Matrix, MatrixBuilder};

/// Bytes of a record before its id: partition, offset, event time, sequence, id length.
const HEADER: usize = 8 * 4 + 4;

/// A row as spilled: its Kafka position (0, 0 when the table has none), event time (0 when
/// missing), its place in the order read, its id, then the schema's values.
pub struct Record<'a> {
    pub partition: i64,
    pub offset: i64,
    pub time: i64,
    pub seq: u64,
    pub id: &'a [u8],
    values: &'a [u8],
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> Record<'a> {
    pub fn of(b: &'a [u8]) -> Record<'a> {
        let id_len = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes")) as usize;
        Record {
            partition: i64_at(b, 0),
            offset: i64_at(b, 8),
            time: i64_at(b, 16),
            seq: i64_at(b, 24) as u64,
            id: &b[HEADER..HEADER + id_len],
            values: &b[HEADER + id_len..],
        }
    }

    /// Appends a record to `out`.
    pub fn encode(
        out: &mut Vec<u8>,
        (partition, offset): (i64, i64),
        time: i64,
        seq: u64,
        id: &str,
        values: &[Value<'_>],
    ) {
        for v in [partition, offset, time, seq as i64] {
            out.extend(v.to_le_bytes());
        }
        out.extend((id.len() as u32).to_le_bytes());
        out.extend(id.as_bytes());
        for v in values {
            match v {
                Value::Null => out.push(0),
                Value::Str(s) => {
                    out.push(1);
                    out.extend((s.len() as u32).to_le_bytes());
                    out.extend(s.as_bytes());
                }
                Value::Double(d) => {
                    out.push(2);
                    out.extend(d.to_le_bytes());
                }
                Value::Long(l) => {
                    out.push(3);
                    out.extend(l.to_le_bytes());
                }
                Value::Bool(b) => out.extend([4, u8::from(*b)]),
                Value::Timestamp(t) => {
                    out.push(5);
                    out.extend(t.to_le_bytes());
                }
            }
        }
    }

    /// The row's values in schema order.
    pub fn values_into(&self, out: &mut Vec<Value<'a>>) -> std::io::Result<()> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "a spilled row is damaged");
        out.clear();
        let (b, mut at) = (self.values, 0);
        while at < b.len() {
            let tag = b[at];
            at += 1;
            let fixed =
                |at: usize| b.get(at..at + 8).map(|s| i64::from_le_bytes(s.try_into().expect("8 bytes")));
            out.push(match tag {
                0 => Value::Null,
                1 => {
                    let len = b.get(at..at + 4).ok_or_else(bad)?;
                    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                    let text = b.get(at + 4..at + 4 + len).ok_or_else(bad)?;
                    at += 4 + len;
                    Value::Str(std::borrow::Cow::Borrowed(std::str::from_utf8(text).map_err(|_| bad())?))
                }
                2 | 3 | 5 => {
                    let v = fixed(at).ok_or_else(bad)?;
                    at += 8;
                    match tag {
                        2 => Value::Double(f64::from_bits(v as u64)),
                        3 => Value::Long(v),
                        _ => Value::Timestamp(v),
                    }
                }
                4 => {
                    let v = *b.get(at).ok_or_else(bad)?;
                    at += 1;
                    Value::Bool(v != 0)
                }
                _ => return Err(bad()),
            });
        }
        Ok(())
    }
}

/// How records are ordered: a total order (the sequence breaks every tie).
pub type Order = fn(&[u8], &[u8]) -> Ordering;

/// By id, then the order read.
pub fn by_id(a: &[u8], b: &[u8]) -> Ordering {
    let (a, b) = (Record::of(a), Record::of(b));
    a.id.cmp(b.id).then(a.seq.cmp(&b.seq))
}

/// By Kafka position, then the order read (as [`crate::rows::Rows::new`]).
pub fn by_position(a: &[u8], b: &[u8]) -> Ordering {
    let (a, b) = (Record::of(a), Record::of(b));
    (a.partition, a.offset, a.seq).cmp(&(b.partition, b.offset, b.seq))
}

/// By event time, then id, then the order read (as [`crate::rows::Rows::new`] for a table
/// without Kafka positions).
pub fn by_time(a: &[u8], b: &[u8]) -> Ordering {
    let (a, b) = (Record::of(a), Record::of(b));
    (a.time, a.id, a.seq).cmp(&(b.time, b.id, b.seq))
}

/// Sorts records of any number in runs of at most `budget` bytes, each sorted in memory and
/// written to a file; [`Sorter::finish`] merges them.
pub struct Sorter {
    dir: PathBuf,
    name: &'static str,
    budget: usize,
    order: Order,
    bytes: Vec<u8>,
    index: Vec<Range<usize>>,
    runs: Vec<PathBuf>,
}

impl Sorter {
    pub fn new(dir: &Path, name: &'static str, budget: usize, order: Order) -> Sorter {
        Sorter {
            dir: dir.to_path_buf(),
            name,
            budget,
            order,
            bytes: Vec::new(),
            index: Vec::new(),
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, record: &[u8]) -> std::io::Result<()> {
        if self.bytes.len() + record.len() > self.budget && !self.index.is_empty() {
            self.spill()?;
        }
        self.index.push(self.bytes.len()..self.bytes.len() + record.len());
        self.bytes.extend_from_slice(record);
        Ok(())
    }

    fn spill(&mut self) -> std::io::Result<()> {
        let (bytes, order) = (&self.bytes, self.order);
        self.index.sort_unstable_by(|a, b| order(&bytes[a.clone()], &bytes[b.clone()]));
        let path = self.dir.join(format!("{}-{}.run", self.name, self.runs.len()));
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        for r in &self.index {
            write_record(&mut w, &bytes[r.clone()])?;
        }
        w.flush()?;
        self.runs.push(path);
        self.bytes.clear();
        self.index.clear();
        Ok(())
    }

    /// The records in order.
    pub fn finish(mut self) -> std::io::Result<Merge> {
        if !self.index.is_empty() {
            self.spill()?;
        }
        let mut merge = Merge { runs: Vec::new(), heap: BinaryHeap::new(), current: Vec::new() };
        for (run, path) in self.runs.iter().enumerate() {
            let mut r = BufReader::with_capacity(1 << 18, File::open(path)?);
            let mut rec = Vec::new();
            if read_record(&mut r, &mut rec)? {
                merge.heap.push(Head { rec, run, order: self.order });
            }
            merge.runs.push(r);
        }
        Ok(merge)
    }
}

fn write_record(w: &mut impl Write, rec: &[u8]) -> std::io::Result<()> {
    w.write_all(&(rec.len() as u32).to_le_bytes())?;
    w.write_all(rec)
}

/// The next record of `r` into `rec`; false at the end.
fn read_record(r: &mut impl Read, rec: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    rec.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(rec)?;
    Ok(true)
}

/// A run's next record, ordered so that the heap's top is the least.
struct Head {
    rec: Vec<u8>,
    run: usize,
    order: Order,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.order)(&other.rec, &self.rec).then(other.run.cmp(&self.run))
    }
}

/// The records of sorted runs, merged.
pub struct Merge {
    runs: Vec<BufReader<File>>,
    heap: BinaryHeap<Head>,
    current: Vec<u8>,
}

impl Merge {
    pub fn next_record(&mut self) -> std::io::Result<Option<&[u8]>> {
        let Some(mut head) = self.heap.pop() else { return Ok(None) };
        std::mem::swap(&mut self.current, &mut head.rec);
        if read_record(&mut self.runs[head.run], &mut head.rec)? {
            self.heap.push(head);
        }
        Ok(Some(&self.current))
    }
}

/// A file of records written once and read from the start any number of times.
pub struct RecordFile {
    pub path: PathBuf,
    pub records: u64,
}

impl RecordFile {
    pub fn reader(&self) -> std::io::Result<RecordReader> {
        Ok(RecordReader { r: BufReader::with_capacity(1 << 20, File::open(&self.path)?), rec: Vec::new() })
    }
}

pub struct RecordReader {
    r: BufReader<File>,
    rec: Vec<u8>,
}

impl RecordReader {
    pub fn next_record(&mut self) -> std::io::Result<Option<&[u8]>> {
        Ok(read_record(&mut self.r, &mut self.rec)?.then_some(&self.rec[..]))
    }
}

/// Writes records into a [`RecordFile`].
pub struct RecordWriter {
    w: BufWriter<File>,
    file: RecordFile,
}

impl RecordWriter {
    pub fn create(path: PathBuf) -> std::io::Result<RecordWriter> {
        let w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        Ok(RecordWriter { w, file: RecordFile { path, records: 0 } })
    }

    pub fn push(&mut self, rec: &[u8]) -> std::io::Result<()> {
        self.file.records += 1;
        write_record(&mut self.w, rec)
    }

    pub fn finish(mut self) -> std::io::Result<RecordFile> {
        self.w.flush()?;
        Ok(self.file)
    }
}

/// The values at the ranks `ranks` (0-based, in increasing order of value) of the `n` i64s of
/// `path`, each all of whose values lie in `lo..=hi`: a few passes over the file, each narrowing
/// the range to one of 65,536 buckets.
pub fn select(path: &Path, lo: i64, hi: i64, rank: u64) -> std::io::Result<i64> {
    const BUCKETS: i128 = 1 << 16;
    let (mut lo, mut hi, mut rank) = (lo as i128, hi as i128, rank);
    while lo < hi {
        let width = (hi - lo + 1 + BUCKETS - 1) / BUCKETS;
        let mut counts = vec![0u64; BUCKETS as usize];
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut buf = [0u8; 8];
        loop {
            match r.read_exact(&mut buf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let v = i64::from_le_bytes(buf) as i128;
            if (lo..=hi).contains(&v) {
                counts[((v - lo) / width) as usize] += 1;
            }
        }
        let mut below = 0;
        let bucket = counts
            .iter()
            .position(|&c| {
                below += c;
                below > rank
            })
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "fewer values than the rank")
            })?;
        rank -= below - counts[bucket];
        lo += bucket as i128 * width;
        hi = hi.min(lo + width - 1);
    }
    Ok(lo as i64)
}

/// Rows of features per chunk of a spilled slice: a multiple of `CHUNK_MULTIPLE`.
const CHUNK: usize = 4 * txpipe_core::model::CHUNK_MULTIPLE;

/// One slice's feature matrix in a file, a chunk of rows at a time, and its labels in memory.
pub struct SpilledSlice {
    path: PathBuf,
    width: usize,
    groups: Vec<Range<usize>>,
    building: MatrixBuilder,
    writer: Option<BufWriter<File>>,
    chunks: Vec<usize>,
    pub labels: Vec<u8>,
}

impl SpilledSlice {
    pub fn create(path: PathBuf, width: usize, groups: &[Range<usize>]) -> std::io::Result<SpilledSlice> {
        let writer = Some(BufWriter::with_capacity(1 << 20, File::create(&path)?));
        Ok(SpilledSlice {
            path,
            width,
            groups: groups.to_vec(),
            building: MatrixBuilder::new(width, groups, CHUNK),
            writer,
            chunks: Vec::new(),
            labels: Vec::new(),
        })
    }

    pub fn push(&mut self, row: &[f32], label: u8) -> std::io::Result<()> {
        self.building.push(row);
        self.labels.push(label);
        if self.building.rows() == CHUNK {
            self.write_chunk()?;
        }
        Ok(())
    }

    fn write_chunk(&mut self) -> std::io::Result<()> {
        let rows = self.building.rows();
        if rows > 0 {
            let w = self.writer.as_mut().expect("a slice is written until sealed");
            self.building.drain_to(w)?;
            self.chunks.push(rows);
        }
        Ok(())
    }

    /// The last rows written, the file closed: the slice can be read.
    pub fn seal(&mut self) -> std::io::Result<()> {
        self.write_chunk()?;
        if let Some(mut w) = self.writer.take() {
            w.flush()?;
        }
        Ok(())
    }
}

impl Chunks for SpilledSlice {
    fn rows(&self) -> usize {
        self.labels.len()
    }

    fn each(&self, each: &mut dyn FnMut(&Matrix, &[u8])) -> std::io::Result<()> {
        let mut r = BufReader::with_capacity(1 << 20, File::open(&self.path)?);
        let mut at = 0;
        for &rows in &self.chunks {
            let mut b = MatrixBuilder::new(self.width, &self.groups, rows);
            b.fill_from(rows, &mut r)?;
            each(&b.finish(), &self.labels[at..at + rows]);
            at += rows;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let values = [
            Value::Str("a€".into()),
            Value::Null,
            Value::Double(-1.5),
            Value::Long(7),
            Value::Bool(true),
            Value::Timestamp(-3),
        ];
        let mut b = Vec::new();
        Record::encode(&mut b, (2, 99), 1234, 5, "id-1", &values);
        let r = Record::of(&b);
        assert_eq!((r.partition, r.offset, r.time, r.seq, r.id), (2, 99, 1234, 5, &b"id-1"[..]));
        let mut out = Vec::new();
        r.values_into(&mut out).unwrap();
        assert_eq!(out, values);
    }

    #[test]
    fn runs_merge_into_one_order_and_ranks_are_found_by_passes() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as i64 % 100 - 50
        };
        // A budget of a few records a run: many runs.
        let mut sorter = Sorter::new(dir.path(), "t", 400, by_time);
        let mut times = Vec::new();
        let mut rec = Vec::new();
        for seq in 0..1000u64 {
            let t = next() * 1_000_003;
            times.push(t);
            rec.clear();
            Record::encode(&mut rec, (0, 0), t, seq, &format!("{}", seq % 17), &[Value::Long(seq as i64)]);
            sorter.push(&rec).unwrap();
        }
        let mut merged = sorter.finish().unwrap();
        let mut got = Vec::new();
        while let Some(r) = merged.next_record().unwrap() {
            let r = Record::of(r);
            got.push((r.time, r.id.to_vec(), r.seq));
        }
        let mut want = got.clone();
        want.sort();
        assert_eq!(got.len(), 1000);
        assert_eq!(got, want);
        let path = dir.path().join("times");
        std::fs::write(&path, times.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        times.sort_unstable();
        let (lo, hi) = (times[0], times[999]);
        for rank in [0, 1, 500, 700, 998, 999] {
            assert_eq!(select(&path, lo, hi, rank).unwrap(), times[rank as usize], "rank {rank}");
        }
    }
}
