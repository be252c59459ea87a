//! `txpipe ingest` in process, against the real Kafka broker, into real Delta tables in
//! temporary folders.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use txpipe_connectors::delta::arrow::array::Int64Array;
use txpipe_core::generator::{Generator, MalformedKind};
use txpipe_core::schema::Schema;
use txpipe_jobs::Shutdown;
use txpipe_jobs::ingest::{self, IngestConfig, Outage};
use txpipe_jobs::produce::ProduceConfig;

struct Expected {
    /// Valid transaction ids.
    valid: Vec<String>,
    /// Malformed payloads and their kind.
    malformed: Vec<(Vec<u8>, MalformedKind)>,
}

/// What `produce` sends for these settings, computed by the same generator.
fn expected(config: &ProduceConfig) -> Expected {
    let settings = config.validate().unwrap();
    let mut g = Generator::new(&Schema::default_schema(), settings.generator).unwrap();
    let (mut payload, mut key) = (Vec::new(), Vec::new());
    let mut e = Expected { valid: Vec::new(), malformed: Vec::new() };
    for _ in 0..config.count {
        let t = g.next_into(&mut payload, &mut key);
        match t.malformed {
            None => e.valid.push(t.transaction_id),
            Some(kind) => e.malformed.push((payload.clone(), kind)),
        }
    }
    e
}

use common::{ingest_job, produce_to};

fn idle(secs: f64) -> IngestConfig {
    IngestConfig { exit_when_idle: Some(secs), flush_latency: "300ms".into(), ..IngestConfig::default() }
}

async fn open(path: &std::path::Path) -> deltalake_table::Table {
    deltalake_table::open(path).await
}

/// Thin helpers over the connectors' reader.
mod deltalake_table {
    use txpipe_connectors::delta::arrow::array::RecordBatch;
    pub struct Table(pub Vec<RecordBatch>, pub u64);
    pub async fn open(path: &std::path::Path) -> Table {
        let url = url::Url::from_directory_path(path).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        let rows = txpipe_connectors::delta::read_rows(&table).await.unwrap();
        Table(rows, table.version().unwrap())
    }
}

fn strings(t: &deltalake_table::Table, column: &str) -> Vec<String> {
    txpipe_connectors::delta::string_values(&t.0, column).expect("a string column")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_events_land_once_and_bad_ones_in_quarantine_with_their_reason() {
    let kafka = common::fresh_topic("ingest", 4).await;
    let config = ProduceConfig { count: 20_000, seed: 21, malformed_rate: 0.05, ..ProduceConfig::default() };
    produce_to(&kafka, &config).await;
    let dir = tempfile::tempdir().unwrap();
    let report = ingest::run(ingest_job(&kafka, dir.path(), idle(3.0)), Shutdown::new()).await.unwrap();
    let want = expected(&config);
    assert_eq!(report.written, want.valid.len() as u64);
    assert_eq!(report.quarantined, want.malformed.len() as u64);

    let clean = open(&dir.path().join("clean")).await;
    let mut ids = strings(&clean, "transaction_id");
    ids.sort();
    let mut valid = want.valid.clone();
    valid.sort();
    assert_eq!(ids, valid, "exactly the valid ids, each once");
    assert_eq!(Some(clean.1), report.clean_version);

    let quarantine = open(&dir.path().join("quarantine")).await;
    let raws = strings(&quarantine, "raw");
    let errors = strings(&quarantine, "error");
    let mut got: Vec<(String, String)> = raws.into_iter().zip(errors).collect();
    got.sort();
    let mut wanted: Vec<(String, String)> = want
        .malformed
        .iter()
        .map(|(p, k)| (String::from_utf8(p.clone()).unwrap(), k.rejection().code().to_string()))
        .collect();
    wanted.sort();
    assert_eq!(got.len(), wanted.len());
    for ((raw, error), (want_raw, want_code)) in got.iter().zip(&wanted) {
        assert_eq!(raw, want_raw, "the payload is kept byte for byte");
        assert!(error.starts_with(&format!("{want_code}: ")), "{error} for {raw}");
    }
    // Every malformed kind made it, with its reason.
    let codes: std::collections::BTreeSet<&str> =
        got.iter().map(|(_, e)| e.split(':').next().unwrap()).collect();
    for kind in MalformedKind::ALL {
        assert!(codes.contains(kind.rejection().code()), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_after_the_stored_offsets_without_loss_or_duplicates() {
    let kafka = common::fresh_topic("ingest-restart", 3).await;
    let first = ProduceConfig { count: 3_000, seed: 31, ..ProduceConfig::default() };
    produce_to(&kafka, &first).await;
    let dir = tempfile::tempdir().unwrap();
    let r1 = ingest::run(ingest_job(&kafka, dir.path(), idle(2.0)), Shutdown::new()).await.unwrap();
    assert_eq!(r1.written, 3_000);
    let second = ProduceConfig { count: 2_000, seed: 32, ..ProduceConfig::default() };
    produce_to(&kafka, &second).await;
    // A new consumer group: the group's offsets are not what positions the reader.
    let mut other_group = kafka.clone();
    other_group.group_id = format!("{}-second", kafka.topic);
    let r2 = ingest::run(ingest_job(&other_group, dir.path(), idle(2.0)), Shutdown::new()).await.unwrap();
    assert_eq!(r2.written, 2_000, "only the new events");
    let clean = open(&dir.path().join("clean")).await;
    let ids = strings(&clean, "transaction_id");
    assert_eq!(ids.len(), 5_000);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 5_000);
    let offsets: BTreeMap<i32, i64> = clean.0.iter().fold(BTreeMap::new(), |mut m, b| {
        let p = b
            .column_by_name("kafka_partition")
            .unwrap()
            .as_any()
            .downcast_ref::<txpipe_connectors::delta::arrow::array::Int32Array>()
            .unwrap();
        let o = b.column_by_name("kafka_offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            let e = m.entry(p.value(i)).or_insert(-1);
            *e = (*e).max(o.value(i));
        }
        m
    });
    assert_eq!(offsets.len(), 3);
    // A fresh topic numbers each partition from 0 without gaps: every offset is in the table.
    assert_eq!(offsets.values().map(|o| o + 1).sum::<i64>(), 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_ids_are_all_kept_wherever_commits_and_restarts_fall() {
    let kafka = common::fresh_topic("ingest-repeats", 1).await;
    let config = ProduceConfig { count: 500, seed: 41, ..ProduceConfig::default() };
    produce_to(&kafka, &config).await;
    produce_to(&kafka, &config).await; // the same 500 events again
    let dir = tempfile::tempdir().unwrap();
    // Commits of 300 rows: repeats fall inside one commit and across commits.
    let settings = IngestConfig { flush_rows: 300, flush_latency: "5s".into(), ..idle(2.0) };
    let first = ingest::run(ingest_job(&kafka, dir.path(), settings.clone()), Shutdown::new()).await.unwrap();
    assert!(first.written == 1_000 && first.commits >= 3, "{first:?}");
    // After a restart, a third copy.
    produce_to(&kafka, &config).await;
    let second = ingest::run(ingest_job(&kafka, dir.path(), settings), Shutdown::new()).await.unwrap();
    assert_eq!(second.written, 500, "{second:?}");
    let clean = open(&dir.path().join("clean")).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in strings(&clean, "transaction_id") {
        *counts.entry(id).or_default() += 1;
    }
    let want = expected(&config);
    assert_eq!(counts.len(), want.valid.len());
    assert!(counts.values().all(|&n| n == 3), "every copy of every id, whatever the commit boundaries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_commits_what_is_buffered_and_returns() {
    let kafka = common::fresh_topic("ingest-stop", 2).await;
    produce_to(&kafka, &ProduceConfig { count: 2_000, seed: 51, ..ProduceConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    // A long latency: only the stop can cause the commit.
    let settings = IngestConfig { flush_latency: "1h".into(), ..IngestConfig::default() };
    let shutdown = Shutdown::new();
    let run = tokio::spawn(ingest::run(ingest_job(&kafka, dir.path(), settings), shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    shutdown.trigger();
    let report = tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap().unwrap();
    assert_eq!(report.written, 2_000);
    assert_eq!(report.commits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_by_another_writer_after_ours_is_seen_before_the_next_flush() {
    use txpipe_connectors::delta::{EVENT_DATE, Table, clean_schema};
    let kafka = common::fresh_topic("ingest-other-writer", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let clean_path = dir.path().join("clean");
    produce_to(&kafka, &ProduceConfig { count: 500, seed: 41, ..ProduceConfig::default() }).await;
    // Full buffers of 500 rows are flushed; the latency is long enough never to flush first.
    let config = IngestConfig {
        flush_rows: 500,
        flush_latency: "60s".into(),
        exit_when_idle: Some(3.0),
        ..IngestConfig::default()
    };
    let ingest = tokio::spawn(ingest::run(ingest_job(&kafka, dir.path(), config), Shutdown::new()));
    // Its first commit: offsets 0..499.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !clean_path.join("_delta_log").join("00000000000000000001.json").exists() {
        assert!(std::time::Instant::now() < deadline, "no first commit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another writer of the same stream says it has stored offsets 500..999 (no rows).
    let mut other = Table::open_or_create(
        &clean_path.display().to_string(),
        &BTreeMap::new(),
        clean_schema(&Schema::default_schema()),
        Some(EVENT_DATE),
        &ingest::app_prefix(&kafka.topic),
        10,
    )
    .await
    .unwrap();
    other.commit(Vec::new(), &BTreeMap::from([(0, 999)]), serde_json::Map::new()).await.unwrap();
    // The next 500 events are offsets 500..999: ingest must not write them again.
    produce_to(&kafka, &ProduceConfig { count: 500, seed: 42, ..ProduceConfig::default() }).await;
    let report = ingest.await.unwrap().unwrap();
    assert_eq!((report.written, report.discarded), (500, 500), "{report:?}");
    let clean = open(&clean_path).await;
    assert_eq!(strings(&clean, "transaction_id").len(), 500);
    assert_eq!(clean.1, 2, "only the two commits: ingest's first and the other writer's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_beside_ingest_keeps_files_few_and_rows_the_same() {
    let kafka = common::fresh_topic("ingest-compact", 2).await;
    produce_to(
        &kafka,
        &ProduceConfig { count: 6_000, seed: 71, malformed_rate: 0.02, ..ProduceConfig::default() },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Commits of 500 rows leave a dozen small files; compaction every second folds them.
    let settings = IngestConfig { flush_rows: 500, compact_interval: "1s".into(), ..idle(4.0) };
    let report = ingest::run(ingest_job(&kafka, dir.path(), settings), Shutdown::new()).await.unwrap();
    assert!(report.commits >= 10, "{report:?}");
    let table = txpipe_connectors::delta::open_existing(
        &dir.path().join("clean").display().to_string(),
        &Default::default(),
    )
    .await
    .unwrap();
    let files = txpipe_connectors::delta::data_files(&table).unwrap().len();
    // One file per event date after compaction (the events span 7 days), not one per commit.
    assert!(files <= 8, "{files} data files after {} commits", report.commits);
    common::assert_every_position_once(&kafka, 2, dir.path()).await;
}

/// Retention deletes offsets before ingest read them: an error naming them by default, or
/// (missing_offsets = "skip") a skip that is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_deleted_before_they_were_read_are_reported_or_skipped_and_counted() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let kafka = common::fresh_topic("ingest-retention", 1).await;
    produce_to(&kafka, &ProduceConfig { count: 1_000, seed: 81, ..ProduceConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let first = ingest::run(ingest_job(&kafka, dir.path(), idle(2.0)), Shutdown::new()).await.unwrap();
    assert_eq!(first.written, 1_000);
    // 1,000 more, of which retention deletes the first 500 before ingest runs again.
    produce_to(&kafka, &ProduceConfig { count: 1_000, seed: 82, ..ProduceConfig::default() }).await;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    let mut upto = rdkafka::TopicPartitionList::new();
    upto.add_partition_offset(&kafka.topic, 0, rdkafka::Offset::Offset(1_500)).unwrap();
    admin.delete_records(&upto, &AdminOptions::new()).await.unwrap();

    let failed = ingest::run(ingest_job(&kafka, dir.path(), idle(2.0)), Shutdown::new()).await.unwrap_err();
    let message = failed.to_string();
    assert!(
        message.contains("500 offsets (1000..=1499)") && message.contains("missing_offsets"),
        "{message}"
    );
    let skip = IngestConfig { missing_offsets: "skip".into(), ..idle(2.0) };
    let second = ingest::run(ingest_job(&kafka, dir.path(), skip), Shutdown::new()).await.unwrap();
    assert_eq!((second.written, second.skipped_offsets), (500, 500), "{second:?}");
    let clean = open(&dir.path().join("clean")).await;
    assert_eq!(strings(&clean, "transaction_id").len(), 1_500);
}

/// A crash after the quarantine commit and before the clean one: the next run writes every
/// clean row and no quarantined row twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_quarantine_and_the_clean_commit_duplicates_nothing() {
    use txpipe_jobs::ingest::{Gate, Hooks};
    let kafka = common::fresh_topic("ingest-crash-between", 2).await;
    let config = ProduceConfig { count: 3_000, seed: 83, malformed_rate: 0.1, ..ProduceConfig::default() };
    produce_to(&kafka, &config).await;
    let dir = tempfile::tempdir().unwrap();
    let held = Gate::closed();
    let mut job = ingest_job(&kafka, dir.path(), IngestConfig { flush_latency: "5s".into(), ..idle(2.0) });
    job.hooks = Hooks { before_commit: Some(held.clone()), ..Hooks::default() };
    let run = tokio::spawn(ingest::run(job, Shutdown::new()));
    tokio::time::timeout(Duration::from_secs(90), held.reached(1)).await.expect("a commit reaches the hook");
    // The quarantine commit landed; the process dies before the clean commit.
    let quarantine = open(&dir.path().join("quarantine")).await;
    assert!(
        !quarantine.0.is_empty() && !dir.path().join("clean/_delta_log/00000000000000000001.json").exists()
    );
    run.abort();
    let _ = run.await;
    let again = ingest::run(ingest_job(&kafka, dir.path(), idle(2.0)), Shutdown::new()).await.unwrap();
    assert!(again.written > 0, "{again:?}");
    common::assert_every_position_once(&kafka, 2, dir.path()).await;
}

/// A stop asked while the table's storage is away: ingest does not wait for the storage (the
/// outage here lasts until after the run returned), commits nothing, says so, and the next start
/// reads what was not committed: every Kafka position once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_storage_outage_stops_at_once_and_the_next_start_resumes() {
    let kafka = common::fresh_topic("ingest-outage", 2).await;
    produce_to(&kafka, &ProduceConfig { count: 2_000, seed: 41, ..ProduceConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let before = ingest::run(ingest_job(&kafka, dir.path(), idle(2.0)), Shutdown::new()).await.unwrap();
    assert_eq!(before.written, 2_000);
    produce_to(&kafka, &ProduceConfig { count: 3_000, seed: 42, ..ProduceConfig::default() }).await;

    let outage = Outage::begun();
    let mut job = ingest_job(
        &kafka,
        dir.path(),
        IngestConfig { flush_latency: "200ms".into(), ..IngestConfig::default() },
    );
    job.hooks.storage_outage = Some(outage.clone());
    let shutdown = Shutdown::new();
    let running = tokio::spawn(ingest::run(job, shutdown.clone()));
    // Four failed commits: the retries are waiting 1.6 s, then 3.2 s, ... for the storage.
    tokio::time::timeout(Duration::from_secs(60), outage.failed(4)).await.expect("commits were attempted");
    let asked = std::time::Instant::now();
    shutdown.trigger();
    let report = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("ingest stopped without waiting for the storage")
        .unwrap()
        .unwrap();
    println!("ingest stopped {:.3} s after the stop was asked", asked.elapsed().as_secs_f64());
    outage.end();
    assert!(report.stopped_in_outage, "{report:?}");
    assert_eq!((report.written, report.commits), (0, 0), "nothing committed during the outage");
    assert!(report.discarded > 0, "the messages read were left to the next start: {report:?}");
    assert_eq!(open(&dir.path().join("clean")).await.1, before.clean_version.unwrap(), "no commit");

    let after = ingest::run(ingest_job(&kafka, dir.path(), idle(2.0)), Shutdown::new()).await.unwrap();
    assert_eq!(after.written, 3_000, "the next start wrote what the stopped run did not");
    common::assert_every_position_once(&kafka, 2, dir.path()).await;
}
