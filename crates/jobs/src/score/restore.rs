//! Carrying out a [`StartPlan`](super::start::StartPlan) before the stream: the account history
//! (and the recent ids) restored up to a version without scoring — from the state file and the
//! commits after it ([`replay`]), or from the table read at that version — or the whole table
//! scored at once ([`score_whole_table`]).
//!
//! Rows that only feed the history are read with only the columns it needs; the CPU work runs
//! off the async runtime (`block_in_place`, or a blocking task that hands chunks to the sink).

use txpipe_connectors::clickhouse::{PredictionRows, SealedRows, Target};
use txpipe_connectors::delta::arrow::array::RecordBatch;
use txpipe_connectors::delta::arrow::datatypes::DataType;
use txpipe_connectors::delta::{DeltaTable, TableTail};
use txpipe_core::features::History;
use txpipe_core::model::Scorer;

use super::Run;
use super::dedup::RecentIds;
use super::report::ScoreReport;
use super::sink::Sink;
use super::snapshot::Loaded;
use super::start::HandedOut;
use crate::predict::{Layout, Stamp, Take, predict};
use crate::rows::Rows;
use crate::{JobError, Result};

/// The history and the recent ids, as they stand after the rows fed so far.
pub(super) struct State {
    pub history: History,
    pub recent: RecentIds,
}

impl State {
    pub fn new() -> State {
        State { history: History::new(), recent: RecentIds::new() }
    }
}

/// Feeds rows into the history without scoring them (repeats left out); how many.
fn observe(layout: &Layout, scorer: &mut Scorer, batches: &[RecordBatch], state: &mut State) -> Result<u64> {
    let rows = Rows::new(&layout.schema, batches, None)?;
    let recent = &mut state.recent;
    let take = |id: &str, _| if recent.first(id) { Take::Observe } else { Take::Skip };
    let mut unused = PredictionRows::new(Target::Realtime);
    let counts =
        predict(layout, scorer, &mut state.history, &rows, Stamp::now(), &mut unused, take, |_, _| true);
    Ok(counts.observed)
}

/// The columns that rows fed only into the history need: the fields it reads, the id and the
/// Kafka position.
fn narrow_columns(run: &Run<'_>, scorer: &Scorer) -> Vec<String> {
    let schema = &run.job.schema;
    let mut fields = scorer.history_fields();
    fields.push(schema.id_index());
    let mut names: Vec<String> = fields.iter().map(|&i| schema.fields()[i].name.clone()).collect();
    names.extend(["kafka_partition".to_string(), "kafka_offset".to_string()]);
    names
}

/// Restores the history up to `through`: from `state_file` and the commits after it when it
/// can, else from the table at `through`; `tail` goes on after `through`. Sets
/// `report.restored` and `report.from_snapshot`.
pub(super) async fn restore(
    run: &Run<'_>,
    tail: &mut TableTail,
    mut table: DeltaTable,
    through: u64,
    state_file: Option<Loaded>,
    scorer: &mut Scorer,
    report: &mut ScoreReport,
) -> Result<State> {
    let names = narrow_columns(run, scorer);
    let narrow: Vec<(String, DataType)> =
        run.wanted.iter().filter(|(n, _)| names.contains(n)).cloned().collect();
    if let Some(loaded) = state_file {
        let from = loaded.version;
        let mut state = State { history: loaded.history, recent: loaded.recent };
        let replay_tail = run.tail(&narrow).until(through);
        match replay(replay_tail, &table, from, through, &run.layout, scorer, &mut state).await {
            Ok(replayed) => {
                tracing::info!(
                    snapshot_version = from,
                    replayed,
                    resume = through,
                    "account history loaded from the state file, then the commits after it"
                );
                report.restored = replayed;
                report.from_snapshot = Some(from);
                tail.resume_after(&table, through)?;
                return Ok(state);
            }
            Err(e) => tracing::warn!(
                error = %e,
                snapshot_version = from,
                "could not read the commits after the state file; reading the table instead"
            ),
        }
    }
    if table.version() != Some(through) {
        table.load_version(through).await.map_err(|e| {
            JobError::Delta(txpipe_connectors::delta::DeltaError::Read {
                location: run.location.clone(),
                source: Box::new(e),
            })
        })?;
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let batches = tail.read_state(&table, run.job.settings.read_parallelism, Some(&names)).await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    tracing::info!(version = through, rows, "read the table up to the resume point into the history");
    let mut state = State::new();
    report.restored = tokio::task::block_in_place(|| observe(&run.layout, scorer, &batches, &mut state))?;
    tail.resume_after(&table, through)?;
    Ok(state)
}

/// Feeds the commits after `from` up to `to` into the history (the state file's version up to
/// the resume point); the rows fed.
async fn replay(
    mut tail: TableTail,
    table: &DeltaTable,
    from: u64,
    to: u64,
    layout: &Layout,
    scorer: &mut Scorer,
    state: &mut State,
) -> Result<u64> {
    tail.resume_after(table, from)?;
    let mut rows = 0;
    let mut until = HandedOut::through(to);
    if from >= to {
        return Ok(0);
    }
    while !until.reached() {
        let Some(batch) = tail.poll().await? else {
            return Err(JobError::data(
                "the table's log",
                format!(
                    "it ends at version {} before the resume point {to}",
                    tail.next_version().saturating_sub(1)
                ),
            ));
        };
        rows += tokio::task::block_in_place(|| observe(layout, scorer, &batch.batches, state))?;
        until.batch(batch.complete_through);
    }
    Ok(rows)
}

/// Scores every row of the table at `table`'s version (read all at once, scored on a blocking
/// thread, inserted as chunks fill, one insert in flight while the next chunk is scored),
/// records the progress, and returns the history and recent ids after them.
pub(super) async fn score_whole_table(
    run: &Run<'_>,
    sink: &mut Sink,
    tail: &mut TableTail,
    table: DeltaTable,
    scorer: &Scorer,
    report: &mut ScoreReport,
) -> Result<State> {
    let base = table.version().unwrap_or(0);
    let batches = tail.read_state(&table, run.job.settings.read_parallelism, None).await?;
    drop(table);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    tracing::info!(version = base, rows, "read the table to score it whole");
    let (layout, mut scorer) = (run.layout.clone(), scorer.clone());
    let chunk_rows = run.job.clickhouse.insert_rows;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SealedRows>(1);
    let work = tokio::task::spawn_blocking(move || -> Result<(State, u64, u64)> {
        let rows = Rows::new(&layout.schema, &batches, None)?;
        let mut state = State::new();
        let recent = &mut state.recent;
        let take = |id: &str, _| if recent.first(id) { Take::Score } else { Take::Skip };
        // A failed send: the inserting side stopped (its error is the run's), so stop too.
        let hand_out =
            |out: &mut PredictionRows, _| out.len() < chunk_rows || tx.blocking_send(out.take()).is_ok();
        let mut out = PredictionRows::new(Target::Realtime);
        let counts =
            predict(&layout, &mut scorer, &mut state.history, &rows, Stamp::now(), &mut out, take, hand_out);
        let _ = tx.blocking_send(out.seal());
        Ok((state, counts.scored, counts.skipped))
    });
    while let Some(chunk) = rx.recv().await {
        sink.send_rows(chunk, report).await?;
    }
    let (state, scored, repeats) =
        work.await.map_err(|e| JobError::Internal(format!("the scoring task: {e}")))??;
    report.scored += scored;
    report.repeats += repeats;
    metrics::counter!(crate::telemetry::names::SCORE_ROWS_SCORED).increment(scored);
    sink.record(base, report).await?;
    Ok(state)
}
