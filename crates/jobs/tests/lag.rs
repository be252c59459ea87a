//! Ingest's lag metric while the table's storage is away: commits fail and are retried, the
//! producers go on, and `txpipe_ingest_consumer_lag_messages` (read from `/metrics` of the job's
//! own server) grows with them; once the storage is back it returns to 0, and every Kafka position
//! is in the table once. (Its own test binary: the metrics recorder is one per process.)

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use txpipe_jobs::Shutdown;
use txpipe_jobs::ingest::{self, IngestConfig, Outage};
use txpipe_jobs::produce::ProduceConfig;
use txpipe_jobs::telemetry::{Telemetry, TelemetrySettings, names};

use common::{ingest_job, produce_to};

/// The sum over partitions of the lag gauge in a scrape (None: not shown yet).
async fn lag(port: u16) -> Option<f64> {
    let text = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .await
    .unwrap()?;
    let prefix = format!("{}{{", names::INGEST_CONSUMER_LAG);
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Waits (up to 60 s) until the lag reads `want`.
async fn lag_reaches(port: u16, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = lag(port).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the lag metric did not reach {want} (last: {last:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_metric_grows_while_commits_cannot_land_and_returns_to_zero_after() {
    let settings = TelemetrySettings {
        addr: Some("127.0.0.1:0".parse().unwrap()),
        live_within: Duration::from_secs(60),
        check_every: Duration::from_secs(1),
    };
    let telemetry = Telemetry::start(&settings, "ingest", Vec::new()).await.unwrap().expect("served");
    let port = telemetry.addr().port();

    let kafka = common::fresh_topic("lag", 2).await;
    produce_to(&kafka, &ProduceConfig { count: 2_000, seed: 71, ..ProduceConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let outage = Outage::begun();
    let mut job =
        ingest_job(&kafka, dir.path(), IngestConfig { flush_latency: "200ms".into(), ..Default::default() });
    job.hooks.storage_outage = Some(outage.clone());
    let shutdown = Shutdown::new();
    let running = tokio::spawn(ingest::run(job, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(60), outage.failed(1)).await.expect("a commit was attempted");

    // Read, not committed: all of it is lag, and more as more comes.
    lag_reaches(port, 2_000.0).await;
    produce_to(&kafka, &ProduceConfig { count: 1_500, seed: 72, ..ProduceConfig::default() }).await;
    lag_reaches(port, 3_500.0).await;

    outage.end();
    lag_reaches(port, 0.0).await;
    shutdown.trigger();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.written, 3_500, "{report:?}");
    common::assert_every_position_once(&kafka, 2, dir.path()).await;
    telemetry.stop().await;
}
