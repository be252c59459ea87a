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
#[allow(dead_code)]
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

/// `txpipe ARGS` in `dir` with its `txpipe.toml` and the test's broker (stdout dropped).
#[allow(dead_code)]
pub fn in_folder(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_txpipe"));
    c.current_dir(dir)
        .args(args)
        .args(["--config", "txpipe.toml", "--brokers", &brokers()])
        .stdout(Stdio::null());
    c
}

/// Runs a command to its end, asserts it succeeded, and returns its stderr.
#[allow(dead_code)]
pub fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {err}");
    err
}

/// Starts a command with its stderr in `log` (read back when it fails).
#[allow(dead_code)]
pub fn spawn(mut c: Command, log: &Path) -> std::process::Child {
    c.stderr(std::fs::File::create(log).unwrap()).spawn().unwrap()
}

/// Waits (up to 240 s) for a command started by [`spawn`] to end, and asserts it succeeded.
#[allow(dead_code)]
pub fn wait_ok(mut child: std::process::Child, what: &str, log: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} failed: {}", std::fs::read_to_string(log).unwrap_or_default());
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A query to the ClickHouse of `scripts/services` (its client); the answer.
#[allow(dead_code)]
pub fn clickhouse(sql: &str) -> String {
    let out = Command::new("clickhouse-client").args(["--query", sql]).output().unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
