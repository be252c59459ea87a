//! Batch scoring (`txpipe train --batch-score`): the history scored with the current model into
//! ClickHouse `transactions_batch`, every row tagged with the run's id.
//!
//! The rows are read, ordered and deduplicated as training reads them, and scored through the
//! same [`Scorer`] as `score`, the account history fed from the first row: realtime and batch
//! probabilities of a row are the same. Rows outside `--from`/`--to` still feed the history but
//! are not written. Scoring runs on a blocking thread and hands chunks of encoded rows to the
//! inserts (two chunks in flight at most); an insert that fails is retried with backoff, and a
//! ClickHouse that stays away ends the run with an error.

use std::time::Instant;

use txpipe_connectors::clickhouse::{
    ClickHouseConfig, ClickHouseError, Prediction, PredictionRows, Serving, Target,
};
use txpipe_connectors::delta::{self, TablesConfig};
use txpipe_connectors::retry::Backoff;
use txpipe_core::event::Value;
use txpipe_core::features::History;
use txpipe_core::model::{ModelArtifact, Scorer};
use txpipe_core::schema::Schema;

use super::rows::Rows;
use crate::{JobError, Result};

/// Where and what to score.
#[derive(Debug, Clone)]
pub struct BatchScore {
    pub clickhouse: ClickHouseConfig,
    /// Only events at or after this time (UTC µs) are written.
    pub from_us: Option<i64>,
    /// Only events before this time (UTC µs) are written.
    pub to_us: Option<i64>,
    /// How long ClickHouse may stay away before the run gives up.
    pub backoff: Backoff,
}

impl BatchScore {
    pub fn new(clickhouse: ClickHouseConfig) -> BatchScore {
        BatchScore { clickhouse, from_us: None, to_us: None, backoff: Backoff::default() }
    }
}

/// What a batch run wrote.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BatchReport {
    pub run_id: String,
    pub model_version: String,
    pub delta_version: u64,
    /// Rows written to `transactions_batch`.
    pub rows: u64,
    pub inserts: u64,
    pub seconds: f64,
}

/// Scores the table's rows (Delta `version`, or the newest) with `model` into
/// `transactions_batch`.
pub async fn score_history(
    tables: &TablesConfig,
    schema: &Schema,
    model: &ModelArtifact,
    version: Option<u64>,
    parallelism: usize,
    batch: &BatchScore,
) -> Result<BatchReport> {
    let started = Instant::now();
    let scorer = Scorer::new(model, schema)?;
    let columns = Serving::columns_for(schema, batch.clickhouse.fields.as_deref())?;
    let serving = Serving::new(&batch.clickhouse, columns);
    let backoff = batch.backoff;
    backoff.retry("creating the serving tables", ClickHouseError::retryable, || serving.ensure()).await?;

    let mut wanted: Vec<&str> = schema.fields().iter().map(|f| f.name.as_str()).collect();
    wanted.extend(["kafka_partition", "kafka_offset"]);
    let projection =
        delta::read_columns(&tables.clean, &tables.storage_options, version, &wanted, parallelism).await?;
    let now = chrono::Utc::now();
    let run_id = format!("{}-{}", model.version, now.format("%Y%m%dT%H%M%SZ"));
    let mut report = BatchReport {
        run_id: run_id.clone(),
        model_version: model.version.clone(),
        delta_version: projection.version,
        ..BatchReport::default()
    };

    let (tx, mut rx) = tokio::sync::mpsc::channel::<PredictionRows>(2);
    let job = Encode {
        schema: schema.clone(),
        scorer,
        columns: serving.columns().to_vec(),
        run_id,
        scored_at: now.timestamp().clamp(0, u32::MAX as i64) as u32,
        from_us: batch.from_us,
        to_us: batch.to_us,
        chunk_rows: batch.clickhouse.insert_rows,
    };
    let encoding = tokio::task::spawn_blocking(move || job.run(&projection.batches, tx));
    while let Some(chunk) = rx.recv().await {
        backoff
            .retry("inserting batch scores", ClickHouseError::retryable, || serving.insert(&chunk))
            .await?;
        report.rows += chunk.len() as u64;
        report.inserts += 1;
    }
    encoding.await.map_err(|e| JobError::Internal(format!("the batch scoring task: {e}")))??;
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(run = %report.run_id, rows = report.rows, inserts = report.inserts, "batch scores written");
    Ok(report)
}

/// The CPU side of a batch run: rows in table order → scores → RowBinary chunks.
struct Encode {
    schema: Schema,
    scorer: Scorer,
    columns: Vec<txpipe_connectors::clickhouse::ServingColumn>,
    run_id: String,
    scored_at: u32,
    from_us: Option<i64>,
    to_us: Option<i64>,
    chunk_rows: usize,
}

impl Encode {
    fn run(
        mut self,
        batches: &[delta::arrow::array::RecordBatch],
        tx: tokio::sync::mpsc::Sender<PredictionRows>,
    ) -> Result<()> {
        let rows = Rows::new(&self.schema, batches, None)?;
        let id = self.schema.id_index();
        let time = self.schema.time_index();
        let copied: Vec<usize> = self
            .columns
            .iter()
            .map(|c| self.schema.fields().iter().position(|f| f.name == c.name))
            .collect::<Option<_>>()
            .ok_or_else(|| JobError::Internal("a serving column is not in the schema".into()))?;
        let names: Vec<String> = self.scorer.names().to_vec();
        let mut history = History::new();
        let mut values: Vec<Value<'_>> = Vec::with_capacity(self.schema.fields().len());
        let mut fields: Vec<Value<'_>> = Vec::with_capacity(copied.len());
        let mut chunk = PredictionRows::new(Target::Batch);
        for &r in &rows.order {
            rows.values_into(r, &mut values);
            let t = rows.time_of(r);
            let wanted = self.from_us.is_none_or(|f| t >= f) && self.to_us.is_none_or(|e| t < e);
            if !wanted {
                self.scorer.observe(&values, &mut history);
                continue;
            }
            let scored = self.scorer.score(&values, &mut history);
            let mut reasons = [""; 3];
            for (slot, j) in reasons.iter_mut().zip(scored.reasons.indices()) {
                *slot = names[j].as_str();
            }
            fields.clear();
            fields.extend(copied.iter().map(|&i| values[i].clone()));
            let event_time_us = match values[time] {
                Value::Timestamp(us) => us,
                _ => t,
            };
            chunk.push(
                &self.columns,
                &Prediction {
                    transaction_id: values[id].as_str().unwrap_or_default(),
                    event_time_us,
                    fields: &fields,
                    probability: scored.probability,
                    label: scored.label,
                    reasons: &reasons[..scored.reasons.len()],
                    model_version: self.scorer.version(),
                    scored_at: self.scored_at,
                    batch_run_id: Some(&self.run_id),
                },
            );
            if chunk.len() >= self.chunk_rows {
                let full = std::mem::replace(&mut chunk, PredictionRows::new(Target::Batch));
                if tx.blocking_send(full).is_err() {
                    // The inserting side stopped (its error is the run's).
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    }
}
