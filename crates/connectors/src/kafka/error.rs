//! Kafka errors, each saying whether a retry can help.

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};

/// What can go wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// Building a client from the settings failed (a bad property, usually); secret values are
    /// hidden from the detail.
    #[error("kafka client for {brokers}: {detail}")]
    Client { brokers: String, detail: String },
    /// A metadata request got no answer.
    #[error("kafka broker {brokers} did not answer a metadata request: {source}")]
    Unreachable { brokers: String, source: RdKafkaError },
    /// A topic could not be created, deleted or found.
    #[error("kafka topic `{topic}`: {message}")]
    Topic { topic: String, message: String },
    /// A message could not be handed to the client.
    #[error("kafka produce to `{topic}`: {source}")]
    Produce { topic: String, source: RdKafkaError },
    /// Reading or positioning the consumer failed.
    #[error("kafka consume from `{topic}`: {source}")]
    Consume { topic: String, source: RdKafkaError },
    /// The consumer's position ran out of the offsets the broker holds (deleted by retention, or
    /// the topic was recreated).
    #[error("kafka consume from `{topic}`: the read position is no longer held by the broker ({detail})")]
    OffsetsLost { topic: String, detail: String },
    /// Partitions could not be put at the sink's positions.
    #[error("kafka consume from `{topic}`: {detail}")]
    Position { topic: String, detail: String },
    /// Messages were sent but not acknowledged.
    #[error("kafka delivery to `{topic}`: {failed} of {sent} messages failed (first error: {first})")]
    Delivery { topic: String, sent: u64, failed: u64, first: String },
}

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

impl KafkaError {
    /// Whether trying again later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            KafkaError::Unreachable { .. } => true,
            KafkaError::Client { .. } | KafkaError::Delivery { .. } => false,
            KafkaError::Topic { .. } | KafkaError::OffsetsLost { .. } | KafkaError::Position { .. } => false,
            KafkaError::Produce { source, .. } | KafkaError::Consume { source, .. } => transient(source),
        }
    }
}

/// Errors of librdkafka that go away by themselves (broker down, leader moving, queue full).
pub fn transient(e: &RdKafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        )
    )
}
