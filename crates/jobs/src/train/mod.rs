//! `txpipe train` (Job 3): the Delta history → features → logistic regression, evaluated on
//! later data than it was fitted on → a new version in the model directory.
//!
//! In: a Delta snapshot (the newest or a given version), the schema, `[features]` and
//! `[train]`. Out: a published [`ModelArtifact`] (or a refusal that says why) and a
//! [`TrainReport`] with the time each stage took.
//!
//! Slices by event time: the latest `holdout_fraction` of the rows is held out for the final
//! scores, the `validation_fraction` before it chooses the decision threshold, the rest is
//! fitted. Feature statistics come from the fitted slice only; history features run over all
//! rows in table order, as `score` computes them.

pub mod export;
pub mod report;
mod spill;
mod spilled;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use txpipe_connectors::delta::{self, TablesConfig};
use txpipe_core::Error as ConfigError;
use txpipe_core::features::{FeatureConfig, History};
use txpipe_core::model::{
    self, ClassWeight, FitOptions, HyperParameters, Lineage, MatrixBuilder, Metrics, ModelArtifact,
    ThresholdTarget,
};
use txpipe_core::schema::Schema;

use crate::models::ModelStore;
use crate::predict::batch::{self, BatchReport, BatchScore};
use crate::rows::Rows;
use crate::{JobError, Result, Shutdown};

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The Delta version to read (absent: the newest).
    pub version: Option<u64>,
    /// The latest share of rows by event time, held out for the final scores.
    pub holdout_fraction: f64,
    /// The share before the held-out rows that chooses the threshold.
    pub validation_fraction: f64,
    /// `best_f1`, or `precision:P` (the most recall at precision ≥ P).
    pub threshold: String,
    /// L2 strength on the standardised coefficients (scikit-learn's 1/C).
    pub l2: f64,
    /// `none` or `balanced`.
    pub class_weight: String,
    /// Fewer positives than this among the fitted rows: nothing is published.
    pub min_positives: u64,
    /// A held-out AUC under this: nothing is published (unless forced).
    pub auc_floor: f64,
    /// A held-out AUC worse than the current model's by more than this: nothing is published
    /// (unless forced).
    pub max_auc_drop: f64,
    /// Publish even when the gate says no.
    pub force: bool,
    /// Data files read at once.
    pub read_parallelism: usize,
    /// Also write the feature matrix of the run (every slice, with labels) to this Parquet
    /// file (see [`export`]).
    pub export_features: Option<String>,
    /// A table of more rows than this (as its log counts them) is trained from files rather
    /// than in memory: the memory then stays flat whatever the rows (see `spill`); 0: always.
    pub max_rows_in_memory: u64,
    /// Where those files go ("": the system's temporary folder); removed at the end.
    pub spill_dir: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            version: None,
            holdout_fraction: 0.2,
            validation_fraction: 0.1,
            threshold: "best_f1".into(),
            l2: 1.0,
            class_weight: "none".into(),
            min_positives: 20,
            auc_floor: 0.6,
            max_auc_drop: 0.02,
            force: false,
            read_parallelism: 4,
            export_features: None,
            max_rows_in_memory: 6_000_000,
            spill_dir: String::new(),
        }
    }
}

/// Validated train settings.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    pub config: TrainConfig,
    pub target: ThresholdTarget,
    pub fit: FitOptions,
}

impl TrainConfig {
    pub fn validate(&self) -> std::result::Result<TrainSettings, ConfigError> {
        let fraction = |key: &str, v: f64| {
            if v > 0.0 && v < 0.5 {
                Ok(v)
            } else {
                Err(ConfigError::config(key, v, "a fraction above 0 and below 0.5"))
            }
        };
        fraction("train.holdout_fraction", self.holdout_fraction)?;
        fraction("train.validation_fraction", self.validation_fraction)?;
        let target = match self.threshold.trim() {
            "best_f1" => ThresholdTarget::BestF1,
            t => match t.strip_prefix("precision:").and_then(|p| p.trim().parse::<f64>().ok()) {
                Some(p) if p > 0.0 && p < 1.0 => ThresholdTarget::Precision(p),
                _ => {
                    return Err(ConfigError::config(
                        "train.threshold",
                        &self.threshold,
                        "best_f1, or precision:P with 0 < P < 1",
                    ));
                }
            },
        };
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(ConfigError::config("train.l2", self.l2, "a number ≥ 0"));
        }
        let class_weight = match self.class_weight.as_str() {
            "none" => ClassWeight::None,
            "balanced" => ClassWeight::Balanced,
            other => return Err(ConfigError::config("train.class_weight", other, "none or balanced")),
        };
        if !(0.0..1.0).contains(&self.auc_floor) {
            return Err(ConfigError::config("train.auc_floor", self.auc_floor, "from 0 to below 1"));
        }
        if !(self.max_auc_drop.is_finite() && self.max_auc_drop >= 0.0) {
            return Err(ConfigError::config("train.max_auc_drop", self.max_auc_drop, "a number ≥ 0"));
        }
        if self.read_parallelism == 0 {
            return Err(ConfigError::config("train.read_parallelism", 0, "at least 1"));
        }
        if let Some(path) = &self.export_features {
            let p = std::path::Path::new(path);
            let parent =
                p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            if p.file_name().is_none() || !parent.is_dir() {
                return Err(ConfigError::config(
                    "train.export_features",
                    path,
                    "a file path in an existing directory (a .parquet file)",
                ));
            }
        }
        if !self.spill_dir.is_empty() && !std::path::Path::new(&self.spill_dir).is_dir() {
            return Err(ConfigError::config(
                "train.spill_dir",
                &self.spill_dir,
                "an existing folder (\"\": the system's temporary folder)",
            ));
        }
        Ok(TrainSettings {
            config: self.clone(),
            target,
            fit: FitOptions { l2: self.l2, class_weight, ..FitOptions::default() },
        })
    }
}

/// Everything a train run needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub settings: TrainSettings,
    pub tables: TablesConfig,
    pub schema: Schema,
    pub features: FeatureConfig,
    pub model_dir: String,
    /// Score the history into ClickHouse after publishing.
    pub batch: Option<BatchScore>,
    /// Called with each stage's name as it begins (for tests that stop a run mid-way).
    pub on_stage: Option<StageHook>,
}

/// See [`TrainJob::on_stage`].
#[derive(Clone)]
pub struct StageHook(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for StageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StageHook")
    }
}

/// What a train run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrainReport {
    /// The version published (a refusal is an error, with its reason, not a report).
    pub published: Option<String>,
    pub delta_version: u64,
    pub rows_read: u64,
    pub rows_used: u64,
    /// Trained from files rather than in memory (`train.max_rows_in_memory`).
    pub from_files: bool,
    pub holdout_auc: f64,
    pub holdout_auc_pr: f64,
    pub threshold: f64,
    /// Seconds per stage.
    pub read_s: f64,
    pub features_s: f64,
    pub fit_s: f64,
    pub evaluate_s: f64,
    pub publish_s: f64,
    /// The published version's HTML report.
    pub report_path: Option<String>,
    /// What batch scoring wrote (with `--batch-score`).
    pub batch: Option<BatchReport>,
}

/// A run that cannot train: no model is published.
fn refuse(code: &'static str, why: impl Into<String>) -> JobError {
    JobError::Refused { code, why: why.into() }
}

/// Logs a stage's time and the process's memory after it (resident now, and the peak so far).
fn stage_done(stage: &'static str, seconds: f64) {
    metrics::histogram!(crate::telemetry::names::TRAIN_STAGE_DURATION, "stage" => stage).record(seconds);
    match crate::memory() {
        Some((rss, peak)) => {
            tracing::info!(stage, seconds, rss_mb = rss >> 20, peak_rss_mb = peak >> 20, "train stage done")
        }
        None => tracing::info!(stage, seconds, "train stage done"),
    }
}

/// The rank, among `n` sorted values, of the value at quantile `q`.
fn rank(n: usize, q: f64) -> usize {
    ((n as f64 * q) as usize).min(n - 1)
}

/// The stages of a run: a spinner naming the one under way (on a terminal only: indicatif
/// draws nothing elsewhere), and the stop asked between two stages.
struct Stages {
    spinner: indicatif::ProgressBar,
    shutdown: Shutdown,
    hook: Option<StageHook>,
    /// Turns at each stage (for `/livez`: `metrics.live_within` must exceed the longest stage).
    beat: crate::telemetry::Beat,
}

impl Stages {
    /// Begins a stage, unless a stop was asked: then nothing more is done (nothing is
    /// published when the stop comes before publishing).
    fn begin(&self, stage: impl Into<String>) -> Result<()> {
        let stage = stage.into();
        if self.shutdown.is_triggered() {
            tracing::info!(next = %stage, "train stopped as asked between two stages");
            return Err(JobError::Stopped { at: format!("before {stage}") });
        }
        if let Some(StageHook(hook)) = &self.hook {
            hook(&stage);
        }
        self.beat.turn();
        self.spinner.set_message(stage);
        Ok(())
    }
}

/// Trains, evaluates and (unless refused) publishes a model; with a batch configured, scores
/// the history with it. A stop asked through `shutdown` ends the run between two stages
/// ([`JobError::Stopped`]; batch scoring stops its retries of ClickHouse too).
pub async fn run(job: TrainJob, shutdown: Shutdown) -> Result<TrainReport> {
    let spec = job.features.validate(&job.schema)?;
    let label = job.schema.label_index().ok_or_else(|| {
        refuse(
            "no_label_field",
            "the schema has no label field (`schema.label_field`): nothing to learn from",
        )
    })?;
    let started = Instant::now();
    let stages = Stages {
        spinner: indicatif::ProgressBar::new_spinner(),
        shutdown: shutdown.clone(),
        hook: job.on_stage.clone(),
        beat: crate::telemetry::Beat::new("train"),
    };
    stages.spinner.enable_steady_tick(std::time::Duration::from_millis(150));
    let store = ModelStore::open(&job.model_dir, &job.tables.storage_options)?;
    let outcome = run_stages(job, spec, label, started, &stages).await;
    stages.spinner.finish_and_clear();
    count_run(&outcome);
    record_run(&store, &outcome);
    outcome
}

/// Keeps the run's decision beside the models (a stopped run decided nothing).
fn record_run(store: &ModelStore, outcome: &Result<TrainReport>) {
    let mut run = crate::models::LastRun {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        outcome: "failed".into(),
        code: None,
        detail: None,
        version: None,
        holdout_auc: None,
    };
    match outcome {
        Ok(r) => {
            run.outcome = if r.published.is_some() { "published" } else { "refused" }.into();
            run.version = r.published.clone();
            run.holdout_auc = Some(r.holdout_auc);
        }
        Err(JobError::Refused { code, why }) => {
            run.outcome = "refused".into();
            run.code = Some(code.to_string());
            run.detail = Some(why.clone());
        }
        Err(JobError::Stopped { .. }) => return,
        Err(e) => run.detail = Some(e.to_string()),
    }
    if let Err(e) = store.record_run(&run) {
        tracing::warn!(error = %e, "recording the run's decision beside the models failed");
    }
}

/// The run's outcome as metrics: published (with the model's held-out figures), refused (with
/// the reason's code) or failed; a run stopped as asked counts as none of them.
fn count_run(outcome: &Result<TrainReport>) {
    use crate::telemetry::names;
    let runs =
        |outcome: &'static str| metrics::counter!(names::TRAIN_RUNS, "outcome" => outcome).increment(1);
    match outcome {
        Ok(r) if r.published.is_some() => {
            runs("published");
            metrics::gauge!(names::TRAIN_AUC_ROC).set(r.holdout_auc);
            metrics::gauge!(names::TRAIN_AUC_PR).set(r.holdout_auc_pr);
            metrics::gauge!(names::TRAIN_ROWS).set(r.rows_used as f64);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            metrics::gauge!(names::TRAIN_LAST_SUCCESS).set(now.as_secs_f64());
        }
        Ok(_) => runs("refused"),
        Err(JobError::Refused { code, .. }) => {
            runs("refused");
            metrics::counter!(names::TRAIN_REFUSALS, "reason" => *code).increment(1);
        }
        Err(JobError::Stopped { .. }) => {}
        Err(_) => runs("failed"),
    }
}

async fn run_stages(
    job: TrainJob,
    spec: txpipe_core::features::FeatureSpec,
    label: usize,
    started: Instant,
    stages: &Stages,
) -> Result<TrainReport> {
    stages.begin(format!("reading {}", job.tables.clean))?;
    let scan = open(&job, &spec, label).await?;
    let limit = job.settings.config.max_rows_in_memory;
    let (rows, estimated) = (scan.rows(), scan.rows_estimated());
    let input = match rows {
        rows if rows > limit => {
            tracing::info!(rows, estimated, max_rows_in_memory = limit, "training from files, not in memory");
            Input::Spilled(spilled::read(&job, label, scan).await?)
        }
        _ => {
            let parallelism = job.settings.config.read_parallelism;
            let (version, mut batches) = (scan.version, Vec::new());
            scan.each_file(parallelism, |b| {
                batches.extend(b);
                Ok::<_, JobError>(())
            })
            .await?;
            Input::Memory { version, batches }
        }
    };
    // The rest is CPU work (and local files): on a blocking thread, not on the async runtime.
    let (tables, schema, model_dir, batch) =
        (job.tables.clone(), job.schema.clone(), job.model_dir.clone(), job.batch.clone());
    let parallelism = job.settings.config.read_parallelism;
    let worker = Stages {
        spinner: stages.spinner.clone(),
        shutdown: stages.shutdown.clone(),
        hook: stages.hook.clone(),
        beat: stages.beat.clone(),
    };
    let mut report = tokio::task::spawn_blocking(move || train_on(job, spec, label, input, started, &worker))
        .await
        .map_err(|e| JobError::Internal(format!("the training task: {e}")))??;
    if let (Some(batch), Some(id)) = (batch, report.published.clone()) {
        let scored = async {
            stages.begin("batch scoring into ClickHouse")?;
            let model = ModelStore::open(&model_dir, &tables.storage_options)?.load(&id)?;
            let version = Some(report.delta_version);
            batch::score_history(&tables, &schema, &model, version, parallelism, &batch, &stages.shutdown)
                .await
        };
        match scored.await {
            Ok(b) => {
                stage_done("batch_score", b.seconds);
                report.batch = Some(b);
            }
            Err(e) => return Err(JobError::BatchScore { published: id, source: Box::new(e) }),
        }
    }
    Ok(report)
}

/// Opens the columns the features read, the id, the time and the label (Parquet projection).
async fn open(
    job: &TrainJob,
    spec: &txpipe_core::features::FeatureSpec,
    label: usize,
) -> Result<delta::Scan> {
    let mut used = vec![job.schema.id_index(), job.schema.time_index(), label, spec.time];
    used.extend(spec.numeric.iter().chain(&spec.categorical).chain(&spec.boolean).copied());
    if let Some(h) = &spec.history {
        used.extend([Some(h.account), h.amount, h.country].into_iter().flatten());
    }
    let mut wanted: Vec<&str> = job
        .schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, _)| used.contains(i))
        .map(|(_, f)| f.name.as_str())
        .collect();
    wanted.extend(["kafka_partition", "kafka_offset"]);
    let c = &job.settings.config;
    let scan = delta::Scan::new(&job.tables.clean, &job.tables.storage_options, c.version, &wanted).await?;
    let label_name = &job.schema.fields()[label].name;
    if scan.absent.contains(label_name) {
        return Err(refuse(
            "no_label_column",
            format!("the table {} has no label column `{label_name}`", job.tables.clean),
        ));
    }
    Ok(scan)
}

/// The table as read: its rows in memory, or in files in table order.
enum Input {
    Memory { version: u64, batches: Vec<txpipe_connectors::delta::arrow::array::RecordBatch> },
    Spilled(spilled::Sorted),
}

/// A slice's feature matrix, read a chunk at a time, and its labels.
trait SliceData: model::Chunks + Send {
    fn labels(&self) -> &[u8];
    /// Read back from a file.
    fn read_from_files(&self) -> bool {
        false
    }
}

/// A slice in memory: one chunk.
struct InMemory(model::Matrix, Vec<u8>);

impl model::Chunks for InMemory {
    fn rows(&self) -> usize {
        self.0.rows()
    }

    fn each(&self, each: &mut dyn FnMut(&model::Matrix, &[u8])) -> std::io::Result<()> {
        each(&self.0, &self.1);
        Ok(())
    }
}

impl SliceData for InMemory {
    fn labels(&self) -> &[u8] {
        &self.1
    }
}

/// The rows ordered and featurised, ready to fit.
struct Prepared {
    delta_version: u64,
    rows_read: u64,
    rows_used: u64,
    slicing: Slicing,
    fitted: txpipe_core::features::FittedFeatures,
    names: Vec<String>,
    slices: [Box<dyn SliceData>; 3],
    /// Seconds spent reading and ordering, and computing the features.
    read_s: f64,
    features_s: f64,
}

/// Probabilities of every row of a slice, chunk by chunk.
fn probabilities(lr: &model::LogisticModel, slice: &dyn SliceData) -> Result<Vec<f64>> {
    let mut p = Vec::with_capacity(slice.rows());
    slice
        .each(&mut |m, _| p.extend(lr.probabilities(m)))
        .map_err(|e| JobError::io("the spilled features", e))?;
    Ok(p)
}

/// Where the slices begin, by event time.
struct Slicing {
    validation_from: i64,
    holdout_from: i64,
    time_from: i64,
    time_to: i64,
}

impl Slicing {
    fn new(rows: &Rows, c: &TrainConfig) -> Slicing {
        let mut times: Vec<i64> = rows.order.iter().map(|&r| rows.time_of(r)).collect();
        times.sort_unstable();
        let [validation, holdout] = Slicing::ranks(times.len(), c);
        Slicing {
            holdout_from: times[holdout],
            validation_from: times[validation],
            time_from: times[0],
            time_to: times[times.len() - 1],
        }
    }

    /// The ranks, among the `n` rows' sorted event times, where the validation and the
    /// held-out slices begin.
    fn ranks(n: usize, c: &TrainConfig) -> [usize; 2] {
        [rank(n, 1.0 - c.holdout_fraction - c.validation_fraction), rank(n, 1.0 - c.holdout_fraction)]
    }

    /// 0 fitted, 1 validation, 2 held out.
    fn of(&self, t: i64) -> usize {
        if t >= self.holdout_from {
            2
        } else if t >= self.validation_from {
            1
        } else {
            0
        }
    }
}

/// A slice's feature matrix and labels.
type Slice = (model::Matrix, Vec<u8>);

/// Orders, featurises, fits, evaluates and publishes what was read.
fn train_on(
    job: TrainJob,
    spec: txpipe_core::features::FeatureSpec,
    label: usize,
    input: Input,
    started: Instant,
    stages: &Stages,
) -> Result<TrainReport> {
    let prepared = match input {
        Input::Memory { version, batches } => {
            in_memory(&job, &spec, label, version, batches, started, stages)?
        }
        Input::Spilled(sorted) => spilled::prepare(&job, &spec, label, sorted, started, stages)?,
    };
    fit_and_publish(job, prepared, stages)
}

/// The rows in memory: ordered, then featurised on all cores.
fn in_memory(
    job: &TrainJob,
    spec: &txpipe_core::features::FeatureSpec,
    label: usize,
    version: u64,
    batches: Vec<txpipe_connectors::delta::arrow::array::RecordBatch>,
    started: Instant,
    stages: &Stages,
) -> Result<Prepared> {
    stages.begin(format!("ordering {} rows", batches.iter().map(|b| b.num_rows()).sum::<usize>()))?;
    let mut rows = Rows::new(&job.schema, &batches, Some(label))?;
    // The ids served to drop repeats; the batches are referenced by `rows` alone from here.
    drop(batches);
    rows.forget(job.schema.id_index());
    let (rows_read, rows_used) = (rows.read, rows.order.len() as u64);
    no_rows(job, version, rows_used)?;
    let read_s = started.elapsed().as_secs_f64();
    stage_done("read", read_s);

    stages.begin(format!("features of {} rows", rows.order.len()))?;
    let started = Instant::now();
    let slicing = Slicing::new(&rows, &job.settings.config);
    let parts = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (fitted, names, slices) = featurise(&job.schema, spec, rows, &slicing, parts)?;
    let features_s = started.elapsed().as_secs_f64();
    stage_done("features", features_s);
    let slices = slices.map(|(m, y)| Box::new(InMemory(m, y)) as Box<dyn SliceData>);
    Ok(Prepared {
        delta_version: version,
        rows_read,
        rows_used,
        slicing,
        fitted,
        names,
        slices,
        read_s,
        features_s,
    })
}

/// A table without rows cannot train.
fn no_rows(job: &TrainJob, version: u64, rows_used: u64) -> Result<()> {
    if rows_used == 0 {
        return Err(refuse(
            "no_rows",
            format!("the table {} (version {version}) has no rows", job.tables.clean),
        ));
    }
    Ok(())
}

/// Fits, evaluates and publishes.
fn fit_and_publish(job: TrainJob, prepared: Prepared, stages: &Stages) -> Result<TrainReport> {
    let Prepared { delta_version, rows_read, rows_used, slicing, fitted, names, slices, read_s, features_s } =
        prepared;
    let from_files = slices.iter().any(|s| s.read_from_files());
    let mut report = TrainReport {
        delta_version,
        rows_read,
        rows_used,
        from_files,
        read_s,
        features_s,
        ..TrainReport::default()
    };
    let labels = [slices[0].labels(), slices[1].labels(), slices[2].labels()];
    check_slices(labels, job.settings.config.min_positives)?;

    let [train, validation, holdout] = &slices;
    if let Some(path) = &job.settings.config.export_features {
        stages.begin(format!("writing the features to {path}"))?;
        let slices: [&dyn model::Chunks; 3] = [train.as_ref(), validation.as_ref(), holdout.as_ref()];
        export::write(std::path::Path::new(path), &names, slices)?;
        tracing::info!(path, "feature matrix written");
    }
    stages.begin(format!("fitting on {} rows", train.rows()))?;
    let started = Instant::now();
    let lr = model::fit_chunks(train.as_ref(), &job.settings.fit).map_err(|e| match e {
        model::FitError::Read(e) => JobError::io("the spilled features", std::io::Error::other(e)),
        e => refuse("fit_failed", e.to_string()),
    })?;
    report.fit_s = started.elapsed().as_secs_f64();
    stage_done("fit", report.fit_s);

    stages.begin("evaluating")?;
    let started = Instant::now();
    let pv = probabilities(&lr, validation.as_ref())?;
    let chosen = model::choose_threshold(&pv, validation.labels(), job.settings.target);
    let ph = probabilities(&lr, holdout.as_ref())?;
    let metrics = Metrics {
        train: model::evaluate(&probabilities(&lr, train.as_ref())?, train.labels(), chosen.threshold),
        validation: model::evaluate(&pv, validation.labels(), chosen.threshold),
        holdout: model::evaluate(&ph, holdout.labels(), chosen.threshold),
    };
    report.evaluate_s = started.elapsed().as_secs_f64();
    stage_done("evaluate", report.evaluate_s);
    report.holdout_auc = metrics.holdout.auc_roc;
    report.holdout_auc_pr = metrics.holdout.auc_pr;
    report.threshold = chosen.threshold;
    let store = ModelStore::open(&job.model_dir, &job.tables.storage_options)?;
    gate(&store, &job.settings.config, metrics.holdout.auc_roc)?;

    stages.begin("publishing")?;
    let started = Instant::now();
    let artifact = |id: &str| ModelArtifact {
        format: model::artifact::FORMAT,
        version: id.to_string(),
        created_at: chrono::Utc::now().to_rfc3339(),
        lineage: Lineage {
            table: job.tables.clean.clone(),
            delta_version: report.delta_version,
            rows_read: report.rows_read,
            rows_used: report.rows_used,
            time_from_us: slicing.time_from,
            time_to_us: slicing.time_to,
            validation_from_us: slicing.validation_from,
            holdout_from_us: slicing.holdout_from,
        },
        schema: job.schema.to_config(),
        features: fitted.clone(),
        model: lr.clone(),
        threshold: chosen.threshold,
        hyper_parameters: HyperParameters {
            fit: job.settings.fit,
            threshold_target: job.settings.target,
            holdout_fraction: job.settings.config.holdout_fraction,
            validation_fraction: job.settings.config.validation_fraction,
        },
        metrics: metrics.clone(),
    };
    let id = store.publish(artifact, |model, dir| {
        let page = report::render(model, &ph, holdout.labels())?;
        let path = dir.join(report::REPORT_FILE);
        std::fs::write(&path, page).map_err(|e| JobError::io(&path, e))
    })?;
    report.report_path = Some(store.file_location(&id, report::REPORT_FILE));
    report.publish_s = started.elapsed().as_secs_f64();
    stage_done("publish", report.publish_s);
    tracing::info!(version = %id, model_dir = %store.location(), auc = metrics.holdout.auc_roc, "model published");
    report.published = Some(id);
    Ok(report)
}

/// Feature statistics from the fitted slice, then every row's features in table order, each
/// labelled row straight into the matrix of its slice (no matrix of every row to copy the
/// slices out of: that would hold the features twice).
///
/// The rows' features are computed on all cores: the rows are shared out by account (an
/// account's history stays in one part), each part builds the matrices of its rows in table
/// order with a history of its own, and the parts are interleaved back into table order —
/// the same matrices, value for value, as one pass over all rows makes.
fn featurise(
    schema: &Schema,
    spec: &txpipe_core::features::FeatureSpec,
    rows: Rows,
    slicing: &Slicing,
    parts: usize,
) -> Result<(txpipe_core::features::FittedFeatures, Vec<String>, [Slice; 3])> {
    let mut values = Vec::new();
    let mut fitter = spec.fitter(schema);
    for &r in &rows.order {
        if rows.time_of(r) < slicing.validation_from {
            rows.values_into(r, &mut values);
            fitter.add(&values);
        }
    }
    let fitted = fitter.finish();
    let features = fitted.bind(schema)?;
    let parts = parts.clamp(1, 8);
    let split = Split::new(&rows, features.history_fields().get(1).copied(), slicing, parts);
    let built: Vec<[Slice; 3]> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..parts)
            .map(|part| {
                let (rows, features, split) = (&rows, &features, &split);
                scope.spawn(move || featurise_part(rows, features, slicing, split, part as u8))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    let mut by_slice: [Vec<Slice>; 3] = Default::default();
    for part in built {
        for (all, slice) in by_slice.iter_mut().zip(part) {
            all.push(slice);
        }
    }
    let slices = [0, 1, 2].map(|s| {
        let (matrices, labels): (Vec<model::Matrix>, Vec<Vec<u8>>) =
            std::mem::take(&mut by_slice[s]).into_iter().unzip();
        let labels = model::matrix::interleave(&labels.iter().collect::<Vec<_>>(), &split.picks[s]);
        (model::Matrix::interleave(matrices, &split.picks[s]), labels)
    });
    let names = features.names().to_vec();
    Ok((fitted, names, slices))
}

/// How the rows are shared out among the parts of [`featurise`].
struct Split {
    /// The part of each row of `rows.order`.
    part: Vec<u8>,
    /// Per slice, the part of each of its labelled rows in table order.
    picks: [Vec<u8>; 3],
    /// Per part, the labelled rows of each slice.
    sizes: Vec<[usize; 3]>,
}

impl Split {
    /// By account when the features read an account's history (`account`), else in runs of
    /// rows.
    fn new(rows: &Rows, account: Option<usize>, slicing: &Slicing, parts: usize) -> Split {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::FixedState::with_seed(0x7478_7069_7065);
        let mut split = Split {
            part: Vec::with_capacity(rows.order.len()),
            picks: Default::default(),
            sizes: vec![[0; 3]; parts],
        };
        for (k, &r) in rows.order.iter().enumerate() {
            let part = match account {
                Some(a) => (hasher.hash_one(rows.str_of(a, r).unwrap_or("")) % parts as u64) as u8,
                None => (k / 4096 % parts) as u8,
            };
            split.part.push(part);
            if rows.label_of(r).is_some() {
                let s = slicing.of(rows.time_of(r));
                split.picks[s].push(part);
                split.sizes[usize::from(part)][s] += 1;
            }
        }
        split
    }
}

/// The matrices of one part's rows, in table order.
fn featurise_part(
    rows: &Rows,
    features: &txpipe_core::features::Features,
    slicing: &Slicing,
    split: &Split,
    part: u8,
) -> [Slice; 3] {
    let width = features.width();
    // A categorical feature's one-hot columns are kept as one code per row (see `Matrix`).
    let groups = features.one_hot_groups();
    let mut slices: [(MatrixBuilder, Vec<u8>); 3] = split.sizes[usize::from(part)]
        .map(|n| (MatrixBuilder::new(width, &groups, n), Vec::with_capacity(n)));
    let mut history = History::new();
    let mut values = Vec::new();
    let mut out = vec![0f32; width];
    for (&r, _) in rows.order.iter().zip(&split.part).filter(|&(_, &p)| p == part) {
        rows.values_into(r, &mut values);
        features.row(&values, &mut history, &mut out);
        if let Some(y) = rows.label_of(r) {
            let (matrix, labels) = &mut slices[slicing.of(rows.time_of(r))];
            matrix.push(&out);
            labels.push(u8::from(y));
        }
    }
    slices.map(|(matrix, y)| (matrix.finish(), y))
}

/// Refuses slices that cannot fit or check a model: without labels, with one class, or with
/// fewer fitted positives than `min_positives`.
fn check_slices(slices: [&[u8]; 3], min_positives: u64) -> Result<()> {
    for (name, y) in ["fitted", "validation", "held-out"].iter().zip(slices) {
        let positives = y.iter().filter(|&&v| v == 1).count();
        if y.is_empty() {
            return Err(refuse(
                "no_labels",
                format!("no labelled rows in the {name} slice: nothing to learn from or to check"),
            ));
        }
        if positives == 0 || positives == y.len() {
            return Err(refuse(
                "one_class",
                format!(
                    "the {name} slice has only one class ({positives} positives of {} labelled rows)",
                    y.len()
                ),
            ));
        }
    }
    let fitted_positives = slices[0].iter().filter(|&&v| v == 1).count() as u64;
    if fitted_positives < min_positives {
        return Err(refuse(
            "too_few_positives",
            format!(
                "{fitted_positives} positives among the fitted rows, fewer than train.min_positives = {min_positives}"
            ),
        ));
    }
    Ok(())
}

/// The quality gate: a held-out AUC under the floor, or worse than the current model's by more
/// than the allowed drop, is refused unless forced.
fn gate(store: &ModelStore, c: &TrainConfig, auc: f64) -> Result<()> {
    let current = store.current().ok().flatten();
    let refusal = if auc < c.auc_floor {
        Some(("auc_floor", format!("held-out AUC {auc:.4} is under train.auc_floor = {}", c.auc_floor)))
    } else {
        current.as_ref().map(|m| m.metrics.holdout.auc_roc).filter(|&prev| auc < prev - c.max_auc_drop).map(|prev| {
            let why = format!(
                "held-out AUC {auc:.4} is worse than the current model's {prev:.4} by more than train.max_auc_drop = {}",
                c.max_auc_drop
            );
            ("auc_drop", why)
        })
    };
    if let Some((code, why)) = refusal {
        if !c.force {
            return Err(refuse(code, format!("not published: {why} (--force publishes anyway)")));
        }
        tracing::warn!(%why, "publishing anyway (forced)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use txpipe_connectors::delta::arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
        TimestampMicrosecondArray,
    };

    use super::*;

    /// `n` events of 60 accounts over 10 days in two batches, a tenth without a label.
    fn batches(n: usize) -> Vec<RecordBatch> {
        let at = |i: usize, k: usize| (i * 7919 + k * 104_729) % 1_000_003;
        let half = n / 2;
        [0..half, half..n]
            .into_iter()
            .map(|rows| {
                let strings = |f: &dyn Fn(usize) -> String| -> ArrayRef {
                    Arc::new(StringArray::from(rows.clone().map(f).collect::<Vec<_>>()))
                };
                let columns: Vec<(&str, ArrayRef)> = vec![
                    ("transaction_id", strings(&|i| format!("t{i}"))),
                    ("account_id", strings(&|i| format!("a{}", at(i, 1) % 60))),
                    ("merchant_category", strings(&|i| format!("m{}", at(i, 2) % 17))),
                    ("channel", strings(&|i| ["online", "pos", "atm"][at(i, 3) % 3].to_string())),
                    ("country", strings(&|i| ["DE", "FR", "NL", "US"][at(i, 4) % 4].to_string())),
                    ("currency", strings(&|_| "EUR".to_string())),
                    (
                        "amount",
                        Arc::new(Float64Array::from(
                            rows.clone().map(|i| (at(i, 5) % 5000) as f64 / 10.0).collect::<Vec<_>>(),
                        )),
                    ),
                    (
                        "event_time",
                        Arc::new(
                            TimestampMicrosecondArray::from(
                                rows.clone()
                                    .map(|i| 1_780_000_000_000_000 + i as i64 * 864_000_000_000 / n as i64)
                                    .collect::<Vec<_>>(),
                            )
                            .with_timezone("UTC"),
                        ),
                    ),
                    (
                        "is_fraud",
                        Arc::new(BooleanArray::from(
                            rows.clone()
                                .map(|i| (i % 10 != 3).then_some(at(i, 6) % 13 == 0))
                                .collect::<Vec<_>>(),
                        )),
                    ),
                    (
                        "kafka_partition",
                        Arc::new(Int32Array::from(
                            rows.clone().map(|i| (at(i, 1) % 60 % 4) as i32).collect::<Vec<_>>(),
                        )),
                    ),
                    (
                        "kafka_offset",
                        Arc::new(Int64Array::from(rows.clone().map(|i| i as i64).collect::<Vec<_>>())),
                    ),
                ];
                RecordBatch::try_from_iter(columns).expect("a batch")
            })
            .collect()
    }

    #[test]
    fn features_computed_in_parts_are_the_features_of_one_pass() {
        let schema = Schema::default_schema();
        let spec = FeatureConfig::default().validate(&schema).expect("the default features");
        let label = schema.label_index().expect("a label");
        let batches = batches(20_000);
        let slicing = Slicing {
            validation_from: 1_780_000_000_000_000 + 6 * 86_400_000_000,
            holdout_from: 1_780_000_000_000_000 + 8 * 86_400_000_000,
            time_from: 0,
            time_to: 0,
        };
        let one = featurise(&schema, &spec, Rows::new(&schema, &batches, Some(label)).unwrap(), &slicing, 1)
            .unwrap();
        for parts in [2, 3] {
            let many = featurise(
                &schema,
                &spec,
                Rows::new(&schema, &batches, Some(label)).unwrap(),
                &slicing,
                parts,
            )
            .unwrap();
            assert_eq!(many.1, one.1);
            for (a, b) in many.2.iter().zip(&one.2) {
                assert!(a.0 == b.0 && a.1 == b.1, "{parts} parts");
            }
        }
        // Labelled rows only, each in its slice; history features among the columns.
        assert_eq!(one.2.iter().map(|s| s.1.len()).sum::<usize>(), 18_000);
        assert!(one.2.iter().all(|s| s.0.rows() > 1_000));
        assert!(one.1.iter().any(|n| n.contains("new_country")), "{:?}", one.1);
    }
}
