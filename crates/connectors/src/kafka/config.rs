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
        self.validate_properties()
    }

    /// The librdkafka properties that decide how the group and the positions work.
    fn validate_properties(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("kafka.properties.\"{k}\"");
        let get = |k: &str| self.properties.get(k).map(|v| v.trim());
        for owned in ["auto.offset.reset", "group.id", "enable.auto.commit", "enable.auto.offset.store"] {
            if let Some(v) = get(owned) {
                let expected = match owned {
                    "group.id" => "no value here: set `kafka.group_id` (--group-id)",
                    _ => {
                        "no value here: ingest keeps its positions in the Delta table and sets this itself \
                          (where to start: `ingest.start`; offsets deleted by retention: `ingest.missing_offsets`)"
                    }
                };
                return Err(ConfigError::config(key(owned), redact(owned, v), expected));
            }
        }
        if let Some(v) = get("group.protocol")
            && v != "classic"
            && v != "consumer"
        {
            return Err(ConfigError::config(key("group.protocol"), v, "classic or consumer"));
        }
        if let Some(v) = get("partition.assignment.strategy") {
            if self.consumer_protocol() {
                return Err(ConfigError::config(
                    key("partition.assignment.strategy"),
                    v,
                    "no value with group.protocol=consumer (the broker assigns; `group.remote.assignor` \
                     chooses how)",
                ));
            }
            let names: Vec<&str> = v.split(',').map(str::trim).collect();
            let known = names.iter().all(|n| matches!(*n, "range" | "roundrobin" | "cooperative-sticky"));
            let mixed = names.contains(&"cooperative-sticky") && names.len() > 1;
            if names.is_empty() || !known || mixed {
                return Err(ConfigError::config(
                    key("partition.assignment.strategy"),
                    v,
                    "range, roundrobin, range,roundrobin, or cooperative-sticky (alone)",
                ));
            }
        }
        Ok(())
    }

    /// Whether the group uses Kafka 4's consumer protocol (KIP-848) rather than the classic one.
    pub fn consumer_protocol(&self) -> bool {
        self.properties.get("group.protocol").is_some_and(|v| v.trim() == "consumer")
    }

    /// A failure to build a client, with secret values hidden.
    pub fn client_error(&self, source: rdkafka::error::KafkaError) -> super::KafkaError {
        super::KafkaError::Client { brokers: self.brokers.clone(), detail: self.scrub(&source.to_string()) }
    }

    /// `text` with the value of every secret property replaced by `[hidden]`: for error
    /// messages that may quote a property.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.properties {
            if is_secret(k) && !v.is_empty() {
                out = out.replace(v.as_str(), HIDDEN);
            }
        }
        out
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

/// What is printed instead of a secret.
pub const HIDDEN: &str = "[hidden]";

/// Whether a property's value is a secret: passwords, secrets, tokens, JAAS configs, private
/// keys and key stores (as Kafka's own tools, which print them as `[hidden]`).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "credential", "private", "pem", "keystore", "oauthbearer.config"]
        .iter()
        .any(|s| k.contains(s))
        || k.ends_with("key")
}

/// The value to show for `key`: the value itself, or `[hidden]` for a secret.
pub fn redact<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret(key) { HIDDEN } else { value }
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

    fn with(props: &[(&str, &str)]) -> KafkaConfig {
        let properties = props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        KafkaConfig { properties, ..KafkaConfig::default() }
    }

    #[test]
    fn group_properties_are_checked_and_named() {
        for ok in [
            &[("partition.assignment.strategy", "cooperative-sticky")][..],
            &[("partition.assignment.strategy", "range,roundrobin")],
            &[("group.protocol", "consumer")],
            &[("group.protocol", "consumer"), ("group.remote.assignor", "uniform")],
            &[("group.protocol", "classic"), ("partition.assignment.strategy", "range")],
        ] {
            assert!(with(ok).validate().is_ok(), "{ok:?}");
        }
        let err = |props: &[(&str, &str)]| with(props).validate().unwrap_err().to_string();
        let e = err(&[("group.protocol", "consumer"), ("partition.assignment.strategy", "range")]);
        assert!(
            e.contains("kafka.properties.\"partition.assignment.strategy\"")
                && e.contains("group.remote.assignor"),
            "{e}"
        );
        let e = err(&[("partition.assignment.strategy", "cooperative-sticky,range")]);
        assert!(e.contains("cooperative-sticky (alone)"), "{e}");
        assert!(err(&[("group.protocol", "new")]).contains("classic or consumer"));
        let e = err(&[("auto.offset.reset", "latest")]);
        assert!(e.contains("kafka.properties.\"auto.offset.reset\"") && e.contains("ingest.start"), "{e}");
        assert!(err(&[("group.id", "g")]).contains("kafka.group_id"));
    }

    #[test]
    fn secrets_are_hidden_and_other_values_shown() {
        for secret in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.jaas.config",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AZURE_STORAGE_ACCOUNT_KEY",
        ] {
            assert_eq!(redact(secret, "s3cr3t"), "[hidden]", "{secret}");
        }
        for plain in
            ["sasl.username", "security.protocol", "sasl.mechanisms", "AWS_REGION", "AWS_ACCESS_KEY_ID"]
        {
            assert_eq!(redact(plain, "v"), "v", "{plain}");
        }
        let c = with(&[("sasl.password", "hunter2"), ("sasl.username", "alice")]);
        assert_eq!(c.scrub("bad value hunter2 for alice"), "bad value [hidden] for alice");
    }
}
