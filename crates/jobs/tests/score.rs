//! `txpipe score` in process, on real Delta tables in temporary folders and the real
//! ClickHouse of `scripts/services`: realtime and batch probabilities agree bit for bit over
//! a start, restarts (from the state file, from an older one, from the table) and streamed
//! commits; a model published mid-stream is picked up; catching up from the start reads the log
//! commit by commit, or the table as it is when files were vacuumed or the log cleaned up.

mod common;

use std::time::Duration;

use txpipe_connectors::delta::TablesConfig;
use txpipe_connectors::retry::Backoff;
use txpipe_core::features::FeatureConfig;
use txpipe_core::generator::GeneratorConfig;
use txpipe_core::schema::Schema;
use txpipe_jobs::Shutdown;
use txpipe_jobs::predict::batch::BatchScore;
use txpipe_jobs::score::{self, ScoreConfig, ScoreJob};
use txpipe_jobs::train::{self, TrainConfig, TrainJob};

fn generated(seed: u64, count: u64) -> GeneratorConfig {
    GeneratorConfig {
        seed,
        count,
        fraud_rate: 0.05,
        labels: true,
        malformed_rate: 0.0,
        ..GeneratorConfig::default()
    }
}

fn tables(dir: &std::path::Path) -> TablesConfig {
    TablesConfig { clean: dir.join("clean").display().to_string(), ..TablesConfig::default() }
}

fn train_job(dir: &std::path::Path) -> TrainJob {
    TrainJob {
        settings: TrainConfig { force: true, ..TrainConfig::default() }.validate().unwrap(),
        tables: tables(dir),
        schema: Schema::default_schema(),
        features: FeatureConfig::default(),
        model_dir: dir.join("models").display().to_string(),
        batch: None,
        on_stage: None,
    }
}

/// A table of `count` generated events (seed `seed`) in commits of `commit_rows`, a model
/// trained on it, and the settings of a ClickHouse database of its own (`name`).
async fn trained_table(
    dir: &std::path::Path,
    name: &str,
    seed: u64,
    count: u64,
    commit_rows: i64,
) -> txpipe_connectors::clickhouse::ClickHouseConfig {
    let clickhouse = common::fresh_clickhouse(name);
    common::write_history(dir, &generated(seed, count), 0, commit_rows).await;
    train::run(train_job(dir), Shutdown::new()).await.unwrap();
    clickhouse
}

fn score_job(
    dir: &std::path::Path,
    clickhouse: &txpipe_connectors::clickhouse::ClickHouseConfig,
) -> ScoreJob {
    score_job_with(dir, clickhouse, ScoreConfig { max_files: 2, ..ScoreConfig::default() })
}

fn score_job_with(
    dir: &std::path::Path,
    clickhouse: &txpipe_connectors::clickhouse::ClickHouseConfig,
    config: ScoreConfig,
) -> ScoreJob {
    let config = ScoreConfig {
        exit_when_idle: Some(1.5),
        state_dir: dir.join("state").display().to_string(),
        ..config
    };
    ScoreJob {
        settings: config.validate().unwrap(),
        tables: tables(dir),
        schema: Schema::default_schema(),
        model_dir: dir.join("models").display().to_string(),
        clickhouse: clickhouse.clone(),
        backoff: Backoff::default(),
        upstream: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_and_batch_probabilities_agree_over_a_start_restarts_and_streamed_commits() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = common::fresh_clickhouse("parity");
    let db = clickhouse.database.clone();
    common::write_history(dir.path(), &generated(1, 20_000), 0, 5_000).await;
    train::run(train_job(dir.path()), Shutdown::new()).await.unwrap();

    // First run: the whole table as it is (earliest), scored at once.
    let first = score::run(score_job(dir.path(), &clickhouse), Shutdown::new()).await.unwrap();
    assert_eq!((first.scored, first.restored, first.complete_through), (20_000, 0, Some(4)), "{first:?}");
    // Its state at version 4, kept aside for the third run.
    let state_files: Vec<std::path::PathBuf> =
        std::fs::read_dir(dir.path().join("state")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!((first.snapshots, state_files.len()), (1, 1), "{first:?} {state_files:?}");
    let state_file = state_files[0].clone();
    let state_at_4 = std::fs::read(&state_file).unwrap();

    // More commits (each a file per event date it touches); the second run loads the history
    // from the state file (version 4, the resume point) and streams them, whole commits of up to 2,500 rows per
    // micro-batch (a commit split across micro-batches would feed an account's events out of
    // order: this test caught it). Commits of 1,000 rows: two to a micro-batch, by the files'
    // row counts.
    common::write_history(dir.path(), &generated(2, 12_000), 20_000, 1_000).await;
    let config = ScoreConfig { max_rows: 2_500, ..ScoreConfig::default() };
    let second = score::run(score_job_with(dir.path(), &clickhouse, config), Shutdown::new()).await.unwrap();
    assert_eq!((second.scored, second.restored, second.from_snapshot), (12_000, 0, Some(4)), "{second:?}");
    assert_eq!(second.complete_through, Some(16));
    assert_eq!((second.micro_batches, second.largest_micro_batch), (6, 2_000), "{second:?}");
    assert!(second.inserts >= 1, "{second:?}");

    // Third run, from the older state file (version 4): the commits 5–16 are read into the
    // history, then the new ones scored.
    std::fs::write(&state_file, &state_at_4).unwrap();
    common::write_history(dir.path(), &generated(3, 4_000), 32_000, 1_000).await;
    // Micro-batches of 1,500 rows (one 1,000-row commit each): the reader reads a commit ahead
    // of the batch it hands out, so the last commit before the resume point is read but not yet
    // handed out when the log reaches the resume point (a replay that stopped there lost it).
    let config = ScoreConfig { max_rows: 1_500, ..ScoreConfig::default() };
    let third = score::run(score_job_with(dir.path(), &clickhouse, config), Shutdown::new()).await.unwrap();
    assert_eq!((third.scored, third.restored, third.from_snapshot), (4_000, 12_000, Some(4)), "{third:?}");
    assert_eq!(third.complete_through, Some(20));

    // Fourth run, with the state file damaged (one byte changed): refused, the whole table read.
    let mut damaged = std::fs::read(&state_file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&state_file, &damaged).unwrap();
    common::write_history(dir.path(), &generated(4, 2_000), 36_000, 1_000).await;
    let fourth = score::run(score_job(dir.path(), &clickhouse), Shutdown::new()).await.unwrap();
    assert_eq!((fourth.scored, fourth.restored, fourth.from_snapshot), (2_000, 36_000, None), "{fourth:?}");
    assert_eq!(fourth.complete_through, Some(22));

    // Batch scores of the same table with the same model: equal probabilities, row by row.
    let model = txpipe_jobs::models::ModelStore::new(dir.path().join("models")).current().unwrap().unwrap();
    let b = txpipe_jobs::predict::batch::score_history(
        &tables(dir.path()),
        &Schema::default_schema(),
        &model,
        None,
        2,
        &BatchScore::new(clickhouse.clone()),
        &Shutdown::new(),
    )
    .await
    .unwrap();
    assert_eq!(b.rows, 38_000);
    let compared = common::query(
        &clickhouse,
        &format!(
            "SELECT count(), countIf(r.fraud_probability != b.fraud_probability), \
             max(abs(r.fraud_probability - b.fraud_probability)), countIf(r.reasons != b.reasons), \
             countIf(r.predicted_label != b.predicted_label) \
             FROM {db}.transactions_realtime AS r ANY INNER JOIN {db}.transactions_batch AS b USING transaction_id"
        ),
    )
    .await;
    assert_eq!(compared, "38000\t0\t0\t0\t0", "rows, probabilities differing, largest gap, reasons, labels");
    // The readable reasons too, and every scored row has some text where it has reasons.
    let explained = common::query(
        &clickhouse,
        &format!(
            "SELECT countIf(r.explanation != b.explanation), countIf(length(r.reasons) > 0 AND r.explanation = '') \
             FROM {db}.transactions_realtime AS r ANY INNER JOIN {db}.transactions_batch AS b USING transaction_id"
        ),
    )
    .await;
    assert_eq!(explained, "0\t0", "explanations differing, reasons without text");
    let realtime = common::query(
        &clickhouse,
        &format!(
            "SELECT count(), uniqExact(transaction_id), any(model_version) FROM {db}.transactions_realtime"
        ),
    )
    .await;
    assert_eq!(realtime, format!("38000\t38000\t{}", model.version));
    common::query(&clickhouse, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_published_mid_stream_scores_the_rows_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = trained_table(dir.path(), "reload", 3, 10_000, 10_000).await;
    let db = clickhouse.database.clone();
    // Score runs on; it will stop 1.5 s after the last new commit.
    let mut job = score_job(dir.path(), &clickhouse);
    job.settings.model_poll = Duration::from_millis(100);
    job.settings.exit_when_idle = Some(Duration::from_secs(4));
    let running = tokio::spawn(score::run(job, Shutdown::new()));
    common::write_history(dir.path(), &generated(4, 2_000), 10_000, 1_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A broken version is refused and the current model kept; then a real second model.
    let broken = dir.path().join("models").join("versions").join("000007");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.json"), b"{\"format\": 1, \"half\": ").unwrap();
    std::fs::write(dir.path().join("models").join("CURRENT"), b"000007\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::write_history(dir.path(), &generated(5, 1_000), 12_000, 1_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::remove_dir_all(&broken).unwrap();
    std::fs::remove_file(dir.path().join("models").join("CURRENT")).unwrap();
    std::fs::write(dir.path().join("models").join("CURRENT"), b"000001\n").unwrap();
    let second = train::run(train_job(dir.path()), Shutdown::new()).await.unwrap();
    let v2 = second.published.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    common::write_history(dir.path(), &generated(6, 3_000), 13_000, 1_000).await;
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.scored, 16_000, "{report:?}");
    assert_eq!(report.models, vec!["000001".to_string(), v2.clone()], "{report:?}");
    let versions = common::query(
        &clickhouse,
        &format!(
            "SELECT model_version, count() FROM {db}.transactions_realtime GROUP BY model_version ORDER BY model_version"
        ),
    )
    .await;
    assert_eq!(versions, format!("000001\t13000\n{v2}\t3000"));
    common::query(&clickhouse, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_zero_stops_once_every_commit_is_scored_and_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = trained_table(dir.path(), "caught_up", 8, 7_000, 1_000).await;
    let db = clickhouse.database.clone();
    // Seven commits; micro-batches of two files, so the catch-up takes several polls and inserts.
    let mut job = score_job(dir.path(), &clickhouse);
    job.settings.exit_when_idle = Some(Duration::ZERO);
    // A stop at the first poll that found nothing, before the first micro-batch, or before the
    // last insert was acknowledged would leave rows out.
    let report = score::run(job, Shutdown::new()).await.unwrap();
    assert_eq!(
        (report.scored, report.written, report.complete_through),
        (7_000, 7_000, Some(7)),
        "{report:?}"
    );
    let stored = common::query(
        &clickhouse,
        &format!("SELECT count(), uniqExact(transaction_id) FROM {db}.transactions_realtime"),
    )
    .await;
    assert_eq!(stored, "7000\t7000");
    common::query(&clickhouse, &format!("DROP DATABASE {db}")).await;
}

/// Every row of the table once in `transactions_realtime`, and how many there are.
async fn realtime_count(clickhouse: &txpipe_connectors::clickhouse::ClickHouseConfig) -> String {
    let db = &clickhouse.database;
    common::query(
        clickhouse,
        &format!(
            "SELECT count(), uniqExact(transaction_id), countIf(fraud_probability >= 0 AND fraud_probability <= 1) \
             FROM {db}.transactions_realtime"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_from_the_start_reads_commit_by_commit_or_the_table_when_the_log_cannot() {
    use std::collections::HashSet;
    use txpipe_connectors::delta::{compact, data_files, open_existing};

    // 1. The log whole: read commit by commit, in micro-batches of at most 3,000 rows.
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = trained_table(dir.path(), "catchup_log", 5, 20_000, 2_000).await;
    let config = ScoreConfig { max_rows: 3_000, ..ScoreConfig::default() };
    let r = score::run(score_job_with(dir.path(), &clickhouse, config), Shutdown::new()).await.unwrap();
    assert_eq!((r.scored, r.complete_through, r.micro_batches), (20_000, Some(10), 10), "{r:?}");
    assert!(r.largest_micro_batch <= 3_000, "{r:?}");
    assert_eq!(realtime_count(&clickhouse).await, "20000\t20000\t20000");
    common::query(&clickhouse, &format!("DROP DATABASE {}", clickhouse.database)).await;

    // 2. Compacted, and the files the compaction replaced deleted (what vacuum does once they
    // are old enough): the first commits' files are gone, so the table as it is now is scored.
    let clickhouse = common::fresh_clickhouse("catchup_vacuumed");
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let location = dir.path().join("clean").display().to_string();
    let mut table = open_existing(&location, &Default::default()).await.unwrap();
    let before: HashSet<String> =
        data_files(&table).unwrap().into_iter().map(|f| f.path.to_string()).collect();
    compact(&mut table, &location, 1 << 30).await.unwrap();
    let after: HashSet<String> =
        data_files(&table).unwrap().into_iter().map(|f| f.path.to_string()).collect();
    let newest = table.version().expect("a version");
    let replaced: Vec<&String> = before.difference(&after).collect();
    assert!(!replaced.is_empty(), "the compaction replaced no file");
    for path in &replaced {
        std::fs::remove_file(dir.path().join("clean").join(path.as_str())).unwrap();
    }
    let r = score::run(score_job(dir.path(), &clickhouse), Shutdown::new()).await.unwrap();
    // Nothing read commit by commit: the first commit's file is gone.
    assert_eq!((r.scored, r.complete_through, r.micro_batches), (20_000, Some(newest), 0), "{r:?}");
    assert_eq!(realtime_count(&clickhouse).await, "20000\t20000\t20000");
    common::query(&clickhouse, &format!("DROP DATABASE {}", clickhouse.database)).await;

    // 3. The log's first entries removed after a checkpoint (log clean-up): the table as it is.
    let clickhouse = common::fresh_clickhouse("catchup_cleaned");
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let table = open_existing(&location, &Default::default()).await.unwrap();
    deltalake::checkpoints::create_checkpoint(&table, None).await.unwrap();
    std::fs::remove_file(dir.path().join("clean/_delta_log/00000000000000000000.json")).unwrap();
    let r = score::run(score_job(dir.path(), &clickhouse), Shutdown::new()).await.unwrap();
    assert_eq!((r.scored, r.complete_through, r.micro_batches), (20_000, Some(newest), 0), "{r:?}");
    assert_eq!(realtime_count(&clickhouse).await, "20000\t20000\t20000");
    common::query(&clickhouse, &format!("DROP DATABASE {}", clickhouse.database)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_history_differs_stops_the_state_file_until_a_start_builds_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = trained_table(dir.path(), "state_model", 7, 10_000, 5_000).await;
    let state = dir.path().join("state");

    // A run that sees a model with a two-hour window published mid-stream: its history was
    // built with the first model's window, so it writes no state file after the switch.
    let mut job = score_job(dir.path(), &clickhouse);
    job.settings.model_poll = Duration::from_millis(100);
    job.settings.exit_when_idle = Some(Duration::from_secs(3));
    let running = tokio::spawn(score::run(job, Shutdown::new()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut other = train_job(dir.path());
    other.features.history.window = "2h".into();
    let v2 = train::run(other, Shutdown::new()).await.unwrap().published.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::write_history(dir.path(), &generated(8, 2_000), 10_000, 1_000).await;
    let first = running.await.unwrap().unwrap();
    assert_eq!(first.models, vec!["000001".to_string(), v2.clone()], "{first:?}");
    assert_eq!((first.scored, first.snapshots), (12_000, 0), "{first:?}");
    assert!(
        !state.exists() || std::fs::read_dir(&state).unwrap().next().is_none(),
        "a state file was written"
    );

    // The next start reads the table (no state file), and writes one for the new model; the one
    // after loads it.
    common::write_history(dir.path(), &generated(9, 1_000), 12_000, 1_000).await;
    let second = score::run(score_job(dir.path(), &clickhouse), Shutdown::new()).await.unwrap();
    assert_eq!((second.restored, second.from_snapshot, second.scored), (12_000, None, 1_000), "{second:?}");
    assert!(second.snapshots >= 1, "{second:?}");
    let third = score::run(score_job(dir.path(), &clickhouse), Shutdown::new()).await.unwrap();
    assert_eq!(
        (third.restored, third.from_snapshot, third.scored),
        (0, second.complete_through, 0),
        "{third:?}"
    );
    common::query(&clickhouse, &format!("DROP DATABASE {}", clickhouse.database)).await;
}
