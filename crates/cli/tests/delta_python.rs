//! An independent reader, Python's `deltalake` (scripts/check_delta.py, in the venv that
//! scripts/test makes, given as TXPIPE_TEST_PYTHON), reads what `txpipe ingest` wrote: the same
//! row count, schema, version and `txn` positions as txpipe reports, the same values as txpipe's
//! own reader (the ids, and sums of amounts and times), and the exact bytes of a payload that is not
//! UTF-8, also after a Delta checkpoint.

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

fn check(table: &std::path::Path, app_ids: &[String]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/check_delta.py");
    let out =
        Command::new(python()).arg(script).arg(table).args(app_ids).output().expect("run check_delta.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("check_delta.py prints JSON")
}

/// Reads `version N` and the counts from ingest's closing line.
fn report_numbers(stderr: &str) -> (u64, u64, u64) {
    let line = stderr.lines().find(|l| l.starts_with("ingested ")).expect("ingest's closing line");
    let words: Vec<&str> = line.split([' ', ',', ';']).filter(|w| !w.is_empty()).collect();
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
    // One payload that is not UTF-8, into partition 2.
    let not_utf8: &[u8] = b"{\"transaction_id\":\"\xff\xfe\"}";
    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    producer
        .send(rdkafka::producer::BaseRecord::<(), [u8]>::to(&topic).partition(2).payload(not_utf8))
        .unwrap();
    rdkafka::producer::Producer::flush(&producer, std::time::Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (clean, quarantine) = (dir.path().join("clean"), dir.path().join("quarantine"));
    // Small commits and a checkpoint every 3: the log Python reads has checkpoints in it.
    let settings = dir.path().join("txpipe.toml");
    std::fs::write(&settings, "[ingest]\nflush_rows = 1500\ncheckpoint_interval = 3\n").unwrap();
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
            "--config",
        ])
        .arg(&settings)
        .arg("--table")
        .arg(&clean)
        .arg("--quarantine-table")
        .arg(&quarantine)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ingested.stderr);
    assert!(ingested.status.success(), "{stderr}");
    let (written, quarantined, version) = report_numbers(&stderr);
    assert_eq!(written + quarantined, 8001);
    let checkpoints = std::fs::read_dir(clean.join("_delta_log"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".checkpoint.parquet"))
        .count();
    assert!(checkpoints > 0, "a Delta checkpoint was written");

    let app_ids: Vec<String> = (0..4).map(|p| format!("txpipe-ingest:{topic}-{p}")).collect();
    let c = check(&clean, &app_ids);
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
    // The values, as txpipe's own reader sees them.
    let ours = rt.block_on(read(&clean));
    assert_eq!(c["ids"], serde_json::json!(ours.ids));
    assert_eq!(c["event_time_sum"].as_str(), Some(ours.event_time_sum.to_string().as_str()));
    let amount = c["amount_sum"].as_f64().unwrap();
    assert!(
        (amount - ours.amount_sum).abs() <= 1e-9 * ours.amount_sum.abs(),
        "{amount} vs {}",
        ours.amount_sum
    );
    // The positions: one txn per partition, each the last offset of the partition in either table.
    let q = check(&quarantine, &app_ids);
    assert_eq!(q["rows"], quarantined);
    for (p, app) in app_ids.iter().enumerate() {
        let last = |t: &serde_json::Value| t["last_offsets"][p.to_string()].as_i64().unwrap_or(-1);
        let want = last(&c).max(last(&q));
        assert_eq!(c["txn"][app].as_i64(), Some(want), "partition {p}: {}", c["txn"]);
    }
    // The exact bytes of the payload that was not UTF-8.
    let raw: Vec<(&String, &serde_json::Value)> = q["raw_bytes"].as_object().unwrap().iter().collect();
    assert_eq!(raw.len(), 1, "{raw:?}");
    assert!(raw[0].0.starts_with("2/"), "{raw:?}");
    let hex: String = not_utf8.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(raw[0].1.as_str(), Some(hex.as_str()));
}

/// Digests of a clean table's values, as txpipe's reader sees them.
struct Digest {
    ids: Vec<String>,
    amount_sum: f64,
    event_time_sum: i128,
}

async fn read(path: &std::path::Path) -> Digest {
    use txpipe_connectors::delta::arrow::array::{Array, Float64Array, TimestampMicrosecondArray};
    let table = deltalake::open_table(url::Url::from_directory_path(path).unwrap()).await.unwrap();
    let batches = txpipe_connectors::delta::read_rows(&table).await.unwrap();
    let mut ids = txpipe_connectors::delta::string_values(&batches, "transaction_id").unwrap();
    ids.sort();
    let (mut amount_sum, mut event_time_sum) = (0.0, 0i128);
    for b in &batches {
        let a = b.column_by_name("amount").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        let t = b
            .column_by_name("event_time")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        amount_sum += a.values().iter().sum::<f64>();
        event_time_sum += t.values().iter().map(|&v| v as i128).sum::<i128>();
    }
    Digest { ids, amount_sum, event_time_sum }
}
