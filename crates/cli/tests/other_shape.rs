//! Events of another shape, by config alone: an id, a time, 30 anonymous numeric fields and a
//! label, no account. Produced into Kafka, ingested, trained (with batch scores), scored: the
//! whole pipeline with the real services of `scripts/services`, nothing but the config file
//! changed.

use std::process::Command;

mod common;

fn config(database: &str) -> String {
    let mut text = format!(
        "[clickhouse]\ndatabase = \"{database}\"\nfields = [\"v1\", \"v2\"]\n\
         [train]\nforce = true\n[score]\nexit_when_idle = 2.0\n\
         [features]\nboolean = []\ncategorical = []\nhour_of_day = false\nday_of_week = false\nhour_bins = []\n\
         [features.history]\ncount_in_window = false\namount_vs_mean = false\nseconds_since_previous = false\n\
         new_country = false\n"
    );
    for i in 1..=30 {
        text += &format!(
            "[[features.numeric]]\nfield = \"v{i}\"\ntransform = \"identity\"\nstandardize = true\n"
        );
    }
    text += "[schema]\nid_field = \"id\"\ntime_field = \"ts\"\nlabel_field = \"class\"\n";
    text += "[[schema.fields]]\nname = \"id\"\ntype = \"string\"\nrequired = true\n";
    text += "[[schema.fields]]\nname = \"ts\"\ntype = \"timestamp\"\nrequired = true\n";
    for i in 1..=30 {
        text += &format!("[[schema.fields]]\nname = \"v{i}\"\ntype = \"double\"\nrequired = true\n");
    }
    text += "[[schema.fields]]\nname = \"class\"\ntype = \"boolean\"\n";
    text
}

fn txpipe(dir: &std::path::Path, args: &[&str]) -> String {
    common::txpipe_ok(dir, args, &["--config", "shape.toml", "--clickhouse-url", &common::clickhouse_url()])
}

#[test]
fn thirty_anonymous_numeric_fields_run_the_whole_pipeline_by_config_alone() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("test_shape_{}", std::process::id());
    std::fs::write(dir.path().join("shape.toml"), config(&database)).unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test-shape-{}-{}", std::process::id(), nanos % 1_000_000_000);
    txpipe(
        dir.path(),
        &["produce", "--topic", &topic, "--count", "20000", "--seed", "4", "--malformed-rate", "0.02"],
    );
    let ingested = txpipe(dir.path(), &["ingest", "--topic", &topic, "--exit-when-idle", "3"]);
    let clean: u64 =
        ingested.lines().find_map(|l| l.strip_prefix("ingested ")?.split(' ').next()?.parse().ok()).unwrap();
    assert!(clean > 19_000, "{ingested}");
    let trained = txpipe(dir.path(), &["train", "--batch-score"]);
    assert!(trained.contains(&format!("batch scores: {clean} rows")), "{trained}");
    let scored = txpipe(dir.path(), &["score"]);
    assert!(scored.contains(&format!("scored {clean} rows")), "{scored}");
    let q = |sql: &str| {
        let out = Command::new("clickhouse-client").args(["--query", sql]).output().unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // One row per transaction in the view, with the two copied fields and reasons named v*.
    let served = q(&format!(
        "SELECT count(), uniqExact(transaction_id), countIf(v1 != 0 AND v2 != 0), \
         countIf(arrayAll(r -> startsWith(r, 'v'), reasons)) FROM {database}.transactions_serving"
    ));
    assert_eq!(served, format!("{clean}\t{clean}\t{clean}\t{clean}"));
    let parity = q(&format!(
        "SELECT countIf(r.fraud_probability != b.fraud_probability) FROM {database}.transactions_realtime AS r \
         ANY INNER JOIN {database}.transactions_batch AS b USING transaction_id"
    ));
    assert_eq!(parity, "0", "realtime and batch probabilities agree");
    q(&format!("DROP DATABASE {database}"));
}
