//! The logistic-regression fit on a known model, for BENCHMARKS.md: ROWS rows (default
//! 1,000,000; 1,250,000 fits 1 M) × COLS (20) standard-normal features with scales from 0.5 to 5 and
//! about 5 % positives, then one-hot groups of the sizes listed in GROUPS (none by default;
//! `13,4,4` is the shape of the default features' categories and parts of the day), each
//! category drawn with falling frequencies and its own effect;
//! the first 80 % fit, the last 20 % held out. Prints the fit time (best of 3), Newton steps,
//! held-out AUC and peak RSS. With OUT_DIR, also writes the data (x.f32: column-major f32;
//! y.u8) and the coefficients for `scripts/fit_bench.py` (scikit-learn on the same rows).
//!
//!     cargo run --release -p txpipe-core --example fit_bench -- [ROWS] [OUT_DIR|-] [COLS] [GROUPS]

use std::time::Instant;

use rand::{Rng, SeedableRng};
use txpipe_core::model::{FitOptions, MatrixBuilder, fit, metrics};

fn normal(rng: &mut impl Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = args.get(1).map(|r| r.parse()).transpose()?.unwrap_or(1_000_000);
    let out = args.get(2).filter(|d| d.as_str() != "-");
    let cols: usize = args.get(3).map(|c| c.parse()).transpose()?.unwrap_or(20).max(2);
    let groups: Vec<usize> = match args.get(4) {
        Some(g) => g.split(',').map(|k| k.parse::<usize>().map(|k| k.max(2))).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let width = cols + groups.iter().sum::<usize>();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let scales: Vec<f64> = (0..cols).map(|j| 0.5 + 4.5 * j as f64 / (cols - 1) as f64).collect();
    // Standardised effects from -1 to 1, so every feature matters about as much.
    let beta: Vec<f64> = (0..cols)
        .map(|j| (if j % 2 == 0 { 1.0 } else { -1.0 }) * (0.2 + 0.8 * j as f64 / cols as f64) / scales[j])
        .collect();
    let intercept = -5.2;
    let mut starts = Vec::new();
    let mut ranges = Vec::new();
    for &k in &groups {
        let start = starts.last().map_or(cols, |&(s, k): &(usize, usize)| s + k);
        starts.push((start, k));
        ranges.push(start..start + k);
    }
    let mut built = MatrixBuilder::new(width, &ranges, rows);
    let mut row = vec![0.0f32; width];
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut z = intercept;
        row.fill(0.0);
        for j in 0..cols {
            let v = (normal(&mut rng) * scales[j]) as f32;
            row[j] = v;
            z += beta[j] * v as f64;
        }
        for &(start, k) in &starts {
            // Category c with odds falling as 0.7^c, and effects from -0.8 to 0.8.
            let mut c = 0;
            while c + 1 < k && rng.random::<f64>() < 0.7 {
                c += 1;
            }
            row[start + c] = 1.0;
            z += 1.6 * c as f64 / (k - 1) as f64 - 0.8;
        }
        built.push(&row);
        y.push(u8::from(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())));
    }
    let x = built.finish();
    let cols = width;
    let cut = rows * 4 / 5;
    let (train, test) = (x.slice_rows(0..cut), x.slice_rows(cut..rows));
    let positives = y.iter().filter(|&&v| v == 1).count();
    let options = FitOptions::default();
    let mut best = f64::INFINITY;
    let mut model = None;
    for _ in 0..3 {
        let t = Instant::now();
        let m = fit(&train, &y[..cut], &options)?;
        best = best.min(t.elapsed().as_secs_f64());
        model = Some(m);
    }
    let model = model.ok_or("no fit")?;
    let p = model.probabilities(&test);
    let auc = metrics::auc_roc(&p, &y[cut..]);
    println!(
        "{{\"rows\": {rows}, \"fit_rows\": {cut}, \"features\": {cols}, \"positives\": {:.4}, \"fit_s\": {best:.3}, \"iterations\": {}, \"converged\": {}, \"holdout_auc\": {auc:.4}, \"threads\": {}, \"peak_rss_mb\": {}}}",
        positives as f64 / rows as f64,
        model.iterations,
        model.converged,
        rayon::current_num_threads(),
        peak_rss_mb()
    );
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let mut bytes = Vec::with_capacity(rows * cols * 4);
        let mut scratch = Vec::new();
        for j in 0..cols {
            for v in x.column_values(j, 0..rows, &mut scratch) {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        std::fs::write(format!("{dir}/x.f32"), bytes)?;
        std::fs::write(format!("{dir}/y.u8"), &y)?;
        std::fs::write(format!("{dir}/model.json"), serde_json::to_string(&model)?)?;
    }
    Ok(())
}
