//! The clean table's rows, as train, batch scoring and score read them: Arrow columns of the
//! table → events as schema-ordered values, in the order the table holds them, each
//! transaction id once.
//!
//! Order: by Kafka partition, then offset, when the table has those columns (an account's
//! events share a partition, so this is the order they arrived in, the one `score` sees);
//! otherwise (a table written by Spark or Python) by event time, then id. Repeated ids: the
//! first copy in that order wins, the later ones are dropped, for features and fit alike.

use std::collections::HashSet;

use txpipe_connectors::delta::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use txpipe_connectors::delta::arrow::compute::cast;
use txpipe_connectors::delta::arrow::datatypes::{DataType, Int32Type, TimeUnit};
use txpipe_core::event::Value;
use txpipe_core::schema::{FieldType, Schema};

use crate::{JobError, Result};

/// One field's column in one batch, in the type the features read.
enum Column {
    Str(StringArray),
    F64(Float64Array),
    I64(Int64Array),
    Bool(BooleanArray),
    Time(TimestampMicrosecondArray),
    Absent,
}

/// The columns of the schema's fields, batch by batch, and the row order.
pub struct Rows {
    columns: Vec<Vec<Column>>,
    /// (batch, row) of each row used, in table order.
    pub order: Vec<(u32, u32)>,
    pub read: u64,
    time: usize,
    label: Option<usize>,
}

fn typed(field: &str, kind: FieldType, column: &ArrayRef) -> Result<Column> {
    let bad = |e: String| JobError::data(format!("column `{field}`"), e);
    let to = |t: &DataType| cast(column, t).map_err(|e| bad(e.to_string()));
    if column.data_type() == &DataType::Null {
        return Ok(Column::Absent);
    }
    Ok(match kind {
        FieldType::String => Column::Str(to(&DataType::Utf8)?.as_string::<i32>().clone()),
        FieldType::Double => Column::F64(to(&DataType::Float64)?.as_primitive().clone()),
        FieldType::Long => Column::I64(to(&DataType::Int64)?.as_primitive().clone()),
        FieldType::Boolean => Column::Bool(to(&DataType::Boolean)?.as_boolean().clone()),
        FieldType::Timestamp => Column::Time(
            to(&DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())))?.as_primitive().clone(),
        ),
    })
}

/// Each row's Kafka position (partition, offset), in the order read.
pub type Positions = Vec<(i64, i64)>;

/// The batches' columns in the types the features read, and each row's Kafka position (in
/// batch order) when every batch has them.
type Typed = (Vec<Vec<Column>>, Option<Positions>);

fn typed_batches(schema: &Schema, batches: &[RecordBatch]) -> Result<Typed> {
    let fields = schema.fields();
    let mut columns = Vec::with_capacity(batches.len());
    let mut positions = Some(Vec::new());
    for b in batches {
        let typed_columns = fields
            .iter()
            .map(|f| match b.column_by_name(&f.name) {
                Some(c) => typed(&f.name, f.kind, c),
                None => Ok(Column::Absent),
            })
            .collect::<Result<Vec<_>>>()?;
        columns.push(typed_columns);
        let partition = b.column_by_name("kafka_partition").filter(|c| c.data_type() != &DataType::Null);
        let offset = b.column_by_name("kafka_offset").filter(|c| c.data_type() != &DataType::Null);
        let (Some(p), Some(o), Some(all)) = (partition, offset, positions.as_mut()) else {
            positions = None;
            continue;
        };
        let p = cast(p, &DataType::Int32).map_err(|e| JobError::data("column `kafka_partition`", e))?;
        let o = cast(o, &DataType::Int64).map_err(|e| JobError::data("column `kafka_offset`", e))?;
        let (p, o) = (
            p.as_primitive::<Int32Type>(),
            o.as_primitive::<txpipe_connectors::delta::arrow::datatypes::Int64Type>(),
        );
        all.extend((0..b.num_rows()).map(|i| (p.value(i) as i64, o.value(i))));
    }
    Ok((columns, positions))
}

impl Rows {
    /// Takes the projected batches (the schema's fields by name, then `kafka_partition` and
    /// `kafka_offset`), orders the rows and drops repeated ids.
    pub fn new(schema: &Schema, batches: &[RecordBatch], label: Option<usize>) -> Result<Rows> {
        let (mut rows, positions) = Rows::unordered(schema, batches, label)?;
        let id = schema.id_index();
        let mut order = match positions {
            Some(positions) => {
                let mut keys: Vec<(i64, i64, u32, u32)> =
                    rows.order.iter().zip(positions).map(|(&(b, i), (p, o))| (p, o, b, i)).collect();
                keys.sort_unstable();
                keys.into_iter().map(|(_, _, b, i)| (b, i)).collect()
            }
            None => {
                let mut all = std::mem::take(&mut rows.order);
                all.sort_by(|&a, &b| {
                    rows.time_of(a)
                        .cmp(&rows.time_of(b))
                        .then_with(|| rows.str_of(id, a).cmp(&rows.str_of(id, b)))
                });
                all
            }
        };
        let mut seen: HashSet<&str, foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(order.len(), Default::default());
        order.retain(|&r| rows.str_of(id, r).is_some_and(|s| seen.insert(s)));
        drop(seen);
        rows.order = order;
        Ok(rows)
    }

    /// The rows of the batches in the order read, none dropped, and each one's Kafka position
    /// when every batch has them (the order of [`Rows::new`] is by those positions, else by
    /// event time and id; the first of each id in that order is kept).
    pub fn unordered(
        schema: &Schema,
        batches: &[RecordBatch],
        label: Option<usize>,
    ) -> Result<(Rows, Option<Positions>)> {
        let (columns, positions) = typed_batches(schema, batches)?;
        let order = batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.num_rows() as u32).map(move |i| (b as u32, i)))
            .collect();
        let rows = Rows {
            columns,
            order,
            read: batches.iter().map(|b| b.num_rows() as u64).sum(),
            time: schema.time_index(),
            label,
        };
        Ok((rows, positions))
    }

    /// Lets go of a field's columns (its values read as absent from here on).
    pub fn forget(&mut self, field: usize) {
        for batch in &mut self.columns {
            if let Some(c) = batch.get_mut(field) {
                *c = Column::Absent;
            }
        }
    }

    /// A string field of a row: None when missing.
    pub fn str_of(&self, field: usize, (b, i): (u32, u32)) -> Option<&str> {
        match &self.columns[b as usize][field] {
            Column::Str(c) if c.is_valid(i as usize) => Some(c.value(i as usize)),
            _ => None,
        }
    }

    /// The event time of a row (UTC microseconds; 0 when missing).
    pub fn time_of(&self, (b, i): (u32, u32)) -> i64 {
        match &self.columns[b as usize][self.time] {
            Column::Time(c) if c.is_valid(i as usize) => c.value(i as usize),
            _ => 0,
        }
    }

    /// The label of a row: None when it has none.
    pub fn label_of(&self, (b, i): (u32, u32)) -> Option<bool> {
        match &self.columns[b as usize][self.label?] {
            Column::Bool(c) if c.is_valid(i as usize) => Some(c.value(i as usize)),
            _ => None,
        }
    }

    /// A row's values in schema order.
    pub fn values_into<'a>(&'a self, (b, i): (u32, u32), out: &mut Vec<Value<'a>>) {
        out.clear();
        let i = i as usize;
        for c in &self.columns[b as usize] {
            out.push(match c {
                Column::Str(a) if a.is_valid(i) => Value::Str(std::borrow::Cow::Borrowed(a.value(i))),
                Column::F64(a) if a.is_valid(i) => Value::Double(a.value(i)),
                Column::I64(a) if a.is_valid(i) => Value::Long(a.value(i)),
                Column::Bool(a) if a.is_valid(i) => Value::Bool(a.value(i)),
                Column::Time(a) if a.is_valid(i) => Value::Timestamp(a.value(i)),
                _ => Value::Null,
            });
        }
    }
}
