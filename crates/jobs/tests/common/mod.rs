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

/// Produces `config`'s events into the topic with the real producer job.
pub async fn produce_to(kafka: &KafkaConfig, config: &txpipe_jobs::produce::ProduceConfig) {
    let job = txpipe_jobs::produce::ProduceJob {
        settings: config.validate().unwrap(),
        kafka: kafka.clone(),
        schema: txpipe_core::schema::Schema::default_schema(),
    };
    let report = txpipe_jobs::produce::run(job, txpipe_jobs::Shutdown::new()).await.unwrap();
    assert_eq!(report.delivered, Some(config.count));
}

/// An ingest job of the default schema into `dir/clean` and `dir/quarantine`.
pub fn ingest_job(
    kafka: &KafkaConfig,
    dir: &std::path::Path,
    config: txpipe_jobs::ingest::IngestConfig,
) -> txpipe_jobs::ingest::IngestJob {
    txpipe_jobs::ingest::IngestJob {
        settings: config.validate().unwrap(),
        kafka: kafka.clone(),
        tables: txpipe_connectors::delta::TablesConfig {
            clean: dir.join("clean").display().to_string(),
            quarantine: dir.join("quarantine").display().to_string(),
            ..txpipe_connectors::delta::TablesConfig::default()
        },
        schema: txpipe_core::schema::Schema::default_schema(),
        hooks: Default::default(),
    }
}

/// The (partition, offset) of every row of a Delta table.
pub async fn table_positions(path: &std::path::Path) -> Vec<(i32, i64)> {
    use txpipe_connectors::delta::arrow::array::{Array, Int32Array, Int64Array};
    let table = deltalake::open_table(url::Url::from_directory_path(path).unwrap()).await.unwrap();
    let mut out = Vec::new();
    for b in txpipe_connectors::delta::read_rows(&table).await.unwrap() {
        let p = b.column_by_name("kafka_partition").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
        let o = b.column_by_name("kafka_offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        out.extend((0..b.num_rows()).map(|i| (p.value(i), o.value(i))));
    }
    out
}

/// Every Kafka position of the topic is in `dir/clean` or `dir/quarantine`, exactly once, and
/// nothing else is (a fresh topic numbers each partition from 0 without gaps).
pub async fn assert_every_position_once(kafka: &KafkaConfig, partitions: i32, dir: &std::path::Path) {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("test consumer");
    let mut want = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&kafka.topic, p, Duration::from_secs(10)).unwrap();
        assert_eq!(low, 0, "a fresh topic");
        want.extend((0..high).map(|o| (p, o)));
    }
    let mut got = table_positions(&dir.join("clean")).await;
    if dir.join("quarantine").join("_delta_log").exists() {
        got.extend(table_positions(&dir.join("quarantine")).await);
    }
    got.sort_unstable();
    let twice: Vec<_> = got.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    let set: std::collections::BTreeSet<(i32, i64)> = got.iter().copied().collect();
    let missing: Vec<_> = want.iter().filter(|p| !set.contains(p)).collect();
    assert!(
        twice.is_empty() && missing.is_empty() && set.len() == want.len(),
        "{} positions written twice (first {:?}), {} missing (first {:?}), {} in the tables, {} in the topic",
        twice.len(),
        twice.first(),
        missing.len(),
        missing.first(),
        set.len(),
        want.len()
    );
}

/// Writes `config.count` generated events into the clean table at `dir/clean` (created when
/// missing) as ingest would: partition 0, offsets from `first_offset` on, commits of
/// `commit_rows`; returns each id's true probability and label.
pub async fn write_history(
    dir: &std::path::Path,
    config: &txpipe_core::generator::GeneratorConfig,
    first_offset: i64,
    commit_rows: i64,
) -> std::collections::HashMap<String, (f64, bool)> {
    use std::collections::{BTreeMap, HashMap};
    use txpipe_connectors::delta::{CleanRows, EVENT_DATE, Table, clean_schema};
    use txpipe_core::event::EventParser;
    use txpipe_core::generator::Generator;
    use txpipe_core::schema::Schema;

    let schema = Schema::default_schema();
    let parser = EventParser::new(schema.clone());
    let location = dir.join("clean").display().to_string();
    let mut table = Table::open_or_create(
        &location,
        &BTreeMap::new(),
        clean_schema(&schema),
        Some(EVENT_DATE),
        "test",
        100,
    )
    .await
    .unwrap();
    let mut generator = Generator::new(&schema, config.clone()).unwrap();
    let (mut payload, mut key) = (Vec::new(), Vec::new());
    let mut truth = HashMap::new();
    let mut offset = first_offset;
    let end_all = first_offset + config.count as i64;
    while offset < end_all {
        let mut rows = CleanRows::new(&schema);
        let end = (offset + commit_rows).min(end_all);
        while offset < end {
            let t = generator.next_into(&mut payload, &mut key);
            let mut values = Vec::new();
            if parser.parse(&payload, &mut values).is_ok() {
                rows.push(&values, 0, offset);
                truth.insert(t.transaction_id.clone(), (t.fraud_probability, t.is_fraud));
            }
            offset += 1;
        }
        let batch = rows.finish(0).unwrap();
        table.append(&[batch], &BTreeMap::from([(0, offset - 1)]), serde_json::Map::new()).await.unwrap();
    }
    truth
}

/// ClickHouse settings for a database no other test uses (on the server of `scripts/services`,
/// or TXPIPE_TEST_CLICKHOUSE).
pub fn fresh_clickhouse(name: &str) -> txpipe_connectors::clickhouse::ClickHouseConfig {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    txpipe_connectors::clickhouse::ClickHouseConfig {
        url: std::env::var("TXPIPE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        database: format!("test_{name}_{}_{n}", std::process::id()),
        ..Default::default()
    }
}

/// The text answer of a query.
pub async fn query(config: &txpipe_connectors::clickhouse::ClickHouseConfig, sql: &str) -> String {
    let serving = txpipe_connectors::clickhouse::Serving::new(config, Vec::new());
    serving.fetch_text(sql).await.unwrap()
}
