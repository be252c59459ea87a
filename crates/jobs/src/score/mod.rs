//! `txpipe score` (Job 2): the clean Delta table read as a stream → features → the current
//! model (picked up again whenever `train` publishes one) → ClickHouse `transactions_realtime`.
//!
//! In: the clean table's commits, the model directory, the schema. Out: one prediction row per
//! transaction with its probability, label, top three reasons and model version, and a
//! [`ScoreReport`].
//!
//! Where it resumes is kept in ClickHouse itself (`txpipe_score_progress`): the highest Delta
//! version whose rows are all in `transactions_realtime`, written only after the insert of
//! those rows was acknowledged. A crash between the two inserts replays rows that are already
//! there; the table is a ReplacingMergeTree keyed by transaction id and the serving view groups
//! by it, so a replay never shows twice. Keeping the position next to the rows (rather than in a
//! local file) lets a score process move to another machine and keeps the two from drifting
//! apart when ClickHouse is restored from a backup.
//!
//! Account history: the features of an event depend on the account's earlier events, so at
//! start the history up to the resume point is restored without scoring: from score's state
//! file (see [`snapshot`]) and the commits after its version, or else from the table read up to
//! the resume point (in table order: Kafka partition, then offset; only the columns the history
//! reads). Memory grows with accounts (about 110 bytes each, measured: see [`History`]), not
//! with the table. Repeated transaction ids: `train` keeps the first copy in table order;
//! `score` remembers the last [`RECENT_IDS`] ids it saw (as 64-bit hashes, about 24 MB) and
//! drops a repeat among them, so a repeat further apart than that is scored again (its row
//! replaces the first in ClickHouse).
//!
//! Catching up from the start (`start = "earliest"`, no progress) reads the log commit by
//! commit in bounded micro-batches, recording progress as it goes; it reads the table whole
//! when the log's first entries are gone, a commit's file was vacuumed, or the table has no
//! Kafka positions.

use std::time::{Duration, Instant};

use txpipe_connectors::clickhouse::{ClickHouseConfig, ClickHouseError, Serving};
use txpipe_connectors::delta::arrow::datatypes::DataType;
use txpipe_connectors::delta::{DeltaTable, TableTail, TablesConfig, arrow_type};
use txpipe_connectors::retry::Backoff;
use txpipe_core::schema::Schema;

use crate::models::ModelStore;
use crate::predict::Layout;
use crate::telemetry::Beat;
use crate::{JobError, Result, Shutdown};

mod config;
mod dedup;
mod model_watch;
mod report;
mod restore;
mod sink;
mod snapshot;
mod start;
mod stream;

pub use config::{ScoreConfig, ScoreSettings, Start};
pub use dedup::RECENT_IDS;
pub use report::ScoreReport;

use model_watch::ModelWatch;
use restore::State;
use sink::Sink;
use snapshot::Snapshots;
use start::{HandedOut, StartPlan, TableState};

/// Everything a score run needs.
#[derive(Debug, Clone)]
pub struct ScoreJob {
    pub settings: ScoreSettings,
    pub tables: TablesConfig,
    pub schema: Schema,
    pub model_dir: String,
    pub clickhouse: ClickHouseConfig,
    /// How long ClickHouse may stay away before the run gives up (attempts 0: never).
    pub backoff: Backoff,
    /// What feeds the table, when it runs in the same process (`txpipe run`): `exit_when_idle`
    /// counts only from when it has ended, so that its last commit is scored.
    pub upstream: Option<Shutdown>,
}

impl ScoreJob {
    /// Whether idleness may end the run now (nothing upstream is still writing).
    fn idle_counts(&self) -> bool {
        self.upstream.as_ref().is_none_or(Shutdown::is_triggered)
    }
}

/// What every stage of a run shares.
pub(super) struct Run<'a> {
    job: &'a ScoreJob,
    shutdown: &'a Shutdown,
    serving: Serving,
    layout: Layout,
    location: String,
    /// What the run's progress and state file are kept under: the table's location, with the
    /// shard (`#shard=I/N`) for a shard of it.
    progress_key: String,
    /// The columns the stream reads: the schema's fields, then the Kafka position.
    wanted: Vec<(String, DataType)>,
    /// The run's loop, for `/livez`: it turns while the run retries ClickHouse, waits for a
    /// model or the table, restores, streams, or waits for an insert's answer.
    beat: Beat,
}

impl Run<'_> {
    /// A tail of the table reading `columns`, with the run's micro-batch bounds.
    fn tail(&self, columns: &[(String, DataType)]) -> TableTail {
        let columns: Vec<(&str, DataType)> = columns.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let s = &self.job.settings;
        let tail = TableTail::new(
            &self.location,
            &self.job.tables.storage_options,
            &columns,
            0,
            s.max_files,
            s.max_rows,
        )
        .reading(s.read_parallelism);
        match s.shard {
            Some(shard) => tail.only_partitions(shard.index, shard.count),
            None => tail,
        }
    }

    /// Retries of ClickHouse give up once a stop is asked (see [`run`]).
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, ClickHouseError>>,
    {
        // Asked after each failed attempt and every quarter of a second of a wait.
        let go = || {
            self.beat.turn();
            !self.shutdown.is_triggered()
        };
        Ok(self.job.backoff.retry_while(what, ClickHouseError::retryable, go, op).await?)
    }

    /// After a look that found nothing: false when a stop is asked, or (with
    /// `exit_when_idle`) when nothing came for that long; else says what it waits for (every
    /// `stats_interval`), sleeps `every` and returns true.
    async fn keep_waiting(&self, waiting: &mut Waiting, every: Duration) -> bool {
        self.beat.turn();
        let settings = &self.job.settings;
        let what = waiting.what;
        if self.shutdown.is_triggered() {
            return false;
        }
        if !self.job.idle_counts() {
            waiting.since = Instant::now();
        }
        if settings.exit_when_idle.is_some_and(|idle| waiting.since.elapsed() >= idle) {
            tracing::info!(location = %self.location, model_dir = %self.job.model_dir, "{what}; stopping (exit-when-idle)");
            return false;
        }
        if waiting.said.is_none_or(|t| t.elapsed() >= settings.stats) {
            let note = waiting.note;
            tracing::info!(location = %self.location, model_dir = %self.job.model_dir, "{what}; waiting{note}");
            waiting.said = Some(Instant::now());
        }
        sleep_or_shutdown(every, self.shutdown).await;
        true
    }
}

/// A wait for something the run needs before it reads rows.
struct Waiting {
    what: &'static str,
    /// Said after "waiting".
    note: &'static str,
    since: Instant,
    said: Option<Instant>,
}

impl Waiting {
    fn new(what: &'static str, note: &'static str) -> Waiting {
        Waiting { what, note, since: Instant::now(), said: None }
    }
}

/// Runs score until `shutdown` (or idle, with `exit_when_idle`). Asked to stop while ClickHouse
/// is away, it stops (within a quarter of a second of a wait) instead of waiting for ClickHouse:
/// the rows not written are scored again at the next start, as the resume point did not move.
pub async fn run(job: ScoreJob, shutdown: Shutdown) -> Result<ScoreReport> {
    let started = Instant::now();
    let mut report = ScoreReport::default();
    let outcome = run_into(&job, &shutdown, &mut report).await;
    report.elapsed_s = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => Ok(report),
        Err(JobError::ClickHouse(e)) if shutdown.is_triggered() && e.retryable() => {
            tracing::warn!(
                error = %e,
                complete_through = ?report.complete_through,
                "stopping as asked while ClickHouse is unreachable: rows scored since the resume point were not \
                 written, and the next start scores them again"
            );
            report.stopped_in_outage = true;
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

/// Wait for a model → wait for the table → plan the start → restore → stream.
async fn run_into(job: &ScoreJob, shutdown: &Shutdown, report: &mut ScoreReport) -> Result<()> {
    let columns = Serving::columns_for(&job.schema, job.clickhouse.fields.as_deref())?;
    let serving = Serving::new(&job.clickhouse, columns);
    let mut wanted: Vec<(String, DataType)> =
        job.schema.fields().iter().map(|f| (f.name.clone(), arrow_type(f.kind))).collect();
    wanted.extend([("kafka_partition".into(), DataType::Int32), ("kafka_offset".into(), DataType::Int64)]);
    let layout = Layout::new(&job.schema, serving.columns())?;
    let beat = Beat::new("score");
    let location = job.tables.clean.clone();
    let progress_key = match job.settings.shard {
        Some(shard) => format!("{location}#shard={shard}"),
        None => location.clone(),
    };
    let run = Run { job, shutdown, serving, layout, location, progress_key, wanted, beat };
    run.retry("creating the serving tables", || run.serving.ensure()).await?;

    // A model first: rows are not read before there is one to score them with.
    let (store, mut refused) = (ModelStore::open(&job.model_dir, &job.tables.storage_options)?, None);
    let mut waiting = Waiting::new("no model published yet", " (rows are scored once one is)");
    let mut watch = loop {
        if let Some(w) =
            tokio::task::block_in_place(|| ModelWatch::try_first(&store, &job.schema, &mut refused))
        {
            break w;
        }
        if !run.keep_waiting(&mut waiting, job.settings.model_poll).await {
            return Ok(());
        }
    };
    report.models.push(watch.id().to_string());
    check_shard(job, watch.scorer())?;

    let mut tail = run.tail(&run.wanted);
    let progress = run.retry("reading score progress", || run.serving.progress(&run.progress_key)).await?;
    let mut waiting = Waiting::new("the clean table does not exist yet", "");
    let table = loop {
        if let Some(t) = tail.load_newest().await? {
            break t;
        }
        if !run.keep_waiting(&mut waiting, job.settings.poll).await {
            return Ok(());
        }
    };
    // What the table allows matters only to a catch-up from the start; the state file only to a
    // start that restores the history.
    let catching_up = progress.is_none() && job.settings.start == Start::Earliest;
    let table_state = TableState {
        newest: table.version().unwrap_or(0),
        log_from_zero: catching_up
            && txpipe_connectors::delta::has_columns(&table, &["kafka_partition", "kafka_offset"])?
            && tail.log_starts_at_zero().await?,
    };
    let mut snapshots = snapshots(&run, &table, &watch)?;
    let state_file = match start::restores(progress, job.settings.start) {
        true => snapshots.as_ref().and_then(Snapshots::load),
        false => None,
    };
    let plan = start::plan(progress, job.settings.start, table_state, state_file.as_ref().map(|l| l.version));
    tracing::info!(?plan, ?progress, newest = table_state.newest, "start");
    let mut sink = Sink::new(
        run.serving.clone(),
        job.backoff,
        shutdown.clone(),
        run.progress_key.clone(),
        job.clickhouse.insert_rows,
        job.settings.flush,
        run.beat.clone(),
    );
    let (state, history_through) =
        carry_out(&run, plan, &mut tail, table, state_file, &mut sink, &mut watch, &mut snapshots, report)
            .await?;
    let catch_up = match plan {
        StartPlan::FromLog { until } => Some(HandedOut::through(until)),
        _ => None,
    };
    let lag = stream::Lag::default();
    let stream = stream::Stream {
        run: &run,
        tail,
        sink,
        watch,
        state,
        snapshots,
        catch_up,
        history_through,
        lag,
        waited_for_storage: false,
    };
    stream.run(report).await
}

/// A shard scores only some Kafka partitions, so each account's events must all be in one
/// partition: the model's account history must be kept by the field that is the Kafka key.
pub(super) fn check_shard(job: &ScoreJob, scorer: &txpipe_core::model::Scorer) -> Result<()> {
    let (Some(shard), Some(account)) = (job.settings.shard, scorer.history_account()) else { return Ok(()) };
    let fields = job.schema.fields();
    if job.schema.key_index() == Some(account) {
        return Ok(());
    }
    let key = match job.schema.key_index() {
        Some(k) => format!("`{}`", fields[k].name),
        None => "no field (schema.key_field is not set)".to_string(),
    };
    Err(JobError::Refused {
        code: "shard_account_not_key",
        why: format!(
            "score.shard = {shard}: a shard scores only some Kafka partitions, so an account's events must all be in \
             one partition, but the model keeps its account history by `{}` and the Kafka key is {key}; run one \
             score for the whole table, or key the topic by `{}`",
            fields[account].name, fields[account].name
        ),
    })
}

/// Where the run's state file is, if it keeps one.
fn snapshots(run: &Run<'_>, table: &DeltaTable, watch: &ModelWatch) -> Result<Option<Snapshots>> {
    let job = run.job;
    let Some(dir) = &job.settings.state_dir else { return Ok(None) };
    Ok(Some(Snapshots {
        path: snapshot::file(dir, &run.progress_key, &job.clickhouse.database),
        location: run.progress_key.clone(),
        database: job.clickhouse.database.clone(),
        table_id: txpipe_connectors::delta::table_id(table)?,
        history_key: watch.scorer().history_key(&job.schema),
        every: job.settings.snapshot_every,
        last: Instant::now(),
        version: None,
    }))
}

/// Restores or scores what the plan says before the stream; the state, and the last version
/// whose rows are all in its history.
#[allow(clippy::too_many_arguments)]
async fn carry_out(
    run: &Run<'_>,
    plan: StartPlan,
    tail: &mut TableTail,
    table: DeltaTable,
    state_file: Option<snapshot::Loaded>,
    sink: &mut Sink,
    watch: &mut ModelWatch,
    snapshots: &mut Option<Snapshots>,
    report: &mut ScoreReport,
) -> Result<(State, Option<u64>)> {
    let (state, base) = match plan {
        StartPlan::FromLog { .. } | StartPlan::Fresh => return Ok((State::new(), None)),
        StartPlan::WholeTable { version } => {
            let scorer = watch.scorer().clone();
            (restore::score_whole_table(run, sink, tail, table, &scorer, report).await?, version)
        }
        StartPlan::Restore { through, state_file: usable, complete } => {
            if let (Some(v), None) = (state_file.as_ref().map(|l| l.version), usable) {
                tracing::warn!(
                    snapshot_version = v,
                    resume = through,
                    "the state file is past the resume point (ClickHouse restored from an older backup?); \
                     reading the table instead"
                );
            }
            let loaded = state_file.filter(|_| usable.is_some());
            let state =
                restore::restore(run, tail, table, through, loaded, watch.scorer_mut(), report).await?;
            report.complete_through = complete;
            (state, through)
        }
    };
    tracing::info!(
        accounts = state.history.len(),
        history_mb = state.history.heap_bytes() >> 20,
        "account history restored"
    );
    release_freed_memory();
    if let Some(snaps) = snapshots
        && report.from_snapshot != Some(base)
    {
        snaps.save(base, &state.recent, &state.history, report);
    }
    Ok((state, Some(base)))
}

/// Hands the memory freed by the start's read back to the system (the allocator keeps freed
/// blocks otherwise, and the process would hold the read's peak for as long as it runs).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn sleep_or_shutdown(wait: Duration, shutdown: &Shutdown) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.wait() => {}
    }
}
