//! Points where a test holds ingest to force an interleaving (a commit held while a rebalance
//! runs), or makes the table's storage unreachable for a while. Empty by default: a run without
//! hooks never waits on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// The hooks of one ingest run.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Passed by every clean-table commit after the position check (and the quarantine
    /// commit), right before the clean commit.
    pub before_commit: Option<Arc<Gate>>,
    /// Reached (never held) each time the reader takes in an assignment.
    pub assigned: Option<Arc<Gate>>,
    /// While it lasts, every commit attempt fails as one to an unreachable store does.
    pub storage_outage: Option<Arc<Outage>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("before_commit", &self.before_commit.is_some())
            .field("assigned", &self.assigned.is_some())
            .field("storage_outage", &self.storage_outage.is_some())
            .finish()
    }
}

/// A gate that holds whoever reaches it until it is opened, and counts arrivals.
pub struct Gate {
    open: watch::Sender<bool>,
    arrivals: watch::Sender<u64>,
}

impl Gate {
    /// A closed gate.
    pub fn closed() -> Arc<Gate> {
        Arc::new(Gate { open: watch::Sender::new(false), arrivals: watch::Sender::new(0) })
    }

    /// Waits until `n` arrivals in all have reached the gate.
    pub async fn reached(&self, n: u64) {
        let _ = self.arrivals.subscribe().wait_for(|&a| a >= n).await;
    }

    /// Lets everyone through, now and later.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Arrivals so far.
    pub fn arrivals(&self) -> u64 {
        *self.arrivals.borrow()
    }

    /// Arrives without waiting.
    pub(crate) fn arrive(&self) {
        self.arrivals.send_modify(|a| *a += 1);
    }

    /// Arrives, and waits until the gate is open.
    pub(crate) async fn pass(&self) {
        self.arrive();
        let _ = self.open.subscribe().wait_for(|&o| o).await;
    }
}

/// An outage of the table's storage that a test begins and ends: while on, each commit attempt
/// fails with the I/O error an unreachable store gives (which ingest retries), and is counted.
pub struct Outage {
    on: AtomicBool,
    attempts: watch::Sender<u64>,
}

impl Outage {
    /// An outage under way.
    pub fn begun() -> Arc<Outage> {
        Arc::new(Outage { on: AtomicBool::new(true), attempts: watch::Sender::new(0) })
    }

    pub fn end(&self) {
        self.on.store(false, Ordering::SeqCst);
    }

    /// Waits until `n` commit attempts in all have failed.
    pub async fn failed(&self, n: u64) {
        let _ = self.attempts.subscribe().wait_for(|&a| a >= n).await;
    }

    /// The error of a commit attempt during the outage (None: the storage answers).
    pub(crate) fn attempt(&self) -> Option<std::io::Error> {
        if !self.on.load(Ordering::SeqCst) {
            return None;
        }
        self.attempts.send_modify(|a| *a += 1);
        Some(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "the table's storage is unreachable (outage hook)",
        ))
    }
}
