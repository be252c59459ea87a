//! The parse stage of ingest: one thread that turns batches of raw messages into Arrow chunks
//! of clean and quarantined rows.
//!
//! In: [`RawBatch`]es (and barriers) from the reader, in the order read. Out: one [`Chunk`] per
//! batch, same order, barriers passed on. Running beside the reader lets polling and parsing use
//! two cores. Beyond the schema's rules, it quarantines null values (`tombstone`), empty ones
//! (`empty_payload`), values over the size limit (`too_large`, only their head was copied) and
//! event times outside the configured window (`time_out_of_range`), so that hostile input can
//! neither grow memory nor scatter the table over thousands of date partitions.

use std::fmt::Write as _;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::Instant;

use txpipe_connectors::delta::arrow::array::RecordBatch;
use txpipe_connectors::delta::{CleanRows, QuarantineRows};
use txpipe_core::event::{EventParser, Value};
use txpipe_core::schema::Schema;

use crate::{JobError, Result};

/// One partition's messages in a batch or chunk: offsets `first..=last` (in the order read,
/// without a message missing between them), and what the table must hold right before `first`
/// for these messages to follow on from it (`anchor`, None: nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub partition: i32,
    pub anchor: Option<i64>,
    pub first: i64,
    pub last: i64,
}

/// A message the reader did not copy whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// A null value (a tombstone).
    Tombstone,
    /// A value of this many bytes, over the limit: only its head is kept.
    TooLarge(usize),
}

/// Messages as read from Kafka, copied out of the client, in order.
pub(super) struct RawBatch {
    /// The writer's reseek this batch follows: batches of an older one are stale.
    pub token: u64,
    data: Vec<u8>,
    /// End of each payload in `data`.
    ends: Vec<usize>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    /// Messages not copied whole, by index, in order.
    marks: Vec<(usize, Mark)>,
    /// Per partition, set when the batch is handed over.
    pub spans: Vec<Span>,
    /// When the first message was read.
    pub since: Instant,
}

/// Bytes of an oversized message kept in the quarantine, to show what it was.
pub(super) const TOO_LARGE_HEAD: usize = 1024;

impl RawBatch {
    /// An empty batch with room for `messages` messages of about `bytes` bytes in all.
    pub fn with_capacity(token: u64, messages: usize, bytes: usize) -> RawBatch {
        RawBatch {
            token,
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(messages),
            partitions: Vec::with_capacity(messages),
            offsets: Vec::with_capacity(messages),
            marks: Vec::new(),
            spans: Vec::new(),
            since: Instant::now(),
        }
    }

    /// Copies a message in; a value over `max_bytes` keeps only its first [`TOO_LARGE_HEAD`]
    /// bytes, and is quarantined as too large.
    pub fn push(&mut self, partition: i32, offset: i64, payload: Option<&[u8]>, max_bytes: usize) {
        if self.ends.is_empty() {
            self.since = Instant::now();
        }
        let kept = match payload {
            None => {
                self.marks.push((self.ends.len(), Mark::Tombstone));
                &[][..]
            }
            Some(p) if p.len() > max_bytes => {
                self.marks.push((self.ends.len(), Mark::TooLarge(p.len())));
                &p[..TOO_LARGE_HEAD.min(p.len())]
            }
            Some(p) => p,
        };
        self.data.extend_from_slice(kept);
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

    /// Per partition in the batch, its first and last offset, with the anchor `anchor(p)`
    /// gives. Messages come in runs of one partition, so the previous one is tried first.
    pub fn seal(&mut self, anchor: impl Fn(i32) -> Option<i64>) {
        let mut spans: Vec<Span> = Vec::new();
        let mut current = 0;
        for (&partition, &offset) in self.partitions.iter().zip(&self.offsets) {
            match spans.get_mut(current) {
                Some(s) if s.partition == partition => s.last = offset,
                _ => match spans.iter().position(|s| s.partition == partition) {
                    Some(i) => {
                        spans[i].last = offset;
                        current = i;
                    }
                    None => {
                        current = spans.len();
                        spans.push(Span {
                            partition,
                            anchor: anchor(partition),
                            first: offset,
                            last: offset,
                        });
                    }
                },
            }
        }
        self.spans = spans;
    }

    /// Drops the messages of partitions for which `keep` says no (revoked partitions).
    pub fn retain_partitions(&mut self, keep: impl Fn(i32) -> bool) {
        if self.partitions.iter().all(|&p| keep(p)) {
            return;
        }
        let mut kept = RawBatch::with_capacity(self.token, self.len(), self.bytes());
        kept.since = self.since;
        let mut marks = self.marks.iter().peekable();
        for (i, (p, o, payload)) in self.messages().enumerate() {
            let mark = marks.next_if(|(at, _)| *at == i).map(|(_, m)| *m);
            if !keep(p) {
                continue;
            }
            if let Some(m) = mark {
                kept.marks.push((kept.len(), m));
            }
            kept.data.extend_from_slice(payload);
            kept.ends.push(kept.data.len());
            kept.partitions.push(p);
            kept.offsets.push(o);
        }
        *self = kept;
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

/// What flows from the parse stage to the writer, in the order read.
pub(super) enum Staged {
    Chunk(Chunk),
    /// Commit everything before this, then answer: partitions are being taken away.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// What flows from the reader to the parse stage.
pub(super) enum Raw {
    Batch(RawBatch),
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// Parsed messages of one batch.
pub(super) struct Chunk {
    pub token: u64,
    pub clean: RecordBatch,
    pub quarantine: RecordBatch,
    pub spans: Vec<Span>,
    pub messages: u64,
    pub bytes: u64,
    /// When the first message of the chunk was read.
    pub since: Instant,
}

/// The rules of the parse stage beyond the schema.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Event times before this (UTC microseconds) are out of range.
    pub earliest_us: i64,
    /// Event times more than this far ahead of the ingest clock are out of range.
    pub ahead_us: i64,
    /// Values over this many bytes are quarantined as too large.
    pub max_message_bytes: usize,
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

/// Parses a batch of raw messages into a chunk.
fn parse_batch(
    parser: &EventParser,
    topic: &str,
    limits: &Limits,
    raw: &RawBatch,
    rows: &mut Rows,
) -> Result<Chunk> {
    let Rows { clean, quarantine } = rows;
    clean.reserve(raw.len(), raw.bytes());
    let now = chrono::Utc::now().timestamp_micros();
    let latest = now.saturating_add(limits.ahead_us);
    let time_index = parser.schema().time_index();
    let mut values: Vec<Value<'_>> = Vec::with_capacity(parser.schema().fields().len());
    let mut marks = raw.marks.iter().peekable();
    let mut reason = String::new();
    for (i, (partition, offset, payload)) in raw.messages().enumerate() {
        reason.clear();
        match marks.next_if(|(at, _)| *at == i).map(|(_, m)| *m) {
            Some(Mark::Tombstone) => reason.push_str("tombstone: the message has a null value"),
            Some(Mark::TooLarge(size)) => {
                let _ = write!(
                    reason,
                    "too_large: the value is {size} bytes, over the limit of {} (ingest.max_message_bytes); \
                     its first {} bytes are kept",
                    limits.max_message_bytes,
                    payload.len()
                );
            }
            None if payload.is_empty() => reason.push_str("empty_payload: the message value is empty"),
            None => match parser.parse(payload, &mut values) {
                Ok(()) => match values.get(time_index) {
                    Some(&Value::Timestamp(t)) if t < limits.earliest_us || t > latest => {
                        let _ = write!(
                            reason,
                            "time_out_of_range: field `{}` = {}: expected from {} to {} (ingest.earliest_event_time, ingest.max_event_time_ahead)",
                            parser.schema().fields()[time_index].name,
                            show_time(t),
                            show_time(limits.earliest_us),
                            show_time(latest),
                        );
                    }
                    _ => {
                        clean.push(&values, partition, offset);
                        continue;
                    }
                },
                Err(rejection) => {
                    let _ = write!(reason, "{rejection}");
                }
            },
        }
        quarantine.push(payload, &reason, topic, partition, offset);
    }
    let clean = clean.finish(now).map_err(|e| JobError::Internal(format!("building a clean batch: {e}")))?;
    let quarantine = quarantine
        .finish(now)
        .map_err(|e| JobError::Internal(format!("building a quarantine batch: {e}")))?;
    Ok(Chunk {
        token: raw.token,
        clean,
        quarantine,
        spans: raw.spans.clone(),
        messages: raw.len() as u64,
        bytes: raw.bytes() as u64,
        since: raw.since,
    })
}

/// A time in UTC microseconds as RFC 3339 (or the number, when chrono cannot show it).
fn show_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(|| format!("{us} µs"), |t| t.to_rfc3339())
}

/// Starts the parse thread. It ends when the reader closes its side, or when the writer is
/// gone (then the reader's next send fails and it stops too).
pub(super) fn spawn(
    schema: Schema,
    topic: String,
    limits: Limits,
    raw: Receiver<Raw>,
    chunks: tokio::sync::mpsc::Sender<Staged>,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("ingest-parse".into())
        .spawn(move || {
            let mut rows = Rows::new(&schema);
            let parser = EventParser::new(schema);
            while let Ok(item) = raw.recv() {
                let staged = match item {
                    Raw::Batch(batch) => {
                        Staged::Chunk(parse_batch(&parser, &topic, &limits, &batch, &mut rows)?)
                    }
                    Raw::Barrier(ack) => Staged::Barrier(ack),
                };
                if chunks.blocking_send(staged).is_err() {
                    // The writer is gone: it stopped, and says why.
                    break;
                }
            }
            Ok(())
        })
        .map_err(|e| JobError::io("starting the parse thread", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use txpipe_connectors::delta::arrow::array::{Array, Int64Array, StringArray};

    const GOOD: &str = r#"{"transaction_id":"t1","account_id":"a1","merchant_category":"grocery","amount":12.5,"currency":"EUR","event_time":"2026-11-01T10:00:00Z"}"#;

    fn limits() -> Limits {
        Limits { earliest_us: 946_684_800_000_000, ahead_us: 86_400_000_000, max_message_bytes: 4096 }
    }

    fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
        let c = batch.column_by_name(column).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        c.iter().map(|v| v.unwrap().to_string()).collect()
    }

    #[test]
    fn a_batch_becomes_clean_and_quarantined_rows_with_their_spans() {
        let schema = Schema::default_schema();
        let parser = EventParser::new(schema.clone());
        let mut raw = RawBatch::with_capacity(7, 4, 1024);
        raw.push(0, 10, Some(GOOD.as_bytes()), 4096);
        raw.push(1, 5, Some(b"{not json"), 4096);
        raw.push(0, 11, Some(GOOD.replace("t1", "t2").as_bytes()), 4096);
        raw.seal(|p| if p == 0 { Some(9) } else { None });
        let mut rows = Rows::new(&schema);
        let chunk = parse_batch(&parser, "topic", &limits(), &raw, &mut rows).unwrap();
        assert_eq!(chunk.token, 7);
        assert_eq!(chunk.messages, 3);
        assert_eq!(chunk.clean.num_rows(), 2, "{:?}", chunk.quarantine);
        assert_eq!(chunk.quarantine.num_rows(), 1);
        assert_eq!(
            chunk.spans,
            [
                Span { partition: 0, anchor: Some(9), first: 10, last: 11 },
                Span { partition: 1, anchor: None, first: 5, last: 5 }
            ]
        );
        assert_eq!(chunk.bytes as usize, 2 * GOOD.len() + 9);

        // The same builders again: sized from the first batch, holding only the new rows.
        let mut raw = RawBatch::with_capacity(8, 2, 1024);
        raw.push(2, 40, Some(GOOD.replace("t1", "t3").as_bytes()), 4096);
        raw.push(
            2,
            41,
            Some(GOOD.replace("t1", "a much longer transaction id than before").as_bytes()),
            4096,
        );
        raw.seal(|_| Some(39));
        let chunk = parse_batch(&parser, "topic", &limits(), &raw, &mut rows).unwrap();
        assert_eq!((chunk.clean.num_rows(), chunk.quarantine.num_rows()), (2, 0));
        assert_eq!(
            strings(&chunk.clean, "transaction_id"),
            ["t3", "a much longer transaction id than before"]
        );
        let offsets = chunk.clean.column_by_name("kafka_offset").unwrap();
        assert_eq!(offsets.as_any().downcast_ref::<Int64Array>().unwrap().values(), &[40, 41]);
        assert_eq!(chunk.spans, [Span { partition: 2, anchor: Some(39), first: 40, last: 41 }]);
    }

    #[test]
    fn hostile_messages_get_reasons_of_their_own_and_bounded_copies() {
        let schema = Schema::default_schema();
        let parser = EventParser::new(schema.clone());
        let mut raw = RawBatch::with_capacity(0, 8, 1024);
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20));
        raw.push(0, 0, None, 4096);
        raw.push(0, 1, Some(b""), 4096);
        raw.push(0, 2, Some(huge.as_bytes()), 4096);
        // Epoch milliseconds of a day in the year -22876.
        raw.push(0, 3, Some(GOOD.replace("\"2026-11-01T10:00:00Z\"", "-784000000000000").as_bytes()), 4096);
        raw.push(0, 4, Some(GOOD.replace("\"2026-11-01T10:00:00Z\"", "1").as_bytes()), 4096);
        let ahead = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
        raw.push(0, 5, Some(GOOD.replace("2026-11-01T10:00:00Z", &ahead).as_bytes()), 4096);
        raw.push(0, 6, Some(GOOD.as_bytes()), 4096);
        // The oversized value was not copied whole.
        assert!(raw.bytes() < 8 * 1024, "{} bytes held", raw.bytes());
        raw.seal(|_| None);
        let chunk = parse_batch(&parser, "topic", &limits(), &raw, &mut Rows::new(&schema)).unwrap();
        assert_eq!(chunk.clean.num_rows(), 1);
        let codes: Vec<String> = strings(&chunk.quarantine, "error")
            .iter()
            .map(|e| e.split(':').next().unwrap().to_string())
            .collect();
        assert_eq!(
            codes,
            [
                "tombstone",
                "empty_payload",
                "too_large",
                "time_out_of_range",
                "time_out_of_range",
                "time_out_of_range"
            ]
        );
        let errors = strings(&chunk.quarantine, "error");
        assert!(
            errors[2].contains(&format!("{} bytes", huge.len())) && errors[2].contains("first 1024"),
            "{}",
            errors[2]
        );
        assert!(errors[4].contains("1970-01-01") && errors[4].contains("2000-01-01"), "{}", errors[4]);
        let raws = strings(&chunk.quarantine, "raw");
        assert_eq!(raws[2].len(), TOO_LARGE_HEAD);
        assert_eq!((raws[0].as_str(), raws[1].as_str()), ("", ""));
    }

    #[test]
    fn revoked_partitions_leave_a_batch_and_the_rest_keeps_its_order() {
        let mut raw = RawBatch::with_capacity(3, 8, 64);
        raw.push(0, 1, Some(b"a"), 4);
        raw.push(1, 7, None, 4);
        raw.push(0, 2, Some(b"bbbbbbbb"), 4);
        raw.push(1, 8, Some(b"c"), 4);
        raw.push(2, 4, Some(b"d"), 4);
        raw.retain_partitions(|p| p != 1);
        raw.seal(|_| None);
        let kept: Vec<(i32, i64, Vec<u8>)> = raw.messages().map(|(p, o, b)| (p, o, b.to_vec())).collect();
        // The oversized value keeps its head (here all of its 8 bytes: the head is 1024).
        assert_eq!(kept, [(0, 1, b"a".to_vec()), (0, 2, b"bbbbbbbb".to_vec()), (2, 4, b"d".to_vec())]);
        assert_eq!(raw.marks, [(1, Mark::TooLarge(8))]);
        assert_eq!(raw.token, 3);
        assert_eq!(
            raw.spans.iter().map(|s| (s.partition, s.first, s.last)).collect::<Vec<_>>(),
            [(0, 1, 2), (2, 4, 4)]
        );
    }
}
