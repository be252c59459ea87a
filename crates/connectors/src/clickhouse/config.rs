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
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            user: String::new(),
            password: String::new(),
            fields: None,
            insert_rows: 100_000,
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
        if self.insert_rows == 0 {
            return Err(ConfigError::config("clickhouse.insert_rows", 0, "at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(ClickHouseConfig::default().validate().is_ok());
        let c = ClickHouseConfig { url: "127.0.0.1:8123".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("clickhouse.url"));
        let c = ClickHouseConfig { database: "my-db".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("clickhouse.database"));
    }
}
