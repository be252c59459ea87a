//! Shared helpers of the jobs' integration tests: the real services of `scripts/services`,
//! addressed through TXPIPE_TEST_BROKERS (default 127.0.0.1:9092), and a fresh topic per test.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use txpipe_connectors::kafka::{self, KafkaConfig};

pub fn brokers() -> String {
    std::env::var("TXPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A topic name no other test uses.
pub fn unique_topic(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!(
        "test-{name}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

/// Kafka settings for a fresh topic with `partitions` partitions, created on the real broker.
pub async fn fresh_topic(name: &str, partitions: i32) -> KafkaConfig {
    let topic = unique_topic(name);
    // A group of its own: members of one group rebalance together, whatever their topics.
    let config = KafkaConfig {
        brokers: brokers(),
        group_id: topic.clone(),
        topic,
        partitions,
        ..KafkaConfig::default()
    };
    kafka::create_topic(&config, &config.topic, partitions).await.expect("create test topic");
    config
}

/// Reads every message of a topic from the beginning: (partition, key, payload), until
/// `expected` messages arrived or `timeout` passed.
pub fn read_all(
    config: &KafkaConfig,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}-reader", config.topic))
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&config.topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            out.push((
                m.partition(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    // Anything beyond `expected` would be a duplicate: read a little longer to see it.
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push((
                m.partition(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}
