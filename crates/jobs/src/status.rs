//! `txpipe status`: the whole pipeline from outside, with no job running.
//!
//! Each part is looked at on its own, so one service away does not hide the others: ingest
//! (per partition, the topic's end against the position the clean table holds), the clean
//! table (version, files, small files, size), the quarantine (rows by reason, last 24 h and all),
//! score (its progress in ClickHouse against the table's newest version), the model (version,
//! age, held-out figures, the last run's decision, versions kept) and the serving tables.
//!
//! The outcome is an exit code usable from cron and as a probe: 0 healthy, 1 a stage behind
//! its limit ([`Limits`]), 2 something cannot be reached.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use txpipe_connectors::clickhouse::{ClickHouseConfig, Serving};
use txpipe_connectors::delta::{self, TablesConfig};
use txpipe_connectors::kafka::{self, KafkaConfig};

use crate::models::{LastRun, ModelStore};

/// When a stage counts as behind.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Messages of the topic not in the clean table.
    pub max_lag: u64,
    /// Age of score's oldest commit not yet in ClickHouse.
    pub max_score_lag: Duration,
    /// Age of the current model.
    pub max_model_age: Duration,
}

/// What `txpipe status` looks at.
#[derive(Debug, Clone)]
pub struct StatusJob {
    pub kafka: KafkaConfig,
    pub tables: TablesConfig,
    pub clickhouse: ClickHouseConfig,
    pub model_dir: String,
    /// Files under this size count as small (`optimize.target_file_size`).
    pub target_file_size: u64,
    pub limits: Limits,
}

/// One part of the pipeline: `ok` (with its figures), `absent` (not there yet: no table, no
/// model) or `unreachable` (the service or storage did not answer).
#[derive(Debug, Clone, Serialize)]
pub struct Part<T> {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(flatten)]
    pub value: Option<T>,
}

impl<T> Part<T> {
    fn ok(value: T) -> Part<T> {
        Part { state: "ok", detail: None, value: Some(value) }
    }
    fn absent(detail: impl Into<String>) -> Part<T> {
        Part { state: "absent", detail: Some(detail.into()), value: None }
    }
    fn unreachable(detail: impl std::fmt::Display) -> Part<T> {
        Part { state: "unreachable", detail: Some(detail.to_string()), value: None }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// The next offset to be written to the partition.
    pub end: i64,
    /// The last offset the clean table holds (None: nothing yet).
    pub committed: Option<i64>,
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestStatus {
    pub topic: String,
    pub partitions: Vec<PartitionLag>,
    pub lag: u64,
    /// Seconds since the clean table's newest commit (ingest's, or a compaction's; None: no table).
    pub last_commit_age_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub location: String,
    pub version: u64,
    pub files: usize,
    pub small_files: usize,
    /// Enough small files that `txpipe optimize` would rewrite some.
    pub optimize_due: bool,
    pub bytes: u64,
    /// Seconds since the newest commit.
    pub last_commit_age_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineStatus {
    pub location: String,
    pub rows: u64,
    /// Rows by reason code, quarantined in the last 24 hours.
    pub last_24h: BTreeMap<String, u64>,
    /// Rows by reason code, all.
    pub all: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreStatus {
    /// The newest table version every row of which is in ClickHouse (None: score has not
    /// recorded any).
    pub complete_through: Option<u64>,
    pub table_version: u64,
    pub versions_behind: u64,
    /// Age of the oldest commit not yet in ClickHouse (0 when caught up).
    pub seconds_behind: f64,
    /// With `score --shard I/N`: each shard's progress (`I/N` → version; None: not recorded
    /// yet); the figures above are then those of the shard furthest behind.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub shards: BTreeMap<String, Option<u64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub version: String,
    pub created_at: String,
    pub age_s: Option<f64>,
    pub holdout_auc: f64,
    pub holdout_auc_pr: f64,
    pub last_run: Option<LastRun>,
    pub versions_kept: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServingStatus {
    pub database: String,
    pub realtime_rows: u64,
    pub batch_rows: u64,
}

/// The pipeline as `txpipe status` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub at: String,
    /// 0 healthy, 1 a stage behind its limit, 2 something unreachable.
    pub exit_code: u8,
    pub ingest: Part<IngestStatus>,
    pub clean: Part<TableStatus>,
    pub quarantine: Part<QuarantineStatus>,
    pub score: Part<ScoreStatus>,
    pub model: Part<ModelStatus>,
    pub serving: Part<ServingStatus>,
    /// Stages behind their limit, in words.
    pub behind: Vec<String>,
    /// Parts that could not be reached.
    pub unreachable: Vec<String>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Looks at every part of the pipeline.
pub async fn run(job: &StatusJob) -> Status {
    // The clean table, loaded once for ingest's positions, its own figures and score's lag.
    let table = open(&job.tables.clean, &job.tables.storage_options).await;
    let (clean, quarantine, model) = tokio::join!(clean_table(job, &table), quarantine(job), async {
        model(&job.model_dir, &job.tables.storage_options)
    });
    let (ingest, score, serving) =
        tokio::join!(ingest(job, &table), score(job, &table), serving(&job.clickhouse));
    let mut status = Status {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        exit_code: 0,
        ingest,
        clean,
        quarantine,
        score,
        model,
        serving,
        behind: Vec::new(),
        unreachable: Vec::new(),
    };
    judge(&mut status, &job.limits);
    status
}

/// Fills in what is behind or unreachable, and the exit code.
fn judge(s: &mut Status, limits: &Limits) {
    let states = [
        ("ingest", s.ingest.state),
        ("clean", s.clean.state),
        ("quarantine", s.quarantine.state),
        ("score", s.score.state),
        ("model", s.model.state),
        ("serving", s.serving.state),
    ];
    s.unreachable =
        states.iter().filter(|(_, st)| *st == "unreachable").map(|(n, _)| n.to_string()).collect();
    if let Some(i) = &s.ingest.value
        && i.lag > limits.max_lag
    {
        s.behind
            .push(format!("ingest is {} messages behind the topic (--max-lag {})", i.lag, limits.max_lag));
    }
    if let Some(sc) = &s.score.value
        && sc.seconds_behind > limits.max_score_lag.as_secs_f64()
    {
        s.behind.push(format!(
            "score is {} versions, {:.0} s behind the table (--max-score-lag {})",
            sc.versions_behind,
            sc.seconds_behind,
            humantime::format_duration(limits.max_score_lag)
        ));
    }
    match &s.model.value {
        Some(m) if m.age_s.is_some_and(|a| a > limits.max_model_age.as_secs_f64()) => s.behind.push(format!(
            "the model {} is {:.1} h old (--max-model-age {})",
            m.version,
            m.age_s.unwrap_or(0.0) / 3600.0,
            humantime::format_duration(limits.max_model_age)
        )),
        None if s.model.state == "absent" => s.behind.push("no model is published yet".into()),
        _ => {}
    }
    s.exit_code = if !s.unreachable.is_empty() {
        2
    } else if !s.behind.is_empty() {
        1
    } else {
        0
    };
}

async fn ingest(job: &StatusJob, table: &Opened) -> Part<IngestStatus> {
    let topic = job.kafka.topic.clone();
    let marks = match kafka::watermarks(&job.kafka, &topic).await {
        Ok(Some(m)) => m,
        Ok(None) => return Part::absent(format!("topic {topic} does not exist")),
        Err(e) => return Part::unreachable(job.kafka.scrub(&e.to_string())),
    };
    let location = &job.tables.clean;
    let (committed, last_commit_age_s): (Vec<Option<i64>>, Option<f64>) = match table {
        Opened::Absent(_) => (vec![None; marks.len()], None),
        Opened::Unreachable(e) => return Part::unreachable(e),
        Opened::Table(table) => {
            let prefix = crate::ingest::app_prefix(&topic);
            let ids: Vec<String> = marks.iter().map(|m| format!("{prefix}-{}", m.partition)).collect();
            let newest =
                delta::commit_time(table, location, table.version().unwrap_or(0)).await.ok().flatten();
            match delta::transaction_versions(table, location, &ids).await {
                Ok(v) => (v, newest.map(|ms| (now_ms() - ms).max(0) as f64 / 1e3)),
                Err(e) => return Part::unreachable(e),
            }
        }
    };
    let partitions: Vec<PartitionLag> = marks
        .iter()
        .zip(committed)
        .map(|(m, c)| {
            // Offsets deleted by retention before they were read are not lag: nothing can read them.
            let next = c.map_or(m.low, |o| (o + 1).max(m.low));
            PartitionLag {
                partition: m.partition,
                end: m.high,
                committed: c,
                lag: (m.high - next).max(0) as u64,
            }
        })
        .collect();
    let lag = partitions.iter().map(|p| p.lag).sum();
    Part::ok(IngestStatus { topic, partitions, lag, last_commit_age_s })
}

async fn clean_table(job: &StatusJob, table: &Opened) -> Part<TableStatus> {
    let location = &job.tables.clean;
    let table = match table.get() {
        Ok(t) => t,
        Err(part) => return part,
    };
    let version = table.version().unwrap_or(0);
    let files = match delta::data_files(table) {
        Ok(f) => f,
        Err(e) => return Part::unreachable(e),
    };
    let small = files.iter().filter(|f| (f.size as u64) < job.target_file_size).count();
    let committed = delta::commit_time(table, location, version).await.ok().flatten();
    Part::ok(TableStatus {
        location: location.clone(),
        version,
        files: files.len(),
        small_files: small,
        // Compaction rewrites the small files of a partition when there are two or more.
        optimize_due: small >= 2,
        bytes: files.iter().map(|f| f.size.max(0) as u64).sum(),
        last_commit_age_s: committed.map(|ms| (now_ms() - ms).max(0) as f64 / 1e3),
    })
}

/// A table looked at: loaded, not there yet, or not readable.
enum Opened {
    Table(delta::DeltaTable),
    Absent(String),
    Unreachable(String),
}

impl Opened {
    fn get<T>(&self) -> Result<&delta::DeltaTable, Part<T>> {
        match self {
            Opened::Table(t) => Ok(t),
            Opened::Absent(why) => Err(Part::absent(why.clone())),
            Opened::Unreachable(why) => Err(Part::unreachable(why)),
        }
    }
}

/// Opens a table; a missing one is `absent`, an unreadable one `unreachable`.
async fn open(location: &str, options: &BTreeMap<String, String>) -> Opened {
    match delta::probe(location, options).await {
        Ok(false) => return Opened::Absent(format!("no table at {location} yet")),
        Err(e) => return Opened::Unreachable(e.to_string()),
        Ok(true) => {}
    }
    match delta::open_existing(location, options).await {
        Ok(t) => Opened::Table(t),
        Err(e) => Opened::Unreachable(e.to_string()),
    }
}

async fn quarantine(job: &StatusJob) -> Part<QuarantineStatus> {
    use delta::arrow::array::{Array, StringArray, TimestampMicrosecondArray};
    let location = &job.tables.quarantine;
    match delta::probe(location, &job.tables.storage_options).await {
        Ok(false) => return Part::absent(format!("no table at {location} yet")),
        Err(e) => return Part::unreachable(e),
        Ok(true) => {}
    }
    let read =
        delta::read_columns(location, &job.tables.storage_options, None, &["error", "ingested_at"], 4).await;
    let projection = match read {
        Ok(p) => p,
        Err(e) => return Part::unreachable(e),
    };
    let since_us = (now_ms() - 24 * 3600 * 1000) * 1000;
    let (mut all, mut recent, mut rows) = (BTreeMap::new(), BTreeMap::new(), 0u64);
    for b in &projection.batches {
        let errors = b.column(0).as_any().downcast_ref::<StringArray>();
        let times = b.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>();
        let (Some(errors), Some(times)) = (errors, times) else { continue };
        for i in 0..b.num_rows() {
            rows += 1;
            let code =
                if errors.is_null(i) { "unknown" } else { errors.value(i).split(':').next().unwrap_or("") };
            *all.entry(code.to_string()).or_insert(0u64) += 1;
            if !times.is_null(i) && times.value(i) >= since_us {
                *recent.entry(code.to_string()).or_insert(0u64) += 1;
            }
        }
    }
    Part::ok(QuarantineStatus { location: location.clone(), rows, last_24h: recent, all })
}

async fn score(job: &StatusJob, table: &Opened) -> Part<ScoreStatus> {
    let location = &job.tables.clean;
    let table = match table.get() {
        Ok(t) => t,
        Err(part) => return part,
    };
    let table_version = table.version().unwrap_or(0);
    let serving = Serving::new(&job.clickhouse, Vec::new());
    let read = async {
        Ok::<_, txpipe_connectors::clickhouse::ClickHouseError>((
            serving.progress(location).await?,
            serving.shard_progress(location).await?,
        ))
    };
    let (mut progress, recorded) = match read.await {
        Ok(p) => p,
        // No progress table yet (score never ran against this database) reads as no progress.
        Err(e) if serving.ping().await.is_ok() => {
            tracing::debug!(error = %e, "no score progress");
            (None, Vec::new())
        }
        Err(e) => return Part::unreachable(e),
    };
    // Shards recorded: score runs as shards (a whole-table progress left from before is stale).
    let shards = shards_of(&recorded);
    if !shards.is_empty() {
        progress = shards.values().min().copied().flatten();
    }
    let versions_behind = match progress {
        Some(p) => table_version.saturating_sub(p),
        None => table_version + 1,
    };
    let first_missing = progress.map_or(0, |p| p + 1);
    let seconds_behind = if versions_behind == 0 {
        0.0
    } else {
        match delta::commit_time(table, location, first_missing).await {
            Ok(Some(ms)) => (now_ms() - ms).max(0) as f64 / 1e3,
            // The entry was cleaned up: at least as old as the oldest entry still there.
            _ => f64::INFINITY,
        }
    };
    Part::ok(ScoreStatus {
        complete_through: progress,
        table_version,
        versions_behind,
        seconds_behind,
        shards,
    })
}

/// Every shard of the largest count recorded (`I/N` for I in 0..N) with its progress, None for
/// a shard that recorded none yet.
fn shards_of(recorded: &[(String, u64)]) -> BTreeMap<String, Option<u64>> {
    let parsed: Vec<(u32, u32, u64)> = recorded
        .iter()
        .filter_map(|(shard, v)| {
            let (i, n) = shard.split_once('/')?;
            Some((i.parse().ok()?, n.parse().ok()?, *v))
        })
        .collect();
    let Some(count) = parsed.iter().map(|&(_, n, _)| n).max() else { return BTreeMap::new() };
    (0..count)
        .map(|i| {
            let v = parsed.iter().find(|&&(j, n, _)| j == i && n == count).map(|&(_, _, v)| v);
            (format!("{i}/{count}"), v)
        })
        .collect()
}

/// The score line of the summary: its progress against the table's, and each shard's.
fn score_line(v: &ScoreStatus) -> String {
    let version = |p: Option<u64>| p.map_or("none".into(), |c| c.to_string());
    let shards: Vec<String> = v.shards.iter().map(|(s, p)| format!("{s} at {}", version(*p))).collect();
    format!(
        "complete through version {} of {}: {} versions, {:.0} s behind{}",
        version(v.complete_through),
        v.table_version,
        v.versions_behind,
        v.seconds_behind,
        if shards.is_empty() { String::new() } else { format!(" (shards: {})", shards.join(", ")) }
    )
}

fn model(dir: &str, storage_options: &std::collections::BTreeMap<String, String>) -> Part<ModelStatus> {
    let store = match ModelStore::open(dir, storage_options) {
        Ok(store) => store,
        Err(e) => return Part::unreachable(e),
    };
    let artifact = match store.current() {
        Ok(Some(a)) => a,
        Ok(None) => return Part::absent(format!("no model published in {dir}")),
        Err(e) => return Part::unreachable(e),
    };
    let age_s = chrono::DateTime::parse_from_rfc3339(&artifact.created_at)
        .ok()
        .map(|t| (now_ms() - t.timestamp_millis()).max(0) as f64 / 1e3);
    Part::ok(ModelStatus {
        version: artifact.version.clone(),
        created_at: artifact.created_at.clone(),
        age_s,
        holdout_auc: artifact.metrics.holdout.auc_roc,
        holdout_auc_pr: artifact.metrics.holdout.auc_pr,
        last_run: store.last_run(),
        versions_kept: store.versions(),
    })
}

async fn serving(config: &ClickHouseConfig) -> Part<ServingStatus> {
    let serving = Serving::new(config, Vec::new());
    if let Err(e) = serving.ping().await {
        return Part::unreachable(e);
    }
    let count = |table: &str| {
        let db = config.database.replace('\'', "");
        // One server: its parts' rows (no scan). A cluster: the Distributed table over every
        // shard.
        let sql = if serving.clustered() {
            format!("SELECT count() FROM `{db}`.`{table}`")
        } else {
            format!(
                "SELECT sum(rows) FROM system.parts WHERE database = '{db}' AND table = '{table}' AND active"
            )
        };
        let serving = serving.clone();
        async move { serving.fetch_text(&sql).await.map(|t| t.trim().parse::<u64>().unwrap_or(0)) }
    };
    match tokio::try_join!(
        count(txpipe_connectors::clickhouse::REALTIME),
        count(txpipe_connectors::clickhouse::BATCH)
    ) {
        Ok((realtime_rows, batch_rows)) => {
            Part::ok(ServingStatus { database: config.database.clone(), realtime_rows, batch_rows })
        }
        Err(e) => Part::unreachable(e),
    }
}

/// The status as a table for people.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let line = |out: &mut String, name: &str, state: &str, detail: Option<&str>, text: String| {
        let text = if state == "ok" { text } else { format!("{state}: {}", detail.unwrap_or("")) };
        let _ = writeln!(out, "{name:<11} {text}");
    };
    let _ = writeln!(out, "txpipe status at {}", s.at);
    let i = &s.ingest;
    line(
        &mut out,
        "ingest",
        i.state,
        i.detail.as_deref(),
        i.value.as_ref().map_or(String::new(), |v| {
            let per: Vec<String> =
                v.partitions.iter().map(|p| format!("p{} {}", p.partition, p.lag)).collect();
            format!(
                "topic {}: {} messages behind ({}); last commit {}",
                v.topic,
                v.lag,
                per.join(", "),
                v.last_commit_age_s.map_or("none".into(), |a| format!("{a:.0} s ago"))
            )
        }),
    );
    let c = &s.clean;
    line(
        &mut out,
        "clean",
        c.state,
        c.detail.as_deref(),
        c.value.as_ref().map_or(String::new(), |v| {
            format!(
                "version {}, {} files ({} small{}), {:.1} MB, last commit {}",
                v.version,
                v.files,
                v.small_files,
                if v.optimize_due { "; optimize due" } else { "" },
                v.bytes as f64 / 1e6,
                v.last_commit_age_s.map_or("unknown".into(), |a| format!("{a:.0} s ago"))
            )
        }),
    );
    let q = &s.quarantine;
    line(
        &mut out,
        "quarantine",
        q.state,
        q.detail.as_deref(),
        q.value.as_ref().map_or(String::new(), |v| {
            let show = |m: &BTreeMap<String, u64>| {
                if m.is_empty() {
                    "none".to_string()
                } else {
                    m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
                }
            };
            format!("{} rows; last 24 h: {}; all: {}", v.rows, show(&v.last_24h), show(&v.all))
        }),
    );
    let sc = &s.score;
    line(
        &mut out,
        "score",
        sc.state,
        sc.detail.as_deref(),
        sc.value.as_ref().map_or(String::new(), score_line),
    );
    let m = &s.model;
    line(
        &mut out,
        "model",
        m.state,
        m.detail.as_deref(),
        m.value.as_ref().map_or(String::new(), |v| {
            let last = v.last_run.as_ref().map_or("none recorded".into(), |r| {
                format!(
                    "{} at {}{}",
                    r.outcome,
                    r.at,
                    r.code.as_deref().map_or(String::new(), |c| format!(" ({c})"))
                )
            });
            format!(
                "{}, {} old, held-out AUC {:.4}, AUC-PR {:.4}; last run: {last}; {} versions kept",
                v.version,
                v.age_s.map_or("?".into(), |a| humantime::format_duration(Duration::from_secs(a as u64))
                    .to_string()),
                v.holdout_auc,
                v.holdout_auc_pr,
                v.versions_kept.len()
            )
        }),
    );
    let sv = &s.serving;
    line(
        &mut out,
        "serving",
        sv.state,
        sv.detail.as_deref(),
        sv.value.as_ref().map_or(String::new(), |v| {
            format!(
                "{}: transactions_realtime {} rows, transactions_batch {} rows",
                v.database, v.realtime_rows, v.batch_rows
            )
        }),
    );
    for b in &s.behind {
        let _ = writeln!(out, "BEHIND      {b}");
    }
    for u in &s.unreachable {
        let _ = writeln!(out, "UNREACHABLE {u}");
    }
    let verdict = match s.exit_code {
        0 => "healthy",
        1 => "a stage is behind",
        _ => "something cannot be reached",
    };
    let _ = writeln!(out, "{verdict} (exit {})", s.exit_code);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_of_the_largest_count_is_listed_and_one_never_recorded_is_none() {
        let recorded =
            [("0/3".to_string(), 7), ("2/3".to_string(), 9), ("1/2".to_string(), 4), ("x".to_string(), 1)];
        let shards = shards_of(&recorded);
        let want: BTreeMap<String, Option<u64>> =
            [("0/3".to_string(), Some(7)), ("1/3".to_string(), None), ("2/3".to_string(), Some(9))].into();
        assert_eq!(shards, want);
        // The furthest behind: a shard with nothing recorded makes the whole "none".
        assert_eq!(shards.values().min().copied().flatten(), None);
        assert!(shards_of(&[]).is_empty());
    }
}
