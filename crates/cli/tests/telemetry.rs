//! `/metrics`, `/livez` and `/readyz` of running jobs, against the real services of
//! `scripts/services`. The metrics text is parsed by Python's `prometheus_client` parser
//! (scripts/check_metrics.py), not by txpipe: every metric of the job's list is present, and the
//! counters agree with the job's own report at the end. Score's readiness follows ClickHouse
//! down and up while its liveness holds, and nothing is lost.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use txpipe_jobs::telemetry::names::{self, Kind};

/// The score test stops the shared ClickHouse: one test at a time of those that use it.
static SERIAL: Mutex<()> = Mutex::new(());

fn brokers() -> String {
    std::env::var("TXPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn clickhouse_url() -> String {
    std::env::var("TXPIPE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

fn python() -> String {
    std::env::var("TXPIPE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TXPIPE_TEST_PYTHON is not set: run scripts/test, which makes a venv with prometheus_client")
    })
}

fn txpipe(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_txpipe"));
    c.current_dir(dir)
        .args(args)
        .args(["--config", "txpipe.toml", "--brokers", &brokers(), "--clickhouse-url", &clickhouse_url()])
        .stdout(Stdio::null());
    c
}

fn run_ok(mut c: Command, what: &str) {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn spawn(mut c: Command, log: &Path) -> Child {
    c.stderr(std::fs::File::create(log).unwrap()).spawn().unwrap()
}

/// A port free at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` on 127.0.0.1:`port`: (status, body); None while nothing listens there.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Samples of a scrape, as Python's Prometheus parser reads them.
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    families: BTreeMap<String, String>,
}

impl Scrape {
    fn take(port: u16) -> Option<Scrape> {
        let (status, text) = get(port, "/metrics")?;
        assert_eq!(status, 200, "{text}");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/check_metrics.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused the text: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let samples = parsed["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                (s["name"].as_str().unwrap().to_string(), labels, s["value"].as_f64().unwrap())
            })
            .collect();
        let families = parsed["families"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        Some(Scrape { samples, families })
    }

    /// The sum of a metric's samples over all its labels (None: absent).
    fn sum(&self, name: &str) -> Option<f64> {
        let found: Vec<f64> = self.samples.iter().filter(|(n, _, _)| n == name).map(|(_, _, v)| *v).collect();
        (!found.is_empty()).then(|| found.iter().sum())
    }

    fn value(&self, name: &str, label: (&str, &str)) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && l.get(label.0).map(String::as_str) == Some(label.1))
            .map(|(_, _, v)| *v)
    }

    /// The catalogue's metrics of `job` missing from the scrape, or exposed with another type.
    fn missing(&self, job: &str) -> Vec<String> {
        let mut missing = Vec::new();
        for m in names::ALL.iter().filter(|m| m.job == job || m.job == "process") {
            let (sample, family, kind) = match m.kind {
                Kind::Counter => {
                    (m.name.to_string(), m.name.trim_end_matches("_total").to_string(), "counter")
                }
                Kind::Gauge => (m.name.to_string(), m.name.to_string(), "gauge"),
                Kind::Histogram => (format!("{}_count", m.name), m.name.to_string(), "histogram"),
            };
            let present = self.samples.iter().any(|(n, _, _)| *n == sample);
            if !present || self.families.get(&family).map(String::as_str) != Some(kind) {
                missing.push(format!("{} ({kind})", m.name));
            }
        }
        missing
    }
}

/// Scrapes until `done` holds (up to `limit`); the last scrape.
fn scrape_until(port: u16, limit: Duration, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = Scrape::take(port)
            && done(&s)
        {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Polls `path` until it answers `status` (up to `limit`); the body.
fn until_status(port: u16, path: &str, status: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let got = get(port, path);
        if let Some((s, body)) = &got
            && *s == status
        {
            return body.clone();
        }
        assert!(Instant::now() < deadline, "{path}: not {status} within {limit:?} (last: {got:?})");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("test-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn ingest_exports_every_metric_and_its_counters_agree_with_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("metrics-ingest");
    std::fs::write(dir.path().join("txpipe.toml"), "[ingest]\nflush_rows = 2000\n").unwrap();
    let produce =
        ["produce", "--topic", &topic, "--count", "20000", "--seed", "5", "--malformed-rate", "0.02"];
    run_ok(txpipe(dir.path(), &produce), "produce");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut ingest = spawn(
        txpipe(
            dir.path(),
            &["ingest", "--topic", &topic, "--metrics-addr", &addr, "--report-json", "ingest.json"],
        ),
        &dir.path().join("ingest.log"),
    );
    // Every message committed, and the lag shown per partition (from the client's statistics,
    // every 5 s).
    let last = scrape_until(port, Duration::from_secs(90), "ingest commits every message", |s| {
        let committed = s.sum(names::INGEST_ROWS_WRITTEN).unwrap_or(0.0)
            + s.sum(names::INGEST_ROWS_QUARANTINED).unwrap_or(0.0);
        committed == 20_000.0 && s.sum(names::INGEST_CONSUMER_LAG).is_some()
    });
    assert_eq!(last.missing("ingest"), Vec::<String>::new(), "metrics missing from the scrape");
    assert_eq!(last.sum(names::INGEST_CONSUMER_LAG), Some(0.0), "caught up: no lag");
    assert!(last.value(names::INGEST_REBALANCES, ("kind", "assign")).unwrap() >= 1.0);
    assert!(last.value(names::INGEST_ROWS_QUARANTINED, ("reason", "invalid_json")).unwrap_or(0.0) > 0.0);
    assert!(last.sum("process_resident_memory_bytes").unwrap() > 1e6);
    assert_eq!(last.value("txpipe_up", ("job", "ingest")), Some(1.0));
    let (live, body) = get(port, "/livez").unwrap();
    assert_eq!(live, 200, "{body}");
    assert!(body.contains("ingest-reader") && body.contains("ingest-writer"), "{body}");
    let body = until_status(port, "/readyz", 200, Duration::from_secs(20));
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let checks: Vec<&str> =
        ready["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(checks, ["kafka", "table:clean", "table:quarantine"], "{body}");
    assert_eq!(get(port, "/nothing").unwrap().0, 404);

    let status = sigterm(&mut ingest);
    assert!(status.success(), "{}", std::fs::read_to_string(dir.path().join("ingest.log")).unwrap());
    let r = report(&dir.path().join("ingest.json"));
    let count = |key: &str| r[key].as_u64().unwrap() as f64;
    assert_eq!(last.sum(names::INGEST_ROWS_WRITTEN), Some(count("written")));
    assert_eq!(last.sum(names::INGEST_ROWS_QUARANTINED), Some(count("quarantined")));
    assert_eq!(last.sum(names::INGEST_COMMITS), Some(count("commits")));
    assert_eq!(last.sum(names::INGEST_MESSAGES_READ), Some(count("read")));
    assert_eq!(last.sum(names::INGEST_TABLE_VERSION), Some(count("clean_version")));
    assert_eq!(last.sum(&format!("{}_count", names::INGEST_COMMIT_DURATION)), Some(count("commits")));
    // The server ends with the job.
    assert!(get(port, "/metrics").is_none(), "still serving after the job ended");
}

fn clickhouse(sql: &str) -> String {
    let out = Command::new("clickhouse-client").args(["--query", sql]).output().unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn services(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services");
    let status = Command::new(script).args(args).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "scripts/services {args:?}");
}

/// Brings ClickHouse back up however the test ends, so that the tests after it find it.
struct ClickHouseBackUp;

impl Drop for ClickHouseBackUp {
    fn drop(&mut self) {
        services(&["up", "clickhouse"]);
    }
}

#[test]
fn score_turns_unready_while_clickhouse_is_down_stays_live_and_loses_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("metrics-score");
    let database = format!("test_metrics_score_{}", std::process::id());
    std::fs::write(
        dir.path().join("txpipe.toml"),
        format!(
            "[clickhouse]\ndatabase = \"{database}\"\n[ingest]\nflush_rows = 1000\n[train]\nforce = true\n[score]\nstart = \"earliest\"\n\
             [metrics]\ncheck_every = \"1s\"\n"
        ),
    )
    .unwrap();
    let produce = |count: &str, seed: &str| {
        run_ok(
            txpipe(dir.path(), &["produce", "--topic", &topic, "--count", count, "--seed", seed]),
            "produce",
        )
    };
    let ingest =
        || run_ok(txpipe(dir.path(), &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    produce("6000", "31");
    ingest();
    run_ok(txpipe(dir.path(), &["train"]), "train");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.path().join("score.log");
    let mut score =
        spawn(txpipe(dir.path(), &["score", "--metrics-addr", &addr, "--report-json", "score.json"]), &log);
    scrape_until(port, Duration::from_secs(60), "score writes the table", |s| {
        s.sum(names::SCORE_ROWS_WRITTEN) == Some(6000.0)
    });
    until_status(port, "/readyz", 200, Duration::from_secs(20));

    let back_up = ClickHouseBackUp;
    services(&["down", "clickhouse"]);
    let body = until_status(port, "/readyz", 503, Duration::from_secs(20));
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["failing"], serde_json::json!(["clickhouse"]), "{body}");
    // Events keep coming while ClickHouse is away: score retries their insert, and lives.
    produce("3000", "32");
    ingest();
    std::thread::sleep(Duration::from_secs(3));
    let (live, body) = get(port, "/livez").unwrap();
    assert_eq!(live, 200, "{body}");
    services(&["up", "clickhouse"]);
    drop(back_up);
    until_status(port, "/readyz", 200, Duration::from_secs(30));
    assert_eq!(get(port, "/livez").unwrap().0, 200);

    let last = scrape_until(port, Duration::from_secs(90), "score writes the new rows", |s| {
        s.sum(names::SCORE_ROWS_WRITTEN) == Some(9000.0) && s.sum(names::SCORE_LAG_VERSIONS) == Some(0.0)
    });
    assert_eq!(last.missing("score"), Vec::<String>::new(), "metrics missing from the scrape");
    assert!(last.sum(names::SCORE_INSERT_ERRORS).unwrap() > 0.0, "the outage shows as insert errors");
    assert_eq!(last.sum(names::SCORE_LAG_SECONDS), Some(0.0));
    assert_eq!(last.sum(names::SCORE_MODEL_INFO), Some(1.0));
    let status = sigterm(&mut score);
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap());
    let r = report(&dir.path().join("score.json"));
    let count = |key: &str| r[key].as_u64().unwrap() as f64;
    assert_eq!(last.sum(names::SCORE_ROWS_WRITTEN), Some(count("written")));
    assert_eq!(last.sum(names::SCORE_ROWS_SCORED), Some(count("scored")));
    assert_eq!(last.sum(names::SCORE_INSERTS), Some(count("inserts")));
    assert_eq!(last.sum(names::SCORE_COMPLETE_VERSION), Some(count("complete_through")));
    let served = clickhouse(&format!(
        "SELECT count(), uniqExact(transaction_id) FROM {database}.transactions_serving"
    ));
    assert_eq!(served, "9000\t9000");
    clickhouse(&format!("DROP DATABASE {database}"));
}

#[test]
fn scheduled_train_exports_its_runs_stages_and_model_figures() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("metrics-train");
    std::fs::write(dir.path().join("txpipe.toml"), "[train]\nforce = true\n").unwrap();
    run_ok(txpipe(dir.path(), &["produce", "--topic", &topic, "--count", "6000", "--seed", "41"]), "produce");
    run_ok(txpipe(dir.path(), &["ingest", "--topic", &topic, "--exit-when-idle", "2"]), "ingest");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.path().join("train.log");
    let mut train = spawn(
        txpipe(
            dir.path(),
            &["train", "--every", "1h", "--metrics-addr", &addr, "--report-json", "train.json"],
        ),
        &log,
    );
    let last = scrape_until(port, Duration::from_secs(120), "a published run", |s| {
        s.value(names::TRAIN_RUNS, ("outcome", "published")) == Some(1.0)
    });
    assert_eq!(last.missing("train"), Vec::<String>::new(), "metrics missing from the scrape");
    let (live, body) = get(port, "/livez").unwrap();
    assert_eq!(live, 200, "{body}");
    assert!(body.contains("train-schedule"), "between runs the schedule turns: {body}");
    let status = sigterm(&mut train);
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap());
    let r = report(&dir.path().join("train.json"));
    assert_eq!(last.sum(names::TRAIN_AUC_ROC), r["holdout_auc"].as_f64());
    assert_eq!(last.sum(names::TRAIN_AUC_PR), r["holdout_auc_pr"].as_f64());
    assert_eq!(last.sum(names::TRAIN_ROWS), r["rows_used"].as_f64());
    for stage in ["read", "features", "fit", "evaluate", "publish"] {
        let count = last.value(&format!("{}_count", names::TRAIN_STAGE_DURATION), ("stage", stage));
        assert_eq!(count, Some(1.0), "stage {stage}");
    }
    assert_eq!(last.value(names::TRAIN_RUNS, ("outcome", "failed")), Some(0.0));
}

/// `txpipe status --json` in `dir` (against `brokers`): its exit code and its JSON.
fn status_at(dir: &Path, brokers: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_txpipe"))
        .current_dir(dir)
        .args(["status", "--json", "--config", "txpipe.toml", "--brokers", brokers])
        .args(["--clickhouse-url", &clickhouse_url()])
        .args(extra)
        .output()
        .unwrap();
    let code = out.status.code().expect("an exit code");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (code, json)
}

fn status(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    status_at(dir, &brokers(), extra)
}

#[test]
fn status_says_healthy_behind_or_unreachable_and_follows_ingest_stopping_and_restarting() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("status");
    let database = format!("test_status_{}", std::process::id());
    std::fs::write(
        dir.path().join("txpipe.toml"),
        format!(
            "[kafka]\ntopic = \"{topic}\"\n[clickhouse]\ndatabase = \"{database}\"\n[ingest]\nflush_rows = 1000\n\
             [train]\nforce = true\n"
        ),
    )
    .unwrap();
    let produce = |count: &str, seed: &str| {
        let args = ["produce", "--count", count, "--seed", seed, "--malformed-rate", "0.01"];
        run_ok(txpipe(dir.path(), &args), "produce")
    };
    produce("4000", "51");
    run_ok(txpipe(dir.path(), &["ingest", "--exit-when-idle", "2"]), "ingest");
    run_ok(txpipe(dir.path(), &["train"]), "train");
    run_ok(txpipe(dir.path(), &["score", "--exit-when-idle", "2"]), "score");

    // Healthy: nothing behind, every part seen.
    let (code, s) = status(dir.path(), &[]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["ingest"]["lag"], 0, "{s:#}");
    assert_eq!(s["ingest"]["partitions"].as_array().unwrap().len(), 4);
    assert_eq!(s["score"]["versions_behind"], 0, "{s:#}");
    assert_eq!(s["model"]["version"], "000001");
    assert_eq!(s["model"]["last_run"]["outcome"], "published");
    let quarantined = s["quarantine"]["rows"].as_u64().unwrap();
    assert!(quarantined > 0, "{s:#}");
    assert_eq!(s["clean"]["state"], "ok");
    assert_eq!(s["serving"]["realtime_rows"].as_u64().unwrap() + quarantined, 4000, "{s:#}");

    // Ingest running (with its metrics), then stopped while events keep coming.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let start_ingest =
        |log: &str| spawn(txpipe(dir.path(), &["ingest", "--metrics-addr", &addr]), &dir.path().join(log));
    let mut ingest = start_ingest("ingest1.log");
    scrape_until(port, Duration::from_secs(60), "the lag metric", |s| {
        s.sum(names::INGEST_CONSUMER_LAG) == Some(0.0)
    });
    assert!(sigterm(&mut ingest).success());
    produce("1000", "52");
    let (code, first) = status(dir.path(), &[]);
    assert_eq!((code, first["ingest"]["lag"].as_u64()), (0, Some(1000)), "{first:#}");
    produce("1500", "53");
    let (code, second) = status(dir.path(), &["--max-lag", "2000"]);
    assert_eq!(code, 1, "over --max-lag: a stage is behind: {second:#}");
    assert_eq!(second["ingest"]["lag"].as_u64(), Some(2500), "the lag grows while ingest is stopped");
    let behind = second["behind"].as_array().unwrap();
    assert!(
        behind.len() == 1 && behind[0].as_str().unwrap().starts_with("ingest is 2500 messages behind"),
        "{second:#}"
    );

    // Restarted, ingest catches up: the metric and the status back at 0.
    let mut ingest = start_ingest("ingest2.log");
    scrape_until(port, Duration::from_secs(60), "ingest catches up", |s| {
        s.sum(names::INGEST_ROWS_WRITTEN).unwrap_or(0.0)
            + s.sum(names::INGEST_ROWS_QUARANTINED).unwrap_or(0.0)
            == 2500.0
            && s.sum(names::INGEST_CONSUMER_LAG) == Some(0.0)
    });
    let (_, after) = status(dir.path(), &["--max-lag", "0"]);
    assert_eq!(after["ingest"]["lag"].as_u64(), Some(0), "{after:#}");
    assert!(sigterm(&mut ingest).success());

    // Kafka unreachable: exit 2, naming it; the other parts are still shown.
    let (code, down) = status_at(dir.path(), "127.0.0.1:9", &[]);
    assert_eq!(code, 2, "{down:#}");
    assert_eq!(down["unreachable"], serde_json::json!(["ingest"]), "{down:#}");
    assert_eq!(down["clean"]["state"], "ok");
    clickhouse(&format!("DROP DATABASE {database}"));
}

#[test]
fn run_ingests_and_scores_in_one_process_every_transaction_once_with_one_metrics_address() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("run");
    let database = format!("test_run_{}", std::process::id());
    std::fs::write(
        dir.path().join("txpipe.toml"),
        format!(
            "[kafka]\ntopic = \"{topic}\"\n[clickhouse]\ndatabase = \"{database}\"\n[ingest]\nflush_rows = 1000\n\
             [train]\nforce = true\n"
        ),
    )
    .unwrap();
    run_ok(txpipe(dir.path(), &["produce", "--count", "4000", "--seed", "61"]), "produce");
    run_ok(txpipe(dir.path(), &["ingest", "--exit-when-idle", "2"]), "ingest");
    run_ok(txpipe(dir.path(), &["train"]), "train");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.path().join("run.log");
    let args = [
        "run",
        "--exit-when-idle",
        "4",
        "--train-every",
        "1h",
        "--metrics-addr",
        &addr,
        "--report-json",
        "run.json",
    ];
    let mut run = spawn(txpipe(dir.path(), &args), &log);
    // Events keep coming while it runs.
    let produce =
        ["produce", "--count", "3000", "--rate", "1000", "--seed", "62", "--malformed-rate", "0.01"];
    run_ok(txpipe(dir.path(), &produce), "produce while running");
    let last = scrape_until(port, Duration::from_secs(90), "run ingests and scores", |s| {
        s.sum(names::INGEST_ROWS_WRITTEN).unwrap_or(0.0)
            + s.sum(names::INGEST_ROWS_QUARANTINED).unwrap_or(0.0)
            == 3000.0
            && s.sum(names::SCORE_ROWS_WRITTEN) == s.sum(names::INGEST_ROWS_WRITTEN).map(|w| w + 4000.0)
            && s.sum(names::INGEST_CONSUMER_LAG).is_some()
            && s.value(names::TRAIN_RUNS, ("outcome", "published")) == Some(1.0)
    });
    let mut missing = last.missing("ingest");
    missing.extend(last.missing("score"));
    missing.extend(last.missing("train"));
    assert_eq!(missing, Vec::<String>::new(), "one address shows both jobs' metrics");
    assert_eq!(last.value("txpipe_up", ("job", "run")), Some(1.0));
    let body = until_status(port, "/readyz", 200, Duration::from_secs(20));
    assert!(body.contains("kafka") && body.contains("clickhouse"), "{body}");
    let status = run.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("ingested ") && err.contains("scored "), "both summaries: {err}");
    let r = report(&dir.path().join("run.json"));
    assert_eq!(r["train"][0]["outcome"], "published", "the schedule's first run, at the start: {r:#}");
    assert_eq!(r["train"].as_array().unwrap().len(), 1, "the next is an hour later: {r:#}");
    let written = r["ingest"]["written"].as_u64().unwrap();
    assert_eq!(written + r["ingest"]["quarantined"].as_u64().unwrap(), 3000);
    assert_eq!(r["score"]["written"].as_u64().unwrap(), written + 4000, "the history, then every live row");
    let served = clickhouse(&format!(
        "SELECT count(), uniqExact(transaction_id) FROM {database}.transactions_serving"
    ));
    assert_eq!(served, format!("{0}\t{0}", written + 4000));
    clickhouse(&format!("DROP DATABASE {database}"));
}

#[test]
fn score_retrying_clickhouse_at_its_start_stays_live_and_unready() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let database = format!("test_metrics_start_{}", std::process::id());
    std::fs::write(
        dir.path().join("txpipe.toml"),
        format!(
            "[clickhouse]\ndatabase = \"{database}\"\n[metrics]\nlive_within = \"2s\"\ncheck_every = \"1s\"\n"
        ),
    )
    .unwrap();
    let back_up = ClickHouseBackUp;
    services(&["down", "clickhouse"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.path().join("score.log");
    let mut score = spawn(txpipe(dir.path(), &["score", "--metrics-addr", &addr]), &log);
    let body = until_status(port, "/readyz", 503, Duration::from_secs(20));
    assert!(body.contains("\"failing\":[\"clickhouse\"]"), "{body}");
    // Well past `live_within` of retries: the loop turns while it retries.
    std::thread::sleep(Duration::from_secs(5));
    let (live, body) = get(port, "/livez").unwrap();
    assert_eq!(live, 200, "{body}");
    assert!(body.contains("\"score\""), "{body}");
    let status = sigterm(&mut score);
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap());
    drop(back_up);
}
