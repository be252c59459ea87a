//! `txpipe produce` against the real Kafka broker of scripts/services.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use txpipe_core::schema::Schema;
use txpipe_jobs::Shutdown;
use txpipe_jobs::produce::{self, Output, ProduceConfig, ProduceJob};

fn job(kafka: txpipe_connectors::kafka::KafkaConfig, config: ProduceConfig) -> ProduceJob {
    ProduceJob { settings: config.validate().unwrap(), kafka, schema: Schema::default_schema() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_events_arrive_exactly_and_match_the_file_output_byte_for_byte() {
    let kafka = common::fresh_topic("produce", 4).await;
    let config = ProduceConfig { count: 5_000, seed: 11, malformed_rate: 0.05, ..ProduceConfig::default() };
    let report = produce::run(job(kafka.clone(), config.clone()), Shutdown::new()).await.unwrap();
    assert_eq!(report.events, 5_000);
    assert_eq!(report.delivered, Some(5_000));
    assert!(report.malformed > 150 && report.malformed < 350, "{}", report.malformed);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let file_job = job(kafka.clone(), ProduceConfig { output: Some(file.display().to_string()), ..config });
    assert_eq!(file_job.settings.output, Output::File(file.clone()));
    produce::run(file_job, Shutdown::new()).await.unwrap();
    let text = std::fs::read(&file).unwrap();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 5_000);

    let messages = common::read_all(&kafka, 4, 5_000, Duration::from_secs(60));
    assert_eq!(messages.len(), 5_000, "exactly the produced count, no loss and no duplicate");
    // Same multiset of payloads: every message is byte-identical to a line of the file.
    let mut expected: HashMap<&[u8], usize> = HashMap::new();
    for l in &lines {
        *expected.entry(l).or_default() += 1;
    }
    for (_, _, payload) in &messages {
        let n = expected
            .get_mut(payload.as_slice())
            .unwrap_or_else(|| panic!("unexpected message {}", String::from_utf8_lossy(payload)));
        assert!(*n > 0, "message seen more often than in the file");
        *n -= 1;
    }
    // Keyed by account: every valid event's key is its account id, and one account stays on
    // one partition.
    let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
    let mut keyed = 0;
    for (partition, key, payload) in &messages {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
            && let Some(acc) = v.get("account_id").and_then(|a| a.as_str())
        {
            assert_eq!(key.as_slice(), acc.as_bytes());
            assert_eq!(*partition_of.entry(key.clone()).or_insert(*partition), *partition);
            keyed += 1;
        }
    }
    assert!(keyed > 4_500, "{keyed}");
    let used: std::collections::HashSet<i32> = messages.iter().map(|m| m.0).collect();
    assert_eq!(used.len(), 4, "all partitions used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_created_with_the_configured_partitions() {
    let mut kafka = txpipe_connectors::kafka::KafkaConfig {
        brokers: common::brokers(),
        topic: common::unique_topic("autocreate"),
        partitions: 3,
        ..Default::default()
    };
    let report = produce::run(
        job(kafka.clone(), ProduceConfig { count: 300, ..ProduceConfig::default() }),
        Shutdown::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.delivered, Some(300));
    kafka.partitions = 99; // ensure_topic must report the real count, not the setting
    let n = txpipe_connectors::kafka::ensure_topic(&kafka, Default::default()).await.unwrap();
    assert_eq!(n, 3);
    let messages = common::read_all(&kafka, 3, 300, Duration::from_secs(30));
    assert_eq!(messages.len(), 300);
    txpipe_connectors::kafka::delete_topic(&kafka, &kafka.topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_ends_the_run_early_with_everything_sent_delivered() {
    let kafka = common::fresh_topic("produce-stop", 2).await;
    let shutdown = Shutdown::new();
    let config = ProduceConfig { count: 1_000_000, rate: 2_000.0, ..ProduceConfig::default() };
    let run = tokio::spawn(produce::run(job(kafka.clone(), config), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert!(report.interrupted);
    assert!(report.events > 0 && report.events < 1_000_000);
    assert_eq!(report.delivered, Some(report.events));
    let messages = common::read_all(&kafka, 2, report.events as usize, Duration::from_secs(30));
    assert_eq!(messages.len() as u64, report.events);
}
