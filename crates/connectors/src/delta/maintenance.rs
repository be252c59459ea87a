//! Table maintenance: compaction of small files and vacuum of unreferenced ones.
//!
//! In: a table. Out: fewer, larger files holding the same rows, committed with
//! `dataChange=false` (an incremental reader skips the commit: no row is new), and old files
//! deleted once they are past the retention period. Compaction commits one bin of files at a
//! time, so memory stays bounded by one target file; it does not conflict with ingest's appends.
//!
//! Two compactions of one table at once: Delta's conflict check ignores removes with
//! `dataChange=false`, so both could commit a rewrite of the same files and their rows would be
//! in the table twice. Every compaction commit therefore carries a `txn` action of its own
//! application id, [`OPTIMIZE_APP_ID`]: the later of two concurrent commits fails Delta's
//! check, and that compaction stops and leaves the rest to the other (the files it wrote for
//! the refused commit are not in the table; vacuum deletes them).

use std::collections::BTreeMap;

use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Remove, Transaction};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use super::DeltaError;
use super::read::{DataFile, data_files, read_file};

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
    /// Another compaction of the table committed a bin first, and this one stopped there.
    pub yielded: bool,
    pub version: Option<u64>,
}

/// The application id of the `txn` action in every compaction commit.
pub const OPTIMIZE_APP_ID: &str = "txpipe-optimize";

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
    let (files, bins) = plan(table, target_size)?;
    let mut report = CompactReport { files_before: files, ..CompactReport::default() };
    match run_plan(table, &bins, target_size, &mut report).await {
        Err(e) if is_conflict(&e) => {
            // The other compaction rewrites what it planned; whatever is left, the next run does.
            tracing::info!(
                commits = report.commits,
                "another compaction of this table committed first; leaving the rest to it"
            );
            report.yielded = true;
            table.update_state().await?;
        }
        other => other?,
    }
    report.files_after = data_files(table)?.len();
    report.version = table.version();
    Ok(report)
}

/// The number of data files, and the bins of small files to rewrite, per partition.
fn plan(table: &DeltaTable, target_size: u64) -> Result<(usize, Vec<Vec<DataFile>>), DeltaTableError> {
    let files = data_files(table)?;
    let count = files.len();
    let mut by_partition: BTreeMap<Vec<(String, Option<String>)>, Vec<DataFile>> = BTreeMap::new();
    for f in files.into_iter().filter(|f| (f.size as u64) < target_size) {
        let mut key: Vec<_> = f.partition_values.clone().into_iter().collect();
        key.sort();
        by_partition.entry(key).or_default().push(f);
    }
    let bins = by_partition
        .into_values()
        .filter(|files| files.len() >= 2)
        .flat_map(|small| bins(small, target_size))
        .collect();
    Ok((count, bins))
}

async fn run_plan(
    table: &mut DeltaTable,
    bins: &[Vec<DataFile>],
    target_size: u64,
    report: &mut CompactReport,
) -> Result<(), DeltaTableError> {
    for bin in bins {
        compact_bin(table, bin, target_size, report).await?;
    }
    Ok(())
}

fn is_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction)
        }
    )
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
    let files_added = added.len();
    let mut actions: Vec<Action> = Vec::with_capacity(added.len() + bin.len() + 1);
    actions.extend(added.into_iter().map(|mut add| {
        add.data_change = false;
        Action::Add(add)
    }));
    actions.extend(bin.iter().map(|f| {
        Action::Remove(Remove {
            path: f.path.to_string(),
            data_change: false,
            deletion_timestamp: Some(now),
            extended_file_metadata: Some(true),
            partition_values: Some(f.partition_values.clone()),
            size: Some(f.size),
            ..Default::default()
        })
    }));
    let snapshot = table.snapshot()?;
    // Only the app id matters to the conflict check; the version this commit aims at is a
    // number that grows with every compaction commit, without reading the log for one.
    let aimed = snapshot.version() as i64 + 1;
    actions.push(Action::Txn(Transaction::new(OPTIMIZE_APP_ID, aimed)));
    let operation = DeltaOperation::Optimize { predicate: None, target_size: target_size as i64 };
    let done = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    table.state = Some(done.snapshot);
    report.commits += 1;
    report.files_added += files_added;
    report.files_removed += bin.len();
    report.bytes_rewritten += bin.iter().map(|f| f.size).sum::<i64>();
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use txpipe_core::event::EventParser;
    use txpipe_core::schema::Schema;

    use txpipe_core::event::Value;

    use super::*;
    use crate::delta::{CleanRows, EVENT_DATE, Table, clean_schema, open_existing, read_rows};

    /// Clean rows at these times (one a time), positions 0, 1, ...
    fn rows(parser: &EventParser, times: &[&str]) -> deltalake::arrow::array::RecordBatch {
        let mut out = CleanRows::new(parser.schema());
        for (i, time) in times.iter().enumerate() {
            let json = format!(
                r#"{{"transaction_id":"m{i}-{time}","account_id":"a","merchant_category":"fuel","amount":2.0,"currency":"EUR","event_time":"{time}"}}"#
            );
            let mut values: Vec<Value> = Vec::new();
            parser.parse(json.as_bytes(), &mut values).unwrap();
            out.push(&values, 0, i as i64);
        }
        out.finish(0).unwrap()
    }

    const BIG: u64 = 1 << 30;

    /// A table of four one-row-pair files of one day; its location.
    async fn small_files(dir: &std::path::Path, parser: &EventParser) -> (Table, String) {
        let location = dir.join("t").to_string_lossy().into_owned();
        let schema = clean_schema(parser.schema());
        let mut table =
            Table::open_or_create(&location, &BTreeMap::new(), schema, Some(EVENT_DATE), "test", 100)
                .await
                .unwrap();
        for hour in 0..4i64 {
            let times = [format!("2026-11-01T0{hour}:00:00Z"), format!("2026-11-01T0{hour}:30:00Z")];
            let batch = rows(parser, &[times[0].as_str(), times[1].as_str()]);
            table
                .append(&[batch], &BTreeMap::from([(0, 2 * hour + 1)]), serde_json::Map::new())
                .await
                .unwrap();
        }
        (table, location)
    }

    async fn row_count(location: &str) -> usize {
        let table = open_existing(location, &BTreeMap::new()).await.unwrap();
        read_rows(&table).await.unwrap().iter().map(|b| b.num_rows()).sum()
    }

    #[tokio::test]
    async fn the_later_of_two_compactions_of_the_same_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let parser = EventParser::new(Schema::default_schema());
        let (_, location) = small_files(dir.path(), &parser).await;
        let mut first = open_existing(&location, &BTreeMap::new()).await.unwrap();
        let mut second = open_existing(&location, &BTreeMap::new()).await.unwrap();
        // Both plan from the same version; the first commits its rewrite.
        let (files, bins) = plan(&second, BIG).unwrap();
        assert_eq!((files, bins.len(), bins[0].len()), (4, 1, 4));
        let done = compact(&mut first, &location, BIG).await.unwrap();
        assert_eq!((done.commits, done.files_after, done.yielded), (1, 1, false), "{done:?}");
        // The second's commit of the same files comes later: Delta must refuse it.
        let mut late = CompactReport::default();
        let err = run_plan(&mut second, &bins, BIG, &mut late).await.unwrap_err();
        assert!(is_conflict(&err), "{err}");
        assert_eq!((late.commits, late.files_removed), (0, 0));
        // Run whole, it plans from the new version and finds nothing to rewrite.
        let again = compact(&mut second, &location, BIG).await.unwrap();
        assert_eq!((again.commits, again.files_before, again.files_after), (0, 1, 1), "{again:?}");
        assert_eq!(row_count(&location).await, 8, "every row once");
    }

    #[tokio::test]
    async fn an_append_while_compacting_does_not_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let parser = EventParser::new(Schema::default_schema());
        let (mut table, location) = small_files(dir.path(), &parser).await;
        let mut compactor = open_existing(&location, &BTreeMap::new()).await.unwrap();
        let (_, bins) = plan(&compactor, BIG).unwrap();
        // Ingest commits between the plan and the compaction's commit.
        let batch = rows(&parser, &["2026-11-01T09:00:00Z"]);
        table.append(&[batch], &BTreeMap::from([(0, 9)]), serde_json::Map::new()).await.unwrap();
        let mut report = CompactReport::default();
        run_plan(&mut compactor, &bins, BIG, &mut report).await.unwrap();
        assert_eq!((report.commits, report.files_removed, report.files_added), (1, 4, 1), "{report:?}");
        assert_eq!(row_count(&location).await, 9);
        let now = open_existing(&location, &BTreeMap::new()).await.unwrap();
        assert_eq!(data_files(&now).unwrap().len(), 2, "the rewritten file and the appended one");
    }
}
