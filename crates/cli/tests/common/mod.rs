//! Helpers shared by the CLI's integration tests (each test file is its own crate and takes
//! this module with `mod common;`).

use std::path::Path;
use std::process::{Command, Stdio};

/// The real Kafka of `scripts/services` (TXPIPE_TEST_BROKERS overrides).
pub fn brokers() -> String {
    std::env::var("TXPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The real ClickHouse of `scripts/services` (TXPIPE_TEST_CLICKHOUSE overrides).
#[allow(dead_code)] // not every test file talks to ClickHouse
pub fn clickhouse_url() -> String {
    std::env::var("TXPIPE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// Runs `txpipe ARGS --brokers B EXTRA` in `dir`, asserts it succeeded, and returns its stderr.
pub fn txpipe_ok(dir: &Path, args: &[&str], extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_txpipe"))
        .current_dir(dir)
        .args(args)
        .args(["--brokers", &brokers()])
        .args(extra)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "txpipe {args:?}: {err}");
    err
}
