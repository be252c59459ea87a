//! Renders a drawn event as JSON in the schema's field order, and damages a share of them in
//! documented ways so that every quarantine path is exercised.
//!
//! In: a [`Draw`] and the random stream. Out: payload bytes, key bytes and the [`Truth`].

use std::io::Write;

use chrono::{DateTime, SecondsFormat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::world::{CATEGORIES, CHANNELS, COUNTRIES, Draw, normal};
use super::{GeneratorConfig, Truth};
use crate::error::{Error, Result};
use crate::event::RejectKind;
use crate::schema::{FieldType, Schema};

/// What the generator writes in a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    TransactionId,
    AccountId,
    MerchantId,
    MerchantCategory,
    Amount,
    Currency,
    Country,
    Channel,
    EventTime,
    /// The drawn fraud label (omitted when labels are off).
    Label,
    /// Anonymous numeric feature: N(0,1) noise plus a seeded loading on the hidden risk score.
    Numeric,
    /// A random lower-case token.
    Text,
    /// A random integer 0 … 999.
    Integer,
    /// A random boolean.
    Flag,
}

impl Source {
    const NAMES: [(&'static str, Source); 14] = [
        ("transaction_id", Source::TransactionId),
        ("account_id", Source::AccountId),
        ("merchant_id", Source::MerchantId),
        ("merchant_category", Source::MerchantCategory),
        ("amount", Source::Amount),
        ("currency", Source::Currency),
        ("country", Source::Country),
        ("channel", Source::Channel),
        ("event_time", Source::EventTime),
        ("label", Source::Label),
        ("numeric", Source::Numeric),
        ("text", Source::Text),
        ("integer", Source::Integer),
        ("flag", Source::Flag),
    ];

    fn parse(name: &str) -> Option<Source> {
        Source::NAMES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    fn fits(self, kind: FieldType) -> bool {
        use Source::*;
        match self {
            TransactionId | AccountId | MerchantId | MerchantCategory | Currency | Country | Channel
            | Text => kind == FieldType::String,
            Amount | Numeric => kind == FieldType::Double,
            Integer => kind == FieldType::Long,
            EventTime => kind == FieldType::Timestamp,
            Label | Flag => kind == FieldType::Boolean,
        }
    }

    fn by_type(kind: FieldType) -> Source {
        match kind {
            FieldType::String => Source::Text,
            FieldType::Double => Source::Numeric,
            FieldType::Long => Source::Integer,
            FieldType::Boolean => Source::Flag,
            FieldType::Timestamp => Source::EventTime,
        }
    }
}

/// The ways the generator damages an event on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MalformedKind {
    /// The payload is cut short: not valid JSON.
    InvalidJson,
    /// A required field is left out.
    MissingField,
    /// A required field is null.
    NullField,
    /// A required field has the wrong JSON type.
    WrongType,
    /// The event time is not a time.
    BadTime,
    /// A number with a minimum of 0 or more is negative.
    NegativeAmount,
    /// A double is too large to be finite (`1e999`).
    NonFiniteAmount,
}

impl MalformedKind {
    pub const ALL: [MalformedKind; 7] = [
        MalformedKind::InvalidJson,
        MalformedKind::MissingField,
        MalformedKind::NullField,
        MalformedKind::WrongType,
        MalformedKind::BadTime,
        MalformedKind::NegativeAmount,
        MalformedKind::NonFiniteAmount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MalformedKind::InvalidJson => "invalid_json",
            MalformedKind::MissingField => "missing_field",
            MalformedKind::NullField => "null_field",
            MalformedKind::WrongType => "wrong_type",
            MalformedKind::BadTime => "bad_time",
            MalformedKind::NegativeAmount => "negative_amount",
            MalformedKind::NonFiniteAmount => "non_finite_amount",
        }
    }

    /// The quarantine reason the validator gives such an event.
    pub fn rejection(self) -> RejectKind {
        match self {
            MalformedKind::InvalidJson => RejectKind::InvalidJson,
            MalformedKind::MissingField => RejectKind::MissingField,
            MalformedKind::NullField => RejectKind::NullField,
            MalformedKind::WrongType => RejectKind::WrongType,
            MalformedKind::BadTime => RejectKind::BadTime,
            MalformedKind::NegativeAmount | MalformedKind::NonFiniteAmount => RejectKind::OutOfRange,
        }
    }
}

const BAD_TIMES: [&str; 4] =
    ["\"not-a-time\"", "\"2026-13-45T25:61:00Z\"", "\"31/12/2026 10:00\"", "\"2026-11-01T10:00:00\""];

enum Damage {
    None,
    Omit(usize),
    Replace(usize, &'static str),
}

struct Field {
    name_json: String,
    source: Source,
    kind: FieldType,
    loading: f64,
}

pub(super) struct Renderer {
    fields: Vec<Field>,
    key: Option<usize>,
    required: Vec<usize>,
    time: usize,
    non_negative: Option<usize>,
    double: Option<usize>,
    kinds: Vec<MalformedKind>,
    seed: u64,
    labels: bool,
    malformed_rate: f64,
}

impl Renderer {
    pub(super) fn new(schema: &Schema, config: &GeneratorConfig) -> Result<Renderer> {
        let mut loadings = ChaCha8Rng::seed_from_u64(config.seed.rotate_left(17) ^ 0x5eed);
        let mut fields = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let source = match &f.generate {
                Some(name) => Source::parse(name).ok_or_else(|| {
                    let names: Vec<_> = Source::NAMES.iter().map(|n| n.0).collect();
                    Error::config(
                        format!("schema.fields[{i}].generate"),
                        name,
                        format!("one of {}", names.join(", ")),
                    )
                })?,
                None if i == schema.id_index() => Source::TransactionId,
                None if i == schema.time_index() => Source::EventTime,
                None if Some(i) == schema.label_index() => Source::Label,
                None => Source::parse(&f.name).filter(|s| s.fits(f.kind)).unwrap_or(Source::by_type(f.kind)),
            };
            if !source.fits(f.kind) {
                return Err(Error::config(
                    format!("schema.fields[{i}].generate"),
                    f.generate.as_deref().unwrap_or_default(),
                    format!("a source that fits a {:?} field", f.kind).to_lowercase(),
                ));
            }
            // Two of three numeric features carry signal; the rest are pure noise.
            let loading =
                if loadings.random_range(0..3) < 2 { loadings.random_range(-1.0..1.0) } else { 0.0 };
            fields.push(Field {
                name_json: serde_json::to_string(&f.name).unwrap_or_default(),
                source,
                kind: f.kind,
                loading,
            });
        }
        let required: Vec<usize> = (0..fields.len()).filter(|&i| schema.fields()[i].required).collect();
        let non_negative = schema.fields().iter().position(|f| {
            matches!(f.kind, FieldType::Double | FieldType::Long) && f.min.is_some_and(|m| m >= 0.0)
        });
        let double = schema.fields().iter().position(|f| f.kind == FieldType::Double);
        let kinds = MalformedKind::ALL
            .into_iter()
            .filter(|k| match k {
                MalformedKind::NegativeAmount => non_negative.is_some(),
                MalformedKind::NonFiniteAmount => double.is_some(),
                _ => true,
            })
            .collect();
        Ok(Renderer {
            fields,
            key: schema.key_index(),
            required,
            time: schema.time_index(),
            non_negative,
            double,
            kinds,
            seed: config.seed,
            labels: config.labels,
            malformed_rate: config.malformed_rate,
        })
    }

    pub(super) fn malformed_kinds(&self) -> &[MalformedKind] {
        &self.kinds
    }

    pub(super) fn render(
        &mut self,
        d: &Draw,
        rng: &mut ChaCha8Rng,
        payload: &mut Vec<u8>,
        key: &mut Vec<u8>,
    ) -> Truth {
        payload.clear();
        key.clear();
        let malformed = (self.malformed_rate > 0.0 && rng.random::<f64>() < self.malformed_rate)
            .then(|| self.kinds[rng.random_range(0..self.kinds.len())]);
        let damage = match malformed {
            None | Some(MalformedKind::InvalidJson) => Damage::None,
            Some(MalformedKind::MissingField) => Damage::Omit(self.random_required(rng)),
            Some(MalformedKind::NullField) => Damage::Replace(self.random_required(rng), "null"),
            Some(MalformedKind::WrongType) => {
                let i = self.random_required(rng);
                let wrong = match self.fields[i].kind {
                    FieldType::String => "12345",
                    FieldType::Double | FieldType::Long => "\"12.34\"",
                    FieldType::Boolean => "\"yes\"",
                    FieldType::Timestamp => "true",
                };
                Damage::Replace(i, wrong)
            }
            Some(MalformedKind::BadTime) => {
                Damage::Replace(self.time, BAD_TIMES[rng.random_range(0..BAD_TIMES.len())])
            }
            Some(MalformedKind::NegativeAmount) => Damage::Replace(self.non_negative.unwrap_or(0), "-12.5"),
            Some(MalformedKind::NonFiniteAmount) => Damage::Replace(self.double.unwrap_or(0), "1e999"),
        };
        let id = format!("tx-{:x}-{:010}", self.seed, d.index);
        payload.push(b'{');
        let mut first = true;
        for (i, field) in self.fields.iter().enumerate() {
            if field.source == Source::Label && !self.labels {
                continue;
            }
            let replacement = match damage {
                Damage::Omit(j) if j == i => continue,
                Damage::Replace(j, text) if j == i => Some(text),
                _ => None,
            };
            if !first {
                payload.push(b',');
            }
            first = false;
            payload.extend_from_slice(field.name_json.as_bytes());
            payload.push(b':');
            let start = payload.len();
            match replacement {
                Some(text) => payload.extend_from_slice(text.as_bytes()),
                None => write_value(field, d, &id, rng, payload),
            }
            if Some(i) == self.key {
                // The key is the field's value without JSON quotes.
                key.extend_from_slice(payload[start..].strip_prefix(b"\"").unwrap_or(&payload[start..]));
                if key.last() == Some(&b'"') {
                    key.pop();
                }
            }
        }
        payload.push(b'}');
        if malformed == Some(MalformedKind::InvalidJson) {
            let keep = rng.random_range(1..payload.len() - 1);
            payload.truncate(keep);
        }
        Truth { transaction_id: id, fraud_probability: d.fraud_probability, is_fraud: d.is_fraud, malformed }
    }

    fn random_required(&self, rng: &mut ChaCha8Rng) -> usize {
        self.required[rng.random_range(0..self.required.len())]
    }
}

fn write_value(field: &Field, d: &Draw, id: &str, rng: &mut ChaCha8Rng, out: &mut Vec<u8>) {
    // Writing into a Vec<u8> cannot fail.
    let _ = match field.source {
        Source::TransactionId => write!(out, "\"{id}\""),
        Source::AccountId => write!(out, "\"acc-{:06}\"", d.account),
        Source::MerchantId => write!(out, "\"mer-{:05}\"", d.merchant),
        Source::MerchantCategory => write!(out, "\"{}\"", CATEGORIES[d.category].0),
        Source::Amount => write!(out, "{:.2}", d.amount),
        Source::Currency => write!(out, "\"{}\"", COUNTRIES[d.country].1),
        Source::Country => write!(out, "\"{}\"", COUNTRIES[d.country].0),
        Source::Channel => write!(out, "\"{}\"", CHANNELS[d.channel].0),
        Source::EventTime => match DateTime::from_timestamp_micros(d.time_us) {
            Some(t) => write!(out, "\"{}\"", t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(out, "\"1970-01-01T00:00:00.000Z\""),
        },
        Source::Label => write!(out, "{}", u8::from(d.is_fraud)),
        Source::Numeric => write!(out, "{:.6}", normal(rng) + field.loading * d.risk),
        Source::Text => write!(out, "\"w{:04x}\"", rng.random_range(0..0x1_0000u32)),
        Source::Integer => write!(out, "{}", rng.random_range(0..1000)),
        Source::Flag => write!(out, "{}", rng.random::<bool>()),
    };
}
