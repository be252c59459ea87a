//! Exactly once, process by process: `txpipe ingest` killed with SIGKILL at random moments while
//! `txpipe produce` runs, and two ingest processes sharing a group with one killed midway.
//! Real broker of scripts/services (TXPIPE_TEST_BROKERS), real Delta tables in temp folders.

use std::process::Command;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use txpipe_jobs::produce::ProduceConfig;

#[path = "common/lake.rs"]
mod lake;
use lake::{Tables, check_exactly_once, fresh_topic, kill9, produce, runtime, spawn, wait_ok};

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let rt = runtime();
    let topic = fresh_topic(&rt, "crash", 4);
    let dir = tempfile::tempdir().unwrap();
    let tables = Tables::local(dir.path());
    let config = ProduceConfig {
        count: 60_000,
        rate: 12_000.0,
        seed: 77,
        malformed_rate: 0.02,
        ..ProduceConfig::default()
    };
    let producer = produce(&topic, &config, &dir.path().join("produce.log"));
    let seed: u64 = rand::random();
    eprintln!("kill timing seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for round in 0..4 {
        let ingest =
            spawn(tables.ingest(&topic, &topic, &[]), &dir.path().join(format!("ingest-{round}.log")));
        std::thread::sleep(Duration::from_millis(rng.random_range(700..2_500)));
        kill9(ingest);
    }
    wait_ok(producer, "produce", Duration::from_secs(120));
    // Killed members stay in the group until their session times out (10 s) and may still be
    // handed partitions meanwhile: idle must outlast that, so that the rebalance that evicts
    // them reaches this run.
    let last = spawn(
        tables.ingest(&topic, &topic, &["--exit-when-idle", "12"]),
        &dir.path().join("ingest-last.log"),
    );
    wait_ok(last, "final ingest", Duration::from_secs(180));
    check_exactly_once(&rt, &tables, &config);
}

#[test]
fn two_processes_in_one_group_with_one_killed_midway() {
    let rt = runtime();
    let topic = fresh_topic(&rt, "group", 4);
    let dir = tempfile::tempdir().unwrap();
    let tables = Tables::local(dir.path());
    let config = ProduceConfig {
        count: 40_000,
        rate: 8_000.0,
        seed: 78,
        malformed_rate: 0.02,
        ..ProduceConfig::default()
    };
    let producer = produce(&topic, &config, &dir.path().join("produce.log"));
    let a = spawn(tables.ingest(&topic, &topic, &[]), &dir.path().join("ingest-a.log"));
    let b =
        spawn(tables.ingest(&topic, &topic, &["--exit-when-idle", "15"]), &dir.path().join("ingest-b.log"));
    std::thread::sleep(Duration::from_millis(2_500));
    kill9(a);
    wait_ok(producer, "produce", Duration::from_secs(120));
    // B takes over A's partitions once the group notices A is gone (session timeout, 10 s).
    wait_ok(b, "surviving ingest", Duration::from_secs(180));
    check_exactly_once(&rt, &tables, &config);
}

/// Two members stay; a third joins and leaves every 1.5-3 s while events flow, stopped with
/// SIGTERM, and with SIGKILL every third time. Then one member drains the rest.
#[test]
fn group_churn_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tables = Tables::local(dir.path());
    let config = ProduceConfig {
        count: 100_000,
        rate: 10_000.0,
        seed: 80,
        malformed_rate: 0.01,
        ..ProduceConfig::default()
    };
    // A short flush, as a latency-minded user sets it: many commits to race against.
    lake::group_churn("churn", &tables, dir.path(), &config, "[ingest]\nflush_latency = \"150ms\"\n");
}

#[test]
fn sigterm_commits_what_is_buffered_and_exits_0() {
    let rt = runtime();
    let topic = fresh_topic(&rt, "sigterm", 2);
    let dir = tempfile::tempdir().unwrap();
    let tables = Tables::local(dir.path());
    let config =
        ProduceConfig { count: 3_000, rate: 0.0, seed: 79, malformed_rate: 0.02, ..ProduceConfig::default() };
    wait_ok(produce(&topic, &config, &dir.path().join("produce.log")), "produce", Duration::from_secs(60));
    // A flush latency of an hour: only the signal can cause the commit.
    let settings = dir.path().join("txpipe.toml");
    std::fs::write(&settings, "[ingest]\nflush_latency = \"1h\"\n").unwrap();
    let mut ingest = tables.ingest(&topic, &topic, &[]);
    ingest.arg("--config").arg(&settings);
    let (child, log) = spawn(ingest, &dir.path().join("ingest.log"));
    std::thread::sleep(Duration::from_secs(5));
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    wait_ok((child, log.clone()), "ingest after SIGTERM", Duration::from_secs(30));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("in 1 commits"), "{stderr}");
    check_exactly_once(&rt, &tables, &config);
}
