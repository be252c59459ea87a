//! The `txpipe` binary: settings precedence, error messages and exit codes, file output.

use std::path::Path;
use std::process::{Command, Output};

fn txpipe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_txpipe"));
    // The tests' own environment must not leak settings in.
    for (k, _) in std::env::vars() {
        if k.starts_with("TXPIPE_") {
            c.env_remove(k);
        }
    }
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = c.output().expect("run txpipe");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into(),
        String::from_utf8_lossy(&stderr).into(),
    )
}

fn value(toml_text: &str, section: &str, key: &str) -> toml::Value {
    let v: toml::Value = toml::from_str(toml_text).expect("config prints TOML");
    v[section][key].clone()
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txpipe.toml");
    std::fs::write(&file, "[kafka]\ntopic = \"from-file\"\n[produce]\ncount = 5\nrate = 1.5\nseed = 9\n")
        .unwrap();
    let (code, out, err) = run(txpipe()
        .args(["config", "--config"])
        .arg(&file)
        .args(["--count", "7"])
        .env("TXPIPE_TOPIC", "from-env")
        .env("TXPIPE_COUNT", "6")
        .env("TXPIPE_SEED", "10"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(value(&out, "produce", "count").as_integer(), Some(7), "flag over env");
    assert_eq!(value(&out, "kafka", "topic").as_str(), Some("from-env"), "env over file");
    assert_eq!(value(&out, "produce", "seed").as_integer(), Some(10), "env over file");
    assert_eq!(value(&out, "produce", "rate").as_float(), Some(1.5), "file over default");
    assert_eq!(value(&out, "kafka", "brokers").as_str(), Some("127.0.0.1:9092"), "default");
    // The config file can also come from the environment.
    let (code, out, _) = run(txpipe().arg("config").env("TXPIPE_CONFIG", &file));
    assert_eq!(code, 0);
    assert_eq!(value(&out, "produce", "count").as_integer(), Some(5));
}

/// Arguments, environment, and the texts the error message must contain.
type BadCase = (Vec<&'static str>, Vec<(&'static str, &'static str)>, Vec<&'static str>);

#[test]
fn bad_values_exit_2_naming_the_setting_and_the_expected_form() {
    let cases: Vec<BadCase> = vec![
        (
            vec!["produce", "--brokers", "nope"],
            vec![],
            vec!["kafka.brokers", "--brokers", "TXPIPE_BROKERS", "HOST:PORT"],
        ),
        (
            vec!["produce"],
            vec![("TXPIPE_RATE", "-5")],
            vec!["produce.rate", "TXPIPE_RATE", "events per second"],
        ),
        (vec!["produce", "--malformed-rate", "2"], vec![], vec!["produce.malformed_rate", "from 0 to 1"]),
        (vec!["produce", "--start-time", "yesterday"], vec![], vec!["produce.start_time", "RFC 3339"]),
        (vec!["produce", "--span", "7 fortnights"], vec![], vec!["produce.span", "duration"]),
        (vec!["produce", "--count", "many"], vec![], vec!["--count", "many"]),
        (vec!["ingest", "--clickhouse-url", "localhost"], vec![], vec!["clickhouse.url", "http://HOST:PORT"]),
        (vec!["ingest", "--exit-when-idle", "-1"], vec![], vec!["ingest.exit_when_idle", "positive"]),
        (vec!["produce", "--log-format", "xml"], vec![], vec!["log.format", "text or json"]),
        (vec!["produce", "--topic", "has space"], vec![], vec!["kafka.topic"]),
    ];
    for (args, env, needles) in cases {
        let mut c = txpipe();
        c.args(&args);
        for (k, v) in &env {
            c.env(k, v);
        }
        let (code, _, err) = run(&mut c);
        assert_eq!(code, 2, "{args:?} {env:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?} {env:?}: `{n}` not in: {err}");
        }
    }
}

#[test]
fn a_bad_config_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[produce]\ncont = 3\n").unwrap();
    let (code, _, err) = run(txpipe().args(["config", "--config"]).arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cont") && err.contains("bad.toml"), "{err}");
    let (code, _, err) = run(txpipe().args(["config", "--config", "/nonexistent/txpipe.toml"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/txpipe.toml"), "{err}");
}

#[test]
fn score_without_a_model_waits_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("test_cli_nomodel_{}", std::process::id());
    let mut c = txpipe();
    c.current_dir(dir.path()).args(["score", "--exit-when-idle", "1", "--clickhouse-database", &database]);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no model published yet; waiting"), "{err}");
    assert!(err.contains("scored 0 rows") && err.contains("models none"), "{err}");
    let drop =
        Command::new("clickhouse-client").args(["--query", &format!("DROP DATABASE {database}")]).status();
    assert!(drop.unwrap().success());
}

fn produce_file(dir: &Path, name: &str, seed: &str) -> (Vec<u8>, String) {
    let out = dir.join(format!("{name}.jsonl"));
    let truth = dir.join(format!("{name}.csv"));
    let (code, _, err) = run(txpipe()
        .args(["produce", "--count", "3000", "--seed", seed, "--malformed-rate", "0.1", "--output"])
        .arg(&out)
        .arg("--truth-output")
        .arg(&truth));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("produced 3000 events"), "{err}");
    (std::fs::read(out).unwrap(), std::fs::read_to_string(truth).unwrap())
}

#[test]
fn file_output_is_deterministic_per_seed_with_a_truth_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, truth_a) = produce_file(dir.path(), "a", "5");
    let (b, truth_b) = produce_file(dir.path(), "b", "5");
    let (c, _) = produce_file(dir.path(), "c", "6");
    assert_eq!(a, b);
    assert_eq!(truth_a, truth_b);
    assert_ne!(a, c);
    assert_eq!(a.iter().filter(|&&x| x == b'\n').count(), 3000);
    let lines: Vec<&str> = truth_a.lines().collect();
    assert_eq!(lines[0], "transaction_id,fraud_probability,is_fraud,malformed");
    assert_eq!(lines.len(), 3001);
    // The truth never reaches the events.
    assert!(!String::from_utf8_lossy(&a).contains("fraud_probability"));
    let malformed = lines[1..].iter().filter(|l| !l.ends_with(',')).count();
    assert!((200..400).contains(&malformed), "{malformed}");
}

#[test]
fn stdout_output_and_json_logs() {
    let (code, out, err) =
        run(txpipe().args(["produce", "--count", "3", "--output", "-", "--log-format", "json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["transaction_id"].is_string());
    }
    let log_line = err.lines().find(|l| l.starts_with('{')).expect("a JSON log line");
    let v: serde_json::Value = serde_json::from_str(log_line).unwrap();
    assert_eq!(v["fields"]["message"], "produce finished");
}

#[test]
fn an_unreachable_broker_is_retried_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txpipe.toml");
    std::fs::write(&file, "[kafka]\nconnect_attempts = 2\n").unwrap();
    // Port 1 on loopback: nothing listens there.
    let (code, _, err) =
        run(txpipe().args(["produce", "--count", "1", "--brokers", "127.0.0.1:1", "--config"]).arg(&file));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("retrying") && err.contains("attempt=1"), "one retry is logged: {err}");
    assert!(err.contains("error: kafka broker 127.0.0.1:1 did not answer"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn secrets_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txpipe.toml");
    std::fs::write(
        &file,
        "[kafka]\nconnect_attempts = 1\n[kafka.properties]\n\"security.protocol\" = \"sasl_plaintext\"\n\
         \"sasl.mechanisms\" = \"PLAIN\"\n\"sasl.username\" = \"alice\"\n\"sasl.password\" = \"hunter2-pw\"\n\
         \"sasl.jaas.config\" = \"hunter2-jaas\"\n\
         [tables.storage_options]\nAWS_REGION = \"us-east-1\"\nAWS_SECRET_ACCESS_KEY = \"hunter2-aws\"\n",
    )
    .unwrap();
    let (code, out, err) = run(txpipe().args(["config", "--config"]).arg(&file));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(
        out.contains("\"sasl.password\" = \"[hidden]\"")
            && out.contains("AWS_SECRET_ACCESS_KEY = \"[hidden]\""),
        "{out}"
    );
    assert!(
        out.contains("\"sasl.username\" = \"alice\"") && out.contains("AWS_REGION = \"us-east-1\""),
        "{out}"
    );
    // A run that fails on the broker, with debug logs: the secrets appear in no line.
    for job in [&["produce", "--count", "1"][..], &["ingest", "--exit-when-idle", "1"]] {
        let (code, out, err) = run(txpipe()
            .args(job)
            .args(["--brokers", "127.0.0.1:1", "--log-level", "debug", "--config"])
            .arg(&file)
            .env("TXPIPE_TABLE", dir.path().join("clean"))
            .env("TXPIPE_QUARANTINE_TABLE", dir.path().join("quarantine")));
        assert_eq!(code, 1, "{job:?}: {err}");
        assert!(!out.contains("hunter2") && !err.contains("hunter2"), "{job:?}: {err}");
    }
}

#[test]
fn train_publishes_a_model_and_refusals_exit_non_zero() {
    let brokers = std::env::var("TXPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-train-{}-{}", std::process::id(), nanos % 1_000_000_000);
    let (clean, models) = (dir.path().join("clean"), dir.path().join("models"));
    let with_paths = |c: &mut Command| {
        c.arg("--brokers")
            .arg(&brokers)
            .env("TXPIPE_TABLE", &clean)
            .env("TXPIPE_QUARANTINE_TABLE", dir.path().join("quarantine"))
            .env("TXPIPE_MODEL_DIR", &models);
    };
    let mut produce = txpipe();
    produce.args([
        "produce",
        "--topic",
        &topic,
        "--count",
        "30000",
        "--fraud-rate",
        "0.05",
        "--partitions",
        "2",
    ]);
    with_paths(&mut produce);
    let (code, _, err) = run(&mut produce);
    assert_eq!(code, 0, "{err}");
    // One commit of all 30,000 rows (version 1): the flush waits longer than the read takes.
    let one_commit = dir.path().join("one_commit.toml");
    std::fs::write(&one_commit, "[ingest]\nflush_latency = \"8s\"\n").unwrap();
    let mut ingest = txpipe();
    ingest.args(["ingest", "--topic", &topic, "--group-id", &topic, "--exit-when-idle", "3", "--config"]);
    ingest.arg(&one_commit);
    with_paths(&mut ingest);
    let (code, _, err) = run(&mut ingest);
    assert_eq!(code, 0, "{err}");

    // A feature naming a field the schema lacks: refused before any data is read.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[features.numeric]]\nfield = \"amout\"\n").unwrap();
    let mut c = txpipe();
    c.args(["train", "--config"]).arg(&bad);
    with_paths(&mut c);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`features.numeric.field` = \"amout\""), "{err}");

    let mut c = txpipe();
    c.args(["train"]);
    with_paths(&mut c);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("published version 000001"), "{err}");
    assert_eq!(std::fs::read_to_string(models.join("CURRENT")).unwrap().trim(), "000001");
    assert!(models.join("versions/000001/model.json").exists());

    // The gate: a floor no model reaches, then forced.
    let strict = dir.path().join("strict.toml");
    std::fs::write(&strict, "[train]\nauc_floor = 0.999\n").unwrap();
    let mut c = txpipe();
    c.args(["train", "--config"]).arg(&strict);
    with_paths(&mut c);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not published") && err.contains("train.auc_floor"), "{err}");
    let mut c = txpipe();
    c.args(["train", "--force", "--delta-version", "1", "--config"]).arg(&strict);
    with_paths(&mut c);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("of Delta version 1:") && err.contains("published version 000002"), "{err}");

    // Flags that do not fit are refused by name before any work.
    for (args, named) in [
        (&["train", "--from", "2026-11-01"][..], "add --batch-score"),
        (&["train", "--batch-score", "--from", "yesterday"][..], "invalid --from \"yesterday\""),
        (
            &["train", "--batch-score", "--from", "2026-11-02", "--to", "2026-11-01"][..],
            "--from must be before --to",
        ),
        (&["train", "--every", "0s"][..], "invalid --every \"0s\""),
        (&["train", "--every", "1h", "--delta-version", "1"][..], "cannot be combined with --delta-version"),
    ] {
        let mut c = txpipe();
        c.args(args);
        with_paths(&mut c);
        let (code, _, err) = run(&mut c);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }

    // Batch scores into a database of this test's own.
    let database = format!("test_cli_batch_{}", std::process::id());
    let mut c = txpipe();
    c.args(["train", "--force", "--batch-score", "--clickhouse-database", &database]);
    with_paths(&mut c);
    let (code, _, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    // The version trained on (ingest may have taken more than one commit) is the one scored.
    let version = err
        .lines()
        .find_map(|l| l.strip_prefix("trained on 30000 rows (30000 read) of Delta version "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("the version trained on: {err}"));
    assert!(
        err.contains(&format!(
            "batch scores: 30000 rows of Delta version {version} into {database}.transactions_batch"
        )),
        "{err}"
    );
    let report = err.lines().find_map(|l| l.strip_prefix("report: ")).expect("the report's path");
    let page = std::fs::read_to_string(report).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.matches("<svg").count() == 4, "four charts inline");
    let drop =
        Command::new("clickhouse-client").args(["--query", &format!("DROP DATABASE {database}")]).status();
    assert!(drop.unwrap().success());
}
