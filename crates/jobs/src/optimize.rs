//! `txpipe optimize`: compacts the small files that ingest's frequent commits leave, then
//! vacuums files that no version within the retention period references.
//!
//! In: the two tables' locations and [`OptimizeConfig`]. Out: an [`OptimizeReport`] per table.
//! Compaction commits with `dataChange=false`, so the scorer's stream reader skips it.

use serde::{Deserialize, Serialize};
use txpipe_connectors::delta::{self, CompactReport, TablesConfig};
use txpipe_core::Error as ConfigError;

use crate::Result;

/// `[optimize]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizeConfig {
    /// Files smaller than this (bytes) are rewritten into files of about this size.
    pub target_file_size: u64,
    /// Delete files unreferenced for this many hours (Delta refuses less than the table's
    /// retention, 7 days by default).
    pub retention_hours: u64,
    /// Run vacuum after compaction.
    pub vacuum: bool,
    /// List what vacuum would delete, delete nothing.
    pub dry_run: bool,
}

impl Default for OptimizeConfig {
    fn default() -> Self {
        OptimizeConfig { target_file_size: 128 << 20, retention_hours: 168, vacuum: true, dry_run: false }
    }
}

impl OptimizeConfig {
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.target_file_size < 1 << 20 {
            return Err(ConfigError::config(
                "optimize.target_file_size",
                self.target_file_size,
                "at least 1048576 bytes",
            ));
        }
        Ok(())
    }
}

/// What optimize did to one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OptimizeReport {
    pub location: String,
    pub compaction: CompactReport,
    /// Files vacuum deleted (or would delete, in a dry run).
    pub vacuumed: Vec<String>,
}

/// Compacts, then vacuums, the clean table and then the quarantine table.
pub async fn run(tables: &TablesConfig, config: &OptimizeConfig) -> Result<Vec<OptimizeReport>> {
    let mut reports = Vec::new();
    for location in [&tables.clean, &tables.quarantine] {
        let mut table = delta::open_existing(location, &tables.storage_options).await?;
        let compaction = delta::compact(&mut table, location, config.target_file_size).await?;
        tracing::info!(%location, ?compaction, "compacted");
        let vacuumed = if config.vacuum {
            let (_, deleted) = delta::vacuum(table, location, config.retention_hours, config.dry_run).await?;
            tracing::info!(%location, files = deleted.len(), dry_run = config.dry_run, "vacuumed");
            deleted
        } else {
            Vec::new()
        };
        reports.push(OptimizeReport { location: location.clone(), compaction, vacuumed });
    }
    Ok(reports)
}
