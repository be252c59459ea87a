//! A whole deployment across "machines": every process runs from a working directory of its
//! own, with a config of its own, and they share only what machines share — the Kafka topic,
//! the Delta tables on the S3 store (`scripts/services up s3`), the ClickHouse cluster
//! (`scripts/services up clickhouse-cluster`: one shard of two replicas, each process talking
//! to one of them) and the model directory, on the S3 store beside the tables: no folder is
//! shared.
//!
//! Two ingest processes in one consumer group (one killed -9 mid-run and started again), a
//! train with batch scoring while events flow, and two score shards, each writing through a
//! replica of its own. Then every Kafka position is once in the tables, and every transaction
//! once in the serving view, read on each replica.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use txpipe_jobs::produce::ProduceConfig;

#[path = "common/lake.rs"]
mod lake;
use lake::{Tables, check_exactly_once, fresh_topic, kill9, produce, runtime, s3_tables, spawn, wait_ok};

/// The HTTP addresses of the two replicas of cluster `txpipe` (the second: the first's port + 1).
fn replicas() -> [String; 2] {
    let first = std::env::var("TXPIPE_TEST_CLUSTER").unwrap_or_else(|_| "http://127.0.0.1:8124".into());
    let (head, port) = first.rsplit_once(':').unwrap();
    let port: u16 = port.trim_end_matches('/').parse().unwrap();
    [first.clone(), format!("{head}:{}", port + 1)]
}

fn query(server: &str, sql: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "120", server, "--data-binary", sql])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "{sql}: {text} {}", String::from_utf8_lossy(&out.stderr));
    text
}

/// One "machine": a working directory whose config names the shared tables, the replica it
/// talks to and the model directory on the store; its state (score's state file) stays in it.
struct Machine {
    dir: PathBuf,
}

impl Machine {
    fn new(root: &Path, name: &str, tables: &Tables, server: &str, database: &str, models: &str) -> Machine {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let options: String = tables.env.iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
        std::fs::write(
            dir.join("txpipe.toml"),
            format!(
                "[tables]\nclean = \"{}\"\nquarantine = \"{}\"\n[tables.storage_options]\n{options}\
                 [clickhouse]\nurl = \"{server}\"\ndatabase = \"{database}\"\ncluster = \"txpipe\"\n\
                 [models]\ndir = \"{}\"\n[ingest]\nflush_rows = 1000\n\
                 [score]\nmax_files = 2\nstart = \"0\"\n[train]\nforce = true\n",
                tables.clean, tables.quarantine, models
            ),
        )
        .unwrap();
        Machine { dir }
    }

    fn txpipe(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_txpipe"));
        c.current_dir(&self.dir)
            .args(args)
            .args(["--config", "txpipe.toml", "--brokers", &lake::brokers()])
            .stdout(Stdio::null());
        c
    }

    fn start(&self, args: &[&str], log: &str) -> (Child, PathBuf) {
        spawn(self.txpipe(args), &self.dir.join(log))
    }
}

/// Waits (up to 60 s) until the clean table holds at least `rows` rows.
fn wait_for_rows(rt: &tokio::runtime::Runtime, tables: &Tables, rows: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = rt.block_on(async {
            let Ok(table) = txpipe_connectors::delta::open_existing(&tables.clean, &tables.options()).await
            else {
                return 0;
            };
            let batches = txpipe_connectors::delta::read_rows(&table).await.unwrap_or_default();
            batches.iter().map(|b| b.num_rows()).sum::<usize>()
        });
        if have >= rows {
            return;
        }
        assert!(Instant::now() < deadline, "the clean table has {have} rows, not {rows}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn ingest_train_and_score_shards_on_separate_machines_serve_every_transaction_once_on_every_replica() {
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let tables = s3_tables("deploy");
    let topic = fresh_topic(&rt, "deploy", 4);
    let database = format!("test_deploy_{}", std::process::id());
    let models = format!("{}/models/lr_model", tables.clean.rsplit_once('/').unwrap().0);
    let [first, second] = replicas();
    let machine =
        |name: &str, server: &str| Machine::new(root.path(), name, &tables, server, &database, &models);
    let (ingest_a, ingest_b, trainer) =
        (machine("ingest-a", &first), machine("ingest-b", &second), machine("train", &first));
    let shards = [machine("score-0", &first), machine("score-1", &second)];

    let config = ProduceConfig {
        count: 16_000,
        rate: 1_600.0,
        seed: 23,
        malformed_rate: 0.02,
        ..ProduceConfig::default()
    };
    let producer = produce(&topic, &config, &root.path().join("produce.log"));
    let ingest = |m: &Machine, log: &str, idle: &str| {
        m.start(&["ingest", "--topic", &topic, "--group-id", &topic, "--exit-when-idle", idle], log)
    };
    let a = ingest(&ingest_a, "ingest.log", "8");
    let b = ingest(&ingest_b, "ingest.log", "8");
    // The shards wait for a model, then score the table from its first version.
    let scoring: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.start(&["score", "--shard", &format!("{i}/2"), "--exit-when-idle", "12"], "score.log")
        })
        .collect();

    // Train (and batch-score the history) on what is in the table by then, while events flow.
    wait_for_rows(&rt, &tables, 4_000);
    let out = trainer.txpipe(&["train", "--batch-score"]).output().unwrap();
    assert!(out.status.success(), "train: {}", String::from_utf8_lossy(&out.stderr));

    // A machine lost: ingest b killed -9 mid-run, then started again.
    kill9(b);
    std::thread::sleep(Duration::from_secs(2));
    let b = ingest(&ingest_b, "ingest-again.log", "8");

    wait_ok(producer, "produce", Duration::from_secs(120));
    wait_ok(a, "ingest a", Duration::from_secs(120));
    wait_ok(b, "ingest b", Duration::from_secs(120));
    // The killed member's partitions go to the group once its session times out (10 s): one
    // last run drains whatever is left.
    wait_ok(ingest(&ingest_a, "ingest-last.log", "12"), "the last ingest", Duration::from_secs(180));
    for (i, s) in scoring.into_iter().enumerate() {
        wait_ok(s, &format!("score shard {i}"), Duration::from_secs(180));
    }
    for (i, m) in shards.iter().enumerate() {
        let out =
            m.txpipe(&["score", "--shard", &format!("{i}/2"), "--exit-when-idle", "0"]).output().unwrap();
        assert!(
            out.status.success(),
            "the last score of shard {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    check_exactly_once(&rt, &tables, &config);
    let (valid, _) = lake::expected(&config);
    let n = valid.len();
    for server in [&first, &second] {
        for table in ["transactions_realtime_local", "transactions_batch_local", "txpipe_score_progress"] {
            query(server, &format!("SYSTEM SYNC REPLICA {database}.{table}"));
        }
        assert_eq!(
            query(
                server,
                &format!(
                    "SELECT count(), uniqExact(transaction_id), countIf(model_version != '') \
                     FROM {database}.transactions_serving"
                )
            ),
            format!("{n}\t{n}\t{n}"),
            "the serving view on {server}"
        );
        // Each replica holds every row itself (one shard of two replicas).
        assert_eq!(
            query(
                server,
                &format!("SELECT uniqExact(transaction_id) FROM {database}.transactions_realtime_local")
            ),
            n.to_string(),
            "the realtime rows kept on {server}"
        );
    }
    // Both shards scored, each its own part of the table.
    let sources = query(
        &first,
        &format!(
            "SELECT arrayStringConcat(arraySort(groupUniqArray(source)), ',') FROM {database}.txpipe_score_progress"
        ),
    );
    assert_eq!(sources, format!("{0}#shard=0/2,{0}#shard=1/2", tables.clean));
    query(&first, &format!("DROP DATABASE {database} ON CLUSTER txpipe"));
}
