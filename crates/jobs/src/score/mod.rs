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

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use txpipe_connectors::clickhouse::{
    ClickHouseConfig, ClickHouseError, Prediction, PredictionRows, Serving, ServingColumn, Target,
};
use txpipe_connectors::delta::arrow::array::RecordBatch;
use txpipe_connectors::delta::arrow::datatypes::DataType;
use txpipe_connectors::delta::{TableTail, TablesConfig, arrow_type};
use txpipe_connectors::retry::Backoff;
use txpipe_core::Error as ConfigError;
use txpipe_core::event::Value;
use txpipe_core::features::History;
use txpipe_core::model::{ModelArtifact, Scorer};
use txpipe_core::schema::Schema;
use txpipe_core::units::parse_duration_us;

use crate::models::ModelStore;
use crate::train::rows::Rows;
use crate::{JobError, Result, Shutdown};

mod snapshot;

/// Transaction ids remembered for dropping repeats.
pub const RECENT_IDS: usize = 1 << 20;

/// `[score]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// Where a score with no recorded progress starts: `earliest` (score the whole table),
    /// `latest` (only commits from now on) or a Delta version number (commits from it on).
    pub start: String,
    /// How often the table's log is polled for new commits.
    pub poll_interval: String,
    /// Data files read per micro-batch at most.
    pub max_files: usize,
    /// Rows per micro-batch at most, as the files' statistics count them (whole commits: a
    /// single commit with more is still one micro-batch).
    pub max_rows: u64,
    /// The longest a scored row waits for its insert (rows go sooner once
    /// `clickhouse.insert_rows` are waiting).
    pub flush_latency: String,
    /// How often the model directory is checked for a new model.
    pub model_poll_interval: String,
    /// Files read at once when restoring the history at start.
    pub read_parallelism: usize,
    /// Where score keeps its state (the account history at a version, so a start reads only
    /// the commits after it); "" keeps none.
    pub state_dir: String,
    /// How often the state is written while running (also at a clean stop).
    pub snapshot_interval: String,
    /// Stop after this many seconds without new commits (absent: run until stopped).
    pub exit_when_idle: Option<f64>,
    /// Log the counters at this interval.
    pub stats_interval: String,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            start: "earliest".into(),
            poll_interval: "50ms".into(),
            max_files: 64,
            max_rows: 100_000,
            flush_latency: "100ms".into(),
            model_poll_interval: "1s".into(),
            read_parallelism: 4,
            state_dir: "state/score".into(),
            snapshot_interval: "5m".into(),
            exit_when_idle: None,
            stats_interval: "10s".into(),
        }
    }
}

/// Where a score with no recorded progress starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    Earliest,
    Latest,
    Version(u64),
}

/// Validated score settings.
#[derive(Debug, Clone)]
pub struct ScoreSettings {
    pub start: Start,
    pub poll: Duration,
    pub max_files: usize,
    pub max_rows: u64,
    pub flush: Duration,
    pub model_poll: Duration,
    pub read_parallelism: usize,
    pub state_dir: Option<std::path::PathBuf>,
    pub snapshot_every: Duration,
    pub exit_when_idle: Option<Duration>,
    pub stats: Duration,
}

fn duration(key: &str, text: &str) -> std::result::Result<Duration, ConfigError> {
    parse_duration_us(text)
        .filter(|&us| us > 0)
        .map(|us| Duration::from_micros(us as u64))
        .ok_or_else(|| ConfigError::config(key, text, "a positive duration such as 50ms, 1s or 2m"))
}

impl ScoreConfig {
    pub fn validate(&self) -> std::result::Result<ScoreSettings, ConfigError> {
        let start = match self.start.trim() {
            "earliest" => Start::Earliest,
            "latest" => Start::Latest,
            v => Start::Version(v.parse().map_err(|_| {
                ConfigError::config("score.start", &self.start, "earliest, latest or a Delta version number")
            })?),
        };
        if self.max_files == 0 {
            return Err(ConfigError::config("score.max_files", 0, "at least 1"));
        }
        if self.max_rows == 0 {
            return Err(ConfigError::config("score.max_rows", 0, "at least 1"));
        }
        if self.read_parallelism == 0 {
            return Err(ConfigError::config("score.read_parallelism", 0, "at least 1"));
        }
        let exit_when_idle = match self.exit_when_idle {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(ConfigError::config("score.exit_when_idle", s, "a positive number of seconds"));
            }
        };
        Ok(ScoreSettings {
            start,
            poll: duration("score.poll_interval", &self.poll_interval)?,
            max_files: self.max_files,
            max_rows: self.max_rows,
            flush: duration("score.flush_latency", &self.flush_latency)?,
            model_poll: duration("score.model_poll_interval", &self.model_poll_interval)?,
            read_parallelism: self.read_parallelism,
            state_dir: (!self.state_dir.trim().is_empty()).then(|| self.state_dir.trim().into()),
            snapshot_every: duration("score.snapshot_interval", &self.snapshot_interval)?,
            exit_when_idle,
            stats: duration("score.stats_interval", &self.stats_interval)?,
        })
    }
}

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
}

/// What a score run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScoreReport {
    /// Rows read from the table up to the resume point into the account history.
    pub restored: u64,
    /// Stopped as asked while ClickHouse was away, with rows not written (scored again at the
    /// next start).
    pub stopped_in_outage: bool,
    pub scored: u64,
    /// Repeated transaction ids dropped.
    pub repeats: u64,
    pub written: u64,
    pub inserts: u64,
    /// Micro-batches read from the stream, and the rows of the largest.
    pub micro_batches: u64,
    pub largest_micro_batch: u64,
    /// The version of the state file the start loaded (None: none was used).
    pub from_snapshot: Option<u64>,
    /// State files written.
    pub snapshots: u64,
    /// The highest Delta version whose rows are all in ClickHouse.
    pub complete_through: Option<u64>,
    /// The model versions used, in order.
    pub models: Vec<String>,
    /// From event time to the acknowledged insert (the row queryable), over the rows streamed
    /// within a minute of their event time: median and 99th percentile, in seconds.
    pub latency_p50_s: Option<f64>,
    pub latency_p99_s: Option<f64>,
    /// Rows streamed more than a minute after their event time (history, a backlog).
    pub latency_over_60s: u64,
    pub elapsed_s: f64,
}

/// Event time → queryable, per row, in 1 ms buckets up to a minute.
struct Latency {
    buckets: Vec<u32>,
    over: u64,
}

impl Latency {
    fn new() -> Latency {
        Latency { buckets: vec![0; 60_000], over: 0 }
    }

    fn add(&mut self, seconds: f64) {
        let ms = (seconds * 1000.0).max(0.0) as usize;
        match self.buckets.get_mut(ms) {
            Some(b) => *b += 1,
            None => self.over += 1,
        }
    }

    /// The `q` quantile in seconds (bucket upper edge), if any row was counted.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().map(|&b| b as u64).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (ms, &b) in self.buckets.iter().enumerate() {
            seen += b as u64;
            if seen >= rank {
                return Some((ms + 1) as f64 / 1000.0);
            }
        }
        None
    }
}

/// The last [`RECENT_IDS`] transaction ids seen, as 64-bit hashes with a seed of their own
/// (kept in score's state file with them).
pub(crate) struct RecentIds {
    order: VecDeque<u64>,
    set: HashSet<u64, foldhash::fast::RandomState>,
    seed: u64,
    hasher: foldhash::quality::FixedState,
}

impl RecentIds {
    fn new() -> RecentIds {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u64);
        RecentIds::with_seed(seed)
    }

    fn with_seed(seed: u64) -> RecentIds {
        RecentIds {
            order: VecDeque::new(),
            set: HashSet::default(),
            seed,
            hasher: foldhash::quality::FixedState::with_seed(seed),
        }
    }

    /// Whether `id` is new (then it is remembered).
    fn first(&mut self, id: &str) -> bool {
        let h = self.hasher.hash_one(id.as_bytes());
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// The seed and the hashes, oldest first.
    fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        w.write_all(&self.seed.to_le_bytes())?;
        w.write_all(&(self.order.len() as u64).to_le_bytes())?;
        for h in &self.order {
            w.write_all(&h.to_le_bytes())?;
        }
        Ok(())
    }

    fn read_from(r: &mut impl std::io::Read) -> std::io::Result<RecentIds> {
        let mut b = [0; 8];
        r.read_exact(&mut b)?;
        let mut recent = RecentIds::with_seed(u64::from_le_bytes(b));
        r.read_exact(&mut b)?;
        let n = u64::from_le_bytes(b);
        if n > RECENT_IDS as u64 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{n} recent ids")));
        }
        for _ in 0..n {
            r.read_exact(&mut b)?;
            let h = u64::from_le_bytes(b);
            if recent.set.insert(h) {
                recent.order.push_back(h);
            }
        }
        Ok(recent)
    }
}

/// The model in use, and how to notice a new one.
struct Current {
    store: ModelStore,
    id: Option<String>,
    scorer: Option<Scorer>,
    /// The id of a model refused (broken, or not fitting the schema), not to be tried again.
    refused: Option<String>,
    checked: Option<Instant>,
}

impl Current {
    /// Looks at the pointer (at most every `every`); loads a new model. Returns true when the
    /// model changed.
    fn check(&mut self, schema: &Schema, every: Duration, report: &mut ScoreReport) -> bool {
        if self.checked.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        self.checked = Some(Instant::now());
        let id = match self.store.current_id() {
            Ok(Some(id)) => id,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "reading the model pointer failed; keeping the current model");
                return false;
            }
        };
        if self.id.as_deref() == Some(id.as_str()) || self.refused.as_deref() == Some(id.as_str()) {
            return false;
        }
        let loaded: Result<(ModelArtifact, Scorer)> = self.store.load(&id).and_then(|artifact| {
            let scorer = Scorer::new(&artifact, schema)?;
            Ok((artifact, scorer))
        });
        match loaded {
            Ok((artifact, scorer)) => {
                tracing::info!(model = %id, holdout_auc = artifact.metrics.holdout.auc_roc, previous = ?self.id, "scoring with model");
                self.id = Some(id.clone());
                self.scorer = Some(scorer);
                report.models.push(id);
                true
            }
            Err(e) => {
                tracing::warn!(model = %id, error = %e, current = ?self.id, "refusing this model; keeping the current one");
                self.refused = Some(id);
                false
            }
        }
    }
}

/// Scored rows waiting for their insert, and the version they complete.
struct Pending {
    rows: PredictionRows,
    /// The rows' event times (UTC µs), for the latency.
    times: Vec<i64>,
    complete_through: Option<u64>,
    since: Option<Instant>,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            rows: PredictionRows::new(Target::Realtime),
            times: Vec::new(),
            complete_through: None,
            since: None,
        }
    }
}

/// Runs score until `shutdown` (or idle, with `exit_when_idle`). Asked to stop while ClickHouse
/// is away, it stops (within a quarter of a second of a wait) instead of waiting for ClickHouse:
/// the rows not written are scored again at the next start, as the resume point did not move.
pub async fn run(job: ScoreJob, shutdown: Shutdown) -> Result<ScoreReport> {
    let started = Instant::now();
    let mut report = ScoreReport::default();
    match run_into(job, &shutdown, &mut report).await {
        Ok(()) => Ok(report),
        Err(JobError::ClickHouse(e)) if shutdown.is_triggered() && e.retryable() => {
            tracing::warn!(
                error = %e,
                complete_through = ?report.complete_through,
                "stopping as asked while ClickHouse is unreachable: rows scored since the resume point were not \
                 written, and the next start scores them again"
            );
            report.stopped_in_outage = true;
            report.elapsed_s = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

async fn run_into(job: ScoreJob, shutdown: &Shutdown, report: &mut ScoreReport) -> Result<()> {
    let started = Instant::now();
    // Retries of ClickHouse give up once a stop is asked (see `run`).
    let keep_going = || !shutdown.is_triggered();
    let go: &(dyn Fn() -> bool + Sync) = &keep_going;
    let settings = &job.settings;
    let location = job.tables.clean.clone();
    let columns = Serving::columns_for(&job.schema, job.clickhouse.fields.as_deref())?;
    let serving = Serving::new(&job.clickhouse, columns);
    let retryable = ClickHouseError::retryable;
    job.backoff.retry_while("creating the serving tables", retryable, go, || serving.ensure()).await?;

    // A model first: rows are not read before there is one to score them with.
    let mut current = Current {
        store: ModelStore::new(&job.model_dir),
        id: None,
        scorer: None,
        refused: None,
        checked: None,
    };
    let mut said = None::<Instant>;
    let waiting = Instant::now();
    let idle_over = |since: Instant| settings.exit_when_idle.is_some_and(|idle| since.elapsed() >= idle);
    while !current.check(&job.schema, Duration::ZERO, &mut *report) {
        if shutdown.is_triggered() {
            return Ok(());
        }
        if idle_over(waiting) {
            tracing::info!(model_dir = %job.model_dir, "no model published yet; stopping (exit-when-idle)");
            report.elapsed_s = started.elapsed().as_secs_f64();
            return Ok(());
        }
        if said.is_none_or(|t| t.elapsed() >= settings.stats) {
            tracing::info!(model_dir = %job.model_dir, "no model published yet; waiting (rows are scored once one is)");
            said = Some(Instant::now());
        }
        current.checked = None;
        sleep_or_shutdown(settings.model_poll, shutdown).await;
    }

    let mut wanted: Vec<(&str, DataType)> =
        job.schema.fields().iter().map(|f| (f.name.as_str(), arrow_type(f.kind))).collect();
    wanted.push(("kafka_partition", DataType::Int32));
    wanted.push(("kafka_offset", DataType::Int64));
    let mut tail = TableTail::new(
        &location,
        &job.tables.storage_options,
        &wanted,
        0,
        settings.max_files,
        settings.max_rows,
    )
    .reading(settings.read_parallelism);

    // Where to resume, and the history up to there.
    let resume = job
        .backoff
        .retry_while("reading score progress", retryable, go, || serving.progress(&location))
        .await?;
    let mut said = None::<Instant>;
    let waiting = Instant::now();
    let table = loop {
        if let Some(t) = tail.load_newest().await? {
            break t;
        }
        if shutdown.is_triggered() {
            return Ok(());
        }
        if idle_over(waiting) {
            tracing::info!(%location, "the clean table does not exist yet; stopping (exit-when-idle)");
            report.elapsed_s = started.elapsed().as_secs_f64();
            return Ok(());
        }
        if said.is_none_or(|t| t.elapsed() >= settings.stats) {
            tracing::info!(%location, "the clean table does not exist yet; waiting");
            said = Some(Instant::now());
        }
        sleep_or_shutdown(settings.poll, shutdown).await;
    };
    let newest = table.version().unwrap_or(0);
    // (version whose state is read, whether its rows are scored)
    // Catching up from the start reads the log commit by commit (micro-batches of bounded size,
    // progress recorded as it goes) while it still holds every commit; the table as it is now
    // (all its rows at once) when the log's first entries are gone, or as soon as a commit
    // turns out unreadable (a data file vacuumed after compaction). A table without Kafka
    // positions (written by another tool) is read whole: train orders its rows by event time
    // over the whole table, which micro-batches cannot.
    let from_log = resume.is_none()
        && settings.start == Start::Earliest
        && txpipe_connectors::delta::has_columns(&table, &["kafka_partition", "kafka_offset"])?
        && tail.log_starts_at_zero().await?;
    let mut catch_up_until = from_log.then_some(newest);
    let (base, score_base) = match (resume, settings.start) {
        (Some(v), _) => (Some(v.min(newest)), false),
        (None, Start::Earliest) if from_log => (None, false),
        (None, Start::Earliest) => (Some(newest), true),
        (None, Start::Latest) => (Some(newest), false),
        (None, Start::Version(0)) => (None, false),
        (None, Start::Version(n)) => (Some((n - 1).min(newest)), false),
    };
    let mut history = History::new();
    let mut recent = RecentIds::new();
    let mut pending = Pending::new();
    let mut latency = Latency::new();
    let copied = copied_fields(&job.schema, serving.columns())?;
    let table_id = txpipe_connectors::delta::table_id(&table)?;
    let history_key = current.scorer.as_ref().expect("a model is loaded").history_key(&job.schema);
    let mut snapshots = settings.state_dir.as_ref().map(|dir| Snapshots {
        path: snapshot::file(dir, &location, &job.clickhouse.database),
        location: location.clone(),
        database: job.clickhouse.database.clone(),
        table_id: table_id.clone(),
        history_key: history_key.clone(),
        every: settings.snapshot_every,
        last: Instant::now(),
        version: None,
    });
    let ctx = Ctx { schema: job.schema.clone(), copied, columns: serving.columns().to_vec() };
    if let Some(base) = base {
        let mut table = table;
        if score_base {
            (history, recent) = score_whole_table(
                &job,
                &serving,
                go,
                &location,
                &mut tail,
                table,
                ctx.clone(),
                &mut current,
                &mut *report,
            )
            .await?;
        } else {
            // Rows that only feed the history need only the fields it reads.
            let scorer = current.scorer.as_mut().expect("a model is loaded");
            let mut fields: Vec<usize> = scorer.history_fields();
            fields.push(job.schema.id_index());
            let mut names: Vec<&str> = fields.iter().map(|&i| job.schema.fields()[i].name.as_str()).collect();
            names.extend(["kafka_partition", "kafka_offset"]);
            let narrow: Vec<(&str, DataType)> =
                wanted.iter().filter(|(n, _)| names.contains(n)).cloned().collect();
            let mut from_snapshot = None;
            if let Some(snaps) = &snapshots {
                match tokio::task::block_in_place(|| snapshot::read(&snaps.path, &snaps.key())) {
                    Ok(Some(loaded)) if loaded.version <= base => {
                        let (mut h, mut r) = (loaded.history, loaded.recent);
                        let replay = TableTail::new(
                            &location,
                            &job.tables.storage_options,
                            &narrow,
                            0,
                            settings.max_files,
                            settings.max_rows,
                        )
                        .until(base)
                        .reading(settings.read_parallelism);
                        match replay_into(replay, &table, loaded.version, base, &ctx, scorer, &mut h, &mut r)
                            .await
                        {
                            Ok(replayed) => {
                                tracing::info!(
                                    snapshot_version = loaded.version,
                                    replayed,
                                    resume = base,
                                    "account history loaded from the state file, then the commits after it"
                                );
                                (history, recent) = (h, r);
                                report.restored = replayed;
                                from_snapshot = Some(loaded.version);
                            }
                            Err(e) => tracing::warn!(
                                error = %e,
                                snapshot_version = loaded.version,
                                "could not read the commits after the state file; reading the table instead"
                            ),
                        }
                    }
                    Ok(Some(loaded)) => tracing::warn!(
                        snapshot_version = loaded.version,
                        resume = base,
                        "the state file is past the resume point (ClickHouse restored from an older backup?); \
                         reading the table instead"
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "not using the state file; reading the table instead")
                    }
                }
            }
            report.from_snapshot = from_snapshot;
            if from_snapshot.is_none() {
                if table.version() != Some(base) {
                    table
                        .load_version(base)
                        .await
                        .map_err(|e| JobError::Internal(format!("loading version {base}: {e}")))?;
                }
                let batches = tail.read_state(&table, settings.read_parallelism, Some(&names)).await?;
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                tracing::info!(
                    version = base,
                    rows,
                    "read the table up to the resume point into the history"
                );
                report.restored = tokio::task::block_in_place(|| {
                    observe_rows(&ctx, scorer, &batches, &mut history, &mut recent)
                })?;
            }
            tail.resume_after(&table, base)?;
            report.complete_through = resume;
        }
        tracing::info!(
            accounts = history.len(),
            history_mb = history.heap_bytes() >> 20,
            "account history restored"
        );
        release_freed_memory();
        if let Some(snaps) = &mut snapshots
            && report.from_snapshot != Some(base)
        {
            snaps.save(base, &recent, &history, &mut *report);
        }
    } else {
        tail = TableTail::new(
            &location,
            &job.tables.storage_options,
            &wanted,
            0,
            settings.max_files,
            settings.max_rows,
        )
        .reading(settings.read_parallelism);
    }

    // The stream.
    // Since when polls have found nothing new (time spent inserting does not count).
    let mut idle_since = Some(Instant::now());
    let mut stats_at = Instant::now();
    loop {
        if shutdown.is_triggered() {
            break;
        }
        if current.check(&job.schema, settings.model_poll, &mut *report) {
            metrics::counter!("txpipe_score_model_changes_total").increment(1);
            let key = current.scorer.as_ref().expect("a model is loaded").history_key(&job.schema);
            if let Some(snaps) = &mut snapshots
                && key != snaps.history_key
            {
                tracing::info!(
                    "the new model's history reads other fields or another window: no state file is written \
                     until a restart builds its history"
                );
                snapshots = None;
            }
        }
        let batch = match tail.poll().await {
            Ok(b) => b,
            Err(e @ txpipe_connectors::delta::DeltaError::Gone { .. }) if catch_up_until.is_some() => {
                tracing::warn!(
                    error = %e,
                    "the table's early commits cannot all be read one by one any more; scoring the table as it \
                     is now instead (rows already written are replaced, not repeated)"
                );
                report.scored -= pending.rows.len() as u64;
                pending = Pending::new();
                let table = tail
                    .load_newest()
                    .await?
                    .ok_or_else(|| JobError::Internal(format!("{location}: the table is gone")))?;
                (history, recent) = score_whole_table(
                    &job,
                    &serving,
                    go,
                    &location,
                    &mut tail,
                    table,
                    ctx.clone(),
                    &mut current,
                    &mut *report,
                )
                .await?;
                catch_up_until = None;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // Caught up once the commits up to the start's newest version are handed out (not
        // merely read from the log: the files of commits read ahead are read later).
        if let (Some(v), Some(done)) = (catch_up_until, batch.as_ref().and_then(|b| b.complete_through))
            && done >= v
        {
            catch_up_until = None;
        }
        let got = batch.is_some();
        if let Some(b) = batch {
            idle_since = None;
            report.micro_batches += 1;
            report.largest_micro_batch = report.largest_micro_batch.max(b.rows as u64);
            let scorer = current.scorer.as_mut().expect("a model is loaded");
            pending.since.get_or_insert_with(Instant::now);
            score_rows(
                &ctx,
                scorer,
                &b.batches,
                &mut history,
                &mut recent,
                &mut pending.rows,
                Some(&mut pending.times),
                &mut *report,
                |_| {},
            )?;
            if b.complete_through.is_some() {
                pending.complete_through = b.complete_through;
            }
        }
        let due = pending.since.is_some_and(|t| t.elapsed() >= settings.flush)
            || pending.rows.len() >= job.clickhouse.insert_rows;
        if due {
            flush(&serving, &job.backoff, go, &location, &mut pending, &mut latency, &mut *report).await?;
            if let Some(snaps) = &mut snapshots
                && let Some(v) = report.complete_through
                && snaps.version.is_none_or(|s| s < v)
                && snaps.last.elapsed() >= snaps.every
            {
                snaps.save(v, &recent, &history, &mut *report);
            }
            // A flush can take long (ClickHouse away): look at the log again before calling
            // the stream idle.
            if idle_since.is_some() {
                idle_since = Some(Instant::now());
            }
        }
        if stats_at.elapsed() >= settings.stats {
            stats_at = Instant::now();
            tracing::info!(
                scored = report.scored,
                written = report.written,
                inserts = report.inserts,
                complete_through = ?report.complete_through,
                next_version = tail.next_version(),
                model = ?current.id,
                "score"
            );
        }
        if !got && idle_since.is_none() {
            idle_since = Some(Instant::now());
        }
        if let Some(idle) = settings.exit_when_idle
            && idle_since.is_some_and(|t| t.elapsed() >= idle)
            && pending.rows.is_empty()
        {
            tracing::info!(idle_s = idle.as_secs_f64(), "no new commits; stopping");
            break;
        }
        if !got {
            sleep_or_shutdown(settings.poll, shutdown).await;
        }
    }
    flush(&serving, &job.backoff, go, &location, &mut pending, &mut latency, &mut *report).await?;
    if let Some(snaps) = &mut snapshots
        && let Some(v) = report.complete_through
        && snaps.version.is_none_or(|s| s < v)
    {
        snaps.save(v, &recent, &history, &mut *report);
    }
    report.latency_p50_s = latency.quantile(0.5);
    report.latency_p99_s = latency.quantile(0.99);
    report.latency_over_60s = latency.over;
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(())
}

/// Where and when score's state is written (see [`snapshot`]).
struct Snapshots {
    path: std::path::PathBuf,
    location: String,
    database: String,
    table_id: String,
    history_key: String,
    every: Duration,
    last: Instant,
    /// The version of the state written last by this run.
    version: Option<u64>,
}

impl Snapshots {
    fn key(&self) -> snapshot::Key<'_> {
        snapshot::Key {
            location: &self.location,
            database: &self.database,
            table_id: &self.table_id,
            history: &self.history_key,
        }
    }

    /// Writes the state at `version` (every row up to it in the history); a failure is said
    /// and the run goes on (the next start reads more of the table).
    fn save(&mut self, version: u64, recent: &RecentIds, history: &History, report: &mut ScoreReport) {
        let started = Instant::now();
        let written = tokio::task::block_in_place(|| {
            snapshot::write(&self.path, &self.key(), version, recent, history)
        });
        self.last = Instant::now();
        match written {
            Ok(bytes) => {
                self.version = Some(version);
                report.snapshots += 1;
                tracing::info!(
                    version,
                    accounts = history.len(),
                    mb = bytes >> 20,
                    seconds = started.elapsed().as_secs_f64(),
                    path = %self.path.display(),
                    "state written"
                );
            }
            Err(e) => tracing::warn!(error = %e, path = %self.path.display(), "writing the state failed"),
        }
    }
}

/// Scores every row of the table at `table`'s version (read all at once, scored on a blocking
/// thread, inserted as chunks fill, two in flight at most), records the progress, and returns
/// the history and recent ids after them; the tail goes on after that version.
#[allow(clippy::too_many_arguments)]
async fn score_whole_table(
    job: &ScoreJob,
    serving: &Serving,
    go: &(dyn Fn() -> bool + Sync),
    location: &str,
    tail: &mut TableTail,
    table: txpipe_connectors::delta::DeltaTable,
    ctx: Ctx,
    current: &mut Current,
    report: &mut ScoreReport,
) -> Result<(History, RecentIds)> {
    let base = table.version().unwrap_or(0);
    let batches = tail.read_state(&table, job.settings.read_parallelism, None).await?;
    drop(table);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    tracing::info!(version = base, rows, "read the table to score it whole");
    let mut scorer = current.scorer.take().expect("a model is loaded");
    let chunk_rows = job.clickhouse.insert_rows;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PredictionRows>(2);
    let work = tokio::task::spawn_blocking(move || {
        let (mut history, mut recent, mut counts) =
            (History::new(), RecentIds::new(), ScoreReport::default());
        let mut out = PredictionRows::new(Target::Realtime);
        let scored = score_rows(
            &ctx,
            &mut scorer,
            &batches,
            &mut history,
            &mut recent,
            &mut out,
            None,
            &mut counts,
            |rows| {
                if rows.len() >= chunk_rows {
                    let _ = tx.blocking_send(std::mem::replace(rows, PredictionRows::new(Target::Realtime)));
                }
            },
        );
        let _ = tx.blocking_send(out);
        scored.map(|()| (scorer, history, recent, counts))
    });
    while let Some(chunk) = rx.recv().await {
        insert(serving, &job.backoff, go, &chunk, report).await?;
    }
    let (scorer, history, recent, counts) =
        work.await.map_err(|e| JobError::Internal(format!("the scoring task: {e}")))??;
    current.scorer = Some(scorer);
    report.scored += counts.scored;
    report.repeats += counts.repeats;
    job.backoff
        .retry_while("recording progress", ClickHouseError::retryable, go, || {
            serving.record_progress(location, base)
        })
        .await?;
    report.complete_through = Some(base);
    Ok((history, recent))
}

/// Feeds the commits after `from` up to `to` into the history (the state file's version up to
/// the resume point); the rows fed.
#[allow(clippy::too_many_arguments)]
async fn replay_into(
    mut tail: TableTail,
    table: &txpipe_connectors::delta::DeltaTable,
    from: u64,
    to: u64,
    ctx: &Ctx,
    scorer: &mut Scorer,
    history: &mut History,
    recent: &mut RecentIds,
) -> Result<u64> {
    tail.resume_after(table, from)?;
    let (mut rows, mut done) = (0, from);
    // Until the batch that completes `to` is handed out (the log can be read past commits not
    // handed out yet).
    while done < to {
        let Some(batch) = tail.poll().await? else {
            return Err(JobError::Internal(format!(
                "the table's log ends at version {} before the resume point {to}",
                tail.next_version().saturating_sub(1)
            )));
        };
        rows += tokio::task::block_in_place(|| observe_rows(ctx, scorer, &batch.batches, history, recent))?;
        done = batch.complete_through.unwrap_or(done);
    }
    Ok(rows)
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

async fn insert(
    serving: &Serving,
    backoff: &Backoff,
    go: &(dyn Fn() -> bool + Sync),
    rows: &PredictionRows,
    report: &mut ScoreReport,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    backoff
        .retry_while("inserting predictions", ClickHouseError::retryable, go, || serving.insert(rows))
        .await?;
    metrics::histogram!("txpipe_score_insert_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("txpipe_score_rows_written_total").increment(rows.len() as u64);
    report.written += rows.len() as u64;
    report.inserts += 1;
    Ok(())
}

/// Inserts what is pending, then records the version it completes.
async fn flush(
    serving: &Serving,
    backoff: &Backoff,
    go: &(dyn Fn() -> bool + Sync),
    location: &str,
    pending: &mut Pending,
    latency: &mut Latency,
    report: &mut ScoreReport,
) -> Result<()> {
    insert(serving, backoff, go, &pending.rows, report).await?;
    let now_us = chrono::Utc::now().timestamp_micros();
    for &t in &pending.times {
        let seconds = (now_us - t) as f64 / 1e6;
        latency.add(seconds);
        if seconds < 60.0 {
            metrics::histogram!("txpipe_score_end_to_end_seconds").record(seconds);
        }
    }
    pending.times.clear();
    pending.rows.clear();
    pending.since = None;
    if let Some(v) = pending.complete_through.take()
        && report.complete_through != Some(v)
    {
        backoff
            .retry_while("recording progress", ClickHouseError::retryable, go, || {
                serving.record_progress(location, v)
            })
            .await?;
        report.complete_through = Some(v);
        metrics::gauge!("txpipe_score_complete_through_version").set(v as f64);
    }
    Ok(())
}

/// Positions in the schema of the serving tables' copied fields.
fn copied_fields(schema: &Schema, columns: &[ServingColumn]) -> Result<Vec<usize>> {
    columns
        .iter()
        .map(|c| {
            schema
                .fields()
                .iter()
                .position(|f| f.name == c.name)
                .ok_or_else(|| JobError::Internal(format!("serving column {} is not in the schema", c.name)))
        })
        .collect()
}

/// What scoring a row needs besides the model: the schema, and the copied fields.
#[derive(Clone)]
struct Ctx {
    schema: Schema,
    copied: Vec<usize>,
    columns: Vec<ServingColumn>,
}

/// Feeds rows into the history without scoring them; returns how many.
fn observe_rows(
    ctx: &Ctx,
    scorer: &mut Scorer,
    batches: &[RecordBatch],
    history: &mut History,
    recent: &mut RecentIds,
) -> Result<u64> {
    let rows = Rows::new(&ctx.schema, batches, None)?;
    let id = ctx.schema.id_index();
    let mut values = Vec::with_capacity(ctx.schema.fields().len());
    let mut n = 0;
    for &r in &rows.order {
        rows.values_into(r, &mut values);
        if !recent.first(values[id].as_str().unwrap_or_default()) {
            continue;
        }
        scorer.observe(&values, history);
        n += 1;
    }
    Ok(n)
}

/// Scores rows (in table order, repeats dropped) into `out`; `after_row` may take full chunks.
#[allow(clippy::too_many_arguments)]
fn score_rows(
    ctx: &Ctx,
    scorer: &mut Scorer,
    batches: &[RecordBatch],
    history: &mut History,
    recent: &mut RecentIds,
    out: &mut PredictionRows,
    mut times: Option<&mut Vec<i64>>,
    report: &mut ScoreReport,
    mut after_row: impl FnMut(&mut PredictionRows),
) -> Result<()> {
    let rows = Rows::new(&ctx.schema, batches, None)?;
    let id = ctx.schema.id_index();
    let time = ctx.schema.time_index();
    let names: Vec<String> = scorer.names().to_vec();
    let version = scorer.version().to_string();
    let scored_at = chrono::Utc::now().timestamp().clamp(0, u32::MAX as i64) as u32;
    let mut values: Vec<Value<'_>> = Vec::with_capacity(ctx.schema.fields().len());
    let mut fields: Vec<Value<'_>> = Vec::with_capacity(ctx.copied.len());
    let mut scored = 0u64;
    for &r in &rows.order {
        rows.values_into(r, &mut values);
        let tid = values[id].as_str().unwrap_or_default();
        if !recent.first(tid) {
            report.repeats += 1;
            continue;
        }
        let s = scorer.score(&values, history);
        let mut reasons = [""; 3];
        for (slot, j) in reasons.iter_mut().zip(s.reasons.indices()) {
            *slot = names[j].as_str();
        }
        fields.clear();
        fields.extend(ctx.copied.iter().map(|&i| values[i].clone()));
        let event_time_us = match values[time] {
            Value::Timestamp(us) => us,
            _ => rows.time_of(r),
        };
        out.push(
            &ctx.columns,
            &Prediction {
                transaction_id: tid,
                event_time_us,
                fields: &fields,
                probability: s.probability,
                label: s.label,
                reasons: &reasons[..s.reasons.len()],
                model_version: &version,
                scored_at,
                batch_run_id: None,
            },
        );
        if let Some(t) = times.as_deref_mut() {
            t.push(event_time_us);
        }
        scored += 1;
        after_row(out);
    }
    report.scored += scored;
    metrics::counter!("txpipe_score_rows_scored_total").increment(scored);
    Ok(())
}
