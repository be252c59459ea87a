//! Topic administration: wait for the broker, create or delete a topic.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaConfig, KafkaError, Result};
use crate::retry::Backoff;

type Admin = AdminClient<DefaultClientContext>;

fn admin(config: &KafkaConfig) -> Result<Arc<Admin>> {
    config.client_config(&[]).create::<Admin>().map(Arc::new).map_err(|source| config.client_error(source))
}

/// Partitions of `topic`, or `None` when the broker does not know it. Blocking.
fn partitions(admin: &Admin, brokers: &str, topic: &str) -> Result<Option<usize>> {
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|source| KafkaError::Unreachable { brokers: brokers.to_string(), source })?;
    Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| match t.error() {
        None => Some(t.partitions().len()),
        Some(_) => None,
    }))
}

/// Waits (with backoff) until the brokers answer, creates `config.topic` with
/// `config.partitions` partitions when it is missing, and returns its partition count.
pub async fn ensure_topic(config: &KafkaConfig, backoff: Backoff) -> Result<usize> {
    if let Some(n) = wait_for_broker(config, backoff).await? {
        return Ok(n);
    }
    create_topic(config, &config.topic, config.partitions).await?;
    tracing::info!(topic = %config.topic, partitions = config.partitions, "created kafka topic");
    Ok(config.partitions as usize)
}

/// Waits (with backoff) until the brokers answer; returns the topic's partition count, or None
/// when the topic does not exist (yet).
pub async fn wait_for_broker(config: &KafkaConfig, backoff: Backoff) -> Result<Option<usize>> {
    let client = admin(config)?;
    let (brokers, topic) = (config.brokers.clone(), config.topic.clone());
    let found = backoff
        .retry("kafka metadata request", KafkaError::retryable, || {
            let (client, brokers, topic) = (client.clone(), brokers.clone(), topic.clone());
            async move {
                tokio::task::spawn_blocking(move || partitions(&client, &brokers, &topic))
                    .await
                    .map_err(|e| KafkaError::Topic { topic: String::new(), message: e.to_string() })?
            }
        })
        .await?;
    Ok(found)
}

/// Creates a topic (replication factor 1); an existing topic is left as it is.
pub async fn create_topic(config: &KafkaConfig, topic: &str, partitions: i32) -> Result<()> {
    let client = admin(config)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = client
        .create_topics([&new], &opts)
        .await
        .map_err(|e| KafkaError::Topic { topic: topic.to_string(), message: e.to_string() })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(KafkaError::Topic { topic: t, message: format!("create failed: {code}") });
            }
        }
    }
    Ok(())
}

/// Deletes a topic; a missing one is not an error.
pub async fn delete_topic(config: &KafkaConfig, topic: &str) -> Result<()> {
    let client = admin(config)?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = client
        .delete_topics(&[topic], &opts)
        .await
        .map_err(|e| KafkaError::Topic { topic: topic.to_string(), message: e.to_string() })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((t, code)) => {
                return Err(KafkaError::Topic { topic: t, message: format!("delete failed: {code}") });
            }
        }
    }
    Ok(())
}

/// One partition's offsets: the first still kept (`low`) and the next to be written (`high`,
/// the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Watermarks {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// A client that asks the brokers for watermarks, kept for repeated asks (one connection).
#[derive(Clone)]
pub struct WatermarkClient {
    consumer: Arc<rdkafka::consumer::BaseConsumer>,
    brokers: String,
}

impl std::fmt::Debug for WatermarkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatermarkClient").field("brokers", &self.brokers).finish()
    }
}

impl WatermarkClient {
    pub fn new(config: &KafkaConfig) -> Result<WatermarkClient> {
        let consumer = config.client_config(&[]).create().map_err(|source| config.client_error(source))?;
        Ok(WatermarkClient { consumer: Arc::new(consumer), brokers: config.brokers.clone() })
    }

    /// The partition count of `topic` (None: the topic does not exist), from one metadata
    /// request: an unreachable broker is an error at once.
    pub async fn partitions(&self, topic: &str) -> Result<Option<usize>> {
        use rdkafka::consumer::Consumer;
        let (consumer, brokers, topic) = (self.consumer.clone(), self.brokers.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let md = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .map_err(|source| KafkaError::Unreachable { brokers, source })?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len()))
        })
        .await
        .map_err(|e| KafkaError::Topic { topic: String::new(), message: e.to_string() })?
    }

    /// The watermarks of every partition of `topic` (None: the topic does not exist). One
    /// attempt: an unreachable broker is an error at once.
    pub async fn watermarks(&self, topic: &str) -> Result<Option<Vec<Watermarks>>> {
        use rdkafka::consumer::Consumer;
        let (consumer, brokers, topic) = (self.consumer.clone(), self.brokers.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let unreachable = |source| KafkaError::Unreachable { brokers: brokers.clone(), source };
            let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)).map_err(unreachable)?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(t.partitions().len());
            for p in t.partitions() {
                let (low, high) =
                    consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(5)).map_err(unreachable)?;
                out.push(Watermarks { partition: p.id(), low, high });
            }
            out.sort_by_key(|w| w.partition);
            Ok(Some(out))
        })
        .await
        .map_err(|e| KafkaError::Topic { topic: String::new(), message: e.to_string() })?
    }
}

/// The watermarks of every partition of `topic`, with a client made for the purpose (see
/// [`WatermarkClient::watermarks`]).
pub async fn watermarks(config: &KafkaConfig, topic: &str) -> Result<Option<Vec<Watermarks>>> {
    WatermarkClient::new(config)?.watermarks(topic).await
}
