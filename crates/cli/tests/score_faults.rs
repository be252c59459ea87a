//! `txpipe score` under faults, process by process, against the real services of
//! `scripts/services`: killed with SIGKILL at random moments and restarted, and ClickHouse
//! stopped for 30 s in the middle of a run, or while score is asked to stop (SIGTERM, which it
//! then obeys at once). Either way, every transaction of the table is in `transactions_serving`
//! exactly once, with a probability and a model version.
//!
//! The table is written by `txpipe produce` and `txpipe ingest` (commits of 500 rows), the
//! model by `txpipe train`; while score runs, more events are produced at 1,000 a second and
//! ingested, and score reads one data file per micro-batch from version 0, so a run holds many
//! inserts and progress records to be cut between.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// The faults stop the shared ClickHouse: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn brokers() -> String {
    std::env::var("TXPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn clickhouse_url() -> String {
    std::env::var("TXPIPE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

fn txpipe(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_txpipe"));
    c.current_dir(dir)
        .args(args)
        .args(["--config", "txpipe.toml", "--brokers", &brokers(), "--clickhouse-url", &clickhouse_url()])
        .stdout(Stdio::null());
    c
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {err}");
    err
}

fn spawn(mut c: Command, log: &Path) -> Child {
    c.stderr(std::fs::File::create(log).unwrap()).spawn().unwrap()
}

/// A folder with a table of 4,000 events and a model, then `count` more events produced at
/// 1,000 a second and ingested (commits of 500) while the test runs; the folder, the database to
/// score into, and the producer and ingest processes.
fn setup(name: &str, count: u64) -> (tempfile::TempDir, String, Vec<Child>) {
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000);
    let database = format!("test_{name}_{}", std::process::id());
    std::fs::write(
        dir.path().join("txpipe.toml"),
        format!(
            "[clickhouse]\ndatabase = \"{database}\"\n[ingest]\nflush_rows = 500\n\
             [score]\nmax_files = 1\nstart = \"0\"\n[train]\nforce = true\n"
        ),
    )
    .unwrap();
    run_ok(txpipe(dir.path(), &["produce", "--topic", &topic, "--count", "4000", "--seed", "21"]), "produce");
    run_ok(txpipe(dir.path(), &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    run_ok(txpipe(dir.path(), &["train"]), "train");
    let count = count.to_string();
    let live = vec![
        spawn(
            txpipe(
                dir.path(),
                &["produce", "--topic", &topic, "--count", &count, "--rate", "1000", "--seed", "22"],
            ),
            &dir.path().join("produce.log"),
        ),
        spawn(
            txpipe(dir.path(), &["ingest", "--topic", &topic, "--exit-when-idle", "4"]),
            &dir.path().join("ingest.log"),
        ),
    ];
    (dir, database, live)
}

fn wait_all(children: Vec<Child>, what: &str) {
    for mut c in children {
        let status = c.wait().unwrap();
        assert!(status.success(), "{what} failed: {status}");
    }
}

fn clickhouse(sql: &str) -> String {
    let out = Command::new("clickhouse-client").args(["--query", sql]).output().unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every transaction once in the view, each with a probability and a model version.
fn assert_served_once(database: &str, count: u64) {
    let got = clickhouse(&format!(
        "SELECT count(), uniqExact(transaction_id), countIf(fraud_probability >= 0 AND fraud_probability <= 1), \
         countIf(model_version != '') FROM {database}.transactions_serving"
    ));
    assert_eq!(got, format!("{count}\t{count}\t{count}\t{count}"));
}

/// Waits (up to 30 s) until score has written rows into the database's realtime table.
fn wait_until_score_wrote(database: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while clickhouse(&format!("SELECT count() FROM {database}.transactions_realtime")) == "0" {
        assert!(Instant::now() < deadline, "score wrote nothing");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn services(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services");
    let status = Command::new(script).args(args).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "scripts/services {args:?}");
}

fn score(dir: &Path, idle: &str) -> Command {
    txpipe(dir, &["score", "--exit-when-idle", idle])
}

#[test]
fn killed_at_random_moments_and_restarted_it_serves_every_transaction_once() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, database, live) = setup("scorekill", 10_000);
    let log: PathBuf = dir.path().join("score.log");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for _ in 0..6 {
        let mut child = spawn(score(dir.path(), "30"), &log);
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    wait_all(live, "produce and ingest");
    run_ok(score(dir.path(), "2"), "the last score run");
    assert_served_once(&database, 14_000);
    clickhouse(&format!("DROP DATABASE {database}"));
}

#[test]
fn clickhouse_stopped_for_30_s_mid_run_loses_and_duplicates_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, database, live) = setup("scoredown", 40_000);
    let log: PathBuf = dir.path().join("score.log");
    let mut child = spawn(score(dir.path(), "6"), &log);
    // Down once score has written rows, while events keep coming.
    wait_until_score_wrote(&database);
    services(&["down", "clickhouse"]);
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    services(&["up", "clickhouse"]);
    eprintln!("clickhouse was down for {:.1} s", down_at.elapsed().as_secs_f64());
    wait_all(live, "produce and ingest");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "score did not finish after ClickHouse came back");
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("failed; retrying"), "the outage shows in the log: {err}");
    if std::env::var_os("TXPIPE_TEST_SHOW_LOGS").is_some() {
        eprintln!("{err}\n{}", std::fs::read_to_string(dir.path().join("ingest.log")).unwrap());
    }
    assert_served_once(&database, 44_000);
    clickhouse(&format!("DROP DATABASE {database}"));
}

/// Brings ClickHouse back up however the test ends, so that the tests after it find it.
struct ClickHouseBackUp;

impl Drop for ClickHouseBackUp {
    fn drop(&mut self) {
        services(&["up", "clickhouse"]);
    }
}

#[test]
fn sigterm_while_clickhouse_is_down_stops_score_and_a_restart_serves_every_transaction_once() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, database, live) = setup("scoreterm", 40_000);
    let log: PathBuf = dir.path().join("score.log");
    let mut child = spawn(score(dir.path(), "30"), &log);
    wait_until_score_wrote(&database);
    let back_up = ClickHouseBackUp;
    services(&["down", "clickhouse"]);
    // Score is retrying an insert (events keep coming) when the stop is asked: a retry logged
    // after ClickHouse is down (its shutdown may have failed one already).
    let retries = || std::fs::read_to_string(&log).unwrap().matches("failed; retrying").count();
    let before = retries();
    let deadline = Instant::now() + Duration::from_secs(60);
    while retries() <= before {
        assert!(Instant::now() < deadline, "score never retried: {}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on the pid of a child this test spawned and has not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    // It stops while ClickHouse is still down, rather than waiting for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            panic!("score did not stop on SIGTERM while ClickHouse was down");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("stopped as asked while ClickHouse was unreachable"), "{err}");
    drop(back_up);
    wait_all(live, "produce and ingest");
    run_ok(score(dir.path(), "2"), "score after the outage");
    assert_served_once(&database, 44_000);
    clickhouse(&format!("DROP DATABASE {database}"));
}
