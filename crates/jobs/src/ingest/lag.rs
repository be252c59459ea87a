//! Ingest's lag as a metric: per partition held here, the topic's end (its high watermark) less
//! the next offset the clean table will hold (the last one committed, plus one) — what
//! `txpipe status` shows from outside.
//!
//! It is watched on a task of its own, every 5 s, with a client of its own: when the reader is
//! held up (the table's storage away: commits wait and the buffers fill), the lag still shows
//! growing while the producers go on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use txpipe_connectors::kafka::{KafkaConfig, WatermarkClient};

use super::Positions;
use crate::Shutdown;
use crate::telemetry::names;

/// The partitions held here and the last offset the clean table holds of each (None: none).
#[derive(Debug, Default)]
pub(super) struct Held(Mutex<BTreeMap<i32, Option<i64>>>);

impl Held {
    /// Assigned (or moved back to the table's positions): the table holds `stored`.
    pub fn assigned(&self, partition: i32, stored: Option<i64>) {
        if let Ok(mut h) = self.0.lock() {
            h.insert(partition, stored);
        }
    }

    pub fn revoked(&self, partition: i32) {
        if let Ok(mut h) = self.0.lock() {
            h.remove(&partition);
        }
    }

    /// These positions are committed (partitions no longer held are left out).
    pub fn committed(&self, positions: &Positions) {
        if let Ok(mut h) = self.0.lock() {
            for (p, o) in positions {
                if let Some(held) = h.get_mut(p) {
                    *held = Some(*o);
                }
            }
        }
    }

    fn snapshot(&self) -> BTreeMap<i32, Option<i64>> {
        self.0.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// How often the watermarks are asked for.
const EVERY: Duration = Duration::from_secs(5);

/// Watches the lag until `stop`, or `ended` (the run's flag, set also when the run is dropped),
/// only while metrics are served: otherwise nothing reads it.
pub(super) fn spawn(
    kafka: &KafkaConfig,
    held: Arc<Held>,
    stop: Shutdown,
    ended: Arc<AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !crate::telemetry::serving() {
        return None;
    }
    let client = match WatermarkClient::new(kafka) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no lag metric: the watermark client could not be made");
            return None;
        }
    };
    let topic = kafka.topic.clone();
    Some(tokio::spawn(async move {
        let mut shown = BTreeSet::new();
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait() => return,
            }
            if ended.load(Ordering::SeqCst) {
                return;
            }
            let marks = match client.watermarks(&topic).await {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "watermarks for the lag metric");
                    continue;
                }
            };
            let held = held.snapshot();
            for m in &marks {
                let Some(stored) = held.get(&m.partition) else { continue };
                let next = stored.map_or(m.low, |o| (o + 1).max(m.low));
                let lag = (m.high - next).max(0);
                metrics::gauge!(names::INGEST_CONSUMER_LAG, "partition" => m.partition.to_string())
                    .set(lag as f64);
                shown.insert(m.partition);
            }
            // A partition no longer held here is another member's to show.
            for gone in shown.iter().filter(|p| !held.contains_key(p)) {
                metrics::gauge!(names::INGEST_CONSUMER_LAG, "partition" => gone.to_string()).set(0.0);
            }
        }
    }))
}
