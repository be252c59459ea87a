//! Ingest under consumer-group events, against the real broker: a commit held while a rebalance
//! reads positions (the race, forced), and members joining and leaving under the eager, the
//! incremental (`cooperative-sticky`) and Kafka 4's consumer protocol. Every Kafka position
//! must land once in clean ∪ quarantine, none missing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use txpipe_connectors::kafka::KafkaConfig;
use txpipe_jobs::Shutdown;
use txpipe_jobs::ingest::{self, Gate, Hooks, IngestConfig};
use txpipe_jobs::produce::ProduceConfig;

use common::{assert_every_position_once, fresh_topic, ingest_job, produce_to};

/// A plain member of the group that holds whatever it is given, until `stop`.
fn bystander(kafka: &KafkaConfig, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .create()
        .expect("bystander consumer");
    consumer.subscribe(&[&kafka.topic]).expect("subscribe");
    std::thread::spawn(move || {
        let mut most = 0;
        while !stop.load(Ordering::SeqCst) {
            let _ = consumer.poll(Duration::from_millis(50));
            most = most.max(consumer.assignment().map(|a| a.count()).unwrap_or(0));
        }
        most
    })
}

async fn within<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} within {secs} s"))
}

/// The race seen in production: a member is assigned partitions, with start positions read
/// while its own commit of those partitions is still in flight; the commit lands afterwards.
/// The next commit from the stale positions must be refused, whether or not the table's version
/// is the writer's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_held_while_a_rebalance_reads_positions_writes_nothing_twice() {
    let kafka = fresh_topic("race", 4).await;
    let events = ProduceConfig { count: 4_000, seed: 61, malformed_rate: 0.02, ..ProduceConfig::default() };
    produce_to(&kafka, &events).await;
    let dir = tempfile::tempdir().unwrap();
    let held = Gate::closed();
    let assigned = Gate::closed();
    let config = IngestConfig {
        flush_latency: "300ms".into(),
        // No commit before a revocation: the rebalance goes ahead while the commit is held.
        revoke_commit_timeout: "0s".into(),
        exit_when_idle: Some(3.0),
        ..IngestConfig::default()
    };
    let mut job = ingest_job(&kafka, dir.path(), config);
    job.hooks =
        Hooks { before_commit: Some(held.clone()), assigned: Some(assigned.clone()), ..Hooks::default() };
    let run = tokio::spawn(ingest::run(job, Shutdown::new()));

    // The first commit passed its position check and waits to commit.
    within("the first commit reaches the hook", 90, held.reached(1)).await;
    assert_eq!(assigned.arrivals(), 1);
    // Another member joins: ingest gives up its partitions and takes half of them back, their
    // positions read from the table as it was before the held commit.
    let stop = Arc::new(AtomicBool::new(false));
    let other = bystander(&kafka, stop.clone());
    within("the rebalance reaches ingest", 60, assigned.reached(2)).await;
    // Now the held commit lands.
    held.open();
    // Let ingest read its half again from the stale positions and try to commit it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let bystander_held = other.join().unwrap();
    assert!(bystander_held > 0, "the other member was given partitions");
    let report = within("ingest stops", 120, run).await.unwrap().unwrap();
    assert_every_position_once(&kafka, 4, dir.path()).await;
    assert!(report.discarded > 0, "the stale buffer was refused: {report:?}");
}

/// Members join and leave while events flow, under a partition-assignment protocol given as
/// librdkafka properties; every position lands once, and with the commit before revocation no
/// buffered row is dropped.
async fn members_join_and_leave(name: &str, properties: &[(&str, &str)]) {
    let mut kafka = fresh_topic(name, 4).await;
    kafka.properties = properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let dir = tempfile::tempdir().unwrap();
    let events = ProduceConfig {
        count: 24_000,
        rate: 4_000.0,
        seed: 62,
        malformed_rate: 0.02,
        ..ProduceConfig::default()
    };
    let producer = tokio::spawn({
        let kafka = kafka.clone();
        async move { produce_to(&kafka, &events).await }
    });
    let config = |idle: Option<f64>| IngestConfig {
        flush_latency: "1s".into(),
        exit_when_idle: idle,
        ..IngestConfig::default()
    };
    let first = tokio::spawn(ingest::run(ingest_job(&kafka, dir.path(), config(Some(5.0))), Shutdown::new()));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // A second member joins for a few seconds, then stops (its buffer committed as it leaves).
    let stop_second = Shutdown::new();
    let second = tokio::spawn(ingest::run(ingest_job(&kafka, dir.path(), config(None)), stop_second.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A third joins while the second is there.
    let third = tokio::spawn(ingest::run(ingest_job(&kafka, dir.path(), config(Some(5.0))), Shutdown::new()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_second.trigger();
    within("producing", 60, producer).await.unwrap();
    let reports = [
        within("the first member stops", 180, first).await.unwrap().unwrap(),
        within("the second member stops", 60, second).await.unwrap().unwrap(),
        within("the third member stops", 180, third).await.unwrap().unwrap(),
    ];
    assert_every_position_once(&kafka, 4, dir.path()).await;
    let read: u64 = reports.iter().map(|r| r.read).sum();
    eprintln!("{name}: {read} messages read for 24000 ({} read again); {reports:?}", read - 24_000);
    for r in &reports {
        assert_eq!(r.discarded, 0, "a commit before each revocation: nothing buffered is dropped: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_under_the_eager_protocol() {
    members_join_and_leave("eager", &[("partition.assignment.strategy", "range")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_under_cooperative_sticky() {
    members_join_and_leave("cooperative", &[("partition.assignment.strategy", "cooperative-sticky")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_under_the_consumer_protocol() {
    members_join_and_leave("kip848", &[("group.protocol", "consumer")]).await;
}

/// `start = "latest"`: the end taken at the first assignment is stored at once, so messages
/// that arrive while a rebalance keeps a partition unread are not skipped later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_at_latest_keeps_its_place_across_a_rebalance() {
    let kafka = fresh_topic("latest", 4).await;
    let before = ProduceConfig { count: 400, seed: 63, ..ProduceConfig::default() };
    produce_to(&kafka, &before).await;
    let dir = tempfile::tempdir().unwrap();
    let assigned = Gate::closed();
    let config = IngestConfig {
        start: "latest".into(),
        flush_latency: "300ms".into(),
        exit_when_idle: Some(4.0),
        ..IngestConfig::default()
    };
    let mut job = ingest_job(&kafka, dir.path(), config);
    job.hooks.assigned = Some(assigned.clone());
    let run = tokio::spawn(ingest::run(job, Shutdown::new()));
    within("the first assignment", 90, assigned.reached(1)).await;
    // Another member takes half the partitions; events arrive while it holds them unread.
    let stop = Arc::new(AtomicBool::new(false));
    let other = bystander(&kafka, stop.clone());
    within("the rebalance reaches ingest", 60, assigned.reached(2)).await;
    let after = ProduceConfig { count: 600, seed: 64, ..ProduceConfig::default() };
    produce_to(&kafka, &after).await;
    stop.store(true, Ordering::SeqCst);
    assert!(other.join().unwrap() > 0, "the other member was given partitions");
    let report = within("ingest stops", 120, run).await.unwrap().unwrap();
    assert_eq!(report.written, 600, "exactly the events after the start: {report:?}");
    let positions = common::table_positions(&dir.path().join("clean")).await;
    assert_eq!(positions.len(), 600);
}

/// The positions a test consumer has read, as an [`OffsetSource`]: after a reassignment each
/// partition goes on right after the last message read.
struct ReadSoFar(std::sync::Mutex<std::collections::HashMap<i32, i64>>);

impl txpipe_connectors::kafka::OffsetSource for ReadSoFar {
    fn stored(&self, partitions: &[i32]) -> Result<std::collections::HashMap<i32, Option<i64>>, String> {
        let read = self.0.lock().unwrap();
        Ok(partitions.iter().map(|p| (*p, read.get(p).copied())).collect())
    }
    fn pin(
        &self,
        positions: &std::collections::HashMap<i32, i64>,
    ) -> Result<std::collections::HashMap<i32, Option<i64>>, String> {
        Ok(positions.iter().map(|(p, o)| (*p, Some(*o))).collect())
    }
    fn revoking(&self, _: &[i32]) {}
}

/// Ingest's consumer takes messages in batches from one queue that each partition is forwarded
/// to when it is assigned. Forced here: a member joins mid-read (every partition is taken away
/// and half given back) and leaves again (all given back). Every message still comes through the
/// batches, none through the consumer's own poll, each partition's offsets in order with none
/// missing or repeated, across both reassignments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_reads_follow_every_reassignment_in_order_and_nothing_comes_another_way() {
    use txpipe_connectors::kafka::{Consumer as IngestConsumer, MissingOffsets, Positioning, StartAt};
    let kafka = fresh_topic("batched", 4).await;
    let count = 40_000;
    produce_to(&kafka, &ProduceConfig { count, seed: 71, ..ProduceConfig::default() }).await;
    let source = Arc::new(ReadSoFar(Default::default()));
    let kafka_config = KafkaConfig {
        properties: [("partition.assignment.strategy".to_string(), "range".to_string())].into(),
        ..kafka.clone()
    };
    let read = tokio::task::spawn_blocking(move || {
        let positioning = Positioning { start: StartAt::Earliest, missing: MissingOffsets::Fail };
        let consumer = IngestConsumer::subscribe(&kafka_config, source.clone(), positioning).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (mut bystander_thread, mut phase, mut total) = (None, 0, 0u64);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while total < count && std::time::Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::ZERO) {
                panic!(
                    "a message came through the consumer's own poll: {:?}",
                    m.map(|m| (m.partition(), m.offset()))
                );
            }
            let assigned = consumer.assigned().len();
            let _ = consumer.take_events();
            phase = match phase {
                0 if total > 0 => {
                    bystander_thread = Some(bystander(&kafka_config, stop.clone()));
                    1
                }
                1 if assigned > 0 && assigned < 4 => {
                    stop.store(true, Ordering::SeqCst);
                    2
                }
                2 if assigned == 4 => 3,
                p => p,
            };
            // Slowly until both reassignments happened, so that they fall mid-read.
            let max = if phase < 3 { 10 } else { 1024 };
            consumer.poll_batch(Duration::from_millis(20), max, |m| {
                let (partition, offset, payload) = m.expect("no consume error");
                assert!(payload.is_some_and(|p| !p.is_empty()));
                let mut read = source.0.lock().unwrap();
                let expected = read.get(&partition).map_or(0, |last| last + 1);
                assert_eq!(
                    offset, expected,
                    "partition {partition}: offsets in order, none missing or repeated"
                );
                read.insert(partition, offset);
                total += 1;
            });
            if phase < 3 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        stop.store(true, Ordering::SeqCst);
        let most = bystander_thread.map_or(0, |t| t.join().unwrap());
        (total, phase, most)
    })
    .await
    .unwrap();
    let (total, phase, bystander_most) = read;
    assert_eq!(phase, 3, "a member joined (taking partitions) and left (giving them back) mid-read");
    assert!(bystander_most > 0, "the member that joined held partitions");
    assert_eq!(total, count, "every message read once");
}
