//! The one reader of a Delta log in txpipe: its entries, one version at a time, and the
//! checkpoint pointer `_last_checkpoint`. The appending handle ([`super::Table`], following the
//! log's tail before a commit) and the stream reader ([`super::TableTail`]) both read through it.
//!
//! Log clean-up deletes entries only behind a checkpoint: an entry that is missing while
//! `_last_checkpoint` points at or past its version was cleaned up (it will never be written),
//! while one missing past the pointer is simply not written yet.

use deltalake::DeltaTableError;
use deltalake::Path;
use deltalake::kernel::Action;
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::logstore::{LogStore, get_actions};

/// The actions of the log entry of `version`; None when there is no such entry (not written
/// yet, or cleaned up: see [`last_checkpoint`]).
pub(crate) async fn entry(
    store: &dyn LogStore,
    version: u64,
) -> Result<Option<Vec<Action>>, DeltaTableError> {
    match store.read_commit_entry(version).await? {
        Some(bytes) => Ok(Some(get_actions(version, &bytes)?)),
        None => Ok(None),
    }
}

/// Whether the log holds the entry of `version` (without reading its actions).
pub(crate) async fn has_entry(store: &dyn LogStore, version: u64) -> Result<bool, DeltaTableError> {
    Ok(store.read_commit_entry(version).await?.is_some())
}

/// The version of the newest checkpoint `_last_checkpoint` points at, if any. A pointer being
/// rewritten or unreadable is no proof of anything: then None, and the log's entries are
/// trusted.
pub(crate) async fn last_checkpoint(store: &dyn LogStore) -> Result<Option<u64>, DeltaTableError> {
    let path = Path::from("_delta_log/_last_checkpoint");
    match store.object_store(None).get(&path).await {
        Ok(found) => {
            let bytes = found.bytes().await?;
            let pointer: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            Ok(pointer.and_then(|p| p.get("version")?.as_u64()))
        }
        Err(deltalake::ObjectStoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a table exists at the store: it has a first entry, or a checkpoint (its first
/// entries cleaned up).
pub(crate) async fn exists(store: &dyn LogStore) -> Result<bool, DeltaTableError> {
    Ok(has_entry(store, 0).await? || last_checkpoint(store).await?.is_some())
}
