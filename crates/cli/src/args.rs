//! Command-line flags. Every flag `--foo-bar` can also be set by the environment variable
//! `TXPIPE_FOO_BAR` (a flag wins over the environment; both win over the config file).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "txpipe",
    version,
    about = "Payment transactions: Kafka -> Delta Lake -> logistic regression -> ClickHouse",
    after_help = "Every flag --foo-bar can also be set as TXPIPE_FOO_BAR in the environment, or in the \
                  TOML file given by --config. Precedence: flag > environment > file > default.\n\
                  `txpipe config` prints the effective settings."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args, Default)]
pub struct CommonArgs {
    /// TOML config file (see config/txpipe.example.toml).
    #[arg(long, global = true, env = "TXPIPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, global = true, env = "TXPIPE_BROKERS", value_name = "HOST:PORT[,...]")]
    pub brokers: Option<String>,
    /// ClickHouse HTTP interface.
    #[arg(long, global = true, env = "TXPIPE_CLICKHOUSE_URL", value_name = "URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database.
    #[arg(long, global = true, env = "TXPIPE_CLICKHOUSE_DATABASE", value_name = "DB")]
    pub clickhouse_database: Option<String>,
    /// ClickHouse cluster (remote_servers) to create the tables on: replicated local tables
    /// with Distributed tables over them; empty: one server.
    #[arg(long, global = true, env = "TXPIPE_CLICKHOUSE_CLUSTER", value_name = "NAME")]
    pub clickhouse_cluster: Option<String>,
    /// Log level or filter (error, warn, info, debug, trace, or a RUST_LOG-style filter);
    /// without it RUST_LOG is used, else info.
    #[arg(long, global = true, env = "TXPIPE_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, global = true, env = "TXPIPE_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<String>,
    /// Serve Prometheus metrics at /metrics, and /livez and /readyz, on HOST:PORT (empty: off).
    #[arg(long, global = true, env = "TXPIPE_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Also write the job's report as JSON to FILE when it ends (replaced whole; for scripts).
    #[arg(long, global = true, env = "TXPIPE_REPORT_JSON", value_name = "FILE")]
    pub report_json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Synthetic transactions into Kafka, or as JSON lines into a file (--output).
    Produce(ProduceArgs),
    /// Job 1: Kafka -> Delta table, exactly once; bad records to the quarantine table.
    Ingest(IngestArgs),
    /// Job 3: Delta history -> logistic regression -> versioned model (and batch scores).
    Train(TrainArgs),
    /// Job 2: Delta table as a stream -> model -> ClickHouse.
    Score(ScoreArgs),
    /// Compact small files of both tables (dataChange=false), then vacuum old files.
    Optimize(OptimizeArgs),
    /// Ingest and score in one process (and train on --train-every): one metrics address, one
    /// shutdown, the same guarantees as the separate jobs.
    Run(RunArgs),
    /// The whole pipeline from outside: lag per partition, tables, quarantine, score's
    /// progress, the model, the serving tables. Exit 0 healthy, 1 a stage behind, 2 something
    /// unreachable.
    Status(StatusArgs),
    /// Print the effective settings (after file, environment and flags) as TOML.
    Config(ConfigArgs),
}

#[derive(Debug, Args, Default)]
pub struct ProduceArgs {
    /// Kafka topic.
    #[arg(long, env = "TXPIPE_TOPIC", value_name = "T")]
    pub topic: Option<String>,
    /// Number of events.
    #[arg(long, env = "TXPIPE_COUNT", value_name = "N")]
    pub count: Option<u64>,
    /// Events per second; 0 = as fast as possible.
    #[arg(long, allow_negative_numbers = true, env = "TXPIPE_RATE", value_name = "EVENTS_PER_S")]
    pub rate: Option<f64>,
    /// Seed: the same seed gives the same events.
    #[arg(long, env = "TXPIPE_SEED", value_name = "S")]
    pub seed: Option<u64>,
    /// Mean true fraud probability.
    #[arg(long, allow_negative_numbers = true, env = "TXPIPE_FRAUD_RATE", value_name = "F")]
    pub fraud_rate: Option<f64>,
    /// Share of deliberately malformed events.
    #[arg(long, allow_negative_numbers = true, env = "TXPIPE_MALFORMED_RATE", value_name = "F")]
    pub malformed_rate: Option<f64>,
    /// Write JSON lines to FILE (- = stdout) instead of Kafka.
    #[arg(long, env = "TXPIPE_OUTPUT", value_name = "FILE")]
    pub output: Option<String>,
    /// Write the truth (true fraud probability per event) as CSV to FILE.
    #[arg(long, env = "TXPIPE_TRUTH_OUTPUT", value_name = "FILE")]
    pub truth_output: Option<String>,
    /// First event time (RFC 3339, or now).
    #[arg(long, env = "TXPIPE_START_TIME", value_name = "TIME")]
    pub start_time: Option<String>,
    /// Period the events cover (7d, 36h, 90m, 30s).
    #[arg(long, env = "TXPIPE_SPAN", value_name = "DURATION")]
    pub span: Option<String>,
    /// Number of synthetic accounts.
    #[arg(long, env = "TXPIPE_ACCOUNTS", value_name = "N")]
    pub accounts: Option<usize>,
    /// Number of synthetic merchants.
    #[arg(long, env = "TXPIPE_MERCHANTS", value_name = "N")]
    pub merchants: Option<usize>,
    /// Write the label field (false: real-time-like events without it).
    #[arg(long, env = "TXPIPE_LABELS", value_name = "BOOL")]
    pub labels: Option<bool>,
    /// Partitions of the topic when txpipe creates it.
    #[arg(long, env = "TXPIPE_PARTITIONS", value_name = "N")]
    pub partitions: Option<i32>,
}

#[derive(Debug, Args, Default)]
pub struct IngestArgs {
    /// Kafka topic.
    #[arg(long, env = "TXPIPE_TOPIC", value_name = "T")]
    pub topic: Option<String>,
    /// Clean table: path or object-store URL.
    #[arg(long, env = "TXPIPE_TABLE", value_name = "PATH_OR_URL")]
    pub table: Option<String>,
    /// Quarantine table: path or object-store URL.
    #[arg(long, env = "TXPIPE_QUARANTINE_TABLE", value_name = "PATH")]
    pub quarantine_table: Option<String>,
    /// Kafka consumer group.
    #[arg(long, env = "TXPIPE_GROUP_ID", value_name = "G")]
    pub group_id: Option<String>,
    /// Stop after SECS seconds without new input.
    #[arg(long, allow_negative_numbers = true, env = "TXPIPE_EXIT_WHEN_IDLE", value_name = "SECS")]
    pub exit_when_idle: Option<f64>,
}

#[derive(Debug, Args, Default)]
pub struct OptimizeArgs {
    /// Clean table: path or object-store URL.
    #[arg(long, env = "TXPIPE_TABLE", value_name = "PATH_OR_URL")]
    pub table: Option<String>,
    /// Quarantine table: path or object-store URL.
    #[arg(long, env = "TXPIPE_QUARANTINE_TABLE", value_name = "PATH")]
    pub quarantine_table: Option<String>,
    /// Files smaller than this many bytes are rewritten into files of about this size.
    #[arg(long, env = "TXPIPE_TARGET_FILE_SIZE", value_name = "BYTES")]
    pub target_file_size: Option<u64>,
    /// Vacuum deletes files unreferenced for this many hours.
    #[arg(long, env = "TXPIPE_RETENTION_HOURS", value_name = "HOURS")]
    pub retention_hours: Option<u64>,
    /// Run vacuum after compaction.
    #[arg(long, env = "TXPIPE_VACUUM", value_name = "BOOL")]
    pub vacuum: Option<bool>,
    /// Vacuum lists what it would delete and deletes nothing.
    #[arg(long, env = "TXPIPE_DRY_RUN", value_name = "BOOL")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Args, Default)]
pub struct TrainArgs {
    /// Clean table: path or object-store URL.
    #[arg(long, env = "TXPIPE_TABLE", value_name = "PATH_OR_URL")]
    pub table: Option<String>,
    /// Model directory.
    #[arg(long, env = "TXPIPE_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<String>,
    /// Read this Delta version of the table (default: the newest).
    #[arg(long = "delta-version", env = "TXPIPE_DELTA_VERSION", value_name = "N")]
    pub delta_version: Option<u64>,
    /// Publish even when the quality gate refuses the model.
    #[arg(long, env = "TXPIPE_FORCE")]
    pub force: bool,
    /// After publishing, score the history with the new model into ClickHouse
    /// transactions_batch.
    #[arg(long, env = "TXPIPE_BATCH_SCORE")]
    pub batch_score: bool,
    /// Batch scoring writes only events at or after this time (RFC 3339, or a date YYYY-MM-DD).
    #[arg(long, env = "TXPIPE_FROM", value_name = "TIME")]
    pub from: Option<String>,
    /// Batch scoring writes only events before this time (RFC 3339, or a date YYYY-MM-DD).
    #[arg(long, env = "TXPIPE_TO", value_name = "TIME")]
    pub to: Option<String>,
    /// Keep running and train again on this schedule (30m, 6h, 1d); SIGTERM between runs
    /// exits 0.
    #[arg(long, env = "TXPIPE_EVERY", value_name = "DURATION")]
    pub every: Option<String>,
    /// Also write the feature matrix (every slice, with labels) to this Parquet file.
    #[arg(long, env = "TXPIPE_EXPORT_FEATURES", value_name = "FILE")]
    pub export_features: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct ScoreArgs {
    /// Clean table: path or object-store URL.
    #[arg(long, env = "TXPIPE_TABLE", value_name = "PATH_OR_URL")]
    pub table: Option<String>,
    /// Model directory.
    #[arg(long, env = "TXPIPE_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<String>,
    /// Stop after SECS seconds without new commits (0: as soon as every commit is scored).
    #[arg(long, allow_negative_numbers = true, env = "TXPIPE_EXIT_WHEN_IDLE", value_name = "SECS")]
    pub exit_when_idle: Option<f64>,
    /// Where to start when ClickHouse has no progress for this table: earliest, latest or a
    /// Delta version.
    #[arg(long, env = "TXPIPE_START", value_name = "WHERE")]
    pub start: Option<String>,
    /// Score only shard I of N of the table: the rows of the Kafka partitions p with
    /// p % N == I (each shard its own progress and state file).
    #[arg(long, env = "TXPIPE_SCORE_SHARD", value_name = "I/N")]
    pub shard: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Kafka topic.
    #[arg(long, env = "TXPIPE_TOPIC", value_name = "T")]
    pub topic: Option<String>,
    /// Clean table: path or object-store URL.
    #[arg(long, env = "TXPIPE_TABLE", value_name = "PATH_OR_URL")]
    pub table: Option<String>,
    /// Quarantine table: path or object-store URL.
    #[arg(long, env = "TXPIPE_QUARANTINE_TABLE", value_name = "PATH")]
    pub quarantine_table: Option<String>,
    /// Kafka consumer group.
    #[arg(long, env = "TXPIPE_GROUP_ID", value_name = "G")]
    pub group_id: Option<String>,
    /// Model directory.
    #[arg(long, env = "TXPIPE_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<String>,
    /// Stop after SECS seconds without input (score then stops once it has scored the last
    /// commit).
    #[arg(long, allow_negative_numbers = true, env = "TXPIPE_EXIT_WHEN_IDLE", value_name = "SECS")]
    pub exit_when_idle: Option<f64>,
    /// Where score starts when ClickHouse has no progress for this table: earliest, latest or a
    /// Delta version.
    #[arg(long, env = "TXPIPE_START", value_name = "WHERE")]
    pub start: Option<String>,
    /// Also train now and on this schedule (30m, 6h, 1d).
    #[arg(long, env = "TXPIPE_TRAIN_EVERY", value_name = "DURATION")]
    pub train_every: Option<String>,
    /// After each training run that publishes, score the history into transactions_batch.
    #[arg(long, env = "TXPIPE_BATCH_SCORE")]
    pub batch_score: bool,
    /// Score only shard I of N of the table (the rows of the Kafka partitions p with
    /// p % N == I); ingest still takes the partitions its consumer group gives it.
    #[arg(long, env = "TXPIPE_SCORE_SHARD", value_name = "I/N")]
    pub shard: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct StatusArgs {
    /// Kafka topic.
    #[arg(long, env = "TXPIPE_TOPIC", value_name = "T")]
    pub topic: Option<String>,
    /// Clean table: path or object-store URL.
    #[arg(long, env = "TXPIPE_TABLE", value_name = "PATH_OR_URL")]
    pub table: Option<String>,
    /// Quarantine table: path or object-store URL.
    #[arg(long, env = "TXPIPE_QUARANTINE_TABLE", value_name = "PATH")]
    pub quarantine_table: Option<String>,
    /// Model directory.
    #[arg(long, env = "TXPIPE_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Ingest is behind when more messages than this are not in the clean table.
    #[arg(long, env = "TXPIPE_MAX_LAG", value_name = "MESSAGES", default_value_t = 100_000)]
    pub max_lag: u64,
    /// Score is behind when its oldest commit not yet in ClickHouse is older than this.
    #[arg(long, env = "TXPIPE_MAX_SCORE_LAG", value_name = "DURATION", default_value = "5m")]
    pub max_score_lag: String,
    /// The model is too old past this age.
    #[arg(long, env = "TXPIPE_MAX_MODEL_AGE", value_name = "DURATION", default_value = "7d")]
    pub max_model_age: String,
}

#[derive(Debug, Args, Default)]
pub struct ConfigArgs {
    /// Include the produce settings as a produce run with these flags would see them.
    #[command(flatten)]
    pub produce: ProduceArgs,
}
