//! The synthetic event generator of `txpipe produce`.
//!
//! In: a [`Schema`] and a [`GeneratorConfig`]. Out: for each event, its JSON payload (fields in
//! schema order), its Kafka key and its [`Truth`] (true fraud probability, label, and the kind of
//! damage when the event was deliberately made malformed). Seeded and deterministic: the same
//! schema and config give the same bytes.
//!
//! What goes in each field is chosen by the field's `generate` key, else by its role or name,
//! else by its type (see [`Source`]); so a schema of 30 anonymous numeric features works with no
//! code change: each `numeric` field is noise plus a seeded loading on the hidden fraud risk.

mod render;
mod world;

pub use render::{MalformedKind, Source};
pub use world::{CATEGORIES, CHANNELS, COUNTRIES, Draw};

use crate::error::{Error, Result};
use crate::schema::Schema;
use render::Renderer;
use world::World;

/// Settings of the generator.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub seed: u64,
    /// Number of events (spreads them over the span; the generator itself does not stop).
    pub count: u64,
    /// First event time, UTC microseconds.
    pub start_us: i64,
    /// Period covered by the events, microseconds.
    pub span_us: i64,
    pub accounts: usize,
    pub merchants: usize,
    /// Mean true fraud probability (0 … 1).
    pub fraud_rate: f64,
    /// Share of events made malformed (0 … 1), spread evenly over the applicable kinds.
    pub malformed_rate: f64,
    /// Write the label field (history); without it the events look like real-time traffic.
    pub labels: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            count: 100_000,
            start_us: 1_793_491_200_000_000, // 2026-11-01T00:00:00Z
            span_us: 7 * 24 * 3_600_000_000,
            accounts: 10_000,
            merchants: 2_000,
            fraud_rate: 0.02,
            malformed_rate: 0.0,
            labels: true,
        }
    }
}

/// What the generator knows about an event that features must not see.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub transaction_id: String,
    pub fraud_probability: f64,
    pub is_fraud: bool,
    pub malformed: Option<MalformedKind>,
}

impl Truth {
    /// CSV header of [`Truth::write_csv`].
    pub const CSV_HEADER: &'static str = "transaction_id,fraud_probability,is_fraud,malformed\n";

    /// One CSV line.
    pub fn write_csv(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Ids come from the generator (no commas or quotes); writing to a Vec cannot fail.
        let _ = writeln!(
            out,
            "{},{:.6},{},{}",
            self.transaction_id,
            self.fraud_probability,
            u8::from(self.is_fraud),
            self.malformed.map(MalformedKind::name).unwrap_or("")
        );
    }
}

/// A deterministic stream of synthetic events.
pub struct Generator {
    world: World,
    renderer: Renderer,
    config: GeneratorConfig,
}

impl Generator {
    pub fn new(schema: &Schema, config: GeneratorConfig) -> Result<Generator> {
        if !(0.0..=1.0).contains(&config.fraud_rate) {
            return Err(Error::config("produce.fraud_rate", config.fraud_rate, "a number from 0 to 1"));
        }
        if !(0.0..=1.0).contains(&config.malformed_rate) {
            return Err(Error::config(
                "produce.malformed_rate",
                config.malformed_rate,
                "a number from 0 to 1",
            ));
        }
        if config.span_us <= 0 {
            return Err(Error::config("produce.span", config.span_us, "a positive duration"));
        }
        if config.accounts == 0 {
            return Err(Error::config("produce.accounts", 0, "at least 1"));
        }
        if config.merchants == 0 {
            return Err(Error::config("produce.merchants", 0, "at least 1"));
        }
        let world = World::new(&config);
        let renderer = Renderer::new(schema, &config)?;
        Ok(Generator { world, renderer, config })
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Malformed kinds this schema allows (a schema without a timestamp rule cannot have a bad
    /// time, and so on).
    pub fn malformed_kinds(&self) -> &[MalformedKind] {
        self.renderer.malformed_kinds()
    }

    /// Writes the next event's payload into `payload` and its key into `key` (both cleared
    /// first; `key` stays empty when the schema has no key field) and returns its truth.
    pub fn next_into(&mut self, payload: &mut Vec<u8>, key: &mut Vec<u8>) -> Truth {
        let draw = self.world.draw();
        self.renderer.render(&draw, self.world.rng(), payload, key)
    }

    /// The payloads of the next `count` events, each in a buffer of its own (keys and truths
    /// dropped): sample input for benchmarks and tests.
    pub fn payloads(&mut self, count: usize) -> Vec<Vec<u8>> {
        let (mut payload, mut key) = (Vec::new(), Vec::new());
        (0..count)
            .map(|_| {
                self.next_into(&mut payload, &mut key);
                payload.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
