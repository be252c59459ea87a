//! The `txpipe` binary: parses flags, layers settings, validates them before any work starts,
//! sets up logging, runs one job, prints the error chain and returns an exit code
//! (0 success, 1 failure at run time, 2 bad flag or setting).

mod args;
mod settings;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use args::{Cli, Command};
use settings::{Config, explain};
use txpipe_jobs::ingest::{self, IngestJob};
use txpipe_jobs::optimize;
use txpipe_jobs::predict::batch::BatchScore;
use txpipe_jobs::produce::{self, ProduceJob};
use txpipe_jobs::score::{self, ScoreJob};
use txpipe_jobs::telemetry::{Check, Telemetry};
use txpipe_jobs::train::{self, TrainJob};
use txpipe_jobs::{JobError, Shutdown};

/// The exit code `txpipe status` ends with (0 included: it always ends through this).
#[derive(Debug)]
struct StatusCode(u8);

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {}", self.0)
    }
}

impl std::error::Error for StatusCode {}

fn set_if(target: &mut String, value: &Option<String>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

/// A failure before any work started: a flag, a setting or the config file.
#[derive(Debug)]
struct Usage(anyhow::Error);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Usage {}

/// glibc gives each thread that allocates an arena of its own and keeps what is freed there;
/// ingest's threads hand buffers from one to the next, so a few arenas hold the same work in
/// less memory (measured: RSS 10–20 MB lower, same speed). `MALLOC_ARENA_MAX` still decides
/// when set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, and no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<StatusCode>().is_some() => {
            ExitCode::from(e.downcast_ref::<StatusCode>().map_or(1, |c| c.0))
        }
        Err(e) => {
            eprintln!("error: {e}");
            // Errors that already quote their source are not repeated line by line.
            let mut shown = e.to_string();
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                shown = text;
            }
            if e.downcast_ref::<Usage>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut config = Config::load(&cli.common).map_err(usage)?;
    config.apply_common(&cli.common);
    let report = ReportJson::new(cli.common.report_json.clone()).map_err(usage)?;
    match cli.command {
        Command::Config(a) => {
            config.apply_produce(&a.produce);
            config.validate_common().map_err(usage)?;
            print!("{}", toml::to_string(&config.redacted()).context("printing the settings")?);
            Ok(())
        }
        Command::Produce(a) => {
            config.apply_produce(&a);
            let schema = config.validate_common().map_err(usage)?;
            let settings = config.produce.validate().map_err(explain).map_err(usage)?;
            init_logging(&config)?;
            let job = ProduceJob { settings, kafka: config.kafka.clone(), schema };
            let report_json = report;
            let report = runtime()?.block_on(async {
                let shutdown = Shutdown::new();
                shutdown.on_signals();
                produce::run(job, shutdown).await
            })?;
            tracing::info!(
                events = report.events,
                malformed = report.malformed,
                bytes = report.bytes,
                elapsed_s = report.elapsed_s,
                delivered = report.delivered,
                "produce finished"
            );
            eprintln!(
                "produced {} events ({} malformed) in {:.2} s: {:.0} events/s, {:.1} MB/s{}",
                report.events,
                report.malformed,
                report.elapsed_s,
                report.events_per_s,
                report.bytes as f64 / 1e6 / report.elapsed_s.max(1e-9),
                if report.interrupted { " (interrupted)" } else { "" }
            );
            report_json.write(&report)
        }
        Command::Ingest(a) => {
            config.apply_ingest(&a);
            let schema = config.validate_common().map_err(usage)?;
            let settings = config.ingest.validate().map_err(explain).map_err(usage)?;
            init_logging(&config)?;
            let job = IngestJob {
                settings,
                kafka: config.kafka.clone(),
                tables: config.tables.clone(),
                schema,
                hooks: Default::default(),
            };
            let report_json = report;
            let checks = config.checks("ingest", false);
            let report = runtime()?.block_on(async {
                let shutdown = Shutdown::new();
                shutdown.on_signals();
                observed(&config, "ingest", checks, ingest::run(job, shutdown)).await
            })?;
            print_ingest(&report);
            report_json.write(&report)
        }
        Command::Run(a) => run_pipeline(config, a, report),
        Command::Status(a) => status(config, a, report),
        Command::Optimize(a) => {
            config.apply_optimize(&a);
            config.validate_common().map_err(usage)?;
            config.optimize.validate().map_err(explain).map_err(usage)?;
            init_logging(&config)?;
            let reports = runtime()?.block_on(optimize::run(&config.tables, &config.optimize))?;
            for r in &reports {
                let c = &r.compaction;
                eprintln!(
                    "{}: {} files -> {} ({} rewritten into {}, {} commits), vacuum {} {} files",
                    r.location,
                    c.files_before,
                    c.files_after,
                    c.files_removed,
                    c.files_added,
                    c.commits,
                    if config.optimize.dry_run { "would delete" } else { "deleted" },
                    r.vacuumed.len()
                );
            }
            report.write(&reports)
        }
        Command::Train(a) => {
            config.apply_train(&a);
            let schema = config.validate_common().map_err(usage)?;
            let settings = config.train.validate().map_err(explain).map_err(usage)?;
            config.features.validate(&schema).map_err(explain).map_err(usage)?;
            let range = |flag: &str, v: &Option<String>| v.as_deref().map(|t| time_flag(flag, t)).transpose();
            let (from_us, to_us) =
                (range("--from", &a.from).map_err(usage)?, range("--to", &a.to).map_err(usage)?);
            if !a.batch_score && (from_us.is_some() || to_us.is_some()) {
                return Err(usage(anyhow::anyhow!(
                    "--from and --to choose what --batch-score writes; add --batch-score"
                )));
            }
            if let (Some(f), Some(t)) = (from_us, to_us)
                && f >= t
            {
                return Err(usage(anyhow::anyhow!("--from must be before --to")));
            }
            if a.batch_score {
                txpipe_connectors::clickhouse::Serving::columns_for(
                    &schema,
                    config.clickhouse.fields.as_deref(),
                )
                .map_err(|e| usage(e.into()))?;
            }
            let batch = a.batch_score.then(|| BatchScore {
                from_us,
                to_us,
                ..BatchScore::new(config.clickhouse.clone())
            });
            let every = a.every.as_deref().map(|e| duration_flag("--every", e)).transpose().map_err(usage)?;
            if every.is_some() && config.train.version.is_some() {
                return Err(usage(anyhow::anyhow!(
                    "--every retrains on the newest table version; it cannot be combined with --delta-version"
                )));
            }
            init_logging(&config)?;
            let job = TrainJob {
                settings,
                tables: config.tables.clone(),
                schema,
                features: config.features.clone(),
                model_dir: config.models.dir.clone(),
                batch,
                on_stage: None,
            };
            let Some(every) = every else {
                let checks = config.checks("train", job.batch.is_some());
                let outcome = runtime()?.block_on(async {
                    let shutdown = Shutdown::new();
                    shutdown.on_signals();
                    observed(&config, "train", checks, train::run(job, shutdown)).await
                });
                match outcome {
                    Ok(r) => {
                        print_train(&config, &r);
                        report.write(&r)?;
                    }
                    // SIGINT/SIGTERM between two stages: nothing was published.
                    Err(e @ JobError::Stopped { .. }) => eprintln!("train: {e}; nothing was published"),
                    Err(e) => return Err(e.into()),
                }
                return Ok(());
            };
            // On a schedule: each run as above; a failed or refused run is reported and the
            // next one comes; SIGINT/SIGTERM end the loop (after a run in progress).
            let rt = runtime()?;
            let checks = config.checks("train", job.batch.is_some());
            let scheduled = async {
                let shutdown = Shutdown::new();
                shutdown.on_signals();
                loop {
                    let started = tokio::time::Instant::now();
                    match train::run(job.clone(), shutdown.clone()).await {
                        Ok(r) => {
                            print_train(&config, &r);
                            if let Err(e) = report.write(&r) {
                                tracing::warn!(error = %e, "writing the report failed");
                            }
                        }
                        Err(JobError::Stopped { .. }) => return Ok(()),
                        Err(e) => tracing::warn!(error = %e, "this scheduled training run did not publish"),
                    }
                    let next = started + every;
                    tracing::info!(every = %humantime::format_duration(every), "next training run scheduled");
                    // Between runs the schedule is the loop that turns (a run turns at each stage).
                    let beat = txpipe_jobs::telemetry::Beat::new("train-schedule");
                    while tokio::time::Instant::now() < next {
                        beat.turn();
                        let slice =
                            (next - tokio::time::Instant::now()).min(std::time::Duration::from_secs(1));
                        tokio::select! {
                            _ = tokio::time::sleep(slice) => {}
                            _ = shutdown.wait() => return Ok(()),
                        }
                    }
                    if shutdown.is_triggered() {
                        return Ok(());
                    }
                }
            };
            rt.block_on(async { observed(&config, "train", checks, scheduled).await })
        }
        Command::Score(a) => {
            config.apply_score(&a);
            let schema = config.validate_common().map_err(usage)?;
            let settings = config.score.validate().map_err(explain).map_err(usage)?;
            txpipe_connectors::clickhouse::Serving::columns_for(&schema, config.clickhouse.fields.as_deref())
                .map_err(|e| usage(e.into()))?;
            init_logging(&config)?;
            let job = score_job(&config, schema, settings);
            let checks = config.checks("score", true);
            let r = runtime()?.block_on(async {
                let shutdown = Shutdown::new();
                shutdown.on_signals();
                observed(&config, "score", checks, score::run(job, shutdown)).await
            })?;
            print_score(&config, &r);
            report.write(&r)
        }
    }
}

/// Runs a job with its metrics and health served (when `[metrics] addr` is set), until it ends.
async fn observed<T, E>(
    config: &Config,
    job: &'static str,
    checks: Vec<Check>,
    work: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E>
where
    E: From<JobError>,
{
    let settings = config.metrics.validate().map_err(JobError::Config)?;
    let telemetry = Telemetry::start(&settings, job, checks).await?;
    let outcome = work.await;
    if let Some(t) = telemetry {
        t.stop().await;
    }
    outcome
}

/// A failure before any work started (exit 2).
fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Usage(e))
}

/// `txpipe run`: ingest and score (and the training schedule) in one process.
fn run_pipeline(mut config: Config, a: args::RunArgs, report: ReportJson) -> Result<()> {
    config.apply_ingest(&args::IngestArgs {
        topic: a.topic.clone(),
        table: a.table.clone(),
        quarantine_table: a.quarantine_table.clone(),
        group_id: a.group_id.clone(),
        exit_when_idle: a.exit_when_idle,
    });
    config.apply_score(&args::ScoreArgs {
        table: a.table.clone(),
        model_dir: a.model_dir.clone(),
        exit_when_idle: a.exit_when_idle,
        start: a.start.clone(),
        shard: a.shard.clone(),
    });
    let schema = config.validate_common().map_err(usage)?;
    let ingest_settings = config.ingest.validate().map_err(explain).map_err(usage)?;
    let score_settings = config.score.validate().map_err(explain).map_err(usage)?;
    txpipe_connectors::clickhouse::Serving::columns_for(&schema, config.clickhouse.fields.as_deref())
        .map_err(|e| usage(e.into()))?;
    let every =
        a.train_every.as_deref().map(|e| duration_flag("--train-every", e)).transpose().map_err(usage)?;
    let train = match every {
        Some(every) => {
            let settings = config.train.validate().map_err(explain).map_err(usage)?;
            config.features.validate(&schema).map_err(explain).map_err(usage)?;
            let job = TrainJob {
                settings,
                tables: config.tables.clone(),
                schema: schema.clone(),
                features: config.features.clone(),
                model_dir: config.models.dir.clone(),
                batch: a.batch_score.then(|| BatchScore::new(config.clickhouse.clone())),
                on_stage: None,
            };
            Some((job, every))
        }
        None if a.batch_score => {
            return Err(usage(anyhow::anyhow!("--batch-score scores after training: add --train-every")));
        }
        None => None,
    };
    init_logging(&config)?;
    let job = txpipe_jobs::pipeline::PipelineJob {
        ingest: IngestJob {
            settings: ingest_settings,
            kafka: config.kafka.clone(),
            tables: config.tables.clone(),
            schema: schema.clone(),
            hooks: Default::default(),
        },
        score: score_job(&config, schema, score_settings),
        train,
    };
    let checks = config.checks("run", true);
    let r = runtime()?.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.on_signals();
        observed(&config, "run", checks, txpipe_jobs::pipeline::run(job, shutdown)).await
    })?;
    print_ingest(&r.ingest);
    print_score(&config, &r.score);
    for t in &r.train {
        eprintln!(
            "train: {}{}{}",
            t.outcome,
            t.published.as_deref().map_or(String::new(), |v| format!(" version {v}")),
            t.detail.as_deref().map_or(String::new(), |d| format!(": {d}"))
        );
    }
    report.write(&r)
}

/// `txpipe status`: prints the pipeline's state and ends with its exit code.
fn status(mut config: Config, a: args::StatusArgs, report: ReportJson) -> Result<()> {
    set_if(&mut config.kafka.topic, &a.topic);
    set_if(&mut config.tables.clean, &a.table);
    set_if(&mut config.tables.quarantine, &a.quarantine_table);
    set_if(&mut config.models.dir, &a.model_dir);
    config.validate_common().map_err(usage)?;
    let limits = txpipe_jobs::status::Limits {
        max_lag: a.max_lag,
        max_score_lag: duration_flag("--max-score-lag", &a.max_score_lag).map_err(usage)?,
        max_model_age: duration_flag("--max-model-age", &a.max_model_age).map_err(usage)?,
    };
    init_logging(&config)?;
    let job = txpipe_jobs::status::StatusJob {
        kafka: config.kafka.clone(),
        tables: config.tables.clone(),
        clickhouse: config.clickhouse.clone(),
        model_dir: config.models.dir.clone(),
        target_file_size: config.optimize.target_file_size,
        limits,
    };
    let status = runtime()?.block_on(txpipe_jobs::status::run(&job));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status).context("encoding the status")?);
    } else {
        print!("{}", txpipe_jobs::status::render(&status));
    }
    report.write(&status)?;
    Err(anyhow::Error::new(StatusCode(status.exit_code)))
}

fn print_ingest(report: &txpipe_jobs::ingest::IngestReport) {
    eprintln!(
        "ingested {} rows, quarantined {}, in {} commits ({:.1} s); table version {}; {} messages read, {} dropped before commit{}",
        report.written,
        report.quarantined,
        report.commits,
        report.elapsed_s,
        report.clean_version.map_or("none".to_string(), |v| v.to_string()),
        report.read,
        report.discarded,
        match report.skipped_offsets {
            0 => String::new(),
            n => format!("; {n} offsets skipped (deleted by retention before they were read)"),
        }
    );
    if report.stopped_in_outage {
        eprintln!(
            "stopped as asked while the table's storage was unreachable: the messages not committed are read \
             again at the next start"
        );
    }
}

fn print_score(config: &Config, r: &txpipe_jobs::score::ScoreReport) {
    eprintln!(
        "scored {} rows ({} repeats dropped, {} restored into the history{}) into {}.{} in {} inserts ({:.1} s); \
         complete through Delta version {}; models {}{}",
        r.scored,
        r.repeats,
        r.restored,
        r.from_snapshot.map_or(String::new(), |v| format!(" after the state file of version {v}")),
        config.clickhouse.database,
        txpipe_connectors::clickhouse::REALTIME,
        r.inserts,
        r.elapsed_s,
        r.complete_through.map_or("none".to_string(), |v| v.to_string()),
        if r.models.is_empty() { "none".to_string() } else { r.models.join(", ") },
        match (r.latency_p50_s, r.latency_p99_s) {
            (Some(p50), Some(p99)) => format!(
                "; event time to queryable p50 {p50:.3} s, p99 {p99:.3} s ({} rows more than a minute late)",
                r.latency_over_60s
            ),
            _ => String::new(),
        }
    );
    if r.stopped_in_outage {
        eprintln!(
            "stopped as asked while ClickHouse was unreachable: {} rows scored were not written; the next \
             start scores them again from the resume point",
            r.scored.saturating_sub(r.written)
        );
    }
}

/// Score's job from the settings (ClickHouse retried for as long as it is away).
fn score_job(
    config: &Config,
    schema: txpipe_core::schema::Schema,
    settings: txpipe_jobs::score::ScoreSettings,
) -> ScoreJob {
    ScoreJob {
        settings,
        tables: config.tables.clone(),
        schema,
        model_dir: config.models.dir.clone(),
        clickhouse: config.clickhouse.clone(),
        backoff: txpipe_connectors::retry::Backoff {
            attempts: 0,
            ..txpipe_connectors::retry::Backoff::default()
        },
        upstream: None,
    }
}

fn print_train(config: &Config, r: &train::TrainReport) {
    eprintln!(
        "trained on {} rows ({} read{}) of Delta version {}: held-out AUC {:.4}, AUC-PR {:.4}, threshold {:.4}; \
         published version {} in {}; read {:.2} s, features {:.2} s, fit {:.2} s, evaluate {:.2} s, publish {:.2} s",
        r.rows_used,
        r.rows_read,
        if r.from_files { ", from files: more than train.max_rows_in_memory" } else { "" },
        r.delta_version,
        r.holdout_auc,
        r.holdout_auc_pr,
        r.threshold,
        r.published.as_deref().unwrap_or("none"),
        config.models.dir,
        r.read_s,
        r.features_s,
        r.fit_s,
        r.evaluate_s,
        r.publish_s
    );
    if let Some(path) = &r.report_path {
        eprintln!("report: {path}");
    }
    if let Some(b) = &r.batch {
        eprintln!(
            "batch scores: {} rows of Delta version {} into {}.{} (run {}, model {}) in {} inserts, {:.2} s",
            b.rows,
            b.delta_version,
            config.clickhouse.database,
            txpipe_connectors::clickhouse::BATCH,
            b.run_id,
            b.model_version,
            b.inserts,
            b.seconds
        );
    }
}

/// Where `--report-json` writes the job's report (checked before the job starts).
struct ReportJson(Option<std::path::PathBuf>);

impl ReportJson {
    fn new(path: Option<std::path::PathBuf>) -> Result<ReportJson> {
        if let Some(p) = &path {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            if p.file_name().is_none() || !dir.is_dir() {
                anyhow::bail!(
                    "invalid --report-json {}: expected a file path in an existing directory (set by --report-json or \
                     TXPIPE_REPORT_JSON)",
                    p.display()
                );
            }
        }
        Ok(ReportJson(path))
    }

    /// Writes `report` beside the file, then renames it over it: a reader never sees half.
    fn write(&self, report: &impl serde::Serialize) -> Result<()> {
        let Some(path) = &self.0 else { return Ok(()) };
        let text = serde_json::to_vec_pretty(report).context("encoding the report")?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }
}

/// A duration flag (`90s`, `6h`, `1d`), at least a second.
fn duration_flag(flag: &str, value: &str) -> Result<std::time::Duration> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d >= std::time::Duration::from_secs(1) => Ok(d),
        _ => anyhow::bail!(
            "invalid {flag} {value:?}: expected a duration of at least a second, such as 30m, 6h or 1d"
        ),
    }
}

/// A time flag: RFC 3339, or a date (midnight UTC); UTC microseconds.
fn time_flag(flag: &str, value: &str) -> Result<i64> {
    let parsed = chrono::DateTime::parse_from_rfc3339(value).map(|t| t.timestamp_micros()).or_else(|_| {
        chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
            .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc().timestamp_micros())
    });
    parsed.map_err(|_| {
        anyhow::anyhow!("invalid {flag} {value:?}: expected an RFC 3339 time (2026-11-30T08:00:00Z) or a date (2026-11-30)")
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Lines of dependencies that are noise at txpipe's levels (delta-rs logs every commit and scan
/// at info); delta-rs's kernel also reports a table
/// that does not exist yet as an error before txpipe creates it, and its writer warns on every
/// commit that binary columns get no statistics.
const QUIET: &str = "buoyant_kernel=warn,buoyant_kernel::snapshot=off,deltalake_core=warn,deltalake_core::writer::stats=error";

fn init_logging(config: &Config) -> Result<()> {
    use std::io::IsTerminal;
    let level = config.log.level.trim();
    let filter = if !level.is_empty() {
        // A bare level keeps the quiet list; a full filter is taken as given.
        let directives = if level.contains('=') { level.to_string() } else { format!("{level},{QUIET}") };
        EnvFilter::try_new(&directives)
            .map_err(|e| anyhow::anyhow!("invalid setting `log.level` = {level:?}: {e}"))?
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")))
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = if config.log.format == "json" { builder.json().try_init() } else { builder.try_init() };
    installed.map_err(|e| anyhow::anyhow!("setting up logging: {e}"))
}
