//! What can go wrong with a Delta table, each error saying whether a retry can help.

use deltalake::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::object_store::Error as ObjectStoreError;

/// What can go wrong with a table.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta table {location}: opening or creating failed: {source}")]
    Open { location: String, source: Box<DeltaTableError> },
    #[error("delta table {location}: its columns {found} do not match txpipe's {expected}")]
    Layout { location: String, found: String, expected: String },
    #[error("delta table {location}: writing data files failed: {source}")]
    Write { location: String, source: Box<DeltaTableError> },
    /// Another writer committed positions for the same partitions since our snapshot.
    #[error("delta table {location}: another writer moved the positions of these partitions")]
    Conflict { location: String },
    #[error("delta table {location}: commit failed after version {version:?}: {source}")]
    Commit { location: String, version: Option<u64>, source: Box<DeltaTableError> },
    #[error("delta table {location}: reading the log failed: {source}")]
    Read { location: String, source: Box<DeltaTableError> },
    #[error("delta table {location}: {operation} failed: {source}")]
    Maintenance { location: String, operation: &'static str, source: Box<DeltaTableError> },
    /// A log entry or a data file of a commit not read yet was removed (log clean-up, vacuum).
    #[error("delta table {location}: {detail}")]
    Gone { location: String, detail: String },
}

impl DeltaError {
    /// A commit that failed because the store gave an I/O error (retryable).
    pub fn commit_io(location: &str, source: std::io::Error) -> DeltaError {
        DeltaError::Commit {
            location: location.to_string(),
            version: None,
            source: Box::new(DeltaTableError::Io { source }),
        }
    }

    /// Whether trying again can succeed (storage hiccups), as opposed to a conflict or a bad
    /// table: the store's own errors (unreachable, timed out, refused) and I/O errors, also
    /// when they come wrapped (a Parquet read whose bytes did not arrive), and a commit that
    /// lost the race for its version too many times.
    pub fn retryable(&self) -> bool {
        match self {
            DeltaError::Open { source, .. }
            | DeltaError::Write { source, .. }
            | DeltaError::Commit { source, .. }
            | DeltaError::Read { source, .. }
            | DeltaError::Maintenance { source, .. } => {
                matches!(
                    **source,
                    DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(_) }
                ) || from_storage(source.as_ref())
            }
            DeltaError::Conflict { .. } | DeltaError::Layout { .. } | DeltaError::Gone { .. } => false,
        }
    }
}

/// How delta-kernel's error of the object store begins.
const KERNEL_STORE_ERROR: &str = "Error interacting with object store";

/// Whether an error, or one it wraps, is the storage failing (object store or I/O) rather than
/// what it holds being wrong. A missing object is not (the caller sees what is gone).
fn from_storage(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(store) = e.downcast_ref::<ObjectStoreError>() {
            return !matches!(store, ObjectStoreError::NotFound { .. });
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() != std::io::ErrorKind::NotFound;
        }
        match e.downcast_ref::<DeltaTableError>() {
            Some(DeltaTableError::ObjectStore { .. } | DeltaTableError::Io { .. }) => return true,
            // The log read through delta-kernel: its object-store variant keeps the store's error
            // without naming it as its source (and turns a missing object into another variant),
            // so it is known by its message.
            Some(DeltaTableError::KernelError(k)) if k.to_string().starts_with(KERNEL_STORE_ERROR) => {
                return true;
            }
            _ => {}
        }
        next = e.source();
    }
    false
}

pub type Result<T, E = DeltaError> = std::result::Result<T, E>;
