//! Kafka settings, as read from config (`[kafka]`), environment and flags.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use txpipe_core::Error as ConfigError;

/// `[kafka]`: where the events are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `HOST:PORT[,HOST:PORT...]`.
    pub brokers: String,
    /// The events' topic.
    pub topic: String,
    /// Consumer group of `txpipe ingest` (offsets there are a monitoring hint only).
    pub group_id: String,
    /// Partitions of a topic that txpipe creates when it is missing.
    pub partitions: i32,
    /// Attempts to reach the brokers at start (exponential backoff from 0.2 s to 10 s between
    /// them) before giving up with an error.
    pub connect_attempts: u32,
    /// Extra librdkafka properties passed as given (security, SASL, tuning); they override
    /// txpipe's own.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "transactions".into(),
            group_id: "txpipe-ingest".into(),
            partitions: 4,
            connect_attempts: 8,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Checks the settings before any connection is tried.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let hosts: Vec<&str> = self.brokers.split(',').map(str::trim).collect();
        let well_formed = |h: &&str| {
            h.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        };
        if hosts.is_empty() || !hosts.iter().all(well_formed) {
            return Err(ConfigError::config("kafka.brokers", &self.brokers, "HOST:PORT[,HOST:PORT...]"));
        }
        if !valid_topic(&self.topic) {
            return Err(ConfigError::config(
                "kafka.topic",
                &self.topic,
                "1 to 249 characters of a-z, A-Z, 0-9, '.', '_' or '-'",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::config("kafka.group_id", &self.group_id, "a non-empty group id"));
        }
        if !(1..=10_000).contains(&self.partitions) {
            return Err(ConfigError::config(
                "kafka.partitions",
                self.partitions,
                "a whole number from 1 to 10000",
            ));
        }
        if self.connect_attempts == 0 {
            return Err(ConfigError::config("kafka.connect_attempts", 0, "at least 1"));
        }
        Ok(())
    }

    /// How to retry reaching the brokers at start.
    pub fn connect_backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff { attempts: self.connect_attempts, ..crate::retry::Backoff::default() }
    }

    /// A librdkafka configuration with the brokers, the given defaults, then the user's
    /// properties on top.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Kafka's own rule for topic names.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() < 250
        && t != "."
        && t != ".."
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key_and_the_form() {
        let ok = KafkaConfig::default();
        assert!(ok.validate().is_ok());
        let bad = |edit: fn(&mut KafkaConfig)| {
            let mut c = KafkaConfig::default();
            edit(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(
            bad(|c| c.brokers = "localhost".into())
                .contains("`kafka.brokers` = \"localhost\": expected HOST:PORT")
        );
        assert!(bad(|c| c.brokers = "a:1,b:x".into()).contains("kafka.brokers"));
        assert!(bad(|c| c.topic = "a b".into()).contains("kafka.topic"));
        assert!(bad(|c| c.partitions = 0).contains("kafka.partitions"));
        let multi = KafkaConfig { brokers: "k1:9092, k2:9092".into(), ..Default::default() };
        assert!(multi.validate().is_ok());
    }
}
