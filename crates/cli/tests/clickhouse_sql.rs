//! The serving layer's SQL on both sides txpipe supports: the ClickHouse 18.16 server of
//! `scripts/services` (DDL, rows encoded by txpipe and inserted as RowBinary, read back through
//! the view) and current ClickHouse (the chdb-core engine in the test venv that scripts/test
//! makes, running scripts/check_clickhouse_sql.py), for the default schema and for a schema
//! with every field type, optional ones included.

use std::borrow::Cow;
use std::io::Write;
use std::process::{Command, Stdio};

use txpipe_connectors::clickhouse::{ClickHouseConfig, Prediction, PredictionRows, Serving, Target};
use txpipe_core::event::Value;
use txpipe_core::schema::{Schema, SchemaConfig};

fn python() -> String {
    std::env::var("TXPIPE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TXPIPE_TEST_PYTHON is not set: run scripts/test, which makes a venv with chdb-core")
    })
}

/// A schema with a field of every type, the optional ones nullable, no account.
fn every_type() -> Schema {
    let config: SchemaConfig = serde_json::from_value(serde_json::json!({
        "id_field": "id",
        "time_field": "at",
        "label_field": "label",
        "fields": [
            {"name": "id", "type": "string", "required": true},
            {"name": "at", "type": "timestamp", "required": true},
            {"name": "v1", "type": "double", "required": true},
            {"name": "count", "type": "long"},
            {"name": "flag", "type": "boolean"},
            {"name": "seen_at", "type": "timestamp"},
            {"name": "note", "type": "string"},
            {"name": "label", "type": "boolean"}
        ]
    }))
    .unwrap();
    Schema::new(config).unwrap()
}

fn config(database: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: std::env::var("TXPIPE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        database: database.into(),
        ..ClickHouseConfig::default()
    }
}

fn with_fields(schema: &Schema, fields: Option<&[String]>, database: &str) -> Serving {
    Serving::new(&config(database), Serving::columns_for(schema, fields).unwrap())
}

#[test]
fn current_clickhouse_accepts_the_statements_and_the_view_picks_the_batch_row() {
    let all: Vec<String> = ["v1", "count", "flag", "seen_at", "note"].map(String::from).to_vec();
    let cases = [
        with_fields(&Schema::default_schema(), None, "txpipe_default"),
        with_fields(&every_type(), Some(&all), "txpipe_every_type"),
    ];
    for serving in cases {
        let columns: Vec<(String, String)> = serving
            .columns()
            .iter()
            .map(|c| {
                let t = match c.kind {
                    txpipe_core::schema::FieldType::String => "String",
                    txpipe_core::schema::FieldType::Double => "Float64",
                    txpipe_core::schema::FieldType::Long => "Int64",
                    txpipe_core::schema::FieldType::Boolean => "UInt8",
                    txpipe_core::schema::FieldType::Timestamp => "DateTime",
                };
                (c.name.clone(), if c.nullable { format!("Nullable({t})") } else { t.to_string() })
            })
            .collect();
        let database = serving.statements()[0].rsplit(' ').next().unwrap().trim_matches('`').to_string();
        let input = serde_json::json!({ "statements": serving.statements(), "database": database, "columns": columns });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/check_clickhouse_sql.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run check_clickhouse_sql.py");
        child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = seen["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "one row per transaction: {seen}");
        assert_eq!(rows[0][0], "t1");
        assert_eq!((rows[0][1].as_str(), rows[0][2].as_str()), (Some("batch"), Some("000002")), "{seen}");
        assert_eq!((rows[1][1].as_str(), rows[1][2].as_str()), (Some("realtime"), Some("000001")), "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_encoded_by_txpipe_read_back_through_the_view_on_the_18_16_server() {
    let schema = every_type();
    let all: Vec<String> = ["v1", "count", "flag", "seen_at", "note"].map(String::from).to_vec();
    let database = format!("test_sql_{}", std::process::id());
    let serving = with_fields(&schema, Some(&all), &database);
    serving.ensure().await.unwrap();
    serving.ensure().await.unwrap();
    let t = 1_795_000_000_000_000i64;
    let full = [
        Value::Double(2.5),
        Value::Long(-7),
        Value::Bool(true),
        Value::Timestamp(t + 1_500_000),
        Value::Str(Cow::Borrowed("naïve \t 'quoted'")),
    ];
    let empty = [Value::Double(0.0), Value::Null, Value::Null, Value::Null, Value::Null];
    let push = |rows: &mut PredictionRows, id: &str, fields: &[Value<'_>], p: f64, run: Option<&str>| {
        rows.push(
            serving.columns(),
            &Prediction {
                transaction_id: id,
                event_time_us: t,
                fields,
                probability: p,
                label: p > 0.5,
                reasons: &["amount", "hour_of_day"],
                explanation: "amount 2.50; at 03:00 UTC",
                model_version: "000001",
                scored_at: 1_795_000_100,
                batch_run_id: run,
            },
        )
    };
    let mut realtime = PredictionRows::new(Target::Realtime);
    push(&mut realtime, "a", &full, 0.75, None);
    push(&mut realtime, "b", &empty, 0.25, None);
    let realtime = realtime.seal();
    serving.insert(&realtime).await.unwrap();
    // A replay of the same rows, and a batch row for `b`.
    serving.insert(&realtime).await.unwrap();
    let mut batch = PredictionRows::new(Target::Batch);
    push(&mut batch, "b", &empty, 0.5, Some("run-1"));
    serving.insert(&batch.seal()).await.unwrap();

    let got = serving
        .fetch_text(&format!(
            "SELECT transaction_id, toUnixTimestamp(event_time), v1, count, flag, toUnixTimestamp(seen_at), note, \
             fraud_probability, predicted_label, reasons, explanation, model_version, source, batch_run_id \
             FROM {database}.transactions_serving ORDER BY transaction_id"
        ))
        .await
        .unwrap();
    let expected = format!(
        "a\t{s}\t2.5\t-7\t1\t{s1}\tnaïve \\t \\'quoted\\'\t0.75\t1\t['amount','hour_of_day']\t{e}\t000001\trealtime\t\n\
         b\t{s}\t0\t\\N\t\\N\t\\N\t\\N\t0.5\t0\t['amount','hour_of_day']\t{e}\t000001\tbatch\trun-1",
        e = "amount 2.50; at 03:00 UTC",
        s = t / 1_000_000,
        s1 = t / 1_000_000 + 1
    );
    assert_eq!(got, expected);
    let rows =
        serving.fetch_text(&format!("SELECT count() FROM {database}.transactions_realtime")).await.unwrap();
    assert_eq!(rows, "4", "the replay is in the table; the view shows it once");
    serving.fetch_text(&format!("DROP DATABASE {database}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_made_by_an_earlier_release_get_the_explanation_column() {
    let database = format!("test_upgrade_{}", std::process::id());
    let serving = with_fields(&Schema::default_schema(), None, &database);
    // The layout of the release before `explanation`: the tables without it, the view too.
    let old: Vec<String> = serving
        .statements()
        .into_iter()
        .map(|s| {
            s.replace(", explanation String", "")
                .replace("argMax(explanation, rank) AS explanation, ", "")
                .replace(", explanation", "")
        })
        .collect();
    assert!(old.iter().all(|s| !s.contains("explanation")), "{old:?}");
    for sql in &old {
        serving.execute(sql).await.unwrap();
    }
    let upgrades = serving.upgrades().await.unwrap();
    assert_eq!(upgrades.len(), 3, "two columns to add, one view to make again: {upgrades:?}");
    serving.ensure().await.unwrap();
    assert!(serving.upgrades().await.unwrap().is_empty(), "nothing left to upgrade");
    let count = |table: &str| {
        format!(
            "SELECT count() FROM system.columns WHERE database = '{database}' AND table = '{table}' AND name = 'explanation'"
        )
    };
    for table in ["transactions_realtime", "transactions_batch", "transactions_serving"] {
        assert_eq!(serving.fetch_text(&count(table)).await.unwrap(), "1", "{table}");
    }
    serving.fetch_text(&format!("DROP DATABASE {database}")).await.unwrap();
}
