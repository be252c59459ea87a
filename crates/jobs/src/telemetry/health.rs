//! Liveness and readiness.
//!
//! Live: every loop of the job that registered a [`Beat`] has turned within the allowed time
//! (a loop stuck in a deadlock or a blocked call stops turning; a loop waiting for input or
//! retrying a service still turns). Ready: every service the job uses answers a cheap request
//! ([`Check`]) within its timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use txpipe_connectors::clickhouse::{ClickHouseConfig, Serving};
use txpipe_connectors::kafka::{KafkaConfig, WatermarkClient};

/// When the process's clock for beats started.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

struct BeatInner {
    name: &'static str,
    last_ms: AtomicU64,
}

/// The loops that beat, as long as their [`Beat`] lives.
fn loops() -> &'static Mutex<Vec<Weak<BeatInner>>> {
    static LOOPS: OnceLock<Mutex<Vec<Weak<BeatInner>>>> = OnceLock::new();
    LOOPS.get_or_init(|| Mutex::new(Vec::new()))
}

/// A loop's heartbeat: [`Beat::turn`] on each turn of the loop (and in its waits and
/// retries). The loop counts for liveness while the `Beat` lives; a loop that ends drops it.
#[derive(Clone)]
pub struct Beat(Arc<BeatInner>);

impl Beat {
    /// Registers a loop, as having just turned.
    pub fn new(name: &'static str) -> Beat {
        let inner = Arc::new(BeatInner { name, last_ms: AtomicU64::new(now_ms()) });
        if let Ok(mut all) = loops().lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&inner));
        }
        Beat(inner)
    }

    pub fn turn(&self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Beat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Beat").field(&self.0.name).finish()
    }
}

/// One loop as `/livez` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoopState {
    pub name: &'static str,
    /// Seconds since it last turned.
    pub since_s: f64,
    pub ok: bool,
}

/// What `/livez` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Liveness {
    pub live: bool,
    pub live_within_s: f64,
    pub loops: Vec<LoopState>,
    /// The loops that have not turned within the time allowed.
    pub failing: Vec<&'static str>,
}

/// Every registered loop's state against `within`.
pub fn liveness(within: Duration) -> Liveness {
    let now = now_ms();
    let mut states: Vec<LoopState> = Vec::new();
    if let Ok(all) = loops().lock() {
        for beat in all.iter().filter_map(Weak::upgrade) {
            let since = Duration::from_millis(now.saturating_sub(beat.last_ms.load(Ordering::Relaxed)));
            states.push(LoopState { name: beat.name, since_s: since.as_secs_f64(), ok: since <= within });
        }
    }
    let failing: Vec<&'static str> = states.iter().filter(|s| !s.ok).map(|s| s.name).collect();
    Liveness { live: failing.is_empty(), live_within_s: within.as_secs_f64(), loops: states, failing }
}

/// A service a job needs, and how to ask it whether it answers.
#[derive(Debug, Clone)]
pub enum Check {
    /// The brokers answer a metadata request for the topic (asked by one client, made at the
    /// first check and kept: no connection per check).
    Kafka { config: KafkaConfig, client: Arc<Mutex<Option<WatermarkClient>>> },
    /// The table's storage answers (its log can be read; the table may not exist yet).
    Table { name: &'static str, location: String, options: BTreeMap<String, String> },
    /// The ClickHouse server answers a query.
    ClickHouse(ClickHouseConfig),
}

/// One check as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckState {
    pub name: String,
    pub ok: bool,
    /// What was found, or why it failed.
    pub detail: String,
    pub seconds: f64,
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<CheckState>,
    /// The names of the checks that failed.
    pub failing: Vec<String>,
}

impl Check {
    pub fn kafka(config: KafkaConfig) -> Check {
        Check::Kafka { config, client: Arc::default() }
    }

    pub fn name(&self) -> String {
        match self {
            Check::Kafka { .. } => "kafka".into(),
            Check::Table { name, .. } => format!("table:{name}"),
            Check::ClickHouse(_) => "clickhouse".into(),
        }
    }

    async fn run(&self) -> Result<String, String> {
        match self {
            Check::Kafka { config, client } => {
                let made = client.lock().map_err(|_| "the check's client is poisoned".to_string())?.clone();
                let client = match made {
                    Some(c) => c,
                    None => {
                        let c = WatermarkClient::new(config).map_err(|e| config.scrub(&e.to_string()))?;
                        if let Ok(mut slot) = client.lock() {
                            *slot = Some(c.clone());
                        }
                        c
                    }
                };
                match client.partitions(&config.topic).await {
                    Ok(Some(n)) => Ok(format!("topic {} has {n} partitions", config.topic)),
                    Ok(None) => Ok(format!("brokers answer; topic {} does not exist yet", config.topic)),
                    Err(e) => Err(config.scrub(&e.to_string())),
                }
            }
            Check::Table { location, options, .. } => {
                match txpipe_connectors::delta::probe(location, options).await {
                    Ok(true) => Ok(format!("{location}: readable")),
                    Ok(false) => Ok(format!("{location}: storage answers; no table yet")),
                    Err(e) => Err(e.to_string()),
                }
            }
            Check::ClickHouse(config) => match Serving::new(config, Vec::new()).ping().await {
                Ok(()) => Ok(format!("{} answers", config.url)),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Runs the check, failing it when it takes longer than `timeout`.
    pub async fn state(&self, timeout: Duration) -> CheckState {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.run()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:.1} s", timeout.as_secs_f64())),
        };
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(detail) => CheckState { name: self.name(), ok: true, detail, seconds },
            Err(detail) => CheckState { name: self.name(), ok: false, detail, seconds },
        }
    }
}

/// Runs every check at once; ready when all pass.
pub async fn readiness(checks: &[Check], timeout: Duration) -> Readiness {
    let states = futures::future::join_all(checks.iter().map(|c| c.state(timeout))).await;
    let failing: Vec<String> = states.iter().filter(|s| !s.ok).map(|s| s.name.clone()).collect();
    Readiness { ready: failing.is_empty(), checks: states, failing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_counts_while_its_beat_lives_and_fails_when_it_stops_turning() {
        let beat = Beat::new("test-loop-a");
        let find = |l: &Liveness| l.loops.iter().find(|s| s.name == "test-loop-a").cloned();
        let state = find(&liveness(Duration::from_secs(60))).expect("registered");
        assert!(state.ok);
        std::thread::sleep(Duration::from_millis(30));
        let stale = liveness(Duration::from_millis(10));
        assert!(!find(&stale).expect("registered").ok);
        assert!(stale.failing.contains(&"test-loop-a") && !stale.live);
        beat.turn();
        assert!(find(&liveness(Duration::from_millis(10))).expect("registered").ok);
        drop(beat);
        assert!(find(&liveness(Duration::from_secs(60))).is_none(), "an ended loop no longer counts");
    }
}
