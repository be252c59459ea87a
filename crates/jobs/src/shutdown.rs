//! A shutdown signal shared by a job's tasks: triggered by SIGINT / SIGTERM or by the caller;
//! jobs finish their current unit of work (a flush, a commit) before they return.

use std::sync::Arc;

use tokio::sync::watch;

/// Cheap to clone; every clone sees the same signal.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { tx: Arc::new(watch::channel(false).0) }
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether a stop was asked (for synchronous loops).
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once a stop is asked.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in self, so the channel cannot close while we wait.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Triggers on SIGINT or SIGTERM (spawns a task; needs a tokio runtime).
    pub fn on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = ctrl_c => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = ctrl_c.await;
                    }
                }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
            tracing::info!("stop requested; finishing the current unit of work");
            this.trigger();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_share_the_signal() {
        let s = Shutdown::new();
        let c = s.clone();
        assert!(!c.is_triggered());
        let waiter = tokio::spawn(async move { c.wait().await });
        s.trigger();
        waiter.await.unwrap();
        assert!(s.is_triggered());
        // Waiting after the trigger returns at once.
        s.wait().await;
    }
}
