//! Batch scoring (`txpipe train --batch-score`): the history scored with the current model into
//! ClickHouse `transactions_batch`, every row tagged with the run's id.
//!
//! The rows are read, ordered and deduplicated as training reads them, and scored through the
//! same path as `score` ([`super::predict`]), the account history fed from the first row:
//! realtime and batch rows of a transaction are the same. Rows outside `--from`/`--to` still feed the history but
//! are not written. Scoring runs on a blocking thread and hands chunks of encoded rows to the
//! inserts (two chunks in flight at most); an insert that fails is retried with backoff, and a
//! ClickHouse that stays away ends the run with an error.

use std::time::Instant;

use txpipe_connectors::clickhouse::{
    ClickHouseConfig, ClickHouseError, PredictionRows, SealedRows, Serving, Target,
};
use txpipe_connectors::delta::{self, TablesConfig};
use txpipe_connectors::retry::Backoff;
use txpipe_core::features::History;
use txpipe_core::model::{ModelArtifact, Scorer};
use txpipe_core::schema::Schema;

use super::{Layout, Stamp, Take, predict};
use crate::rows::Rows;
use crate::{JobError, Result, Shutdown};

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
/// `transactions_batch`. Retries of ClickHouse give up once `shutdown` is triggered.
pub async fn score_history(
    tables: &TablesConfig,
    schema: &Schema,
    model: &ModelArtifact,
    version: Option<u64>,
    parallelism: usize,
    batch: &BatchScore,
    shutdown: &Shutdown,
) -> Result<BatchReport> {
    let started = Instant::now();
    let mut scorer = Scorer::new(model, schema)?;
    let columns = Serving::columns_for(schema, batch.clickhouse.fields.as_deref())?;
    let serving = Serving::new(&batch.clickhouse, columns);
    let layout = Layout::new(schema, serving.columns())?;
    let backoff = batch.backoff;
    let go = || !shutdown.is_triggered();
    let retryable = ClickHouseError::retryable;
    backoff.retry_while("creating the serving tables", retryable, go, || serving.ensure()).await?;

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

    // Scoring on a blocking thread hands chunks to the inserts, two in flight at most.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SealedRows>(2);
    let (from_us, to_us, chunk_rows) = (batch.from_us, batch.to_us, batch.clickhouse.insert_rows);
    // Later than every earlier run's rows, also within one second of the last run.
    let last =
        backoff.retry_while("reading the batch scores", retryable, go, || serving.last_batch_stamp()).await?;
    let scored_at =
        (now.timestamp().clamp(0, u32::MAX as i64) as u32).max(last.map_or(0, |s| s.saturating_add(1)));
    let encoding = tokio::task::spawn_blocking(move || -> Result<()> {
        let rows = Rows::new(&layout.schema, &projection.batches, None)?;
        let stamp = Stamp { scored_at, batch_run_id: Some(&run_id) };
        let mut out = PredictionRows::new(Target::Batch);
        let wanted = |_: &str, t: i64| {
            let inside = from_us.is_none_or(|f| t >= f) && to_us.is_none_or(|e| t < e);
            if inside { Take::Score } else { Take::Observe }
        };
        // A failed send: the inserting side stopped (its error is the run's), so stop too.
        let hand_out =
            |out: &mut PredictionRows, _| out.len() < chunk_rows || tx.blocking_send(out.take()).is_ok();
        let mut history = History::new();
        predict(&layout, &mut scorer, &mut history, &rows, stamp, &mut out, wanted, hand_out);
        if !out.is_empty() {
            let _ = tx.blocking_send(out.seal());
        }
        Ok(())
    });
    while let Some(chunk) = rx.recv().await {
        backoff.retry_while("inserting batch scores", retryable, go, || serving.insert(&chunk)).await?;
        report.rows += chunk.len() as u64;
        report.inserts += 1;
    }
    encoding.await.map_err(|e| JobError::Internal(format!("the batch scoring task: {e}")))??;
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(run = %report.run_id, rows = report.rows, inserts = report.inserts, "batch scores written");
    Ok(report)
}
