//! Compaction beside ingest: a frequent flush leaves one small file per date touched per commit,
//! thousands an hour. Every `compact_interval`, the small files of both tables are rewritten
//! into files of about `compact_target_file_size` (the compaction of `txpipe optimize`, without
//! vacuum).
//!
//! In: the tables' locations. Out: compaction commits with `dataChange=false` (stream readers
//! skip them; ingest's appends do not conflict with them; a concurrent `txpipe optimize` is
//! refused by their shared `txn` app id, not duplicated). It runs on a thread of its own with
//! its own runtime, so that its CPU work never holds up the writer's task; a failure is logged
//! and tried again at the next interval.

use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;
use txpipe_connectors::delta::{self, TablesConfig};

use crate::{JobError, Result};

pub(super) struct Compactor {
    stop: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

impl Compactor {
    /// Starts compacting both tables every `interval`.
    pub fn spawn(tables: TablesConfig, interval: Duration, target: u64) -> Result<Compactor> {
        let (stop, mut stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("ingest-compact".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => return tracing::warn!(error = %e, "no runtime for compaction; not compacting"),
                };
                runtime.block_on(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(interval) => {}
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                        tokio::select! {
                            _ = compact_both(&tables, target) => {}
                            // A bin's commit is atomic: stopping between or inside bins is safe.
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                    }
                });
            })
            .map_err(|e| JobError::io("starting the compaction thread", e))?;
        Ok(Compactor { stop, thread })
    }

    /// Stops (a compaction under way is abandoned between its commits) and waits for the thread.
    pub fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.thread.join();
    }
}

async fn compact_both(tables: &TablesConfig, target: u64) {
    for location in [&tables.clean, &tables.quarantine] {
        let compacted = async {
            let mut table = delta::open_existing(location, &tables.storage_options).await?;
            delta::compact(&mut table, location, target).await
        };
        match compacted.await {
            Ok(r) if r.commits > 0 => tracing::info!(
                %location,
                files_before = r.files_before,
                files_after = r.files_after,
                commits = r.commits,
                bytes = r.bytes_rewritten,
                "compacted"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(%location, error = %e, "compaction failed; trying again later"),
        }
    }
}
