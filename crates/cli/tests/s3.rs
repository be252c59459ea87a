//! txpipe on an S3-compatible object store: the SeaweedFS of `scripts/services up s3`
//! (TXPIPE_TEST_S3 overrides the endpoint), reached with delta-rs's S3 support, which commits
//! with the store's conditional put and no lock service.
//!
//! - Every job on `s3://` tables (storage options from the config file): ingest, optimize,
//!   train with batch scoring, score, status; Python's `deltalake` reads the tables.
//! - Ingest processes in one consumer group on one S3 table under churn: every Kafka position
//!   once.
//! - The store killed -9 for 10 s under ingest and under score, and a SIGTERM during an outage:
//!   nothing lost or repeated, recovery without help, a prompt stop.
//! - The model directory on the store: train publishes there, score loads and reloads from it,
//!   status reads it; nothing of it on the local disk.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use txpipe_jobs::produce::ProduceConfig;

#[path = "common/lake.rs"]
mod lake;
use lake::{
    Tables, check_exactly_once, fresh_topic, produce, runtime, s3_options, s3_tables, spawn, unique, wait_ok,
};

/// The faults stop the shared store: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn clickhouse_url() -> String {
    std::env::var("TXPIPE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

fn services(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services");
    let status = Command::new(script).args(args).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "scripts/services {args:?}");
}

/// Kills the store with SIGKILL (no chance to finish anything) and waits until it is gone.
fn kill9_store() -> StoreBackUp {
    let dir = std::env::var("TXPIPE_SERVICES_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../.services").into());
    let pid: libc::pid_t =
        std::fs::read_to_string(Path::new(&dir).join("s3/weed.pid")).unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) on the pid the services script recorded for the store.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // SAFETY: signal 0 only asks whether the process is there.
    while unsafe { libc::kill(pid, 0) } == 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    StoreBackUp
}

/// Brings the store back up however the test ends, so that the tests after it find it.
struct StoreBackUp;

impl Drop for StoreBackUp {
    fn drop(&mut self) {
        services(&["up", "s3"]);
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits (up to `within`) until `log` holds `needle`.
fn wait_for_log(path: &Path, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !log_of(path).contains(needle) {
        assert!(Instant::now() < deadline, "no '{needle}' in {}: {}", path.display(), log_of(path));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 60 s) until the clean table has its first commit of data.
fn wait_for_first_commit(rt: &tokio::runtime::Runtime, tables: &Tables) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let version = rt.block_on(async {
            txpipe_connectors::delta::open_existing(&tables.clean, &tables.options())
                .await
                .ok()
                .and_then(|t| t.version())
        });
        if version.is_some_and(|v| v >= 1) {
            return;
        }
        assert!(Instant::now() < deadline, "ingest committed nothing to {}", tables.clean);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ingest_processes_in_one_group_under_churn_on_one_s3_table_keep_every_position_once() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tables = s3_tables("s3churn");
    let config = ProduceConfig {
        count: 60_000,
        rate: 8_000.0,
        seed: 81,
        malformed_rate: 0.01,
        ..ProduceConfig::default()
    };
    // Two and three members committing every 150 ms to one table: their commits race for the
    // same versions, and the store's conditional put decides each race.
    lake::group_churn("s3churn", &tables, dir.path(), &config, "[ingest]\nflush_latency = \"150ms\"\n");
    let logs: String = std::fs::read_dir(dir.path()).unwrap().map(|e| log_of(&e.unwrap().path())).collect();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn the_store_killed_for_10_s_under_ingest_loses_and_repeats_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let topic = fresh_topic(&rt, "s3down", 4);
    let dir = tempfile::tempdir().unwrap();
    let tables = s3_tables("s3down");
    let config = ProduceConfig {
        count: 40_000,
        rate: 2_000.0,
        seed: 82,
        malformed_rate: 0.02,
        ..ProduceConfig::default()
    };
    let producer = produce(&topic, &config, &dir.path().join("produce.log"));
    let log = dir.path().join("ingest.log");
    let ingest = spawn(tables.ingest(&topic, &topic, &["--exit-when-idle", "5"]), &log);
    wait_for_first_commit(&rt, &tables);
    let back_up = kill9_store();
    std::thread::sleep(Duration::from_secs(10));
    drop(back_up);
    wait_ok(producer, "produce", Duration::from_secs(120));
    wait_ok(ingest, "ingest", Duration::from_secs(180));
    assert!(log_of(&log).contains("commit failed; keeping the rows and retrying"), "{}", log_of(&log));
    check_exactly_once(&rt, &tables, &config);
}

#[test]
fn sigterm_while_the_store_is_down_stops_ingest_promptly_and_the_next_start_resumes() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let topic = fresh_topic(&rt, "s3term", 4);
    let dir = tempfile::tempdir().unwrap();
    let tables = s3_tables("s3term");
    let config = ProduceConfig {
        count: 20_000,
        rate: 2_000.0,
        seed: 83,
        malformed_rate: 0.02,
        ..ProduceConfig::default()
    };
    let producer = produce(&topic, &config, &dir.path().join("produce.log"));
    let log = dir.path().join("ingest.log");
    let ingest = spawn(tables.ingest(&topic, &topic, &[]), &log);
    wait_for_first_commit(&rt, &tables);
    let back_up = kill9_store();
    // A commit has failed and is being retried when the stop is asked.
    wait_for_log(&log, "commit failed; keeping the rows and retrying", Duration::from_secs(60));
    let asked = Instant::now();
    lake::sigterm_within(ingest, Duration::from_secs(15));
    eprintln!("ingest stopped {:.1} s after SIGTERM, the store still down", asked.elapsed().as_secs_f64());
    assert!(
        log_of(&log).contains("stopping as asked while the table's storage is unreachable"),
        "{}",
        log_of(&log)
    );
    drop(back_up);
    wait_ok(producer, "produce", Duration::from_secs(120));
    let again =
        spawn(tables.ingest(&topic, &topic, &["--exit-when-idle", "5"]), &dir.path().join("again.log"));
    wait_ok(again, "ingest after the outage", Duration::from_secs(180));
    check_exactly_once(&rt, &tables, &config);
}

/// A working folder whose config puts both tables on the store (storage options in the file),
/// ClickHouse into a fresh database; returns it with the database's name.
fn s3_folder(name: &str) -> (tempfile::TempDir, Tables, String) {
    let dir = tempfile::tempdir().unwrap();
    let tables = s3_tables(name);
    let database = format!("test_{name}_{}", std::process::id());
    let options: String = s3_options().iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
    std::fs::write(
        dir.path().join("txpipe.toml"),
        format!(
            "[tables]\nclean = \"{}\"\nquarantine = \"{}\"\n[tables.storage_options]\n{options}\
             [clickhouse]\ndatabase = \"{database}\"\n[ingest]\nflush_rows = 500\n\
             [score]\nmax_files = 1\nstart = \"0\"\n[train]\nforce = true\n",
            tables.clean, tables.quarantine
        ),
    )
    .unwrap();
    (dir, tables, database)
}

/// `txpipe ARGS` in `dir` with its config, the test's broker and ClickHouse; nothing of the
/// store in the environment (the config file says it all).
fn txpipe(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_txpipe"));
    c.current_dir(dir)
        .args(args)
        .args([
            "--config",
            "txpipe.toml",
            "--brokers",
            &lake::brokers(),
            "--clickhouse-url",
            &clickhouse_url(),
        ])
        .stdout(Stdio::null());
    for (k, _) in s3_options() {
        c.env_remove(k);
    }
    c
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {err}");
    err
}

fn clickhouse(sql: &str) -> String {
    let out = Command::new("clickhouse-client").args(["--query", sql]).output().unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Python's `deltalake` reading a table on the store (scripts/check_delta.py).
fn python_reads(location: &str) -> serde_json::Value {
    let python = std::env::var("TXPIPE_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("TXPIPE_TEST_PYTHON is not set: run scripts/test, which makes its venv"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/check_delta.py");
    let out = Command::new(python).arg(script).arg(location).envs(s3_options()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_job_runs_on_s3_tables_and_python_reads_them() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, tables, database) = s3_folder("s3jobs");
    let topic = unique("s3jobs");
    let d = dir.path();
    run_ok(
        txpipe(
            d,
            &["produce", "--topic", &topic, "--count", "6000", "--seed", "5", "--malformed-rate", "0.05"],
        ),
        "produce",
    );
    let (valid, bad) = lake::expected(&ProduceConfig {
        count: 6000,
        seed: 5,
        malformed_rate: 0.05,
        ..ProduceConfig::default()
    });
    run_ok(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    // Many small files (commits of 500 rows): compaction rewrites them; vacuum lists the store
    // (the files it replaced are within the retention period, so none is deleted yet).
    let optimized = run_ok(txpipe(d, &["optimize"]), "optimize");
    assert!(optimized.contains("rewritten into"), "{optimized}");
    assert!(optimized.contains("vacuum deleted 0 files"), "{optimized}");
    run_ok(txpipe(d, &["train", "--batch-score"]), "train with batch scoring");
    run_ok(txpipe(d, &["score", "--exit-when-idle", "2"]), "score");

    let clean = python_reads(&tables.clean);
    assert_eq!(clean["rows"], valid.len());
    assert_eq!(clean["distinct_ids"], valid.len());
    let ids: Vec<String> = serde_json::from_value(clean["ids"].clone()).unwrap();
    assert_eq!(ids, valid);
    assert_eq!(python_reads(&tables.quarantine)["rows"], bad);
    let n = valid.len();
    assert_eq!(
        clickhouse(&format!(
            "SELECT count(), uniqExact(transaction_id) FROM {database}.transactions_serving"
        )),
        format!("{n}\t{n}")
    );
    assert_eq!(
        clickhouse(&format!("SELECT uniqExact(transaction_id) FROM {database}.transactions_batch")),
        n.to_string()
    );
    // status reads the tables on the store too.
    let out = txpipe(d, &["status", "--json"]).stdout(Stdio::piped()).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(status["clean"]["version"].as_u64().is_some_and(|v| v >= 1), "{status}");
    clickhouse(&format!("DROP DATABASE {database}"));
}

#[test]
fn the_store_killed_for_10_s_under_score_loses_and_repeats_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, _tables, database) = s3_folder("s3score");
    let topic = unique("s3score");
    let d = dir.path();
    run_ok(txpipe(d, &["produce", "--topic", &topic, "--count", "4000", "--seed", "31"]), "produce");
    run_ok(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    run_ok(txpipe(d, &["train"]), "train");
    let live = [
        spawn(
            txpipe(d, &["produce", "--topic", &topic, "--count", "20000", "--rate", "1000", "--seed", "32"]),
            &d.join("produce.log"),
        ),
        spawn(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "5"]), &d.join("ingest.log")),
    ];
    let log = d.join("score.log");
    let score = spawn(txpipe(d, &["score", "--exit-when-idle", "8"]), &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while clickhouse(&format!("SELECT count() FROM {database}.transactions_realtime")) == "0" {
        assert!(Instant::now() < deadline, "score wrote nothing: {}", log_of(&log));
        std::thread::sleep(Duration::from_millis(100));
    }
    let back_up = kill9_store();
    std::thread::sleep(Duration::from_secs(10));
    drop(back_up);
    for (i, p) in live.into_iter().enumerate() {
        wait_ok(p, if i == 0 { "produce" } else { "ingest" }, Duration::from_secs(180));
    }
    wait_ok(score, "score", Duration::from_secs(180));
    assert!(log_of(&log).contains("reading the table failed; retrying"), "{}", log_of(&log));
    // What came after score's idle exit is scored by the next run.
    run_ok(txpipe(d, &["score", "--exit-when-idle", "2"]), "score after the outage");
    assert_eq!(
        clickhouse(&format!(
            "SELECT count(), uniqExact(transaction_id), countIf(model_version != '') FROM {database}.transactions_serving"
        )),
        "24000\t24000\t24000"
    );
    clickhouse(&format!("DROP DATABASE {database}"));
}

#[test]
fn a_model_directory_on_the_store_is_published_to_reloaded_from_and_read_by_status() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, tables, database) = s3_folder("s3models");
    let d = dir.path();
    let prefix = tables.clean.rsplit_once('/').unwrap().0;
    let models = format!("{prefix}/models/lr_model");
    let config = std::fs::read_to_string(d.join("txpipe.toml")).unwrap();
    std::fs::write(d.join("txpipe.toml"), format!("{config}[models]\ndir = \"{models}\"\n")).unwrap();
    let topic = unique("s3models");
    run_ok(txpipe(d, &["produce", "--topic", &topic, "--count", "4000", "--seed", "61"]), "produce");
    run_ok(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    run_ok(txpipe(d, &["train", "--report-json", "train.json"]), "train");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("train.json")).unwrap()).unwrap();
    assert_eq!(report["published"], "000001", "{report}");
    assert_eq!(report["report_path"], format!("{models}/versions/000001/report.html"), "{report}");
    assert!(!d.join("models").exists(), "nothing of the models on the local disk");

    let log = d.join("score.log");
    let score = spawn(txpipe(d, &["score", "--exit-when-idle", "12"]), &log);
    wait_for_log(&log, "scoring with model model=000001", Duration::from_secs(60));
    run_ok(txpipe(d, &["train"]), "the second training");
    wait_for_log(&log, "scoring with model model=000002", Duration::from_secs(60));
    // Rows that come now are scored by the new model.
    run_ok(txpipe(d, &["produce", "--topic", &topic, "--count", "1000", "--seed", "62"]), "produce more");
    run_ok(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest more");
    wait_ok(score, "score", Duration::from_secs(120));
    assert_eq!(
        clickhouse(&format!(
            "SELECT count(), uniqExact(transaction_id), countIf(model_version = '000002') >= 1000 \
             FROM {database}.transactions_serving"
        )),
        "5000\t5000\t1"
    );
    let out = txpipe(d, &["status", "--json"]).stdout(Stdio::piped()).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let model = &status["model"];
    assert_eq!(model["version"], "000002", "{status}");
    assert_eq!(model["versions_kept"], serde_json::json!(["000001", "000002"]), "{status}");
    assert_eq!(model["last_run"]["outcome"], "published", "{status}");
    clickhouse(&format!("DROP DATABASE {database}"));
}
