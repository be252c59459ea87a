//! `txpipe train` in process, on real Delta tables in temporary folders, written from the
//! synthetic generator (whose true fraud probabilities are known): publication, loading back,
//! every refusal with its message, and batch scores in the real ClickHouse of
//! `scripts/services`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use txpipe_connectors::clickhouse::ClickHouseConfig;
use txpipe_connectors::retry::Backoff;

use txpipe_connectors::delta::TablesConfig;
use txpipe_core::features::FeatureConfig;
use txpipe_core::generator::GeneratorConfig;
use txpipe_core::model::metrics;
use txpipe_core::schema::Schema;
use txpipe_jobs::models::ModelStore;
use txpipe_jobs::predict::batch::BatchScore;
use txpipe_jobs::train::{self, TrainConfig, TrainJob};
use txpipe_jobs::{JobError, Shutdown};

/// Writes `count` generated events into a clean table at `dir/clean` (see
/// [`common::write_history`]).
async fn history(dir: &std::path::Path, config: GeneratorConfig) -> HashMap<String, (f64, bool)> {
    common::write_history(dir, &config, 0, 10_000).await
}

fn generated(count: u64, fraud_rate: f64, labels: bool) -> GeneratorConfig {
    GeneratorConfig { seed: 5, count, fraud_rate, labels, malformed_rate: 0.0, ..GeneratorConfig::default() }
}

fn job(dir: &std::path::Path, config: TrainConfig) -> TrainJob {
    TrainJob {
        settings: config.validate().unwrap(),
        tables: TablesConfig { clean: dir.join("clean").display().to_string(), ..TablesConfig::default() },
        schema: Schema::default_schema(),
        features: FeatureConfig::default(),
        model_dir: dir.join("models").display().to_string(),
        batch: None,
        on_stage: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_publishes_and_the_model_scores_the_same_when_loaded_back() {
    let dir = tempfile::tempdir().unwrap();
    let truth = history(dir.path(), generated(60_000, 0.05, true)).await;
    let report = train::run(job(dir.path(), TrainConfig::default()), Shutdown::new()).await.unwrap();
    assert_eq!(report.published.as_deref(), Some("000001"), "{report:?}");
    assert_eq!((report.rows_read, report.rows_used), (60_000, 60_000));
    assert!(report.holdout_auc > 0.8, "{report:?}");

    let store = ModelStore::new(dir.path().join("models"));
    let model = store.current().unwrap().unwrap();
    assert_eq!(model.version, "000001");
    assert_eq!(model.lineage.delta_version, report.delta_version);
    assert_eq!(model.features.names.len(), model.model.coefficients.len());
    // Loaded back from JSON, it gives the same probabilities, bit for bit, on the same rows.
    let again: txpipe_core::model::ModelArtifact =
        serde_json::from_str(&serde_json::to_string(&model).unwrap()).unwrap();
    assert_eq!(again, model);

    // The held-out AUC against the AUC of the generator's true probabilities on the held-out
    // rows: the model gets most of the way there.
    let best = truth_auc(dir.path(), &model, &truth).await;
    eprintln!("held-out AUC: model {:.4}, true probabilities {best:.4}", report.holdout_auc);
    assert!(report.holdout_auc > best - 0.05, "model {} vs truth {best}", report.holdout_auc);

    // A second run with an equal model publishes version 2 and moves the pointer.
    let second = train::run(job(dir.path(), TrainConfig::default()), Shutdown::new()).await.unwrap();
    assert_eq!(second.published.as_deref(), Some("000002"));
    assert_eq!(store.current_id().unwrap().as_deref(), Some("000002"));
}

/// The AUC that the generator's true probabilities reach on the model's held-out rows (read
/// back from the table: those at or after its `holdout_from_us`).
async fn truth_auc(
    dir: &std::path::Path,
    model: &txpipe_core::model::ModelArtifact,
    truth: &HashMap<String, (f64, bool)>,
) -> f64 {
    let table = txpipe_connectors::delta::open_existing(
        &dir.join("clean").display().to_string(),
        &Default::default(),
    )
    .await
    .unwrap();
    let batches = txpipe_connectors::delta::read_rows(&table).await.unwrap();
    let ids = txpipe_connectors::delta::string_values(&batches, "transaction_id").unwrap();
    assert_eq!(ids.len(), truth.len());
    let holdout_truth: Vec<(f64, u8)> = {
        let mut v: Vec<(f64, u8)> = Vec::new();
        use txpipe_connectors::delta::arrow::array::{Array, TimestampMicrosecondArray};
        let mut k = 0;
        for b in &batches {
            let t = b
                .column_by_name("event_time")
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                if t.value(i) >= model.lineage.holdout_from_us {
                    let (p, y) = truth[&ids[k]];
                    v.push((p, u8::from(y)));
                }
                k += 1;
            }
        }
        v
    };
    let (p, y): (Vec<f64>, Vec<u8>) = holdout_truth.into_iter().unzip();
    assert_eq!(y.len() as u64, model.metrics.holdout.rows);
    metrics::auc_roc(&p, &y)
}

/// On 200,000 produced events, the held-out AUC is within 0.005 of the AUC of the generator's
/// true probabilities on the same rows (the default features: the generator's risk is a sum of
/// terms that they can draw).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_held_out_auc_is_within_0_005_of_the_truths() {
    let dir = tempfile::tempdir().unwrap();
    let truth = history(dir.path(), generated(200_000, 0.02, true)).await;
    let report = train::run(job(dir.path(), TrainConfig::default()), Shutdown::new()).await.unwrap();
    let model = ModelStore::new(dir.path().join("models")).current().unwrap().unwrap();
    let best = truth_auc(dir.path(), &model, &truth).await;
    eprintln!("held-out AUC: model {:.4}, true probabilities {best:.4}", report.holdout_auc);
    assert!((report.holdout_auc - best).abs() <= 0.005, "model {} vs truth {best}", report.holdout_auc);
}

fn refusal(result: Result<train::TrainReport, JobError>) -> String {
    match result {
        Err(JobError::Refused { why, .. }) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why_and_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // No labels at all.
    history(dir.path(), generated(5_000, 0.05, false)).await;
    let why = refusal(train::run(job(dir.path(), TrainConfig::default()), Shutdown::new()).await);
    assert!(why.contains("no labelled rows"), "{why}");
    assert!(!dir.path().join("models").join("CURRENT").exists());

    // One class only.
    let dir = tempfile::tempdir().unwrap();
    history(dir.path(), generated(5_000, 0.0, true)).await;
    let why = refusal(train::run(job(dir.path(), TrainConfig::default()), Shutdown::new()).await);
    assert!(why.contains("only one class"), "{why}");

    // Too few positives, and a quality gate that no model passes (then forced).
    let dir = tempfile::tempdir().unwrap();
    history(dir.path(), generated(10_000, 0.05, true)).await;
    let why = refusal(
        train::run(
            job(dir.path(), TrainConfig { min_positives: 100_000, ..TrainConfig::default() }),
            Shutdown::new(),
        )
        .await,
    );
    assert!(why.contains("train.min_positives = 100000"), "{why}");
    let strict = TrainConfig { auc_floor: 0.999, ..TrainConfig::default() };
    let why = refusal(train::run(job(dir.path(), strict.clone()), Shutdown::new()).await);
    assert!(why.contains("under train.auc_floor = 0.999") && why.contains("--force"), "{why}");
    assert!(!dir.path().join("models").join("CURRENT").exists());
    let forced =
        train::run(job(dir.path(), TrainConfig { force: true, ..strict }), Shutdown::new()).await.unwrap();
    assert_eq!(forced.published.as_deref(), Some("000001"));

    // A missing table.
    let empty = tempfile::tempdir().unwrap();
    let err =
        train::run(job(empty.path(), TrainConfig::default()), Shutdown::new()).await.unwrap_err().to_string();
    assert!(err.contains("clean"), "{err}");
}

#[test]
fn bad_settings_name_their_key() {
    let bad = |c: TrainConfig| c.validate().unwrap_err().to_string();
    assert!(
        bad(TrainConfig { holdout_fraction: 0.7, ..TrainConfig::default() })
            .contains("train.holdout_fraction")
    );
    assert!(
        bad(TrainConfig { threshold: "precision:2".into(), ..TrainConfig::default() })
            .contains("precision:P")
    );
    assert!(
        bad(TrainConfig { class_weight: "heavy".into(), ..TrainConfig::default() })
            .contains("none or balanced")
    );
    assert!(
        bad(TrainConfig { export_features: Some("/no/such/dir/f.parquet".into()), ..TrainConfig::default() })
            .contains("train.export_features")
    );
    assert!(TrainConfig { threshold: "precision:0.9".into(), ..TrainConfig::default() }.validate().is_ok());
}

/// The Python of the venv that scripts/test makes (with scikit-learn and pyarrow).
fn test_python() -> String {
    std::env::var("TXPIPE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TXPIPE_TEST_PYTHON is not set: run scripts/test, which makes a venv with scikit-learn")
    })
}

/// scikit-learn, fitting the feature matrix txpipe exported with the same regularisation and
/// class weights, finds the same coefficients (within 1e-3) and the same held-out AUC (within
/// 0.001): `scripts/check_sklearn.py` checks the tolerances and exits 1 past one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scikit_learn_on_the_exported_features_finds_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path(), generated(40_000, 0.05, true)).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_sklearn.py");
    for (n, (l2, class_weight)) in [(1.0, "none"), (0.1, "balanced")].into_iter().enumerate() {
        let export = dir.path().join(format!("features-{n}.parquet"));
        let config = TrainConfig {
            l2,
            class_weight: class_weight.into(),
            export_features: Some(export.display().to_string()),
            force: true,
            ..TrainConfig::default()
        };
        let report = train::run(job(dir.path(), config), Shutdown::new()).await.unwrap();
        let id = report.published.unwrap();
        let model = ModelStore::new(dir.path().join("models")).file_location(&id, "model.json");
        let out =
            std::process::Command::new(test_python()).arg(&script).arg(&export).arg(&model).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("l2 {l2}, class weight {class_weight}: {stdout}");
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let figures: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(figures["max_coef_diff"].as_f64().unwrap() <= 1e-3, "{figures}");
        assert!(figures["auc_diff"].as_f64().unwrap() <= 1e-3, "{figures}");
        assert_eq!(
            figures["fitted_rows"].as_u64().unwrap()
                + figures["held_out_rows"].as_u64().unwrap()
                + ModelStore::new(dir.path().join("models")).load(&id).unwrap().metrics.validation.rows,
            40_000
        );
        assert_eq!(figures["class_weight"], class_weight);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_scores_land_once_per_transaction_in_the_serving_view_also_when_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path(), generated(20_000, 0.05, true)).await;
    let clickhouse = common::fresh_clickhouse("batch");
    let batch = BatchScore::new(clickhouse.clone());
    let with_batch = || TrainJob { batch: Some(batch.clone()), ..job(dir.path(), TrainConfig::default()) };
    let first = train::run(with_batch(), Shutdown::new()).await.unwrap();
    let b = first.batch.clone().expect("batch scores written");
    assert_eq!((b.rows, b.model_version.as_str()), (20_000, "000001"), "{b:?}");
    let db = &clickhouse.database;
    let count = |table: &str| format!("SELECT count(), uniqExact(transaction_id) FROM {db}.{table}");
    assert_eq!(common::query(&clickhouse, &count("transactions_batch")).await, "20000\t20000");
    // Every row carries its model, run, a probability and at most three reasons (a row that
    // nothing pushes above the model's baseline has none); every flagged row says why, in codes
    // the model's features make and in text.
    let summary = common::query(
        &clickhouse,
        &format!(
            "SELECT uniqExact(model_version), uniqExact(batch_run_id), min(fraud_probability) >= 0, \
             max(fraud_probability) <= 1, countIf(length(reasons) <= 3), \
             countIf(predicted_label = 1 AND (length(reasons) = 0 OR explanation = '')), any(model_version) \
             FROM {db}.transactions_batch"
        ),
    )
    .await;
    assert_eq!(summary, "1\t1\t1\t1\t20000\t0\t000001");
    let model = ModelStore::new(dir.path().join("models")).current().unwrap().unwrap();
    let scorer = txpipe_core::model::Scorer::new(&model, &Schema::default_schema()).unwrap();
    let codes: Vec<&str> = scorer.all_reason_codes().collect();
    let reasons = common::query(
        &clickhouse,
        &format!("SELECT DISTINCT arrayJoin(reasons) FROM {db}.transactions_batch"),
    )
    .await;
    assert!(reasons.lines().count() > 3, "{reasons}");
    for r in reasons.lines() {
        assert!(codes.contains(&r), "reason {r:?} is not one of the model's codes {codes:?}");
    }
    // The fraudulent rows score higher than the others, on average.
    let by_label = common::query(
        &clickhouse,
        &format!("SELECT avgIf(fraud_probability, predicted_label = 1) > avgIf(fraud_probability, predicted_label = 0) FROM {db}.transactions_batch"),
    )
    .await;
    assert_eq!(by_label, "1");

    // A second run (a new model, a new run): the table holds both, the view one row per id,
    // from the newer run.
    let second = train::run(with_batch(), Shutdown::new()).await.unwrap();
    let run2 = second.batch.unwrap().run_id;
    assert_eq!(second.published.as_deref(), Some("000002"));
    assert_eq!(common::query(&clickhouse, &count("transactions_serving")).await, "20000\t20000");
    let runs = common::query(
        &clickhouse,
        &format!(
            "SELECT uniqExact(batch_run_id), any(batch_run_id), any(source) FROM {db}.transactions_serving"
        ),
    )
    .await;
    assert_eq!(runs, format!("1\t{run2}\tbatch"));
    common::query(&clickhouse, &format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_scoring_with_clickhouse_away_keeps_the_model_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path(), generated(10_000, 0.05, true)).await;
    let away = ClickHouseConfig { url: "http://127.0.0.1:9".into(), ..ClickHouseConfig::default() };
    let batch = BatchScore {
        backoff: Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(20), attempts: 2 },
        ..BatchScore::new(away)
    };
    let run = TrainJob { batch: Some(batch), ..job(dir.path(), TrainConfig::default()) };
    let err = train::run(run, Shutdown::new()).await.unwrap_err();
    assert!(matches!(&err, JobError::BatchScore { published, .. } if published == "000001"), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("model version 000001 is published") && text.contains("127.0.0.1:9"), "{text}");
    assert_eq!(ModelStore::new(dir.path().join("models")).current_id().unwrap().as_deref(), Some("000001"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_polling_the_pointer_while_models_are_published_never_sees_half_a_model() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path(), generated(10_000, 0.05, true)).await;
    train::run(job(dir.path(), TrainConfig::default()), Shutdown::new()).await.unwrap();
    let store = ModelStore::new(dir.path().join("models"));
    let model = store.current().unwrap().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut versions) = (0u64, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let m = store.current().expect("every read of the pointer finds a whole model").unwrap();
                assert_eq!(m.features.names.len(), m.model.coefficients.len());
                versions.insert(m.version);
                reads += 1;
            }
            (reads, versions)
        })
    };
    for _ in 0..40 {
        store
            .publish(
                |id| txpipe_core::model::ModelArtifact { version: id.to_string(), ..model.clone() },
                |_, _| Ok(()),
            )
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, versions) = reader.join().unwrap();
    assert_eq!(store.current_id().unwrap().as_deref(), Some("000041"));
    assert!(reads > 40 && versions.len() > 2, "{reads} reads saw {versions:?}");
}

/// A stop asked while train works ends it between two stages: nothing is published, and the
/// error says where it stopped. The stop is asked from inside the fit stage (its hook), so the
/// run is stopped mid-way every time, not only when a signal happens to land in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_train_ends_it_between_stages_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path(), generated(20_000, 0.05, true)).await;
    let shutdown = Shutdown::new();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (stop, log) = (shutdown.clone(), seen.clone());
    let hook = train::StageHook(std::sync::Arc::new(move |stage: &str| {
        log.lock().unwrap().push(stage.to_string());
        if stage.starts_with("fitting") {
            stop.trigger();
        }
    }));
    let run = TrainJob { on_stage: Some(hook), ..job(dir.path(), TrainConfig::default()) };
    match train::run(run, shutdown).await {
        Err(JobError::Stopped { at }) => assert_eq!(at, "before evaluating"),
        other => panic!("expected a stop, got {other:?}"),
    }
    let stages = seen.lock().unwrap().clone();
    assert!(
        stages.iter().any(|s| s.starts_with("features")) && stages.last().unwrap().starts_with("fitting"),
        "{stages:?}"
    );
    assert!(!dir.path().join("models").join("CURRENT").exists(), "nothing published");

    // A stop asked before the run: it reads nothing.
    let stopped = Shutdown::new();
    stopped.trigger();
    let err = train::run(job(dir.path(), TrainConfig::default()), stopped).await.unwrap_err();
    assert!(matches!(&err, JobError::Stopped { at } if at.starts_with("before reading")), "{err}");
}

/// A table trained from files (`train.max_rows_in_memory = 0`) gives the model trained in
/// memory, bit for bit: the same rows in the same order (the data files in another order than
/// the table's, every id of one commit repeated later and dropped), the same features, the same
/// fit and the same evaluation. The files are removed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_trained_from_files_gives_the_model_trained_in_memory_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    // Offsets 100,000 on first, then 0 on: the log's file order is not the table's order.
    common::write_history(dir.path(), &generated(30_000, 0.05, true), 100_000, 7_000).await;
    let other = GeneratorConfig { seed: 6, ..generated(30_000, 0.05, true) };
    common::write_history(dir.path(), &other, 0, 9_000).await;
    // The first history again, later in the table: every id a second time, dropped.
    common::write_history(dir.path(), &generated(30_000, 0.05, true), 200_000, 30_000).await;

    let in_memory = TrainConfig { max_rows_in_memory: u64::MAX, force: true, ..TrainConfig::default() };
    let a = train::run(job(dir.path(), in_memory), Shutdown::new()).await.unwrap();
    let spill = dir.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let from_files = TrainConfig {
        max_rows_in_memory: 0,
        spill_dir: spill.display().to_string(),
        force: true,
        ..TrainConfig::default()
    };
    let b = train::run(job(dir.path(), from_files), Shutdown::new()).await.unwrap();
    assert_eq!((a.rows_read, a.rows_used), (90_000, 60_000), "{a:?}");
    assert_eq!((b.rows_read, b.rows_used), (a.rows_read, a.rows_used), "{b:?}");
    assert!(!a.from_files && b.from_files, "{a:?} {b:?}");

    let store = ModelStore::new(dir.path().join("models"));
    let load = |id: &str| store.load(id).unwrap();
    let (m1, m2) = (load(a.published.as_deref().unwrap()), load(b.published.as_deref().unwrap()));
    assert_eq!(m2.model, m1.model, "the fitted model");
    assert_eq!(m2.features, m1.features, "the feature statistics");
    assert_eq!(m2.metrics, m1.metrics, "the evaluation");
    assert_eq!(m2.threshold.to_bits(), m1.threshold.to_bits());
    assert_eq!(m2.lineage, m1.lineage);
    assert!(m1.model.coefficients.iter().any(|&c| c != 0.0));
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0, "the spill files are removed");
}

/// A table whose log has no row counts (statistics are optional in Delta): its rows are
/// estimated from the files' sizes, on the side of more rows, and a table estimated over
/// `max_rows_in_memory` trains from files rather than filling memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_row_counts_in_its_log_is_estimated_and_trained_from_files() {
    let dir = tempfile::tempdir().unwrap();
    common::write_history(dir.path(), &generated(30_000, 0.05, true), 0, 10_000).await;
    let spill = dir.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let config = || TrainConfig {
        max_rows_in_memory: 30_000,
        spill_dir: spill.display().to_string(),
        force: true,
        ..TrainConfig::default()
    };
    // Counted: 30,000 rows, within the limit.
    let counted = train::run(job(dir.path(), config()), Shutdown::new()).await.unwrap();
    assert!(!counted.from_files, "{counted:?}");
    let log = dir.path().join("clean").join("_delta_log");
    let mut stripped = 0;
    for entry in std::fs::read_dir(&log).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".checkpoint.parquet") || name == "_last_checkpoint" {
            std::fs::remove_file(&path).unwrap();
        } else if name.ends_with(".json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<String> = text
                .lines()
                .map(|line| {
                    let mut action: serde_json::Value = serde_json::from_str(line).unwrap();
                    if let Some(add) = action.get_mut("add").and_then(|a| a.as_object_mut()) {
                        stripped += usize::from(add.remove("stats").is_some());
                    }
                    action.to_string()
                })
                .collect();
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        }
    }
    assert!(stripped >= 3, "{stripped} add actions had statistics");
    // Estimated from the sizes: more than 30,000.
    let report = train::run(job(dir.path(), config()), Shutdown::new()).await.unwrap();
    assert!(report.from_files, "{report:?}");
    assert_eq!(report.rows_read, 30_000, "{report:?}");
    assert!(report.published.is_some(), "{report:?}");
}
