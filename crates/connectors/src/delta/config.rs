//! Table locations, as read from config (`[tables]`), environment and flags.

use std::collections::BTreeMap;

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
