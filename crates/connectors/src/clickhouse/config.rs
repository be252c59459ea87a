//! ClickHouse settings, as read from config (`[clickhouse]`), environment and flags.

use serde::{Deserialize, Serialize};
use txpipe_core::Error as ConfigError;

/// `[clickhouse]`: where predictions are served from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// Database of txpipe's tables and view.
    pub database: String,
    /// A cluster of `remote_servers` to serve from (empty: the one server of `url`): the
    /// tables are made `ON CLUSTER` as ReplicatedReplacingMergeTree tables `<name>_local`, with
    /// Distributed tables of the usual names over them (rows spread by transaction id), and
    /// inserts wait until every shard has its rows.
    pub cluster: String,
    /// User (ClickHouse's `default` when empty).
    pub user: String,
    /// Password; prefer the environment variable TXPIPE_CLICKHOUSE_PASSWORD to a file.
    #[serde(skip_serializing)]
    pub password: String,
    /// Event fields copied beside each prediction, for filtering (absent: those of
    /// `account_id`, `amount`, `merchant_category` the schema has).
    pub fields: Option<Vec<String>>,
    /// Rows per insert into the serving tables at most.
    pub insert_rows: usize,
    /// How inserts travel: `lz4` (compressed), `none`, or `auto` (the default): none when the
    /// server is on this machine (a loopback address or `localhost`), where compressing costs
    /// CPU and saves no network, lz4 otherwise.
    pub compression: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            cluster: String::new(),
            user: String::new(),
            password: String::new(),
            fields: None,
            insert_rows: 100_000,
            compression: "auto".into(),
        }
    }
}

impl ClickHouseConfig {
    /// Checks the settings before any connection is tried.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ok = url::Url::parse(&self.url)
            .ok()
            .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(ConfigError::config(
                "clickhouse.url",
                &self.url,
                "http://HOST:PORT or https://HOST:PORT",
            ));
        }
        let name_ok = !self.database.is_empty()
            && self.database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !self.database.starts_with(|c: char| c.is_ascii_digit());
        if !name_ok {
            return Err(ConfigError::config(
                "clickhouse.database",
                &self.database,
                "a database name of letters, digits and '_', not starting with a digit",
            ));
        }
        let cluster_ok = self.cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !cluster_ok {
            return Err(ConfigError::config(
                "clickhouse.cluster",
                &self.cluster,
                "a cluster name of remote_servers (letters, digits, '_', '-'), or empty for one server",
            ));
        }
        if self.insert_rows == 0 {
            return Err(ConfigError::config("clickhouse.insert_rows", 0, "at least 1"));
        }
        if !matches!(self.compression.as_str(), "auto" | "lz4" | "none") {
            return Err(ConfigError::config(
                "clickhouse.compression",
                &self.compression,
                "auto, lz4 or none",
            ));
        }
        Ok(())
    }

    /// Whether inserts are compressed (see [`Self::compression`]); the URL is a valid one.
    pub fn compressed(&self) -> bool {
        match self.compression.as_str() {
            "none" => false,
            "lz4" => true,
            _ => !url::Url::parse(&self.url).ok().is_some_and(|u| match u.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_off_on_this_machine_only_when_auto() {
        let at = |url: &str, compression: &str| {
            ClickHouseConfig { url: url.into(), compression: compression.into(), ..Default::default() }
                .compressed()
        };
        assert!(!at("http://127.0.0.1:8123", "auto"));
        assert!(!at("http://localhost:8123", "auto"));
        assert!(!at("http://[::1]:8123", "auto"));
        assert!(at("http://10.0.0.5:8123", "auto"));
        assert!(at("https://clickhouse.example:8443", "auto"));
        assert!(at("http://127.0.0.1:8123", "lz4"));
        assert!(!at("http://10.0.0.5:8123", "none"));
    }

    #[test]
    fn validation() {
        assert!(ClickHouseConfig::default().validate().is_ok());
        let c = ClickHouseConfig { url: "127.0.0.1:8123".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("clickhouse.url"));
        let c = ClickHouseConfig { database: "my-db".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("clickhouse.database"));
        let c = ClickHouseConfig { cluster: "a b".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("clickhouse.cluster"));
        let c = ClickHouseConfig { compression: "zstd".into(), ..Default::default() };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("clickhouse.compression") && e.contains("auto, lz4 or none"), "{e}");
    }
}
