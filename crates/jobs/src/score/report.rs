//! What a score run did ([`ScoreReport`], printed at the end and written by `--report-json`),
//! and the end-to-end latency it measures.

use serde::Serialize;

/// What a score run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScoreReport {
    /// Rows read from the table up to the resume point into the account history.
    pub restored: u64,
    /// Stopped as asked while ClickHouse was away, with rows not written (scored again at the
    /// next start).
    pub stopped_in_outage: bool,
    pub scored: u64,
    /// Repeated transaction ids dropped.
    pub repeats: u64,
    pub written: u64,
    pub inserts: u64,
    /// Micro-batches read from the stream, and the rows of the largest.
    pub micro_batches: u64,
    pub largest_micro_batch: u64,
    /// The version of the state file the start loaded (None: none was used).
    pub from_snapshot: Option<u64>,
    /// State files written.
    pub snapshots: u64,
    /// The highest Delta version whose rows are all in ClickHouse.
    pub complete_through: Option<u64>,
    /// The model versions used, in order.
    pub models: Vec<String>,
    /// From event time to the acknowledged insert (the row queryable), over the rows streamed
    /// within a minute of their event time: median and 99th percentile, in seconds.
    pub latency_p50_s: Option<f64>,
    pub latency_p99_s: Option<f64>,
    /// Rows streamed more than a minute after their event time (history, a backlog).
    pub latency_over_60s: u64,
    pub elapsed_s: f64,
}

/// Event time → queryable, per row, in 1 ms buckets up to a minute.
pub(super) struct Latency {
    buckets: Vec<u32>,
    pub(super) over: u64,
}

impl Latency {
    pub(super) fn new() -> Latency {
        Latency { buckets: vec![0; 60_000], over: 0 }
    }

    pub(super) fn add(&mut self, seconds: f64) {
        let ms = (seconds * 1000.0).max(0.0) as usize;
        match self.buckets.get_mut(ms) {
            Some(b) => *b += 1,
            None => self.over += 1,
        }
    }

    /// The `q` quantile in seconds (bucket upper edge), if any row was counted.
    pub(super) fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().map(|&b| b as u64).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (ms, &b) in self.buckets.iter().enumerate() {
            seen += b as u64;
            if seen >= rank {
                return Some((ms + 1) as f64 / 1000.0);
            }
        }
        None
    }
}
