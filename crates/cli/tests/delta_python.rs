//! An independent reader, Python's `deltalake` (scripts/check_delta.py, in the venv that
//! scripts/test makes, given as TXPIPE_TEST_PYTHON), reads what `txpipe ingest` wrote: the same
//! row count, schema and version as txpipe reports.

use std::process::{Command, Stdio};

use txpipe_connectors::kafka::{self, KafkaConfig};

fn brokers() -> String {
    std::env::var("TXPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn python() -> String {
    std::env::var("TXPIPE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TXPIPE_TEST_PYTHON is not set: run scripts/test, which makes a venv with Python's deltalake")
    })
}

fn check(table: &std::path::Path) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/check_delta.py");
    let out = Command::new(python()).arg(script).arg(table).output().expect("run check_delta.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("check_delta.py prints JSON")
}

/// Reads `version N` and the counts from ingest's closing line.
fn report_numbers(stderr: &str) -> (u64, u64, u64) {
    let line = stderr.lines().find(|l| l.starts_with("ingested ")).expect("ingest's closing line");
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let after = |w: &str| words[words.iter().position(|x| *x == w).unwrap() + 1].parse::<u64>().unwrap();
    (words[1].parse().unwrap(), after("quarantined"), after("version"))
}

#[test]
fn python_deltalake_reads_the_same_rows_schema_and_version() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-python-{}-{}", std::process::id(), nanos % 1_000_000_000);
    let config = KafkaConfig { brokers: brokers(), topic: topic.clone(), ..KafkaConfig::default() };
    rt.block_on(kafka::create_topic(&config, &topic, 4)).unwrap();
    let txpipe = env!("CARGO_BIN_EXE_txpipe");
    let produced = Command::new(txpipe)
        .args(["produce", "--topic", &topic, "--count", "8000", "--seed", "3", "--malformed-rate", "0.05"])
        .args(["--brokers", &brokers()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    let dir = tempfile::tempdir().unwrap();
    let (clean, quarantine) = (dir.path().join("clean"), dir.path().join("quarantine"));
    let ingested = Command::new(txpipe)
        .args([
            "ingest",
            "--topic",
            &topic,
            "--group-id",
            &topic,
            "--exit-when-idle",
            "3",
            "--brokers",
            &brokers(),
        ])
        .arg("--table")
        .arg(&clean)
        .arg("--quarantine-table")
        .arg(&quarantine)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ingested.stderr);
    assert!(ingested.status.success(), "{stderr}");
    let (written, quarantined, version) = report_numbers(&stderr);
    assert_eq!(written + quarantined, 8000);

    let c = check(&clean);
    assert_eq!(c["rows"], written);
    assert_eq!(c["distinct_ids"], written);
    assert_eq!(c["version"], version);
    assert_eq!(c["partition_columns"], serde_json::json!(["event_date"]));
    let columns: Vec<(String, String)> = c["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|col| (col[0].as_str().unwrap().to_string(), col[1].as_str().unwrap().to_string()))
        .collect();
    let expected = [
        ("transaction_id", "string"),
        ("account_id", "string"),
        ("merchant_id", "string"),
        ("merchant_category", "string"),
        ("amount", "double"),
        ("currency", "string"),
        ("country", "string"),
        ("channel", "string"),
        ("event_time", "timestamp[us, tz=UTC]"),
        ("is_fraud", "bool"),
        ("event_date", "date32[day]"),
        ("kafka_partition", "int32"),
        ("kafka_offset", "int64"),
        ("ingested_at", "timestamp[us, tz=UTC]"),
    ];
    let mut got = columns.clone();
    got.sort();
    let mut want: Vec<(String, String)> =
        expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    want.sort();
    assert_eq!(got, want);
    if let Some(txn) = c["txn"].as_object() {
        assert_eq!(txn.len(), 4, "one position per partition: {txn:?}");
    }

    let q = check(&quarantine);
    assert_eq!(q["rows"], quarantined);
}
