//! Checkpoints written beside the commits of an appending handle, and the clean-up of expired
//! log entries after them.

use std::collections::HashMap;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use deltalake::table::config::TablePropertiesExt;
use deltalake::{DeltaTableBuilder, DeltaTableError};
use url::Url;

/// Checkpoints of the log, written beside the commits: every `interval` versions, a checkpoint
/// is written on a thread of its own (it loads the table's full state, which grows with the
/// table), then expired log entries are cleaned up as the table's settings say. One at a time:
/// while one is being written, the next due is skipped.
#[derive(Default)]
pub(super) struct Checkpoints {
    pub interval: u64,
    /// Says when the checkpoint being written is done (in a mutex: the table is shared
    /// between threads).
    running: Option<Mutex<mpsc::Receiver<()>>>,
}

impl Checkpoints {
    pub fn committed(&mut self, url: &Url, options: &HashMap<String, String>, version: u64) {
        if self.interval == 0 || version == 0 || !version.is_multiple_of(self.interval) {
            return;
        }
        if let Some(done) = self.running.as_mut().and_then(|d| d.get_mut().ok()) {
            match done.try_recv() {
                Err(mpsc::TryRecvError::Empty) => {
                    tracing::debug!(version, "a checkpoint is still being written; this one is skipped");
                    return;
                }
                Ok(()) | Err(mpsc::TryRecvError::Disconnected) => {}
            }
        }
        let (done_tx, done_rx) = mpsc::channel();
        let (url, options) = (url.clone(), options.clone());
        let spawned = std::thread::Builder::new().name("txpipe-checkpoint".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let result = match runtime {
                Ok(rt) => rt.block_on(write_checkpoint(url.clone(), options, version)),
                Err(e) => Err(DeltaTableError::Generic(format!("no runtime for the checkpoint: {e}"))),
            };
            match result {
                Ok(cleaned) => tracing::debug!(%url, version, cleaned, "checkpoint written"),
                // The commits are durable; a missing checkpoint only costs readers time.
                Err(e) => tracing::warn!(%url, version, error = %e, "writing a checkpoint failed"),
            }
            let _ = done_tx.send(());
        });
        match spawned {
            Ok(_) => self.running = Some(Mutex::new(done_rx)),
            Err(e) => tracing::warn!(version, error = %e, "no thread for a checkpoint; skipped"),
        }
    }

    pub fn wait(&mut self, limit: Duration) {
        if let Some(done) = self.running.take().and_then(|d| d.into_inner().ok())
            && let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(limit)
        {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "a checkpoint is still being written; not waiting longer"
            );
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        // A checkpoint cut off half-way is harmless (readers use the log), but one that is
        // nearly done is worth its wait.
        self.wait(Duration::from_secs(30));
    }
}

/// Writes the checkpoint of `version` and cleans up expired log entries; returns how many
/// were deleted.
async fn write_checkpoint(
    url: Url,
    options: HashMap<String, String>,
    version: u64,
) -> Result<usize, DeltaTableError> {
    let table =
        DeltaTableBuilder::from_url(url)?.with_storage_options(options).with_version(version).load().await?;
    deltalake::checkpoints::create_checkpoint(&table, None).await?;
    if table.snapshot()?.table_config().enable_expired_log_cleanup() {
        return deltalake::checkpoints::cleanup_metadata(&table, None).await;
    }
    Ok(0)
}
