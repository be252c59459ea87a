//! What a running job shows from outside: Prometheus metrics at `/metrics`, liveness at
//! `/livez` and readiness at `/readyz`, on one address (`[metrics] addr`, `--metrics-addr`).
//!
//! The jobs record through the `metrics` facade ([`names`] lists every metric); this module
//! installs the Prometheus recorder, serves its text with the process metrics, and answers the
//! probes: `/livez` 200 while every loop of the job turns ([`Beat`]), `/readyz` 200 while every
//! service the job uses answers ([`Check`], run in the background so that a probe answers at
//! once); both 503 otherwise, with a JSON body naming what fails.

mod health;
pub mod names;

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

pub use health::{Beat, Check, CheckState, Liveness, LoopState, Readiness, liveness, readiness};

use crate::{JobError, Result, Shutdown};

/// `[metrics]`: where a job serves its metrics and health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `HOST:PORT` to serve `/metrics`, `/livez` and `/readyz` on; empty: off.
    pub addr: String,
    /// `/livez` fails when a loop of the job has not turned for this long.
    pub live_within: String,
    /// How often `/readyz`'s checks run (each is given as long to answer).
    pub check_every: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { addr: String::new(), live_within: "60s".into(), check_every: "5s".into() }
    }
}

/// Validated `[metrics]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    pub addr: Option<SocketAddr>,
    pub live_within: Duration,
    pub check_every: Duration,
}

impl MetricsConfig {
    pub fn validate(&self) -> std::result::Result<TelemetrySettings, txpipe_core::Error> {
        let addr = match self.addr.trim() {
            "" => None,
            a => Some(a.to_socket_addrs().ok().and_then(|mut all| all.next()).ok_or_else(|| {
                txpipe_core::Error::config(
                    "metrics.addr",
                    &self.addr,
                    "HOST:PORT to listen on, such as 0.0.0.0:9464 or 127.0.0.1:9464 (empty: off)",
                )
            })?),
        };
        let duration = |key: &str, value: &str| match humantime::parse_duration(value.trim()) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(d),
            _ => {
                Err(txpipe_core::Error::config(key, value, "a duration of at least 100ms, such as 30s or 2m"))
            }
        };
        Ok(TelemetrySettings {
            addr,
            live_within: duration("metrics.live_within", &self.live_within)?,
            check_every: duration("metrics.check_every", &self.check_every)?,
        })
    }
}

/// Histogram buckets of the `_seconds` metrics: 1 ms to 5 min.
const BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The process's Prometheus recorder, installed once (the first job that serves metrics).
fn recorder() -> Result<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| JobError::Internal(format!("installing the metrics recorder: {e}")))
}

/// Whether this process serves its metrics (a recorder is installed).
pub fn serving() -> bool {
    RECORDER.get().is_some_and(|r| r.is_ok())
}

static RECORDER: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();

struct State {
    job: &'static str,
    handle: &'static PrometheusHandle,
    process: metrics_process::Collector,
    live_within: Duration,
    ready: Mutex<Readiness>,
}

/// The metrics and health server of one job; [`Telemetry::stop`] ends it.
pub struct Telemetry {
    addr: SocketAddr,
    stop: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Telemetry {
    /// Binds the address and starts serving (None when `[metrics] addr` is empty). `job` names
    /// the job in `txpipe_up` and selects which metrics are registered at zero.
    pub async fn start(
        settings: &TelemetrySettings,
        job: &'static str,
        checks: Vec<Check>,
    ) -> Result<Option<Telemetry>> {
        let Some(addr) = settings.addr else { return Ok(None) };
        let handle = recorder()?;
        let process = metrics_process::Collector::default();
        process.describe();
        names::describe(job);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| JobError::Io {
            path: format!(
                "metrics.addr {addr} (set by --metrics-addr, TXPIPE_METRICS_ADDR or [metrics] addr)"
            ),
            source: e,
        })?;
        let addr = listener.local_addr().map_err(|e| JobError::io(format!("metrics.addr {addr}"), e))?;
        let starting = Readiness {
            ready: false,
            checks: Vec::new(),
            failing: vec!["the first checks have not finished yet".into()],
        };
        let state = Arc::new(State {
            job,
            handle,
            process,
            live_within: settings.live_within,
            ready: Mutex::new(starting),
        });
        let stop = Shutdown::new();
        let tasks = vec![
            tokio::spawn(serve(listener, state.clone(), stop.clone())),
            tokio::spawn(check_loop(checks, settings.check_every, state, stop.clone())),
        ];
        tracing::info!(%addr, job, "serving /metrics, /livez and /readyz");
        Ok(Some(Telemetry { addr, stop, tasks }))
    }

    /// The address served (with the port chosen when the setting's port was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.stop.trigger();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Runs the readiness checks every `every`, each given as long to answer.
async fn check_loop(checks: Vec<Check>, every: Duration, state: Arc<State>, stop: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => return,
        }
        let now = readiness(&checks, every).await;
        for c in &now.checks {
            metrics::gauge!(names::CHECK_READY, "check" => c.name.clone()).set(if c.ok { 1.0 } else { 0.0 });
            if !c.ok {
                tracing::warn!(check = %c.name, detail = %c.detail, "readiness check failed");
            }
        }
        if let Ok(mut r) = state.ready.lock() {
            *r = now;
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<State>, stop: Shutdown) {
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = upkeep.tick() => {
                state.handle.run_upkeep();
                continue;
            }
            _ = stop.wait() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn route(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), "text/plain; charset=utf-8");
    }
    match req.uri().path() {
        "/metrics" => {
            state.process.collect();
            let body = state.handle.render();
            text(StatusCode::OK, body, "text/plain; version=0.0.4; charset=utf-8")
        }
        "/livez" => {
            let live = liveness(state.live_within);
            json(if live.live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, state.job, &live)
        }
        "/readyz" => {
            let ready = state.ready.lock().map(|r| r.clone()).unwrap_or_else(|_| Readiness {
                ready: false,
                checks: Vec::new(),
                failing: vec!["internal".into()],
            });
            json(
                if ready.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE },
                state.job,
                &ready,
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /livez or /readyz\n".into(),
            "text/plain; charset=utf-8",
        ),
    }
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn json(status: StatusCode, job: &str, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut value = serde_json::to_value(body).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("job".into(), job.into());
    }
    text(status, format!("{value}\n"), "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_key_and_the_expected_form() {
        let ok =
            MetricsConfig { addr: "127.0.0.1:9464".into(), ..MetricsConfig::default() }.validate().unwrap();
        assert_eq!(ok.addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(ok.live_within, Duration::from_secs(60));
        assert_eq!(MetricsConfig::default().validate().unwrap().addr, None, "off when empty");
        let bad = MetricsConfig { addr: "9464".into(), ..MetricsConfig::default() }.validate().unwrap_err();
        assert!(bad.to_string().contains("metrics.addr") && bad.to_string().contains("HOST:PORT"), "{bad}");
        let bad =
            MetricsConfig { live_within: "soon".into(), ..MetricsConfig::default() }.validate().unwrap_err();
        assert!(bad.to_string().contains("metrics.live_within"), "{bad}");
    }
}
