//! `[score]`: the settings as the config file and flags give them, and validated into
//! [`ScoreSettings`] before anything connects.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use txpipe_core::Error as ConfigError;
use txpipe_core::units::parse_duration_us;

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
    /// Stop after this many seconds without new commits (absent: run until stopped; 0: as soon
    /// as every commit is scored and acknowledged).
    pub exit_when_idle: Option<f64>,
    /// Log the counters at this interval.
    pub stats_interval: String,
    /// `I/N`: this score is shard I of N and scores only the rows of the Kafka partitions `p`
    /// with `p % N == I`, with its own progress and state file ("": the whole table).
    pub shard: String,
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
            shard: String::new(),
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
    pub shard: Option<Shard>,
}

/// One of N score processes over one table, split by Kafka partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `I/N` with 0 <= I < N.
    pub fn parse(text: &str) -> Option<Shard> {
        let (i, n) = text.trim().split_once('/')?;
        let (index, count) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
        (count >= 1 && index < count).then_some(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
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
            // 0: stop as soon as a poll finds the table's newest version scored and acknowledged.
            Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(ConfigError::config(
                    "score.exit_when_idle",
                    s,
                    "a number of seconds, 0 or more (0: stop once caught up)",
                ));
            }
        };
        let shard = match self.shard.trim() {
            "" => None,
            s => Some(Shard::parse(s).ok_or_else(|| {
                ConfigError::config(
                    "score.shard",
                    &self.shard,
                    "I/N with 0 <= I < N, such as 0/2 (empty: the whole table)",
                )
            })?),
        };
        Ok(ScoreSettings {
            shard,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_i_of_n_with_i_below_n() {
        assert_eq!(Shard::parse("0/2"), Some(Shard { index: 0, count: 2 }));
        assert_eq!(Shard::parse(" 3 / 4 "), Some(Shard { index: 3, count: 4 }));
        assert_eq!(Shard::parse("0/1"), Some(Shard { index: 0, count: 1 }));
        for bad in ["2/2", "0/0", "1", "a/2", "-1/2", "1/2/3", ""] {
            assert_eq!(Shard::parse(bad), None, "{bad}");
        }
        assert_eq!(ScoreConfig::default().validate().unwrap().shard, None);
        let c = ScoreConfig { shard: "1/2".into(), ..ScoreConfig::default() };
        assert_eq!(c.validate().unwrap().shard.map(|s| s.to_string()), Some("1/2".into()));
        let c = ScoreConfig { shard: "2/2".into(), ..ScoreConfig::default() };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("score.shard") && e.contains("I/N"), "{e}");
    }
}
