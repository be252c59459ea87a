//! Every metric txpipe exports: its name, kind, labels and meaning, in one list.
//!
//! The jobs record through these constants; [`describe`] gives Prometheus their help text and
//! registers each one at zero, so that a scrape shows every metric of a job from its start
//! (a counter that has not moved yet is 0, not absent). The deploy files' rules and dashboard
//! are checked against [`ALL`].

/// How a metric is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// Label names (values are kept small: partitions, reason codes, stages, outcomes).
    pub labels: &'static [&'static str],
    /// Which job exports it: `ingest`, `score`, `train`, or `process` (every job).
    pub job: &'static str,
    pub help: &'static str,
}

macro_rules! catalogue {
    ($($konst:ident = $name:literal, $kind:ident, [$($label:literal),*], $job:literal, $help:literal;)*) => {
        $(pub const $konst: &str = $name;)*
        /// Every metric txpipe exports (the process metrics come from `metrics-process`).
        pub const ALL: &[Metric] = &[
            $(Metric { name: $name, kind: Kind::$kind, labels: &[$($label),*], job: $job, help: $help },)*
        ];
    };
}

catalogue! {
    INGEST_MESSAGES_READ = "txpipe_ingest_messages_read_total", Counter, [], "ingest",
        "Kafka messages read (before parsing; a message read again after a rebalance counts again).";
    INGEST_ROWS_WRITTEN = "txpipe_ingest_rows_written_total", Counter, [], "ingest",
        "Rows committed to the clean table.";
    INGEST_ROWS_QUARANTINED = "txpipe_ingest_rows_quarantined_total", Counter, ["reason"], "ingest",
        "Rows committed to the quarantine table, by reason code.";
    INGEST_MESSAGES_DISCARDED = "txpipe_ingest_messages_discarded_total", Counter, [], "ingest",
        "Messages read but dropped before a commit (a rebalance, a conflict): they are read again.";
    INGEST_COMMITS = "txpipe_ingest_commits_total", Counter, [], "ingest",
        "Commits to the clean table.";
    INGEST_COMMIT_DURATION = "txpipe_ingest_commit_duration_seconds", Histogram, [], "ingest",
        "Time from the check of the table's positions to the clean table's commit.";
    INGEST_BUFFER_AGE = "txpipe_ingest_buffer_age_seconds", Histogram, [], "ingest",
        "Age of the oldest row of a buffer when it is committed.";
    INGEST_COMMIT_CONFLICTS = "txpipe_ingest_commit_conflicts_total", Counter, [], "ingest",
        "Commits refused because the table's positions moved (another writer, or a commit that landed although its answer was lost).";
    INGEST_COMMIT_RETRIES = "txpipe_ingest_commit_retries_total", Counter, [], "ingest",
        "Commits tried again after a storage failure.";
    INGEST_COMMIT_RACES = "txpipe_ingest_commit_races_total", Counter, [], "ingest",
        "Commits whose version another writer took first (the store refused the put), landed as a later version.";
    INGEST_REBALANCES = "txpipe_ingest_rebalances_total", Counter, ["kind"], "ingest",
        "Consumer-group rebalances seen, by kind (assign, revoke, error).";
    INGEST_OFFSETS_SKIPPED = "txpipe_ingest_offsets_skipped_total", Counter, [], "ingest",
        "Offsets deleted by Kafka's retention before they were read.";
    INGEST_CONSUMER_LAG = "txpipe_ingest_consumer_lag_messages", Gauge, ["partition"], "ingest",
        "Messages behind the partition's end: its high watermark less the next offset the clean table will hold, per partition held here (every 5 s).";
    INGEST_BUFFERED_ROWS = "txpipe_ingest_buffered_rows", Gauge, [], "ingest",
        "Rows read and not committed yet.";
    INGEST_BUFFERED_BYTES = "txpipe_ingest_buffered_bytes", Gauge, [], "ingest",
        "Bytes of the messages read and not committed yet.";
    INGEST_TABLE_VERSION = "txpipe_ingest_table_version", Gauge, [], "ingest",
        "Version of the clean table after this process's last commit.";
    INGEST_LAST_COMMIT = "txpipe_ingest_last_commit_timestamp_seconds", Gauge, [], "ingest",
        "Unix time of this process's last commit to the clean table.";

    SCORE_ROWS_SCORED = "txpipe_score_rows_scored_total", Counter, [], "score",
        "Rows scored (each table row once; restored history rows are not scored).";
    SCORE_ROWS_WRITTEN = "txpipe_score_rows_written_total", Counter, [], "score",
        "Rows acknowledged by ClickHouse.";
    SCORE_REPEATS = "txpipe_score_repeats_dropped_total", Counter, [], "score",
        "Rows dropped as repeats of a transaction id already scored.";
    SCORE_INSERTS = "txpipe_score_inserts_total", Counter, [], "score",
        "Inserts acknowledged by ClickHouse.";
    SCORE_INSERT_DURATION = "txpipe_score_insert_duration_seconds", Histogram, [], "score",
        "Time of one insert into ClickHouse, until its acknowledgement.";
    SCORE_INSERT_ERRORS = "txpipe_score_insert_errors_total", Counter, [], "score",
        "Inserts or progress records that failed (each is retried).";
    SCORE_INSERT_RETRIES = "txpipe_score_insert_retries_total", Counter, [], "score",
        "Inserts or progress records tried again.";
    SCORE_READ_RETRIES = "txpipe_score_read_retries_total", Counter, [], "score",
        "Reads of the table's log or files tried again after a storage failure.";
    SCORE_END_TO_END = "txpipe_score_end_to_end_seconds", Histogram, [], "score",
        "Event time to acknowledged insert, per row.";
    SCORE_COMPLETE_VERSION = "txpipe_score_complete_through_version", Gauge, [], "score",
        "The table version through which every row is in ClickHouse.";
    SCORE_LAG_VERSIONS = "txpipe_score_lag_versions", Gauge, [], "score",
        "Table versions committed and not yet complete in ClickHouse.";
    SCORE_LAG_SECONDS = "txpipe_score_lag_seconds", Gauge, [], "score",
        "Age of the oldest table commit not yet complete in ClickHouse (0 when caught up).";
    SCORE_MODEL_INFO = "txpipe_score_model_info", Gauge, ["version"], "score",
        "The model version in use (1; the previous version goes to 0).";
    SCORE_MODEL_LOADS = "txpipe_score_model_loads_total", Counter, [], "score",
        "Models loaded (the first and every change).";
    SCORE_MODEL_REFUSALS = "txpipe_score_model_refusals_total", Counter, [], "score",
        "Model versions that could not be loaded (the model in use is kept).";
    SCORE_HISTORY_ACCOUNTS = "txpipe_score_history_accounts", Gauge, [], "score",
        "Accounts in the feature history.";
    SCORE_STATE_WRITES = "txpipe_score_state_writes_total", Counter, [], "score",
        "State files written.";

    TRAIN_RUNS = "txpipe_train_runs_total", Counter, ["outcome"], "train",
        "Training runs by outcome: published, refused, failed.";
    TRAIN_REFUSALS = "txpipe_train_refusals_total", Counter, ["reason"], "train",
        "Training runs that published nothing, by reason code.";
    TRAIN_STAGE_DURATION = "txpipe_train_stage_duration_seconds", Histogram, ["stage"], "train",
        "Time of each stage of a run: read, features, fit, evaluate, publish, batch_score.";
    TRAIN_AUC_ROC = "txpipe_train_model_auc_roc", Gauge, [], "train",
        "Held-out AUC-ROC of the last published model.";
    TRAIN_AUC_PR = "txpipe_train_model_auc_pr", Gauge, [], "train",
        "Held-out AUC-PR of the last published model.";
    TRAIN_ROWS = "txpipe_train_rows", Gauge, [], "train",
        "Rows the last published model was trained on.";
    TRAIN_LAST_SUCCESS = "txpipe_train_last_success_timestamp_seconds", Gauge, [], "train",
        "Unix time of the last run that published a model.";

    PROCESS_CPU = "process_cpu_seconds_total", Counter, [], "process",
        "CPU time of the process (user and system).";
    PROCESS_RSS = "process_resident_memory_bytes", Gauge, [], "process",
        "Resident memory of the process.";
    PROCESS_START = "process_start_time_seconds", Gauge, [], "process",
        "Unix time the process started.";
    PROCESS_UP = "txpipe_up", Gauge, ["job"], "process",
        "1 while the job runs (its name in the label).";
    CHECK_READY = "txpipe_check_ready", Gauge, ["check"], "process",
        "1 while the service a readiness check asks answers, else 0 (what /readyz shows, per check).";
}

/// The label values registered at zero before they first occur, so that rates and alerts work
/// from the start.
fn known_labels(metric: &str) -> Vec<&'static str> {
    match metric {
        INGEST_REBALANCES => vec!["assign", "revoke", "error"],
        INGEST_ROWS_QUARANTINED => {
            let mut codes: Vec<&'static str> =
                txpipe_core::event::RejectKind::ALL.iter().map(|k| k.code()).collect();
            codes.extend(["tombstone", "too_large", "empty_payload", "time_out_of_range"]);
            codes
        }
        TRAIN_RUNS => vec!["published", "refused", "failed"],
        TRAIN_REFUSALS => vec![
            "no_label_field",
            "no_label_column",
            "no_rows",
            "no_labels",
            "one_class",
            "too_few_positives",
            "fit_failed",
            "auc_floor",
            "auc_drop",
        ],
        _ => Vec::new(),
    }
}

/// Gives Prometheus the help text of `job`'s metrics (`run`: ingest's, score's and train's)
/// and of the process's, and registers them:
/// counters at zero (labelled ones with their known values), histograms empty. Gauges appear
/// once their job knows the value (a table version of 0 before the first commit would be
/// wrong).
pub fn describe(job: &str) {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    // `run` holds ingest, score and train.
    let ours = |m: &&Metric| job == "run" || m.job == job || m.job == "process";
    for m in ALL.iter().filter(ours) {
        match m.kind {
            Kind::Counter => describe_counter!(m.name, m.help),
            Kind::Gauge => describe_gauge!(m.name, m.help),
            Kind::Histogram => describe_histogram!(m.name, m.help),
        }
        if m.job == "process" {
            continue;
        }
        match (m.kind, m.labels.first()) {
            (Kind::Counter, None) => metrics::counter!(m.name).absolute(0),
            (Kind::Counter, Some(&label)) => {
                for v in known_labels(m.name) {
                    metrics::counter!(m.name, label => v).absolute(0);
                }
            }
            (Kind::Histogram, None) => {
                let _ = metrics::histogram!(m.name);
            }
            _ => {}
        }
    }
    metrics::gauge!(PROCESS_UP, "job" => job.to_string()).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prometheus_names_with_their_unit() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(
                m.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                m.name
            );
            assert!(m.name.starts_with("txpipe_") || m.name.starts_with("process_"), "{}", m.name);
            if m.kind == Kind::Counter {
                assert!(m.name.ends_with("_total"), "a counter ends in _total: {}", m.name);
            } else {
                assert!(!m.name.ends_with("_total"), "only counters end in _total: {}", m.name);
            }
            if m.kind == Kind::Histogram {
                assert!(m.name.ends_with("_seconds"), "histograms here measure time: {}", m.name);
            }
            assert!(["ingest", "score", "train", "process"].contains(&m.job), "{}", m.name);
        }
    }
}
