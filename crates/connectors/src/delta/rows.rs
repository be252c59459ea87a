//! Rows of txpipe's two tables as Arrow: the column layout of `transactions_clean` (the
//! configured schema plus event_date and the Kafka coordinates) and of
//! `transactions_quarantine`, and builders that collect rows into record batches.
//!
//! In: cleaned values (one per schema field) or rejected payloads, with their Kafka partition
//! and offset. Out: [`RecordBatch`]es whose schema matches the table's exactly.

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;
use txpipe_core::event::Value;
use txpipe_core::schema::{FieldType, Schema};

/// The partition column of the clean table.
pub const EVENT_DATE: &str = "event_date";
const US_PER_DAY: i64 = 86_400_000_000;

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The Arrow type a schema field is held in (clean table, readers).
pub fn arrow_type(kind: FieldType) -> DataType {
    match kind {
        FieldType::String => DataType::Utf8,
        FieldType::Double => DataType::Float64,
        FieldType::Long => DataType::Int64,
        FieldType::Boolean => DataType::Boolean,
        FieldType::Timestamp => timestamp(),
    }
}

/// Arrow schema of the clean table for an event schema: its fields in order (required ones
/// non-nullable), then event_date, kafka_partition, kafka_offset, ingested_at.
pub fn clean_schema(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> =
        schema.fields().iter().map(|f| Field::new(&f.name, arrow_type(f.kind), !f.required)).collect();
    fields.push(Field::new(EVENT_DATE, DataType::Date32, false));
    fields.push(Field::new("kafka_partition", DataType::Int32, false));
    fields.push(Field::new("kafka_offset", DataType::Int64, false));
    fields.push(Field::new("ingested_at", timestamp(), false));
    Arc::new(ArrowSchema::new(fields))
}

/// Arrow schema of the quarantine table.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(ArrowSchema::new(vec![
        Field::new("raw", DataType::Utf8, false),
        // The exact bytes, only when the payload is not valid UTF-8 (then `raw` is a lossy copy).
        Field::new("raw_bytes", DataType::Binary, true),
        Field::new("error", DataType::Utf8, false),
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("ingested_at", timestamp(), false),
    ]))
}

enum Column {
    Str(StringBuilder),
    Double(Float64Builder),
    Long(Int64Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
}

impl Column {
    /// An empty column with room for `rows` values (and `bytes` bytes of text, for strings).
    fn with_capacity(kind: FieldType, rows: usize, bytes: usize) -> Column {
        match kind {
            FieldType::String => Column::Str(StringBuilder::with_capacity(rows, bytes)),
            FieldType::Double => Column::Double(Float64Builder::with_capacity(rows)),
            FieldType::Long => Column::Long(Int64Builder::with_capacity(rows)),
            FieldType::Boolean => Column::Bool(BooleanBuilder::with_capacity(rows)),
            FieldType::Timestamp => {
                Column::Time(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
        }
    }

    /// An empty column of the same type with room for `rows` values and `bytes` of text.
    fn sized_like(&self, rows: usize, bytes: usize) -> Column {
        let kind = match self {
            Column::Str(_) => FieldType::String,
            Column::Double(_) => FieldType::Double,
            Column::Long(_) => FieldType::Long,
            Column::Bool(_) => FieldType::Boolean,
            Column::Time(_) => FieldType::Timestamp,
        };
        Column::with_capacity(kind, rows, bytes)
    }

    /// Bytes of text so far (strings only).
    fn text_bytes(&self) -> usize {
        match self {
            Column::Str(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    /// Appends a value; the parser guarantees it has the column's type or is null.
    fn push(&mut self, v: &Value<'_>) {
        match (self, v) {
            (Column::Str(b), Value::Str(s)) => b.append_value(s),
            (Column::Double(b), Value::Double(x)) => b.append_value(*x),
            (Column::Long(b), Value::Long(x)) => b.append_value(*x),
            (Column::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (Column::Time(b), Value::Timestamp(x)) => b.append_value(*x),
            (Column::Str(b), _) => b.append_null(),
            (Column::Double(b), _) => b.append_null(),
            (Column::Long(b), _) => b.append_null(),
            (Column::Bool(b), _) => b.append_null(),
            (Column::Time(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Str(b) => Arc::new(b.finish()),
            Column::Double(b) => Arc::new(b.finish()),
            Column::Long(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
            Column::Time(b) => Arc::new(b.finish()),
        }
    }
}

/// Collects clean rows into record batches of the clean table.
///
/// [`reserve`](CleanRows::reserve) sizes the builders from the last finished batch, so a steady
/// stream of batches fills them without regrowing.
pub struct CleanRows {
    schema: SchemaRef,
    /// Text bytes per row of each column in the last finished batch (0 for non-strings).
    text_per_row: Vec<usize>,
    time_index: usize,
    columns: Vec<Column>,
    event_date: Date32Builder,
    partition: Int32Builder,
    offset: Int64Builder,
    rows: usize,
}

impl CleanRows {
    pub fn new(schema: &Schema) -> CleanRows {
        CleanRows {
            schema: clean_schema(schema),
            time_index: schema.time_index(),
            columns: schema.fields().iter().map(|f| Column::with_capacity(f.kind, 0, 0)).collect(),
            text_per_row: vec![0; schema.fields().len()],
            event_date: Date32Builder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one validated event (one value per schema field, in order).
    pub fn push(&mut self, values: &[Value<'_>], partition: i32, offset: i64) {
        for (column, v) in self.columns.iter_mut().zip(values) {
            column.push(v);
        }
        let day = match values.get(self.time_index) {
            Some(Value::Timestamp(us)) => us.div_euclid(US_PER_DAY) as i32,
            _ => 0,
        };
        self.event_date.append_value(day);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.rows += 1;
    }

    /// Makes room for `rows` more rows when empty, with as much text per row as the last
    /// batch had (no more than `max_text` bytes per column: the input's size bounds any
    /// column's text), so that filling the builders does not regrow them.
    pub fn reserve(&mut self, rows: usize, max_text: usize) {
        if self.rows > 0 {
            return;
        }
        for (column, &per_row) in self.columns.iter_mut().zip(&self.text_per_row) {
            // An eighth more than the last batch's mean, for longer values.
            let text = rows.saturating_mul(per_row).saturating_mul(9) / 8;
            *column = column.sized_like(rows, text.min(max_text));
        }
        self.event_date = Date32Builder::with_capacity(rows);
        self.partition = Int32Builder::with_capacity(rows);
        self.offset = Int64Builder::with_capacity(rows);
    }

    /// The rows so far as one batch (the builders start empty again).
    pub fn finish(&mut self, ingested_at_us: i64) -> Result<RecordBatch, ArrowError> {
        let rows = self.rows;
        if rows > 0 {
            for (per_row, column) in self.text_per_row.iter_mut().zip(&self.columns) {
                *per_row = column.text_bytes().div_ceil(rows);
            }
        }
        let mut arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        arrays.push(Arc::new(self.event_date.finish()));
        arrays.push(Arc::new(self.partition.finish()));
        arrays.push(Arc::new(self.offset.finish()));
        let mut at = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
        at.append_value_n(ingested_at_us, rows);
        arrays.push(Arc::new(at.finish()));
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

/// Collects rejected messages into record batches of the quarantine table.
pub struct QuarantineRows {
    schema: SchemaRef,
    raw: StringBuilder,
    raw_bytes: BinaryBuilder,
    error: StringBuilder,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    rows: usize,
}

impl Default for QuarantineRows {
    fn default() -> Self {
        QuarantineRows {
            schema: quarantine_schema(),
            raw: StringBuilder::new(),
            raw_bytes: BinaryBuilder::new(),
            error: StringBuilder::new(),
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            rows: 0,
        }
    }
}

impl QuarantineRows {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one rejected payload, exactly as received, with the reason.
    pub fn push(&mut self, payload: &[u8], error: &str, topic: &str, partition: i32, offset: i64) {
        match std::str::from_utf8(payload) {
            Ok(text) => {
                self.raw.append_value(text);
                self.raw_bytes.append_null();
            }
            Err(_) => {
                self.raw.append_value(String::from_utf8_lossy(payload));
                self.raw_bytes.append_value(payload);
            }
        }
        self.error.append_value(error);
        self.topic.append_value(topic);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.rows += 1;
    }

    pub fn finish(&mut self, ingested_at_us: i64) -> Result<RecordBatch, ArrowError> {
        let mut at = TimestampMicrosecondBuilder::with_capacity(self.rows).with_timezone("UTC");
        at.append_value_n(ingested_at_us, self.rows);
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(self.raw.finish()),
            Arc::new(self.raw_bytes.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(at.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}
