//! The idempotent producer behind `txpipe produce`.
//!
//! In: key and payload bytes. Out: messages on the topic, with delivery reports counted; a
//! full local queue is drained by polling, never by dropping a message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};

use super::{KafkaConfig, KafkaError, Result};

/// Delivery reports counted by the client's callback.
#[derive(Default)]
pub struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// Counts of acknowledged and failed messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// A producer for one topic.
pub struct Producer {
    inner: BaseProducer<Deliveries>,
    topic: String,
    sent: u64,
}

impl Producer {
    /// An idempotent producer tuned for throughput (batches of up to 1 MB, lz4).
    pub fn new(config: &KafkaConfig) -> Result<Producer> {
        let inner = config
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "20"),
                ("batch.num.messages", "10000"),
                ("batch.size", "1000000"),
                ("compression.codec", "lz4"),
                ("queue.buffering.max.messages", "500000"),
                ("queue.buffering.max.kbytes", "524288"),
                ("message.timeout.ms", "120000"),
            ])
            .create_with_context(Deliveries::default())
            .map_err(|source| config.client_error(source))?;
        Ok(Producer { inner, topic: config.topic.clone(), sent: 0 })
    }

    /// Hands one message to the client. When its queue is full, serves delivery reports until
    /// there is room; the message is never dropped.
    pub fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<()> {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => break,
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.inner.poll(Duration::from_millis(5));
                }
                Err((source, _)) => return Err(KafkaError::Produce { topic: self.topic.clone(), source }),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(1024) {
            self.inner.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Counts so far.
    pub fn stats(&self) -> DeliveryStats {
        let ctx = self.inner.context();
        DeliveryStats {
            sent: self.sent,
            delivered: ctx.delivered.load(Ordering::Relaxed),
            failed: ctx.failed.load(Ordering::Relaxed),
        }
    }

    /// Waits until every message is acknowledged or has failed; an error when any failed.
    pub fn flush(&mut self, timeout: Duration) -> Result<DeliveryStats> {
        let flushed = self.inner.flush(timeout);
        self.inner.poll(Duration::ZERO);
        let stats = self.stats();
        if let Err(source) = flushed {
            return Err(KafkaError::Delivery {
                topic: self.topic.clone(),
                sent: stats.sent,
                failed: stats.sent - stats.delivered,
                first: format!("not acknowledged within {timeout:?}: {source}"),
            });
        }
        if stats.failed > 0 {
            let first =
                self.inner.context().first_error.lock().ok().and_then(|f| f.clone()).unwrap_or_default();
            return Err(KafkaError::Delivery {
                topic: self.topic.clone(),
                sent: stats.sent,
                failed: stats.failed,
                first,
            });
        }
        Ok(stats)
    }
}
