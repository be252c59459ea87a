//! Layered settings: defaults, then the TOML file, then environment and flags (clap reads
//! both, a flag winning), then validation into typed settings before any network call.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use txpipe_connectors::clickhouse::ClickHouseConfig;
use txpipe_connectors::delta::TablesConfig;
use txpipe_connectors::kafka::KafkaConfig;
use txpipe_core::features::FeatureConfig;
use txpipe_core::schema::{Schema, SchemaConfig};
use txpipe_jobs::ingest::IngestConfig;
use txpipe_jobs::optimize::OptimizeConfig;
use txpipe_jobs::produce::ProduceConfig;
use txpipe_jobs::score::ScoreConfig;
use txpipe_jobs::telemetry::{Check, MetricsConfig};
use txpipe_jobs::train::TrainConfig;

use crate::args::{CommonArgs, IngestArgs, OptimizeArgs, ProduceArgs, ScoreArgs, TrainArgs};

/// `[models]`: where trained models are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Directory of model versions and the `current` pointer.
    pub dir: String,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig { dir: "models/lr_model".into() }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level or filter; empty = RUST_LOG, else info.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: String::new(), format: "text".into() }
    }
}

/// The whole configuration file; every section and key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub tables: TablesConfig,
    pub models: ModelsConfig,
    pub produce: ProduceConfig,
    pub ingest: IngestConfig,
    pub optimize: OptimizeConfig,
    pub train: TrainConfig,
    pub score: ScoreConfig,
    pub features: FeatureConfig,
    pub schema: SchemaConfig,
}

/// Flag names of config keys, to name both in error messages.
const FLAGS: &[(&str, &str)] = &[
    ("kafka.brokers", "brokers"),
    ("kafka.topic", "topic"),
    ("kafka.group_id", "group-id"),
    ("kafka.partitions", "partitions"),
    ("clickhouse.url", "clickhouse-url"),
    ("clickhouse.database", "clickhouse-database"),
    ("tables.clean", "table"),
    ("tables.quarantine", "quarantine-table"),
    ("models.dir", "model-dir"),
    ("log.level", "log-level"),
    ("log.format", "log-format"),
    ("metrics.addr", "metrics-addr"),
    ("produce.count", "count"),
    ("produce.rate", "rate"),
    ("produce.seed", "seed"),
    ("produce.fraud_rate", "fraud-rate"),
    ("produce.malformed_rate", "malformed-rate"),
    ("produce.output", "output"),
    ("produce.truth_output", "truth-output"),
    ("produce.start_time", "start-time"),
    ("produce.span", "span"),
    ("produce.accounts", "accounts"),
    ("produce.merchants", "merchants"),
    ("produce.labels", "labels"),
    ("ingest.exit_when_idle", "exit-when-idle"),
    ("optimize.target_file_size", "target-file-size"),
    ("optimize.retention_hours", "retention-hours"),
];

/// Adds where a setting can be given to a validation error.
pub fn explain(e: txpipe_core::Error) -> anyhow::Error {
    if let txpipe_core::Error::Config { key, .. } = &e
        && let Some((_, flag)) = FLAGS.iter().find(|(k, _)| k == key)
    {
        let env = format!("TXPIPE_{}", flag.to_uppercase().replace('-', "_"));
        let (section, name) = key.split_once('.').unwrap_or(("", key));
        return anyhow::anyhow!(
            "{e} (set by --{flag}, {env}, or `{name}` in [{section}] of the config file)"
        );
    }
    anyhow::Error::new(e)
}

impl Config {
    /// Reads a TOML config file; unknown keys are errors that name the key.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// The file named by `--config` (or TXPIPE_CONFIG), else the defaults.
    pub fn load(common: &CommonArgs) -> Result<Config> {
        match &common.config {
            Some(path) => Config::from_file(path),
            None => Ok(Config::default()),
        }
    }

    /// Puts the common flags (and environment) over the file.
    /// The settings with every secret value (passwords, tokens, keys) shown as `[hidden]`.
    pub fn redacted(&self) -> Config {
        let hide = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(k, v)| (k.clone(), txpipe_connectors::kafka::redact(k, v).to_string())).collect()
        };
        let mut c = self.clone();
        c.kafka.properties = hide(&self.kafka.properties);
        c.tables.storage_options = hide(&self.tables.storage_options);
        if !c.clickhouse.password.is_empty() {
            c.clickhouse.password = txpipe_connectors::kafka::HIDDEN.to_string();
        }
        c
    }

    pub fn apply_common(&mut self, a: &CommonArgs) {
        set(&mut self.kafka.brokers, &a.brokers);
        set(&mut self.clickhouse.url, &a.clickhouse_url);
        set(&mut self.clickhouse.database, &a.clickhouse_database);
        set(&mut self.clickhouse.cluster, &a.clickhouse_cluster);
        set(&mut self.log.level, &a.log_level);
        set(&mut self.log.format, &a.log_format);
        set(&mut self.metrics.addr, &a.metrics_addr);
    }

    /// Puts the produce flags (and environment) over the file.
    pub fn apply_produce(&mut self, a: &ProduceArgs) {
        let p = &mut self.produce;
        set(&mut self.kafka.topic, &a.topic);
        set(&mut self.kafka.partitions, &a.partitions);
        set(&mut p.count, &a.count);
        set(&mut p.rate, &a.rate);
        set(&mut p.seed, &a.seed);
        set(&mut p.fraud_rate, &a.fraud_rate);
        set(&mut p.malformed_rate, &a.malformed_rate);
        set_some(&mut p.output, &a.output);
        set_some(&mut p.truth_output, &a.truth_output);
        set(&mut p.start_time, &a.start_time);
        set_some(&mut p.span, &a.span);
        set(&mut p.accounts, &a.accounts);
        set(&mut p.merchants, &a.merchants);
        set(&mut p.labels, &a.labels);
    }

    /// Puts the ingest flags (and environment) over the file.
    pub fn apply_ingest(&mut self, a: &IngestArgs) {
        set(&mut self.kafka.topic, &a.topic);
        set(&mut self.kafka.group_id, &a.group_id);
        set(&mut self.tables.clean, &a.table);
        set(&mut self.tables.quarantine, &a.quarantine_table);
        set_some(&mut self.ingest.exit_when_idle, &a.exit_when_idle);
    }

    /// Puts the optimize flags (and environment) over the file.
    pub fn apply_optimize(&mut self, a: &OptimizeArgs) {
        set(&mut self.tables.clean, &a.table);
        set(&mut self.tables.quarantine, &a.quarantine_table);
        set(&mut self.optimize.target_file_size, &a.target_file_size);
        set(&mut self.optimize.retention_hours, &a.retention_hours);
        set(&mut self.optimize.vacuum, &a.vacuum);
        set(&mut self.optimize.dry_run, &a.dry_run);
    }

    /// Puts the train flags (and environment) over the file.
    pub fn apply_train(&mut self, a: &TrainArgs) {
        set(&mut self.tables.clean, &a.table);
        set(&mut self.models.dir, &a.model_dir);
        if a.delta_version.is_some() {
            self.train.version = a.delta_version;
        }
        self.train.force |= a.force;
        if a.export_features.is_some() {
            self.train.export_features = a.export_features.clone();
        }
    }

    /// Puts the score flags (and environment) over the file.
    pub fn apply_score(&mut self, a: &ScoreArgs) {
        set(&mut self.tables.clean, &a.table);
        set(&mut self.models.dir, &a.model_dir);
        set(&mut self.score.start, &a.start);
        set(&mut self.score.shard, &a.shard);
        if a.exit_when_idle.is_some() {
            self.score.exit_when_idle = a.exit_when_idle;
        }
    }

    /// Validates the sections every command uses.
    pub fn validate_common(&self) -> Result<Schema> {
        self.kafka.validate().map_err(explain)?;
        self.clickhouse.validate().map_err(explain)?;
        self.tables.validate().map_err(explain)?;
        self.metrics.validate().map_err(explain)?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(explain(txpipe_core::Error::config("log.format", &self.log.format, "text or json")));
        }
        Schema::new(self.schema.clone()).map_err(anyhow::Error::new)
    }
}

impl Config {
    /// The readiness checks of a job: the services it uses.
    pub fn checks(&self, job: &str, clickhouse: bool) -> Vec<Check> {
        let table = |name: &'static str, location: &str| Check::Table {
            name,
            location: location.to_string(),
            options: self.tables.storage_options.clone(),
        };
        let mut checks = Vec::new();
        if job == "ingest" || job == "run" {
            checks.push(Check::kafka(self.kafka.clone()));
        }
        checks.push(table("clean", &self.tables.clean));
        if job == "ingest" || job == "run" {
            checks.push(table("quarantine", &self.tables.quarantine));
        }
        if clickhouse {
            checks.push(Check::ClickHouse(self.clickhouse.clone()));
        }
        checks
    }
}

fn set<T: Clone>(target: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

fn set_some<T: Clone>(target: &mut Option<T>, value: &Option<T>) {
    if value.is_some() {
        *target = value.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let mut c: Config =
            toml::from_str("[kafka]\ntopic = \"from-file\"\n[produce]\ncount = 7\nrate = 5.0\n").unwrap();
        assert_eq!(c.produce.count, 7);
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092", "untouched keys keep their default");
        c.apply_produce(&ProduceArgs { count: Some(9), ..Default::default() });
        assert_eq!((c.produce.count, c.produce.rate, c.kafka.topic.as_str()), (9, 5.0, "from-file"));
    }

    #[test]
    fn errors_name_the_key_the_flag_and_the_variable() {
        let mut c = Config::default();
        c.kafka.brokers = "nope".into();
        let msg = c.validate_common().unwrap_err().to_string();
        assert!(msg.contains("`kafka.brokers` = \"nope\""), "{msg}");
        assert!(msg.contains("--brokers, TXPIPE_BROKERS"), "{msg}");
        assert!(msg.contains("[kafka]"), "{msg}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_named() {
        let err = toml::from_str::<Config>("[produce]\ncont = 3\n").unwrap_err().to_string();
        assert!(err.contains("cont"), "{err}");
        let err = toml::from_str::<Config>("[produce]\ncount = \"many\"\n").unwrap_err().to_string();
        assert!(err.contains("count"), "{err}");
    }

    #[test]
    fn the_example_config_file_is_valid_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/txpipe.example.toml");
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c, Config::default());
        c.validate_common().unwrap();
    }
}
