//! The serving layer on a ClickHouse cluster (`scripts/services up clickhouse-cluster`: two
//! 18.16 servers and ZooKeeper), `[clickhouse] cluster` set:
//!
//! - one shard of two replicas (cluster `txpipe`, TXPIPE_TEST_CLUSTER): score runs while each
//!   replica in turn is killed -9 for 10 s and restarted; every transaction is then once in the
//!   serving view read on each replica;
//! - two shards of one replica (cluster `txpipe_sharded`, TXPIPE_TEST_CLUSTER_SHARDED): the
//!   whole pipeline serves each transaction once, the rows spread over both shards;
//! - an insert sent twice (as a retry after a lost answer sends it) is kept once, through the
//!   Distributed table, on both layouts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use txpipe_connectors::clickhouse::{ClickHouseConfig, Prediction, PredictionRows, Serving, Target};
use txpipe_core::event::Value;
use txpipe_core::schema::Schema;

mod common;
use common::{run_ok, spawn, wait_ok};

/// The faults stop servers of the shared cluster: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The HTTP addresses of the two servers of a cluster (the second: the first's port + 1).
fn servers(var: &str, default_port: u16) -> [String; 2] {
    let first = std::env::var(var).unwrap_or_else(|_| format!("http://127.0.0.1:{default_port}"));
    let (head, port) = first.rsplit_once(':').unwrap();
    let port: u16 = port.trim_end_matches('/').parse().unwrap();
    [first.clone(), format!("{head}:{}", port + 1)]
}

fn replicated() -> [String; 2] {
    servers("TXPIPE_TEST_CLUSTER", 8124)
}

fn sharded() -> [String; 2] {
    servers("TXPIPE_TEST_CLUSTER_SHARDED", 8126)
}

/// A query to one server over HTTP; its text answer, or the error.
fn try_query(server: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "120", server, "--data-binary", sql])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{sql}: {text} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn query(server: &str, sql: &str) -> String {
    try_query(server, sql).unwrap_or_else(|e| panic!("{e}"))
}

fn services_dir() -> PathBuf {
    std::env::var("TXPIPE_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.services"))
}

/// Kills server `n` (1 or 2) of cluster `txpipe` with SIGKILL and waits until it is gone.
fn kill9_server(n: u8) {
    let pidfile = services_dir().join(format!("clickhouse-cluster/txpipe-{n}/clickhouse.pid"));
    let pid: libc::pid_t = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) on the pid the services script recorded for this server.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // SAFETY: signal 0 only asks whether the process is there.
    while unsafe { libc::kill(pid, 0) } == 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cluster_up() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services");
    let status =
        Command::new(script).args(["up", "clickhouse-cluster"]).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "scripts/services up clickhouse-cluster");
}

/// Brings the cluster back up however the test ends, so that the tests after it find it.
struct ClusterBackUp;

impl Drop for ClusterBackUp {
    fn drop(&mut self) {
        cluster_up();
    }
}

/// A folder whose config serves into `cluster` through `server`, a fresh database; the
/// folder and the database's name.
fn folder(name: &str, server: &str, cluster: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("test_{name}_{}", std::process::id());
    std::fs::write(
        dir.path().join("txpipe.toml"),
        format!(
            "[clickhouse]\nurl = \"{server}\"\ndatabase = \"{database}\"\ncluster = \"{cluster}\"\n\
             [ingest]\nflush_rows = 500\n[score]\nmax_files = 1\nstart = \"0\"\n[train]\nforce = true\n"
        ),
    )
    .unwrap();
    (dir, database)
}

fn txpipe(dir: &Path, args: &[&str]) -> Command {
    common::in_folder(dir, args)
}

/// Every transaction once, with a probability and a model version, in the view read on `server`.
fn assert_served_once(server: &str, database: &str, count: u64) {
    let got = query(
        server,
        &format!(
            "SELECT count(), uniqExact(transaction_id), countIf(fraud_probability >= 0 AND fraud_probability <= 1), \
             countIf(model_version != '') FROM {database}.transactions_serving"
        ),
    );
    assert_eq!(got, format!("{count}\t{count}\t{count}\t{count}"), "on {server}");
}

#[test]
fn a_replica_killed_during_score_and_restarted_every_transaction_is_once_on_each_replica() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let [first, second] = replicated();
    let (dir, database) = folder("clrepl", &first, "txpipe");
    let d = dir.path();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-clrepl-{}-{}", std::process::id(), nanos % 1_000_000_000);
    run_ok(txpipe(d, &["produce", "--topic", &topic, "--count", "4000", "--seed", "41"]), "produce");
    run_ok(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    run_ok(txpipe(d, &["train"]), "train");
    let producer = spawn(
        txpipe(d, &["produce", "--topic", &topic, "--count", "30000", "--rate", "1000", "--seed", "42"]),
        &d.join("produce.log"),
    );
    let ingest =
        spawn(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "5"]), &d.join("ingest.log"));
    let log = d.join("score.log");
    let score = spawn(txpipe(d, &["score", "--exit-when-idle", "20"]), &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    // (The database is made by score's start.)
    while try_query(&first, &format!("SELECT count() FROM {database}.transactions_realtime"))
        .ok()
        .is_none_or(|n| n == "0")
    {
        assert!(Instant::now() < deadline, "score wrote nothing: {}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The other replica away: score goes on writing to the one it talks to, which queues the
    // parts for the other; then the one score talks to away: score retries its insert.
    for n in [2, 1] {
        let back_up = ClusterBackUp;
        kill9_server(n);
        std::thread::sleep(Duration::from_secs(10));
        drop(back_up);
    }
    wait_ok(producer, "produce", &d.join("produce.log"));
    wait_ok(ingest, "ingest", &d.join("ingest.log"));
    wait_ok(score, "score", &log);
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("failed; retrying"),
        "the outage shows in score's log"
    );
    run_ok(txpipe(d, &["score", "--exit-when-idle", "2"]), "score after the outages");
    for server in [&first, &second] {
        for table in ["transactions_realtime_local", "transactions_batch_local", "txpipe_score_progress"] {
            query(server, &format!("SYSTEM SYNC REPLICA {database}.{table}"));
        }
        assert_served_once(server, &database, 34_000);
        // Each replica holds every row itself (the view above may read either).
        let local = query(
            server,
            &format!("SELECT uniqExact(transaction_id) FROM {database}.transactions_realtime_local"),
        );
        assert_eq!(local, "34000", "on {server}");
    }
    query(&first, &format!("DROP DATABASE {database} ON CLUSTER txpipe"));
}

#[test]
fn on_two_shards_the_whole_pipeline_serves_each_transaction_once_spread_over_both() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let [first, second] = sharded();
    let (dir, database) = folder("clshard", &first, "txpipe_sharded");
    let d = dir.path();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-clshard-{}-{}", std::process::id(), nanos % 1_000_000_000);
    run_ok(txpipe(d, &["produce", "--topic", &topic, "--count", "6000", "--seed", "43"]), "produce");
    run_ok(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    run_ok(txpipe(d, &["train", "--batch-score"]), "train with batch scoring");
    run_ok(txpipe(d, &["score", "--exit-when-idle", "2"]), "score");
    run_ok(txpipe(d, &["score", "--exit-when-idle", "1"]), "score again (nothing new)");
    for server in [&first, &second] {
        assert_served_once(server, &database, 6000);
    }
    let on = |server: &str, table: &str| -> u64 {
        query(server, &format!("SELECT count() FROM {database}.{table}_local")).parse().unwrap()
    };
    for table in ["transactions_realtime", "transactions_batch"] {
        let (a, b) = (on(&first, table), on(&second, table));
        assert!(a > 0 && b > 0, "{table}: rows on both shards ({a} and {b})");
        assert_eq!(a + b, 6000, "{table}: each row on one shard");
    }
    // Progress is on every server, whole.
    for server in [&first, &second] {
        assert_ne!(query(server, &format!("SELECT count() FROM {database}.txpipe_score_progress")), "0");
    }
    query(&first, &format!("DROP DATABASE {database} ON CLUSTER txpipe_sharded"));
}

/// The same insert twice, as a retry after a lost answer sends it: kept once.
async fn an_insert_sent_twice_is_kept_once(server: &str, cluster: &str, name: &str) {
    let database = format!("test_{name}_{}", std::process::id());
    let config = ClickHouseConfig {
        url: server.to_string(),
        database: database.clone(),
        cluster: cluster.to_string(),
        ..ClickHouseConfig::default()
    };
    let schema = Schema::default_schema();
    let serving = Serving::new(&config, Serving::columns_for(&schema, Some(&[])).unwrap());
    serving.ensure().await.unwrap();
    serving.ensure().await.unwrap();
    let mut rows = PredictionRows::new(Target::Realtime);
    let ids: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
    for id in &ids {
        let fields: [Value<'_>; 0] = [];
        rows.push(
            serving.columns(),
            &Prediction {
                transaction_id: id,
                event_time_us: 1_795_000_000_000_000,
                fields: &fields,
                probability: 0.5,
                label: false,
                reasons: &[],
                explanation: "",
                model_version: "000001",
                scored_at: 1_795_000_000,
                batch_run_id: None,
            },
        );
    }
    let sealed = rows.seal();
    serving.insert(&sealed).await.unwrap();
    serving.insert(&sealed).await.unwrap();
    // Rows as stored (no merge, no grouping): the second insert's blocks were dropped.
    let stored =
        serving.fetch_text(&format!("SELECT count() FROM {database}.transactions_realtime")).await.unwrap();
    assert_eq!(stored, "1000", "{cluster}");
    serving.execute(&format!("DROP DATABASE {database} ON CLUSTER {cluster}")).await.unwrap();
}

#[test]
fn an_insert_sent_twice_is_kept_once_on_both_layouts() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(an_insert_sent_twice_is_kept_once(&replicated()[0], "txpipe", "cldedup1"));
    rt.block_on(an_insert_sent_twice_is_kept_once(&sharded()[0], "txpipe_sharded", "cldedup2"));
}

/// Serving tables made by a run of one server in a database, then a run on the cluster naming
/// the same database: refused with what to do, rather than writing to the old tables on that
/// server alone.
#[test]
fn tables_made_without_the_cluster_are_refused_with_what_to_do() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = replicated()[0].clone();
    let database = format!("test_clold_{}", std::process::id());
    let config = |cluster: &str| ClickHouseConfig {
        url: server.clone(),
        database: database.clone(),
        cluster: cluster.to_string(),
        ..ClickHouseConfig::default()
    };
    let columns = Serving::columns_for(&Schema::default_schema(), Some(&[])).unwrap();
    rt.block_on(async {
        Serving::new(&config(""), columns.clone()).ensure().await.unwrap();
        let err = Serving::new(&config("txpipe"), columns.clone()).ensure().await.unwrap_err();
        assert!(!err.retryable(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{database}.transactions_"))
                && text.contains("made without a cluster")
                && text.contains("[clickhouse] database"),
            "{text}"
        );
        Serving::new(&config(""), columns).execute(&format!("DROP DATABASE {database}")).await.unwrap();
    });
}
