//! Parsing speed, for BENCHMARKS.md: ROWS generated events of the default schema (default
//! 1,000,000) parsed and validated by [`EventParser::parse`], best of 3, one thread — the work
//! of ingest's parse stage before its Arrow builders. Beside it, as references in the same run:
//! the UTF-8 check alone, and `serde_json` skipping the same bytes (`IgnoredAny`).
//!
//!     cargo run --profile release-lto -p txpipe-core --example parse_bench -- [ROWS]

use std::time::Instant;

use txpipe_core::event::{EventParser, Value};
use txpipe_core::generator::{Generator, GeneratorConfig};
use txpipe_core::schema::Schema;

fn best_of_3(mut run: impl FnMut() -> usize) -> (f64, usize) {
    let mut best = f64::INFINITY;
    let mut n = 0;
    for _ in 0..3 {
        let t = Instant::now();
        n = run();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, n)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: u64 = std::env::args().nth(1).map(|r| r.parse()).transpose()?.unwrap_or(1_000_000);
    let schema = Schema::default_schema();
    let parser = EventParser::new(schema.clone());
    let mut generator = Generator::new(
        &schema,
        GeneratorConfig { seed: 3, count: rows, malformed_rate: 0.0, ..Default::default() },
    )?;
    let payloads = generator.payloads(rows as usize);
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let (utf8, _) = best_of_3(|| payloads.iter().filter(|p| std::str::from_utf8(p).is_ok()).count());
    let (skip, _) = best_of_3(|| {
        payloads.iter().filter(|p| serde_json::from_slice::<serde::de::IgnoredAny>(p).is_ok()).count()
    });
    let mut values: Vec<Value<'_>> = Vec::new();
    let (parse, clean) =
        best_of_3(|| payloads.iter().filter(|p| parser.parse(p, &mut values).is_ok()).count());
    assert_eq!(clean as u64, rows, "every generated event parses");
    let per = |s: f64| s * 1e9 / rows as f64;
    println!(
        "{rows} events of {:.0} bytes: parse {:.0} ns/event ({:.0} k events/s); utf-8 check {:.0} ns; \
         serde_json skipping {:.0} ns",
        bytes as f64 / rows as f64,
        per(parse),
        rows as f64 / parse / 1e3,
        per(utf8),
        per(skip)
    );
    Ok(())
}
