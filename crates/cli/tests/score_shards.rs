//! `txpipe score --shard I/N` against the real services: two shards split one table by Kafka
//! partition, one of them killed with SIGKILL at random moments and restarted while events keep
//! coming; every transaction is then once in `transactions_serving`, and each shard kept its
//! own progress. A model whose account history is not kept by the Kafka key is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};

mod common;
use common::{clickhouse, run_ok, spawn, wait_ok};

/// `txpipe ARGS` in `dir` with its config.
fn txpipe(dir: &Path, args: &[&str]) -> Command {
    common::in_folder(dir, args)
}

/// A folder with a table of 4,000 events (4 partitions, keyed by account) and a model.
fn setup(name: &str, extra: &str) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000);
    let database = format!("test_{name}_{}", std::process::id());
    std::fs::write(
        dir.path().join("txpipe.toml"),
        format!(
            "[clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\n[ingest]\nflush_rows = 500\n\
             [score]\nmax_files = 1\nstart = \"0\"\n[train]\nforce = true\n{extra}",
            common::clickhouse_url()
        ),
    )
    .unwrap();
    run_ok(txpipe(dir.path(), &["produce", "--topic", &topic, "--count", "4000", "--seed", "51"]), "produce");
    run_ok(txpipe(dir.path(), &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    run_ok(txpipe(dir.path(), &["train"]), "train");
    (dir, topic, database)
}

#[test]
fn two_shards_one_killed_at_random_moments_serve_every_transaction_once() {
    let (dir, topic, database) = setup("shards", "");
    let d = dir.path();
    let producer = spawn(
        txpipe(d, &["produce", "--topic", &topic, "--count", "16000", "--rate", "1000", "--seed", "52"]),
        &d.join("produce.log"),
    );
    let ingest =
        spawn(txpipe(d, &["ingest", "--topic", &topic, "--exit-when-idle", "5"]), &d.join("ingest.log"));
    let shard = |i: u32, idle: &str, log: &PathBuf| {
        spawn(txpipe(d, &["score", "--shard", &format!("{i}/2"), "--exit-when-idle", idle]), log)
    };
    let steady_log = d.join("shard-0.log");
    let steady = shard(0, "10", &steady_log);
    let seed: u64 = rand::random();
    eprintln!("kill timing seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for round in 0..5 {
        let mut killed = shard(1, "30", &d.join(format!("shard-1-{round}.log")));
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2500)));
        killed.kill().unwrap(); // SIGKILL
        killed.wait().unwrap();
    }
    wait_ok(producer, "produce", &d.join("produce.log"));
    wait_ok(ingest, "ingest", &d.join("ingest.log"));
    wait_ok(steady, "shard 0", &steady_log);
    for i in [0, 1] {
        run_ok(txpipe(d, &["score", "--shard", &format!("{i}/2"), "--exit-when-idle", "2"]), "the last runs");
    }
    let got = clickhouse(&format!(
        "SELECT count(), uniqExact(transaction_id), countIf(model_version != '') FROM {database}.transactions_serving"
    ));
    assert_eq!(got, "20000\t20000\t20000");
    // Each shard recorded its own progress, under the table's location and its shard.
    let sources = clickhouse(&format!(
        "SELECT arrayStringConcat(groupUniqArray(extract(source, '#shard=.*$')), ',') FROM {database}.txpipe_score_progress"
    ));
    let mut sources: Vec<&str> = sources.split(',').collect();
    sources.sort();
    assert_eq!(sources, ["#shard=0/2", "#shard=1/2"]);
    // status shows each shard, both caught up with the table.
    let out = txpipe(d, &["status", "--json", "--topic", &topic]).stdout(Stdio::piped()).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let score = &status["score"];
    let newest = score["table_version"].as_u64().unwrap();
    assert_eq!(score["shards"]["0/2"].as_u64(), Some(newest), "{status}");
    assert_eq!(score["shards"]["1/2"].as_u64(), Some(newest), "{status}");
    assert_eq!(score["complete_through"].as_u64(), Some(newest), "{status}");
    clickhouse(&format!("DROP DATABASE {database}"));
}

#[test]
fn two_run_processes_each_ingesting_and_scoring_a_shard_serve_every_transaction_once() {
    let (dir, topic, database) = setup("runshards", "");
    let d = dir.path();
    let producer = spawn(
        txpipe(d, &["produce", "--topic", &topic, "--count", "6000", "--rate", "1500", "--seed", "53"]),
        &d.join("produce.log"),
    );
    // Two machines' worth: each process ingests what the group gives it and scores its shard.
    let runs: Vec<_> = (0..2)
        .map(|i| {
            let log = d.join(format!("run-{i}.log"));
            let shard = format!("{i}/2");
            (
                spawn(
                    txpipe(d, &["run", "--topic", &topic, "--shard", &shard, "--exit-when-idle", "4"]),
                    &log,
                ),
                log,
            )
        })
        .collect();
    wait_ok(producer, "produce", &d.join("produce.log"));
    for (i, (run, log)) in runs.into_iter().enumerate() {
        wait_ok(run, &format!("run {i}"), &log);
    }
    // Each run scored as its shard: progress under the table's location and the shard.
    let sources = clickhouse(&format!(
        "SELECT arrayStringConcat(arraySort(groupUniqArray(extract(source, '#shard=.*$'))), ',') \
         FROM {database}.txpipe_score_progress"
    ));
    assert_eq!(sources, "#shard=0/2,#shard=1/2");
    // One run may stop before the other's ingest made its last commit: the shards catch up.
    for i in [0, 1] {
        run_ok(txpipe(d, &["score", "--shard", &format!("{i}/2"), "--exit-when-idle", "0"]), "the last runs");
    }
    let got = clickhouse(&format!(
        "SELECT count(), uniqExact(transaction_id), countIf(model_version != '') FROM {database}.transactions_serving"
    ));
    assert_eq!(got, "10000\t10000\t10000");
    clickhouse(&format!("DROP DATABASE {database}"));
}

#[test]
fn a_shard_refuses_a_model_whose_history_is_not_kept_by_the_kafka_key() {
    let (dir, _topic, database) = setup(
        "shardkey",
        "[features.history]\naccount_field = \"merchant_category\"\ncount_in_window = true\n",
    );
    let out = txpipe(dir.path(), &["score", "--shard", "0/2", "--exit-when-idle", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("score.shard = 0/2")
            && err.contains("`merchant_category`")
            && err.contains("`account_id`"),
        "{err}"
    );
    // Without --shard the same model scores.
    run_ok(txpipe(dir.path(), &["score", "--exit-when-idle", "1"]), "score of the whole table");
    let _ = Command::new("clickhouse-client")
        .args(["--query", &format!("DROP DATABASE IF EXISTS {database}")])
        .status();
}
