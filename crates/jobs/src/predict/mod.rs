//! The one prediction path: rows of the clean table + a [`Scorer`] + the serving columns →
//! serving rows, for the stream (`score`) and for batch scoring ([`batch`]) alike.
//!
//! In: [`Rows`] in table order, the account history they continue, and a choice per row
//! ([`Take`]: score it, only feed it into the history, or skip it as a repeat). Out: RowBinary
//! rows for `transactions_realtime` or `transactions_batch`: the copied fields, the
//! probability, the label, the reasons as machine codes and as text, the model version. Both
//! callers go through [`predict`], so a row scored in real time and in batch is the same row,
//! bit for bit.

pub mod batch;

use txpipe_connectors::clickhouse::{Prediction, PredictionRows, ServingColumn};
use txpipe_core::event::Value;
use txpipe_core::features::History;
use txpipe_core::model::Scorer;
use txpipe_core::schema::Schema;

use crate::rows::Rows;
use crate::{JobError, Result};

/// The schema events are read with and the fields copied beside each prediction.
#[derive(Debug, Clone)]
pub struct Layout {
    pub schema: Schema,
    columns: Vec<ServingColumn>,
    /// Positions in the schema of `columns`.
    copied: Vec<usize>,
}

impl Layout {
    /// `columns` must be fields of `schema` (as `Serving::columns_for` gives them).
    pub fn new(schema: &Schema, columns: &[ServingColumn]) -> Result<Layout> {
        let copied = columns
            .iter()
            .map(|c| {
                schema.fields().iter().position(|f| f.name == c.name).ok_or_else(|| {
                    JobError::Config(txpipe_core::Error::config(
                        "clickhouse.fields",
                        &c.name,
                        "fields of the schema",
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Layout { schema: schema.clone(), columns: columns.to_vec(), copied })
    }

    pub fn columns(&self) -> &[ServingColumn] {
        &self.columns
    }
}

/// What to do with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Score it into the output (and feed it into the history).
    Score,
    /// Only feed it into the history (a row before the range written).
    Observe,
    /// Leave it out (a repeated transaction id).
    Skip,
}

/// What [`predict`] did with the rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub scored: u64,
    pub observed: u64,
    pub skipped: u64,
}

/// How the rows of one call are stamped.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// UTC seconds.
    pub scored_at: u32,
    /// The batch run (batch rows only).
    pub batch_run_id: Option<&'a str>,
}

impl Stamp<'_> {
    pub fn now() -> Stamp<'static> {
        let scored_at = chrono::Utc::now().timestamp().clamp(0, u32::MAX as i64) as u32;
        Stamp { scored_at, batch_run_id: None }
    }
}

/// Scores `rows` in table order with `scorer` into `out`, continuing `history`. `take(id,
/// event time)` decides each row; `after(out, event time)` runs after each scored row (to hand
/// out full chunks, or to note the event time) and says whether to go on.
#[allow(clippy::too_many_arguments)]
pub fn predict(
    layout: &Layout,
    scorer: &mut Scorer,
    history: &mut History,
    rows: &Rows,
    stamp: Stamp<'_>,
    out: &mut PredictionRows,
    mut take: impl FnMut(&str, i64) -> Take,
    mut after: impl FnMut(&mut PredictionRows, i64) -> bool,
) -> Counts {
    let schema = &layout.schema;
    let (id, time) = (schema.id_index(), schema.time_index());
    let mut values: Vec<Value<'_>> = Vec::with_capacity(schema.fields().len());
    let mut fields: Vec<Value<'_>> = Vec::with_capacity(layout.copied.len());
    let mut explanation = String::new();
    let mut counts = Counts::default();
    for &r in &rows.order {
        rows.values_into(r, &mut values);
        let tid = values[id].as_str().unwrap_or_default();
        let event_time_us = match values[time] {
            Value::Timestamp(us) => us,
            _ => rows.time_of(r),
        };
        match take(tid, event_time_us) {
            Take::Skip => {
                counts.skipped += 1;
                continue;
            }
            Take::Observe => {
                scorer.observe(&values, history);
                counts.observed += 1;
                continue;
            }
            Take::Score => {}
        }
        let scored = scorer.score(&values, history);
        let mut reasons = [""; 3];
        let n = scorer.reason_codes(&scored, &mut reasons);
        scorer.explain(&scored, &values, history, &mut explanation);
        fields.clear();
        fields.extend(layout.copied.iter().map(|&i| values[i].clone()));
        out.push(
            &layout.columns,
            &Prediction {
                transaction_id: tid,
                event_time_us,
                fields: &fields,
                probability: scored.probability,
                label: scored.label,
                reasons: &reasons[..n],
                explanation: &explanation,
                model_version: scorer.version(),
                scored_at: stamp.scored_at,
                batch_run_id: stamp.batch_run_id,
            },
        );
        counts.scored += 1;
        if !after(out, event_time_us) {
            break;
        }
    }
    counts
}
