//! Scoring speed, features + model alone, for BENCHMARKS.md: ROWS generated events of the
//! default schema (default 1,000,000) parsed once, the default features fitted and a logistic
//! regression fitted on them; then, timed (best of 3), every event through what `score` does
//! per row: its feature row (account history included), the probability, the label and the top
//! three reasons. One thread.
//!
//!     cargo run --profile release-lto -p txpipe-core --example score_bench -- [ROWS]

use std::time::Instant;

use txpipe_core::event::{EventParser, Value};
use txpipe_core::features::{Explainer, FeatureConfig, History};
use txpipe_core::generator::{Generator, GeneratorConfig};
use txpipe_core::model::{FitOptions, Matrix, fit};
use txpipe_core::schema::Schema;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: u64 = std::env::args().nth(1).map(|r| r.parse()).transpose()?.unwrap_or(1_000_000);
    let schema = Schema::default_schema();
    let parser = EventParser::new(schema.clone());
    let mut generator = Generator::new(
        &schema,
        GeneratorConfig { seed: 3, count: rows, malformed_rate: 0.0, ..Default::default() },
    )?;
    let payloads = generator.payloads(rows as usize);
    let mut events: Vec<Vec<Value<'_>>> = Vec::with_capacity(payloads.len());
    for p in &payloads {
        let mut values = Vec::new();
        parser.parse(p, &mut values)?;
        events.push(values);
    }
    let spec = FeatureConfig::default().validate(&schema)?;
    let fitted = spec.fit(&schema, events.iter().map(|v| v.as_slice()));
    let features = fitted.bind(&schema)?;
    let width = features.width();
    let label = schema.label_index().ok_or("no label")?;
    let mut columns: Vec<Vec<f32>> = (0..width).map(|_| Vec::with_capacity(events.len())).collect();
    let mut y = Vec::with_capacity(events.len());
    let mut history = History::new();
    let mut row = vec![0f32; width];
    for v in &events {
        features.row(v, &mut history, &mut row);
        for (c, &x) in columns.iter_mut().zip(&row) {
            c.push(x);
        }
        y.push(u8::from(matches!(v[label], Value::Bool(true))));
    }
    let model = fit(&Matrix::from_columns(columns), &y, &FitOptions::default())?;
    let explainer = Explainer::new(&features, &model.standardized, &model.means, &model.stds);

    // Without, then with the reasons' text (what score writes to `explanation`).
    for with_text in [false, true] {
        let mut best = f64::INFINITY;
        let mut checksum = 0.0;
        let (mut reasons_seen, mut text_bytes) = (0usize, 0usize);
        let mut text = String::new();
        for _ in 0..3 {
            let mut history = History::new();
            let started = Instant::now();
            for v in &events {
                let seen = features.row(v, &mut history, &mut row);
                let p = model.probability(&row);
                let label = p >= 0.5;
                let top = explainer.reasons(&row);
                let mut reasons = [""; 3];
                for (slot, r) in reasons.iter_mut().zip(top.iter()) {
                    *slot = explainer.code(r);
                }
                if with_text {
                    explainer.explain(&top, v, seen.as_ref(), &history, &mut text);
                    text_bytes += text.len();
                }
                checksum += p + f64::from(u8::from(label));
                reasons_seen += reasons.iter().filter(|r| !r.is_empty()).count();
            }
            best = best.min(started.elapsed().as_secs_f64());
        }
        println!(
            "{rows} rows x {width} features{}: best of 3 {best:.3} s = {:.0} rows/s per core (checksum {checksum:.3}, {} reasons, {:.0} bytes of text a row)",
            if with_text { ", with the reasons' text" } else { "" },
            rows as f64 / best,
            reasons_seen / 3,
            text_bytes as f64 / 3.0 / rows as f64
        );
    }
    Ok(())
}
