//! Table maintenance: compaction of small files and vacuum of unreferenced ones.
//!
//! In: a table. Out: fewer, larger files holding the same rows, committed with
//! `dataChange=false` (an incremental reader skips the commit: no row is new), and old files
//! deleted once they are past the retention period. Compaction commits one bin of files at a
//! time, so memory stays bounded by one target file; it does not conflict with ingest's appends.
//! Run one compaction per table at a time: two would both rewrite the same files.

use std::collections::BTreeMap;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Remove};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use super::read::{DataFile, data_files, read_file};
use super::table::DeltaError;

fn failed<'a>(location: &'a str, operation: &'static str) -> impl Fn(DeltaTableError) -> DeltaError + 'a {
    move |source| DeltaError::Maintenance {
        location: location.to_string(),
        operation,
        source: Box::new(source),
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CompactReport {
    pub files_before: usize,
    pub files_after: usize,
    pub files_removed: usize,
    pub files_added: usize,
    pub bytes_rewritten: i64,
    pub commits: usize,
    pub version: Option<u64>,
}

/// Rewrites, partition by partition, files smaller than `target_size` bytes into files of about
/// that size. Only partitions with at least two such files are touched.
pub async fn compact(
    table: &mut DeltaTable,
    location: &str,
    target_size: u64,
) -> Result<CompactReport, DeltaError> {
    compact_inner(table, target_size).await.map_err(failed(location, "compaction"))
}

async fn compact_inner(table: &mut DeltaTable, target_size: u64) -> Result<CompactReport, DeltaTableError> {
    table.update_state().await?;
    let files = data_files(table)?;
    let mut report = CompactReport { files_before: files.len(), ..CompactReport::default() };
    let mut by_partition: BTreeMap<Vec<(String, Option<String>)>, Vec<DataFile>> = BTreeMap::new();
    for f in files.into_iter().filter(|f| (f.size as u64) < target_size) {
        let mut key: Vec<_> = f.partition_values.clone().into_iter().collect();
        key.sort();
        by_partition.entry(key).or_default().push(f);
    }
    for small in by_partition.into_values().filter(|files| files.len() >= 2) {
        for bin in bins(small, target_size) {
            compact_bin(table, &bin, target_size, &mut report).await?;
        }
    }
    report.files_after = data_files(table)?.len();
    report.version = table.version();
    Ok(report)
}

/// Groups files (smallest first) into bins of at most `target` bytes; bins of one are left out.
fn bins(mut files: Vec<DataFile>, target: u64) -> Vec<Vec<DataFile>> {
    files.sort_by_key(|f| f.size);
    let mut out: Vec<Vec<DataFile>> = Vec::new();
    let mut current: Vec<DataFile> = Vec::new();
    let mut size = 0u64;
    for f in files {
        if !current.is_empty() && size + f.size as u64 > target {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += f.size as u64;
        current.push(f);
    }
    out.push(current);
    out.retain(|b| b.len() >= 2);
    out
}

async fn compact_bin(
    table: &mut DeltaTable,
    bin: &[DataFile],
    target_size: u64,
    report: &mut CompactReport,
) -> Result<(), DeltaTableError> {
    let mut writer = RecordBatchWriter::for_table(table)?.with_target_file_size(target_size);
    for file in bin {
        for batch in read_file(table, file).await? {
            writer.write(batch).await?;
        }
    }
    let added = writer.flush().await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut actions: Vec<Action> = Vec::with_capacity(added.len() + bin.len());
    report.files_added += added.len();
    actions.extend(added.into_iter().map(|mut add| {
        add.data_change = false;
        Action::Add(add)
    }));
    for f in bin {
        report.bytes_rewritten += f.size;
        actions.push(Action::Remove(Remove {
            path: f.path.to_string(),
            data_change: false,
            deletion_timestamp: Some(now),
            extended_file_metadata: Some(true),
            partition_values: Some(f.partition_values.clone()),
            size: Some(f.size),
            ..Default::default()
        }));
    }
    report.files_removed += bin.len();
    let operation = DeltaOperation::Optimize { predicate: None, target_size: target_size as i64 };
    let done = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await?;
    table.state = Some(done.snapshot);
    report.commits += 1;
    Ok(())
}

/// Deletes files no longer referenced by versions younger than `retention_hours` (Delta's
/// own safety check applies: below the table's retention it refuses). Returns the deleted
/// paths (or, with `dry_run`, those it would delete).
pub async fn vacuum(
    table: DeltaTable,
    location: &str,
    retention_hours: u64,
    dry_run: bool,
) -> Result<(DeltaTable, Vec<String>), DeltaError> {
    let (table, metrics) = table
        .vacuum()
        .with_retention_period(chrono::Duration::hours(retention_hours as i64))
        .with_dry_run(dry_run)
        .await
        .map_err(failed(location, "vacuum"))?;
    Ok((table, metrics.files_deleted))
}
