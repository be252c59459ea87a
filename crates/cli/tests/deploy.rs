//! The files of `deploy/`: the Prometheus configuration and alert rules parse as YAML (Python's
//! PyYAML, in the venv scripts/test makes), the Grafana dashboard as JSON, and every metric
//! they name is one txpipe exports (the list in `txpipe_jobs::telemetry::names`, which the
//! scrape tests hold to what the jobs serve). The systemd units start txpipe's commands on the
//! addresses Prometheus scrapes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use txpipe_jobs::telemetry::names::{ALL, Kind};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn python() -> String {
    std::env::var("TXPIPE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TXPIPE_TEST_PYTHON is not set: run scripts/test, which makes a venv with PyYAML")
    })
}

/// A YAML file as JSON, read by PyYAML.
fn yaml(path: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The metric names in a PromQL expression (txpipe's and the process metrics), with a
/// histogram's `_bucket`, `_sum` and `_count` series named by the histogram.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("txpipe_") || t.starts_with("process_"))
        .map(|t| {
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = t.strip_suffix(suffix)
                    && ALL.iter().any(|m| m.name == base && m.kind == Kind::Histogram)
                {
                    return base.to_string();
                }
            }
            t.to_string()
        })
        .collect()
}

fn unknown(names: &BTreeSet<String>) -> Vec<String> {
    names.iter().filter(|n| !ALL.iter().any(|m| m.name == n.as_str())).cloned().collect()
}

#[test]
fn alert_rules_parse_and_name_only_metrics_txpipe_exports() {
    let rules = yaml(&deploy().join("prometheus/alerts.yml"));
    let mut named = BTreeSet::new();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{alert} has an expression"));
            assert!(rule["annotations"]["summary"].is_string(), "{alert} says what is wrong");
            named.extend(metrics_in(expr));
            alerts.push(alert.to_string());
        }
    }
    assert_eq!(unknown(&named), Vec::<String>::new(), "metrics the rules name that txpipe does not export");
    // The failure modes the rules must cover.
    for must in [
        "txpipe_ingest_consumer_lag_messages",
        "txpipe_ingest_last_commit_timestamp_seconds",
        "txpipe_ingest_rows_quarantined_total",
        "txpipe_score_lag_seconds",
        "txpipe_train_last_success_timestamp_seconds",
        "txpipe_check_ready",
    ] {
        assert!(named.contains(must), "no rule watches {must}");
    }
    assert!(alerts.len() >= 8, "{alerts:?}");
}

#[test]
fn the_dashboard_parses_and_names_only_metrics_txpipe_exports() {
    let text = std::fs::read_to_string(deploy().join("grafana/txpipe.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut named = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("every panel has queries");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for t in targets {
            named.extend(metrics_in(t["expr"].as_str().expect("a PromQL query")));
        }
    }
    assert_eq!(
        unknown(&named),
        Vec::<String>::new(),
        "metrics the dashboard names that txpipe does not export"
    );
    // Every job is on it.
    for job in ["ingest", "score", "train"] {
        assert!(named.iter().any(|n| n.starts_with(&format!("txpipe_{job}_"))), "no panel of {job}");
    }
}

#[test]
fn prometheus_scrapes_the_addresses_the_units_serve_and_the_units_run_txpipe() {
    let config = yaml(&deploy().join("prometheus/prometheus.yml"));
    assert_eq!(config["rule_files"][0], "alerts.yml");
    let mut targets = BTreeSet::new();
    for job in config["scrape_configs"].as_array().expect("scrape_configs") {
        for sc in job["static_configs"].as_array().unwrap() {
            for t in sc["targets"].as_array().unwrap() {
                targets.insert(t.as_str().unwrap().to_string());
            }
        }
    }
    let mut served = BTreeSet::new();
    for unit in ["txpipe-ingest", "txpipe-score", "txpipe-train"] {
        let text = std::fs::read_to_string(deploy().join(format!("systemd/{unit}.service"))).unwrap();
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(text.contains(section), "{unit}: {section}");
        }
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert!(words[0].ends_with("/txpipe"), "{unit}: {exec}");
        assert_eq!(words[1], unit.trim_start_matches("txpipe-"), "{unit} runs its job");
        let addr =
            words.iter().position(|w| *w == "--metrics-addr").map(|i| words[i + 1]).expect("--metrics-addr");
        served.insert(addr.to_string());
        // The flags are the command's own: its help names each one.
        let help = Command::new(env!("CARGO_BIN_EXE_txpipe")).args([words[1], "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(help.contains(flag), "{unit}: `txpipe {}` has no flag {flag}", words[1]);
        }
    }
    assert_eq!(served, targets, "Prometheus scrapes what the units serve");
}
