//! `txpipe produce`: synthetic transactions into Kafka, or as JSON lines to a file or stdout.
//!
//! In: [`ProduceConfig`] (count, rate, seed, fraud and malformed rates, time range), the Kafka
//! settings and the schema. Out: the events, an optional truth file (true fraud probability per
//! event, which features never see) and a [`ProduceReport`] with the achieved rate.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use txpipe_connectors::kafka::{self, KafkaConfig, Producer};
use txpipe_core::generator::{Generator, GeneratorConfig, Truth};
use txpipe_core::schema::Schema;
use txpipe_core::units::{parse_duration_us, parse_time_us};

use crate::{JobError, Result, Shutdown};

/// `[produce]`: what to generate and how fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProduceConfig {
    /// Number of events.
    pub count: u64,
    /// Events per second; 0 = as fast as possible.
    pub rate: f64,
    /// Seed of the generator: the same seed gives the same events.
    pub seed: u64,
    /// Mean true fraud probability, 0 … 1.
    pub fraud_rate: f64,
    /// Share of deliberately malformed events, 0 … 1.
    pub malformed_rate: f64,
    /// JSON lines to this file (`-` = stdout) instead of Kafka.
    pub output: Option<String>,
    /// CSV of the truth per event (id, true fraud probability, label, malformed kind).
    pub truth_output: Option<String>,
    /// First event time: RFC 3339, or `now`.
    pub start_time: String,
    /// Period the events cover (`7d`, `36h`, ...); by default 7 days, or count / rate when a
    /// rate is set, so that event time keeps pace with the clock.
    pub span: Option<String>,
    /// Number of synthetic accounts.
    pub accounts: usize,
    /// Number of synthetic merchants.
    pub merchants: usize,
    /// Write the label field (history); `false` looks like real-time traffic.
    pub labels: bool,
}

impl Default for ProduceConfig {
    fn default() -> Self {
        let g = GeneratorConfig::default();
        ProduceConfig {
            count: g.count,
            rate: 0.0,
            seed: g.seed,
            fraud_rate: g.fraud_rate,
            malformed_rate: g.malformed_rate,
            output: None,
            truth_output: None,
            start_time: "2026-11-01T00:00:00Z".into(),
            span: None,
            accounts: g.accounts,
            merchants: g.merchants,
            labels: g.labels,
        }
    }
}

/// Where the events go.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Kafka,
    Stdout,
    File(PathBuf),
}

/// Validated settings of a produce run.
#[derive(Debug, Clone)]
pub struct ProduceSettings {
    pub generator: GeneratorConfig,
    /// Events per second, when paced.
    pub rate: Option<f64>,
    pub output: Output,
    pub truth_output: Option<PathBuf>,
    /// `start_time = "now"`: event times start when sending starts (after connecting), not
    /// when the settings were read, so that paced event times keep pace with the clock.
    pub start_now: bool,
}

impl ProduceConfig {
    /// Checks every value and turns it into typed settings.
    pub fn validate(&self) -> std::result::Result<ProduceSettings, txpipe_core::Error> {
        use txpipe_core::Error as E;
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(E::config(
                "produce.rate",
                self.rate,
                "events per second, 0 (as fast as possible) or more",
            ));
        }
        for (key, v) in
            [("produce.fraud_rate", self.fraud_rate), ("produce.malformed_rate", self.malformed_rate)]
        {
            if !(0.0..=1.0).contains(&v) {
                return Err(E::config(key, v, "a number from 0 to 1"));
            }
        }
        let start_us = parse_time_us(&self.start_time).ok_or_else(|| {
            E::config(
                "produce.start_time",
                &self.start_time,
                "an RFC 3339 time such as 2026-11-01T00:00:00Z, or now",
            )
        })?;
        let span_us = match &self.span {
            Some(s) => parse_duration_us(s).filter(|&us| us > 0).ok_or_else(|| {
                E::config("produce.span", s, "a positive duration such as 7d, 36h, 90m or 30s")
            })?,
            None if self.rate > 0.0 => ((self.count as f64 / self.rate) * 1e6).max(1e6) as i64,
            None => 7 * 86_400_000_000,
        };
        if self.accounts == 0 {
            return Err(E::config("produce.accounts", self.accounts, "at least 1"));
        }
        if self.merchants == 0 {
            return Err(E::config("produce.merchants", self.merchants, "at least 1"));
        }
        let output = match self.output.as_deref() {
            None => Output::Kafka,
            Some("-") => Output::Stdout,
            Some("") => return Err(E::config("produce.output", "", "a file path, or - for stdout")),
            Some(path) => Output::File(PathBuf::from(path)),
        };
        Ok(ProduceSettings {
            generator: GeneratorConfig {
                seed: self.seed,
                count: self.count,
                start_us,
                span_us,
                accounts: self.accounts,
                merchants: self.merchants,
                fraud_rate: self.fraud_rate,
                malformed_rate: self.malformed_rate,
                labels: self.labels,
            },
            rate: (self.rate > 0.0).then_some(self.rate),
            output,
            truth_output: self.truth_output.as_ref().map(PathBuf::from),
            start_now: self.start_time.trim() == "now",
        })
    }
}

/// What a produce run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProduceReport {
    pub events: u64,
    pub malformed: u64,
    pub frauds: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    /// Achieved events per second.
    pub events_per_s: f64,
    /// Messages acknowledged by Kafka (Kafka output only).
    pub delivered: Option<u64>,
    /// Stopped by a signal before `count` events.
    pub interrupted: bool,
}

/// Everything a produce run needs.
#[derive(Debug, Clone)]
pub struct ProduceJob {
    pub settings: ProduceSettings,
    pub kafka: KafkaConfig,
    pub schema: Schema,
}

enum Sink {
    Kafka(Producer),
    Lines(BufWriter<Box<dyn Write + Send>>),
}

/// Runs a produce job to its count, or until `shutdown`.
pub async fn run(job: ProduceJob, shutdown: Shutdown) -> Result<ProduceReport> {
    // Checked before any connection: a bad generate key or rate fails at once.
    let generator = Generator::new(&job.schema, job.settings.generator.clone())?;
    let sink = match &job.settings.output {
        Output::Kafka => {
            let partitions = kafka::ensure_topic(&job.kafka, job.kafka.connect_backoff()).await?;
            tracing::info!(topic = %job.kafka.topic, partitions, brokers = %job.kafka.brokers, "producing to kafka");
            Sink::Kafka(Producer::new(&job.kafka)?)
        }
        Output::Stdout => Sink::Lines(BufWriter::with_capacity(1 << 20, Box::new(std::io::stdout()))),
        Output::File(path) => {
            let f = File::create(path).map_err(|e| JobError::io(path, e))?;
            Sink::Lines(BufWriter::with_capacity(1 << 20, Box::new(f)))
        }
    };
    let truth = match &job.settings.truth_output {
        Some(path) => {
            let mut w = BufWriter::new(File::create(path).map_err(|e| JobError::io(path, e))?);
            w.write_all(Truth::CSV_HEADER.as_bytes()).map_err(|e| JobError::io(path, e))?;
            Some((w, path.clone()))
        }
        None => None,
    };
    // Connecting took a while: the clock starts now. Building the generator takes a while too
    // (a big world of accounts: a good part of a second), so the pacing counts from the same
    // instant as the event times, not from after the build.
    let (generator, clock_start) = if job.settings.start_now {
        let clock_start = Instant::now();
        let config = GeneratorConfig {
            start_us: chrono::Utc::now().timestamp_micros(),
            ..job.settings.generator.clone()
        };
        (Generator::new(&job.schema, config)?, Some(clock_start))
    } else {
        (generator, None)
    };
    let settings = job.settings.clone();
    tokio::task::spawn_blocking(move || {
        produce_blocking(generator, clock_start, sink, truth, &settings, &shutdown)
    })
    .await
    .map_err(|e| JobError::Internal(format!("produce task: {e}")))?
}

/// `clock_start`: the instant the first event time stands for (events are sent on a schedule
/// counted from it); None: from the first send.
fn produce_blocking(
    mut generator: Generator,
    clock_start: Option<Instant>,
    mut sink: Sink,
    mut truth: Option<(BufWriter<File>, PathBuf)>,
    settings: &ProduceSettings,
    shutdown: &Shutdown,
) -> Result<ProduceReport> {
    let count = settings.generator.count;
    let progress = indicatif::ProgressBar::new(count).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {human_pos}/{human_len} events {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut payload, mut key, mut line) = (Vec::with_capacity(512), Vec::with_capacity(32), Vec::new());
    let mut report = ProduceReport::default();
    let started = clock_start.unwrap_or_else(Instant::now);
    const BATCH: u64 = 4096;
    for i in 0..count {
        if i % BATCH == 0 {
            if shutdown.is_triggered() {
                report.interrupted = true;
                break;
            }
            progress.set_position(i);
        }
        if let Some(rate) = settings.rate {
            let due = Duration::from_secs_f64(i as f64 / rate);
            let now = started.elapsed();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        let t = generator.next_into(&mut payload, &mut key);
        report.malformed += u64::from(t.malformed.is_some());
        report.frauds += u64::from(t.is_fraud && t.malformed.is_none());
        report.bytes += payload.len() as u64;
        match &mut sink {
            Sink::Kafka(p) => p.send((!key.is_empty()).then_some(key.as_slice()), &payload)?,
            Sink::Lines(w) => {
                payload.push(b'\n');
                w.write_all(&payload).map_err(|e| JobError::io("output", e))?;
            }
        }
        if let Some((w, path)) = &mut truth {
            line.clear();
            t.write_csv(&mut line);
            w.write_all(&line).map_err(|e| JobError::io(path, e))?;
        }
        report.events += 1;
        if report.events % BATCH == 0 {
            metrics::counter!("txpipe_produce_events_total").increment(BATCH);
        }
    }
    metrics::counter!("txpipe_produce_events_total").increment(report.events % BATCH);
    match &mut sink {
        Sink::Kafka(p) => report.delivered = Some(p.flush(Duration::from_secs(120))?.delivered),
        Sink::Lines(w) => w.flush().map_err(|e| JobError::io("output", e))?,
    }
    if let Some((w, path)) = &mut truth {
        w.flush().map_err(|e| JobError::io(path, e))?;
    }
    progress.finish_and_clear();
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.events_per_s = report.events as f64 / report.elapsed_s.max(1e-9);
    Ok(report)
}
