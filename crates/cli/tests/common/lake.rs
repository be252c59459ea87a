//! Exactly-once checks of ingest, shared by the tests on a local disk and on the S3 store:
//! produce with `txpipe produce`, run `txpipe ingest` processes, stop them (SIGTERM, SIGKILL),
//! and check both tables: every valid id once in the clean table, every malformed event once in
//! quarantine, every Kafka position once in the two together.
//!
//! A test file takes it with `#[path = "common/lake.rs"] mod lake;`.

#![allow(dead_code)] // each test file uses its own part

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use txpipe_connectors::delta::arrow::array::{Array, Int32Array, Int64Array};
use txpipe_connectors::kafka::{self, KafkaConfig};
use txpipe_core::generator::Generator;
use txpipe_core::schema::Schema;
use txpipe_jobs::produce::ProduceConfig;

pub fn brokers() -> String {
    std::env::var("TXPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn txpipe(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_txpipe"));
    c.args(args).arg("--brokers").arg(brokers()).stdout(Stdio::null());
    c
}

/// Starts a process with its stderr in a log file (read back when it fails).
pub fn spawn(mut c: Command, log: &Path) -> (Child, PathBuf) {
    let file = std::fs::File::create(log).unwrap();
    (c.stderr(file).spawn().unwrap(), log.to_path_buf())
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A name no other test or run shares.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("test-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

pub fn fresh_topic(rt: &tokio::runtime::Runtime, name: &str, partitions: i32) -> String {
    let topic = unique(name);
    let config = KafkaConfig { brokers: brokers(), topic: topic.clone(), ..KafkaConfig::default() };
    rt.block_on(kafka::create_topic(&config, &topic, partitions)).unwrap();
    topic
}

/// The two tables of one test: local paths or object-store URLs, with the storage options the
/// processes get in their environment.
pub struct Tables {
    pub clean: String,
    pub quarantine: String,
    pub env: Vec<(String, String)>,
}

/// The storage options that reach the S3 store of `scripts/services up s3` (TXPIPE_TEST_S3
/// overrides the endpoint).
pub fn s3_options() -> Vec<(String, String)> {
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
    let endpoint = std::env::var("TXPIPE_TEST_S3")
        .unwrap_or_else(|_| format!("http://127.0.0.1:{}", env("TXPIPE_S3_PORT", "8333")));
    vec![
        ("AWS_ENDPOINT_URL".into(), endpoint),
        ("AWS_ACCESS_KEY_ID".into(), env("AWS_ACCESS_KEY_ID", "txpipe")),
        ("AWS_SECRET_ACCESS_KEY".into(), env("AWS_SECRET_ACCESS_KEY", "txpipe-secret")),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
    ]
}

/// Two tables under a fresh prefix of the bucket; the processes get the options in their
/// environment.
pub fn s3_tables(name: &str) -> Tables {
    let bucket = std::env::var("TXPIPE_S3_BUCKET").unwrap_or_else(|_| "lake".into());
    let prefix = format!("s3://{bucket}/{}", unique(name));
    Tables { clean: format!("{prefix}/clean"), quarantine: format!("{prefix}/quarantine"), env: s3_options() }
}

impl Tables {
    /// Tables in a local folder.
    pub fn local(dir: &Path) -> Tables {
        let at = |name: &str| dir.join(name).to_string_lossy().into_owned();
        Tables { clean: at("clean"), quarantine: at("quarantine"), env: Vec::new() }
    }

    pub fn ingest(&self, topic: &str, group: &str, extra: &[&str]) -> Command {
        let mut c = txpipe(&["ingest", "--topic", topic, "--group-id", group]);
        c.args(["--table", &self.clean, "--quarantine-table", &self.quarantine]).args(extra);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn options(&self) -> BTreeMap<String, String> {
        self.env.iter().cloned().collect()
    }
}

pub fn produce(topic: &str, config: &ProduceConfig, log: &Path) -> (Child, PathBuf) {
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
pub fn expected(config: &ProduceConfig) -> (Vec<String>, usize) {
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

pub fn wait_ok((mut child, log): (Child, PathBuf), what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(status.success(), "{what} failed ({status}): {err}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "{what} did not finish within {timeout:?}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn kill9((mut child, _): (Child, PathBuf)) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// SIGTERM, then waits (up to `within`) for a successful exit.
pub fn sigterm_within((mut child, log): (Child, PathBuf), within: Duration) {
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "ingest did not stop within {within:?} of SIGTERM: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "ingest after SIGTERM: {status}: {err}");
}

pub fn sigterm(child: (Child, PathBuf)) {
    sigterm_within(child, Duration::from_secs(60))
}

/// Checks both tables: every valid id once, and exactly the malformed count in quarantine, each
/// Kafka message once.
pub fn check_exactly_once(rt: &tokio::runtime::Runtime, tables: &Tables, config: &ProduceConfig) {
    let (valid, bad) = expected(config);
    let options = tables.options();
    let read = |location: &str| {
        rt.block_on(async {
            let table = txpipe_connectors::delta::open_existing(location, &options).await.unwrap();
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
    let mut per_partition: BTreeMap<i32, (i64, i64)> = Default::default();
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

/// Two members stay; a third joins and leaves every 1.5-3 s while events flow, stopped with
/// SIGTERM, and with SIGKILL every third time. Then one member drains the rest, and both tables
/// are checked. `settings`: the members' config file.
pub fn group_churn(name: &str, tables: &Tables, dir: &Path, config: &ProduceConfig, settings: &str) {
    let rt = runtime();
    let topic = fresh_topic(&rt, name, 8);
    let producer = produce(&topic, config, &dir.join("produce.log"));
    let file = dir.join("txpipe.toml");
    std::fs::write(&file, settings).unwrap();
    let member = |name: &str, extra: &[&str]| {
        let mut c = tables.ingest(&topic, &topic, extra);
        c.arg("--config").arg(&file);
        spawn(c, &dir.join(format!("ingest-{name}.log")))
    };
    let stay_a = member("a", &[]);
    let stay_b = member("b", &[]);
    let seed: u64 = rand::random();
    eprintln!("churn timing seed {seed}");
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    for round in 0..6 {
        let third = member(&format!("c{round}"), &[]);
        std::thread::sleep(Duration::from_millis(rand::Rng::random_range(&mut rng, 1_500..3_000)));
        if round % 3 == 2 { kill9(third) } else { sigterm(third) }
    }
    wait_ok(producer, "produce", Duration::from_secs(120));
    sigterm(stay_a);
    sigterm(stay_b);
    // Killed members stay in the group until their session times out (10 s).
    let last = member("last", &["--exit-when-idle", "12"]);
    wait_ok(last, "final ingest", Duration::from_secs(180));
    check_exactly_once(&rt, tables, config);
}
