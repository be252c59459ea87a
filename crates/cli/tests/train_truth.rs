//! Producer data with its truth: `txpipe produce --truth-output` into the real Kafka of
//! `scripts/services`, `txpipe ingest`, `txpipe train`, then `scripts/check_truth_auc.py` (the
//! venv of `scripts/test`, TXPIPE_TEST_PYTHON) finds the held-out rows in the table as train
//! does and compares the model's held-out AUC with the AUC of the generator's true
//! probabilities on them: within 0.005, or it exits 1.

use std::process::Command;

mod common;

fn txpipe(dir: &std::path::Path, args: &[&str]) -> String {
    common::txpipe_ok(dir, args, &[])
}

#[test]
fn on_produced_events_the_held_out_auc_is_within_0_005_of_the_truths() {
    let python = std::env::var("TXPIPE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TXPIPE_TEST_PYTHON is not set: run scripts/test, which makes a venv with deltalake and scikit-learn")
    });
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-truth-{}-{}", std::process::id(), nanos % 1_000_000_000);
    txpipe(
        dir.path(),
        &["produce", "--topic", &topic, "--count", "200000", "--seed", "12", "--truth-output", "truth.csv"],
    );
    let tables = ["--table", "clean", "--quarantine-table", "quarantine"];
    txpipe(
        dir.path(),
        &[&["ingest", "--topic", &topic, "--group-id", &topic, "--exit-when-idle", "3"][..], &tables]
            .concat(),
    );
    let trained = txpipe(dir.path(), &["train", "--table", "clean", "--model-dir", "models"]);
    assert!(trained.contains("published version 000001"), "{trained}");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_truth_auc.py");
    let model = dir.path().join("models/versions/000001/model.json");
    let out = Command::new(python)
        .arg(script)
        .arg(dir.path().join("clean"))
        .arg(&model)
        .arg(dir.path().join("truth.csv"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(figures["gap"].as_f64().unwrap().abs() <= 0.005, "{figures}");
    assert!(figures["held_out_rows"].as_u64().unwrap() > 30_000, "{figures}");
    assert_eq!(figures["held_out_rows"], figures["model_counted"], "{figures}");
}
