//! Exactly once, process by process: `txpipe ingest` killed with SIGKILL at random moments while
//! `txpipe produce` runs, and two ingest processes sharing a group with one killed midway.
//! Real broker of scripts/services (TXPIPE_TEST_BROKERS), real Delta tables in temp folders.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use txpipe_connectors::delta::arrow::array::{Array, Int32Array, Int64Array};
use txpipe_connectors::kafka::{self, KafkaConfig};
use txpipe_core::generator::Generator;
use txpipe_core::schema::Schema;
use txpipe_jobs::produce::ProduceConfig;

fn brokers() -> String {
    std::env::var("TXPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn txpipe(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_txpipe"));
    c.args(args).arg("--brokers").arg(brokers()).stdout(Stdio::null());
    c
}

/// Starts a process with its stderr in a log file (read back when it fails).
fn spawn(mut c: Command, log: &Path) -> (Child, PathBuf) {
    let file = std::fs::File::create(log).unwrap();
    (c.stderr(file).spawn().unwrap(), log.to_path_buf())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn fresh_topic(rt: &tokio::runtime::Runtime, name: &str, partitions: i32) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000);
    let config = KafkaConfig { brokers: brokers(), topic: topic.clone(), ..KafkaConfig::default() };
    rt.block_on(kafka::create_topic(&config, &topic, partitions)).unwrap();
    topic
}

struct Tables {
    clean: PathBuf,
    quarantine: PathBuf,
}

impl Tables {
    fn new(dir: &Path) -> Tables {
        Tables { clean: dir.join("clean"), quarantine: dir.join("quarantine") }
    }

    fn ingest(&self, topic: &str, group: &str, extra: &[&str]) -> Command {
        let mut c = txpipe(&["ingest", "--topic", topic, "--group-id", group]);
        c.arg("--table").arg(&self.clean).arg("--quarantine-table").arg(&self.quarantine).args(extra);
        c
    }
}

fn produce(topic: &str, config: &ProduceConfig, log: &Path) -> (Child, PathBuf) {
    let (count, rate, seed, bad) = (
        config.count.to_string(),
        config.rate.to_string(),
        config.seed.to_string(),
        config.malformed_rate.to_string(),
    );
    let c = txpipe(&[
        "produce",
        "--topic",
        topic,
        "--count",
        &count,
        "--rate",
        &rate,
        "--seed",
        &seed,
        "--malformed-rate",
        &bad,
    ]);
    spawn(c, log)
}

/// Valid ids and the number of malformed events that `produce` sends for these settings.
fn expected(config: &ProduceConfig) -> (Vec<String>, usize) {
    let mut g = Generator::new(&Schema::default_schema(), config.validate().unwrap().generator).unwrap();
    let (mut p, mut k) = (Vec::new(), Vec::new());
    let (mut valid, mut bad) = (Vec::new(), 0);
    for _ in 0..config.count {
        let t = g.next_into(&mut p, &mut k);
        match t.malformed {
            None => valid.push(t.transaction_id),
            Some(_) => bad += 1,
        }
    }
    valid.sort();
    (valid, bad)
}

fn wait_ok((mut child, log): (Child, PathBuf), what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(status.success(), "{what} failed ({status}): {err}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill9((mut child, _): (Child, PathBuf)) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Checks both tables: every valid id once, and exactly the malformed count in quarantine, each
/// Kafka message once.
fn check_exactly_once(rt: &tokio::runtime::Runtime, tables: &Tables, config: &ProduceConfig) {
    let (valid, bad) = expected(config);
    let read = |path: &Path| {
        rt.block_on(async {
            let table = deltalake::open_table(url::Url::from_directory_path(path).unwrap()).await.unwrap();
            txpipe_connectors::delta::read_rows(&table).await.unwrap()
        })
    };
    let clean = read(&tables.clean);
    let mut ids = txpipe_connectors::delta::string_values(&clean, "transaction_id").unwrap();
    ids.sort();
    let dups = ids.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dups, 0, "duplicated transaction ids in the clean table");
    let missing = valid.iter().filter(|id| ids.binary_search(id).is_err()).count();
    assert_eq!(missing, 0, "valid transactions missing from the clean table");
    assert_eq!(ids, valid);
    let quarantine = read(&tables.quarantine);
    let mut coordinates = HashSet::new();
    for b in &quarantine {
        let p = b.column_by_name("kafka_partition").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
        let o = b.column_by_name("kafka_offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            assert!(coordinates.insert((p.value(i), o.value(i))), "a quarantined message twice");
        }
    }
    assert_eq!(coordinates.len(), bad, "every malformed event quarantined once");
    // And by Kafka position: every one once in clean ∪ quarantine, none missing.
    for b in &clean {
        let p = b.column_by_name("kafka_partition").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
        let o = b.column_by_name("kafka_offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            assert!(coordinates.insert((p.value(i), o.value(i))), "a position in both tables or twice");
        }
    }
    let mut per_partition: std::collections::BTreeMap<i32, (i64, i64)> = Default::default();
    for &(p, o) in &coordinates {
        let e = per_partition.entry(p).or_insert((0, -1));
        e.0 += 1;
        e.1 = e.1.max(o);
    }
    for (p, (count, max)) in per_partition {
        assert_eq!(count, max + 1, "partition {p}: a fresh topic's offsets 0..={max} are all there");
    }
    assert_eq!(coordinates.len(), config.count as usize);
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let rt = runtime();
    let topic = fresh_topic(&rt, "crash", 4);
    let dir = tempfile::tempdir().unwrap();
    let tables = Tables::new(dir.path());
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
    let tables = Tables::new(dir.path());
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

fn sigterm((mut child, log): (Child, PathBuf)) {
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ingest did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "ingest after SIGTERM: {status}: {err}");
}

/// Two members stay; a third joins and leaves every 1.5-3 s while events flow, stopped with
/// SIGTERM, and with SIGKILL every third time. Then one member drains the rest.
#[test]
fn group_churn_loses_and_duplicates_nothing() {
    let rt = runtime();
    let topic = fresh_topic(&rt, "churn", 8);
    let dir = tempfile::tempdir().unwrap();
    let tables = Tables::new(dir.path());
    let config = ProduceConfig {
        count: 100_000,
        rate: 10_000.0,
        seed: 80,
        malformed_rate: 0.01,
        ..ProduceConfig::default()
    };
    let producer = produce(&topic, &config, &dir.path().join("produce.log"));
    // A short flush, as a latency-minded user sets it: many commits to race against.
    let settings = dir.path().join("txpipe.toml");
    std::fs::write(&settings, "[ingest]\nflush_latency = \"150ms\"\n").unwrap();
    let member = |name: &str, extra: &[&str]| {
        let mut c = tables.ingest(&topic, &topic, extra);
        c.arg("--config").arg(&settings);
        spawn(c, &dir.path().join(format!("ingest-{name}.log")))
    };
    let stay_a = member("a", &[]);
    let stay_b = member("b", &[]);
    let seed: u64 = rand::random();
    eprintln!("churn timing seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for round in 0..6 {
        let third = member(&format!("c{round}"), &[]);
        std::thread::sleep(Duration::from_millis(rng.random_range(1_500..3_000)));
        if round % 3 == 2 { kill9(third) } else { sigterm(third) }
    }
    wait_ok(producer, "produce", Duration::from_secs(120));
    sigterm(stay_a);
    sigterm(stay_b);
    // Killed members stay in the group until their session times out (10 s).
    let last = member("last", &["--exit-when-idle", "12"]);
    wait_ok(last, "final ingest", Duration::from_secs(180));
    check_exactly_once(&rt, &tables, &config);
}

#[test]
fn sigterm_commits_what_is_buffered_and_exits_0() {
    let rt = runtime();
    let topic = fresh_topic(&rt, "sigterm", 2);
    let dir = tempfile::tempdir().unwrap();
    let tables = Tables::new(dir.path());
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
