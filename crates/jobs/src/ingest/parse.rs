//! The parse stage of ingest: one thread that turns batches of raw messages into Arrow chunks
//! of clean and quarantined rows.
//!
//! In: [`RawBatch`]es from the reader, in the order read. Out: one [`Chunk`] per batch, same
//! order, same generation. Running beside the reader lets polling and parsing use two cores.

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::Instant;

use txpipe_connectors::delta::arrow::array::RecordBatch;
use txpipe_connectors::delta::{CleanRows, QuarantineRows};
use txpipe_core::event::{EventParser, Value};
use txpipe_core::schema::Schema;

use crate::{JobError, Result};

/// Messages as read from Kafka, copied out of the client: one consumer generation, in order.
pub(super) struct RawBatch {
    pub generation: u64,
    data: Vec<u8>,
    /// End of each payload in `data`.
    ends: Vec<usize>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    /// When the first message was read.
    pub since: Instant,
}

impl RawBatch {
    /// An empty batch with room for `messages` messages of about `bytes` bytes in all.
    pub fn with_capacity(generation: u64, messages: usize, bytes: usize) -> RawBatch {
        RawBatch {
            generation,
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(messages),
            partitions: Vec::with_capacity(messages),
            offsets: Vec::with_capacity(messages),
            since: Instant::now(),
        }
    }

    pub fn push(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        if self.ends.is_empty() {
            self.since = Instant::now();
        }
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
        self.partitions.push(partition);
        self.offsets.push(offset);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// (partition, offset, payload) of each message, in order.
    fn messages(&self) -> impl Iterator<Item = (i32, i64, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .zip(self.partitions.iter().zip(&self.offsets))
            .map(|((start, &end), (&p, &o))| (p, o, &self.data[start..end]))
    }
}

/// Parsed messages of one consumer generation.
pub(super) struct Chunk {
    pub generation: u64,
    pub clean: RecordBatch,
    pub quarantine: RecordBatch,
    /// Per partition, the first and last offset in the chunk.
    pub first: BTreeMap<i32, i64>,
    pub last: BTreeMap<i32, i64>,
    pub messages: u64,
    pub bytes: u64,
    /// When the first message of the chunk was read.
    pub since: Instant,
}

/// The builders of the parse thread, kept from batch to batch so that they start sized.
struct Rows {
    clean: CleanRows,
    quarantine: QuarantineRows,
}

impl Rows {
    fn new(schema: &Schema) -> Rows {
        Rows { clean: CleanRows::new(schema), quarantine: QuarantineRows::default() }
    }
}

/// First and last offset per partition of a batch. Messages come in runs of one partition, so
/// the partition of the previous message is tried first.
#[derive(Default)]
struct Span {
    /// (partition, first, last)
    parts: Vec<(i32, i64, i64)>,
    current: usize,
}

impl Span {
    fn add(&mut self, partition: i32, offset: i64) {
        match self.parts.get_mut(self.current) {
            Some(p) if p.0 == partition => p.2 = offset,
            _ => match self.parts.iter().position(|p| p.0 == partition) {
                Some(i) => {
                    self.parts[i].2 = offset;
                    self.current = i;
                }
                None => {
                    self.current = self.parts.len();
                    self.parts.push((partition, offset, offset));
                }
            },
        }
    }

    fn maps(&self) -> (BTreeMap<i32, i64>, BTreeMap<i32, i64>) {
        (self.parts.iter().map(|p| (p.0, p.1)).collect(), self.parts.iter().map(|p| (p.0, p.2)).collect())
    }
}

/// Parses a batch of raw messages into a chunk.
fn parse_batch(parser: &EventParser, topic: &str, raw: &RawBatch, rows: &mut Rows) -> Result<Chunk> {
    let Rows { clean, quarantine } = rows;
    clean.reserve(raw.len(), raw.bytes());
    let mut span = Span::default();
    let mut values: Vec<Value<'_>> = Vec::with_capacity(parser.schema().fields().len());
    for (partition, offset, payload) in raw.messages() {
        span.add(partition, offset);
        match parser.parse(payload, &mut values) {
            Ok(()) => clean.push(&values, partition, offset),
            Err(reason) => quarantine.push(payload, &reason.to_string(), topic, partition, offset),
        }
    }
    let now = chrono::Utc::now().timestamp_micros();
    let clean = clean.finish(now).map_err(|e| JobError::Internal(format!("building a clean batch: {e}")))?;
    let quarantine = quarantine
        .finish(now)
        .map_err(|e| JobError::Internal(format!("building a quarantine batch: {e}")))?;
    let (first, last) = span.maps();
    Ok(Chunk {
        generation: raw.generation,
        clean,
        quarantine,
        first,
        last,
        messages: raw.len() as u64,
        bytes: raw.bytes() as u64,
        since: raw.since,
    })
}

/// Starts the parse thread. It ends when the reader closes its side, or when the writer is
/// gone (then the reader's next send fails and it stops too).
pub(super) fn spawn(
    schema: Schema,
    topic: String,
    raw: Receiver<RawBatch>,
    chunks: tokio::sync::mpsc::Sender<Chunk>,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("ingest-parse".into())
        .spawn(move || {
            let mut rows = Rows::new(&schema);
            let parser = EventParser::new(schema);
            while let Ok(batch) = raw.recv() {
                let chunk = parse_batch(&parser, &topic, &batch, &mut rows)?;
                drop(batch);
                if chunks.blocking_send(chunk).is_err() {
                    // The writer is gone: it stopped, and says why.
                    break;
                }
            }
            Ok(())
        })
        .map_err(|e| JobError::Internal(format!("starting the parse thread: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use txpipe_connectors::delta::arrow::array::{Array, Int64Array, StringArray};

    #[test]
    fn a_batch_becomes_clean_and_quarantined_rows_with_their_positions() {
        let schema = Schema::default_schema();
        let parser = EventParser::new(schema.clone());
        let good = r#"{"transaction_id":"t1","account_id":"a1","merchant_category":"grocery","amount":12.5,"currency":"EUR","event_time":"2026-11-01T10:00:00Z"}"#;
        let mut raw = RawBatch::with_capacity(7, 4, 1024);
        raw.push(0, 10, good.as_bytes());
        raw.push(1, 5, b"{not json");
        raw.push(0, 11, good.replace("t1", "t2").as_bytes());
        let mut rows = Rows::new(&schema);
        let chunk = parse_batch(&parser, "topic", &raw, &mut rows).unwrap();
        assert_eq!(chunk.generation, 7);
        assert_eq!(chunk.messages, 3);
        assert_eq!(chunk.clean.num_rows(), 2, "{:?}", chunk.quarantine);
        assert_eq!(chunk.quarantine.num_rows(), 1);
        assert_eq!(chunk.first, BTreeMap::from([(0, 10), (1, 5)]));
        assert_eq!(chunk.last, BTreeMap::from([(0, 11), (1, 5)]));
        assert_eq!(chunk.bytes as usize, 2 * good.len() + 9);

        // The same builders again: sized from the first batch, holding only the new rows.
        let mut raw = RawBatch::with_capacity(8, 2, 1024);
        raw.push(2, 40, good.replace("t1", "t3").as_bytes());
        raw.push(2, 41, good.replace("t1", "a much longer transaction id than before").as_bytes());
        let chunk = parse_batch(&parser, "topic", &raw, &mut rows).unwrap();
        assert_eq!((chunk.clean.num_rows(), chunk.quarantine.num_rows()), (2, 0));
        let ids = chunk.clean.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Some("t3"), Some("a much longer transaction id than before")]
        );
        let offsets = chunk.clean.column_by_name("kafka_offset").unwrap();
        assert_eq!(offsets.as_any().downcast_ref::<Int64Array>().unwrap().values(), &[40, 41]);
        assert_eq!((chunk.first, chunk.last), (BTreeMap::from([(2, 40)]), BTreeMap::from([(2, 41)])));
    }
}
