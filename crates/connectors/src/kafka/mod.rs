//! Kafka: settings, errors, the producer of `txpipe produce` and topic administration.
//!
//! In: a [`KafkaConfig`] (brokers, topic, group, extra librdkafka properties). Out: clients
//! configured for txpipe's guarantees (idempotent producer; consumer offsets owned by the sink).

mod admin;
mod config;
mod consumer;
mod error;
mod producer;

pub use admin::{
    WatermarkClient, Watermarks, create_topic, delete_topic, ensure_topic, wait_for_broker, watermarks,
};
pub use config::{HIDDEN, KafkaConfig, is_secret, redact};
pub use consumer::{Consumer, MissingOffsets, OffsetSource, PartitionEvent, Polled, Positioning, StartAt};
pub use error::{KafkaError, Result};
pub use producer::{DeliveryStats, Producer};
