//! Table locations, as read from config (`[tables]`), environment and flags.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use txpipe_core::Error as ConfigError;

/// `[tables]`: where the Delta tables live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TablesConfig {
    /// Clean events: a local path or an object-store URL (`s3://bucket/path`, ...).
    pub clean: String,
    /// Quarantined events, same forms.
    pub quarantine: String,
    /// delta-rs storage options for object stores (endpoint, region, credentials, ...).
    pub storage_options: BTreeMap<String, String>,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            clean: "datalake/transactions_clean".into(),
            quarantine: "datalake/transactions_quarantine".into(),
            storage_options: BTreeMap::new(),
        }
    }
}

impl TablesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [("tables.clean", &self.clean), ("tables.quarantine", &self.quarantine)] {
            if v.trim().is_empty() {
                return Err(ConfigError::config(key, v, "a directory path or an object-store URL"));
            }
        }
        if self.clean == self.quarantine {
            return Err(ConfigError::config(
                "tables.quarantine",
                &self.quarantine,
                "a location other than tables.clean",
            ));
        }
        Ok(())
    }
}

/// object_store's own retries of one request, for a table on an object store: kept short, so
/// that a store that is away fails the attempt within seconds and the job's backoff takes over
/// (it logs and counts each retry, and gives up when a stop is asked). Set `max_retries` or
/// `retry_timeout` in `[tables.storage_options]` to change them.
const STORE_DEFAULTS: [(&str, &str); 2] = [("max_retries", "3"), ("retry_timeout", "10s")];

/// The options delta-rs opens `location` with: the configured ones, plus txpipe's defaults for
/// an object store ([`STORE_DEFAULTS`]) where they are not set.
pub fn store_options(location: &str, configured: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut options: HashMap<String, String> = configured.clone().into_iter().collect();
    if is_object_store(location) {
        for (k, v) in STORE_DEFAULTS {
            if !options.keys().any(|o| o.eq_ignore_ascii_case(k)) {
                options.insert(k.to_string(), v.to_string());
            }
        }
    }
    options
}

/// Whether a table location names an object store (`s3://...`) rather than a local path.
pub fn is_object_store(location: &str) -> bool {
    match location.split_once("://") {
        Some((scheme, _)) => scheme.len() > 1 && !scheme.eq_ignore_ascii_case("file"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_stores_get_short_request_retries_unless_set() {
        let none = BTreeMap::new();
        assert!(store_options("datalake/clean", &none).is_empty());
        assert!(store_options("file:///tmp/clean", &none).is_empty());
        let s3 = store_options("s3://lake/clean", &none);
        assert_eq!(s3.get("max_retries").map(String::as_str), Some("3"));
        assert_eq!(s3.get("retry_timeout").map(String::as_str), Some("10s"));
        let set = BTreeMap::from([("MAX_RETRIES".to_string(), "9".to_string())]);
        let s3 = store_options("s3://lake/clean", &set);
        assert_eq!(s3.get("MAX_RETRIES").map(String::as_str), Some("9"));
        assert!(!s3.contains_key("max_retries"));
    }
}
