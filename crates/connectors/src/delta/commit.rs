//! A commit of an append: data files and Kafka positions in one Delta commit.
//!
//! The conflict rule: a commit is written as the next version after the newest this handle
//! knows. When another writer took that version first, its entries are read; if any of them
//! stored a position for one of this commit's partitions (or changed the schema or protocol,
//! or the log moved past what the tail shows), nothing is committed and
//! [`DeltaError::Conflict`] comes back: the caller's buffer no longer follows on from the
//! table, and it must read those partitions again from the positions stored. Otherwise the
//! commit is tried as the next version after theirs (appends of other partitions never
//! conflict). Tables whose protocol asks more of a writer go through delta-rs's transaction,
//! whose concurrent-transaction conflict (the same `txn` app ids) maps to the same error.

use std::collections::{BTreeMap, HashSet};

use deltalake::DeltaTableError;
use deltalake::arrow::array::RecordBatch;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitData, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::logstore::CommitOrBytes;
use deltalake::protocol::{DeltaOperation, SaveMode};

use super::errors::{DeltaError, Result};
use super::table::Table;

/// How often a commit is tried again when other writers keep taking the next version.
const MAX_COMMIT_ATTEMPTS: usize = 100;

impl Table {
    /// Appends `batches` and records `positions` in one commit (see [`Table::commit`]).
    pub async fn append(
        &mut self,
        batches: &[RecordBatch],
        positions: &BTreeMap<i32, i64>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        let mut writer = self.writer()?;
        for b in batches {
            writer.write(b).await?;
        }
        let files = writer.finish().await?;
        self.commit(files, positions, metadata).await
    }

    /// Commits written `files` and records `positions` (partition → last offset covered) in
    /// one commit, checked against the newest known version: if another writer stored a
    /// position for any of these partitions since, nothing is committed and
    /// [`DeltaError::Conflict`] comes back. Returns the new version.
    pub async fn commit(
        &mut self,
        files: Vec<Add>,
        positions: &BTreeMap<i32, i64>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        if !self.direct {
            return self.commit_through_delta_rs(files, positions, metadata).await;
        }
        let txns: Vec<Transaction> =
            positions.iter().map(|(&p, &o)| Transaction::new(self.app_id(p), o)).collect();
        let ours: HashSet<String> = txns.iter().map(|t| t.app_id.clone()).collect();
        let data = CommitData::new(
            files.into_iter().map(Action::Add).collect(),
            self.operation(),
            metadata.into_iter().collect(),
            txns.clone(),
        );
        let commit_err = |location: &str, version, source: TransactionError| DeltaError::Commit {
            location: location.to_string(),
            version,
            source: Box::new(source.into()),
        };
        let bytes = data.get_bytes().map_err(|e| commit_err(&self.location, self.head, e))?;
        let log_store = self.table.log_store();
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let version = self.head.map_or(0, |h| h + 1);
            let entry = CommitOrBytes::LogBytes(bytes.clone());
            match log_store.write_commit_entry(version, entry, uuid::Uuid::new_v4()).await {
                Ok(()) => {
                    self.head = Some(version);
                    self.recent.extend(txns.into_iter().map(|t| (t.app_id, t.version)));
                    self.checkpoints.committed(&self.url, &self.storage_options, version);
                    return Ok(version);
                }
                Err(TransactionError::VersionAlreadyExists(_)) => {
                    // Someone else took the version: read what they wrote; try the next one
                    // unless they moved these partitions' positions.
                    self.lost_races += 1;
                    let tail = self.tail().await?;
                    if tail.reloaded || !tail.apps.is_disjoint(&ours) {
                        return Err(DeltaError::Conflict { location: self.location.clone() });
                    }
                }
                Err(e) => return Err(commit_err(&self.location, self.head, e)),
            }
        }
        Err(commit_err(
            &self.location,
            self.head,
            TransactionError::MaxCommitAttempts(MAX_COMMIT_ATTEMPTS as i32),
        ))
    }

    fn operation(&self) -> DeltaOperation {
        DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: self.partition_by.clone(),
            predicate: None,
        }
    }

    /// [`Table::commit`] for tables whose protocol needs delta-rs's checks: the commit goes
    /// through delta-rs's transaction, and its state is loaded after it.
    async fn commit_through_delta_rs(
        &mut self,
        files: Vec<Add>,
        positions: &BTreeMap<i32, i64>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        let actions: Vec<Action> = files.into_iter().map(Action::Add).collect();
        let txns: Vec<Transaction> =
            positions.iter().map(|(&p, &o)| Transaction::new(self.app_id(p), o)).collect();
        let properties = CommitProperties::default()
            .with_application_transactions(txns)
            .with_metadata(metadata)
            .with_max_retries(MAX_COMMIT_ATTEMPTS);
        let read_version = self.table.version();
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        let prepared = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), self.operation())
            .into_prepared_commit_future()
            .await;
        let commit_err = |location: &str, source: DeltaTableError| match source {
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
            } => DeltaError::Conflict { location: location.to_string() },
            source => DeltaError::Commit {
                location: location.to_string(),
                version: read_version,
                source: Box::new(source),
            },
        };
        let post = prepared
            .map_err(|e| commit_err(&self.location, e))?
            .await
            .map_err(|e| commit_err(&self.location, e))?;
        let version = post.version;
        // The commit is durable now; a failed checkpoint or log clean-up only costs read speed.
        match post.await {
            Ok(done) => {
                self.table.state = Some(done.snapshot);
                self.loaded()?;
            }
            Err(e) => {
                tracing::warn!(location = %self.location, version, error = %e, "post-commit work failed; reloading");
                self.load().await?;
            }
        }
        Ok(version)
    }
}
