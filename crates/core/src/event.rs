//! Event parsing and validation against a [`Schema`].
//!
//! In: the raw bytes of one message. Out: either one cleaned [`Value`] per schema field (strings
//! borrowed from the input where no normalisation was needed), or a [`Rejection`] that says why
//! the event belongs in quarantine. Never panics, whatever the bytes; unknown keys are ignored.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::schema::{Case, FieldConfig, FieldType, Schema};

/// A cleaned value of one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Absent or null (optional fields only).
    Null,
    Str(Cow<'a, str>),
    Double(f64),
    Long(i64),
    Bool(bool),
    /// UTC microseconds since the epoch.
    Timestamp(i64),
}

impl Value<'_> {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Why an event was rejected: a stable code, for counting and querying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    /// Not valid JSON (including numbers too large to represent).
    InvalidJson,
    /// Valid JSON, but not an object.
    NotObject,
    /// A required field is absent.
    MissingField,
    /// A required field is null.
    NullField,
    /// A field has a JSON type its declared type does not accept.
    WrongType,
    /// The event-time text or number cannot be read as a time.
    BadTime,
    /// A number below its field's minimum, or not finite.
    OutOfRange,
    /// A string that breaks its field's rule (empty, wrong length).
    BadFormat,
}

impl RejectKind {
    /// All kinds, in order.
    pub const ALL: [RejectKind; 8] = [
        RejectKind::InvalidJson,
        RejectKind::NotObject,
        RejectKind::MissingField,
        RejectKind::NullField,
        RejectKind::WrongType,
        RejectKind::BadTime,
        RejectKind::OutOfRange,
        RejectKind::BadFormat,
    ];

    /// The stable code written at the start of a quarantine reason.
    pub fn code(self) -> &'static str {
        match self {
            RejectKind::InvalidJson => "invalid_json",
            RejectKind::NotObject => "not_object",
            RejectKind::MissingField => "missing_field",
            RejectKind::NullField => "null_field",
            RejectKind::WrongType => "wrong_type",
            RejectKind::BadTime => "bad_time",
            RejectKind::OutOfRange => "out_of_range",
            RejectKind::BadFormat => "bad_format",
        }
    }
}

/// An event that failed validation, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub kind: RejectKind,
    /// Human-readable detail naming the field and the expected form.
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.detail)
    }
}

impl std::error::Error for Rejection {}

fn reject(kind: RejectKind, detail: String) -> Rejection {
    Rejection { kind, detail }
}

/// A JSON value as read, before it is checked against its field.
#[derive(Debug)]
enum Raw<'a> {
    Missing,
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Composite(&'static str),
}

impl Raw<'_> {
    fn json_type(&self) -> &'static str {
        match self {
            Raw::Missing => "nothing",
            Raw::Null => "null",
            Raw::Bool(_) => "a boolean",
            Raw::Int(_) | Raw::UInt(_) | Raw::Float(_) => "a number",
            Raw::Str(_) => "a string",
            Raw::Composite(t) => t,
        }
    }
}

struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = Raw<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Raw<'de>, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw<'de>, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw<'de>, E> {
        Ok(Raw::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw<'de>, E> {
        Ok(Raw::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Raw::Composite("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Raw::Composite("an object"))
    }
}

/// Reads one object key and answers its field position, without copying it.
struct KeySeed<'s> {
    schema: &'s Schema,
    /// The position to try first: events usually list their keys in schema order.
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    // Escaped keys arrive here, unescaped into the parser's scratch space.
    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.schema.position_from(self.hint, key))
    }
}

/// Reads the top-level object, keeping only the schema's fields.
struct EventVisitor<'s, 'v, 'de> {
    schema: &'s Schema,
    slots: &'v mut [Raw<'de>],
}

impl<'de> Visitor<'de> for EventVisitor<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut hint = 0;
        while let Some(position) = map.next_key_seed(KeySeed { schema: self.schema, hint })? {
            match position {
                // A repeated key keeps its last value, as most JSON readers do.
                Some(i) => {
                    self.slots[i] = map.next_value_seed(RawSeed)?;
                    hint = i + 1;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Parses and validates events against one schema.
#[derive(Debug)]
pub struct EventParser {
    schema: Schema,
    keys: flat::Keys,
}

impl EventParser {
    pub fn new(schema: Schema) -> Self {
        EventParser { keys: flat::Keys::new(&schema), schema }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Parses one payload into `out` (cleared first; one value per schema field, in order).
    pub fn parse<'a>(&self, payload: &'a [u8], out: &mut Vec<Value<'a>>) -> Result<(), Rejection> {
        out.clear();
        let n = self.schema.fields().len();
        // The values as read, one slot per field: on the stack for schemas of usual size.
        let mut stack: [Raw<'a>; STACK_SLOTS] = std::array::from_fn(|_| Raw::Missing);
        let mut heap: Vec<Raw<'a>> = Vec::new();
        let slots: &mut [Raw<'a>] = if n <= STACK_SLOTS {
            &mut stack[..n]
        } else {
            heap.resize_with(n, || Raw::Missing);
            &mut heap
        };
        // One UTF-8 check of the whole payload, rather than one per string inside it.
        let text = match simdutf8::basic::from_utf8(payload) {
            Ok(text) => text,
            // The check that says where the bytes go wrong, for the reason.
            Err(_) => std::str::from_utf8(payload)
                .map_err(|e| reject(RejectKind::InvalidJson, format!("not valid JSON: not UTF-8 ({e})")))?,
        };
        // The common flat shape directly; any other text, and every invalid one, through
        // serde_json, whose reading of it stands.
        if flat::read(text, &self.schema, &self.keys, slots).is_none() {
            slots.fill_with(|| Raw::Missing);
            read_any(text, &self.schema, slots)?;
        }
        for (field, raw) in self.schema.fields().iter().zip(slots.iter_mut()) {
            out.push(clean(field, std::mem::replace(raw, Raw::Missing))?);
        }
        Ok(())
    }
}

/// Reads any JSON text through serde_json into `slots` (all `Missing` before).
fn read_any<'a>(text: &'a str, schema: &Schema, slots: &mut [Raw<'a>]) -> Result<(), Rejection> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_any(EventVisitor { schema, slots }).and_then(|()| de.end()).map_err(|e| json_rejection(&e))
}

/// Schemas with up to this many fields parse without a heap allocation. Every slot is set and
/// dropped per event, so more slots cost time on every event (48 cost ~400 instructions).
const STACK_SLOTS: usize = 16;

fn json_rejection(e: &serde_json::Error) -> Rejection {
    let text = e.to_string();
    if text.starts_with("invalid type") {
        // The top level parsed as JSON but is not an object.
        let what = text.split(',').next().unwrap_or(&text).trim_start_matches("invalid type: ");
        return reject(RejectKind::NotObject, format!("expected a JSON object, found {what}"));
    }
    if text.starts_with("number out of range") {
        return reject(RejectKind::OutOfRange, format!("a number is not finite as a 64-bit float ({text})"));
    }
    reject(RejectKind::InvalidJson, format!("not valid JSON: {text}"))
}

fn clean<'a>(f: &FieldConfig, raw: Raw<'a>) -> Result<Value<'a>, Rejection> {
    let name = &f.name;
    match raw {
        Raw::Missing if f.required => {
            return Err(reject(RejectKind::MissingField, format!("required field `{name}` is missing")));
        }
        Raw::Null if f.required => {
            return Err(reject(RejectKind::NullField, format!("required field `{name}` is null")));
        }
        Raw::Missing | Raw::Null => return Ok(Value::Null),
        _ => {}
    }
    let wrong = |raw: &Raw, expected: &str| {
        reject(
            RejectKind::WrongType,
            format!("field `{name}`: expected {expected}, found {}", raw.json_type()),
        )
    };
    match f.kind {
        FieldType::String => match raw {
            Raw::Str(s) => clean_string(f, s),
            other => Err(wrong(&other, "a string")),
        },
        FieldType::Double => {
            let v = match raw {
                Raw::Int(i) => i as f64,
                Raw::UInt(u) => u as f64,
                Raw::Float(x) => x,
                other => return Err(wrong(&other, "a number")),
            };
            check_min(f, v)?;
            Ok(Value::Double(v))
        }
        FieldType::Long => {
            let v = match raw {
                Raw::Int(i) => i,
                Raw::UInt(u) => i64::try_from(u).map_err(|_| {
                    reject(RejectKind::OutOfRange, format!("field `{name}`: {u} exceeds a 64-bit integer"))
                })?,
                other => return Err(wrong(&other, "an integer")),
            };
            check_min(f, v as f64)?;
            Ok(Value::Long(v))
        }
        FieldType::Boolean => match raw {
            Raw::Bool(b) => Ok(Value::Bool(b)),
            Raw::Int(0) | Raw::UInt(0) => Ok(Value::Bool(false)),
            Raw::Int(1) | Raw::UInt(1) => Ok(Value::Bool(true)),
            other => Err(wrong(&other, "true, false, 0 or 1")),
        },
        FieldType::Timestamp => match raw {
            Raw::Str(s) => parse_rfc3339(&s).map(Value::Timestamp).ok_or_else(|| {
                reject(
                    RejectKind::BadTime,
                    format!(
                        "field `{name}`: {:?} is not an RFC 3339 time with an offset or Z",
                        truncate(&s, 64)
                    ),
                )
            }),
            Raw::Int(ms) => epoch_millis(ms).map(Value::Timestamp).ok_or_else(|| {
                reject(RejectKind::BadTime, format!("field `{name}`: {ms} ms is out of range"))
            }),
            Raw::UInt(ms) => {
                i64::try_from(ms).ok().and_then(epoch_millis).map(Value::Timestamp).ok_or_else(|| {
                    reject(RejectKind::BadTime, format!("field `{name}`: {ms} ms is out of range"))
                })
            }
            Raw::Float(x) => Err(reject(
                RejectKind::BadTime,
                format!("field `{name}`: {x} is not whole epoch milliseconds"),
            )),
            other => Err(wrong(&other, "an RFC 3339 string or epoch milliseconds")),
        },
    }
}

fn clean_string<'a>(f: &FieldConfig, s: Cow<'a, str>) -> Result<Value<'a>, Rejection> {
    // Most strings are ASCII: their checks need no decoding.
    let ascii = s.is_ascii();
    // A string that starts with an ASCII letter, digit or sign is not blank.
    let maybe_blank = match s.as_bytes().first() {
        Some(b) => !b.is_ascii() || b.is_ascii_whitespace() || *b == 0x0b,
        None => true,
    };
    if f.required && maybe_blank && s.trim().is_empty() {
        return Err(reject(RejectKind::BadFormat, format!("required field `{}` is empty", f.name)));
    }
    let s = match f.case {
        Some(Case::Lower) if has_case(&s, ascii, true) => Cow::Owned(s.to_lowercase()),
        Some(Case::Upper) if has_case(&s, ascii, false) => Cow::Owned(s.to_uppercase()),
        _ => s,
    };
    if let Some(n) = f.length {
        let len = if ascii { s.len() } else { s.chars().count() };
        if len != n {
            return Err(reject(
                RejectKind::BadFormat,
                format!("field `{}`: {:?} has {len} characters, expected {n}", f.name, truncate(&s, 64)),
            ));
        }
    }
    Ok(Value::Str(s))
}

/// Whether `s` has an uppercase (`upper`) or lowercase letter.
fn has_case(s: &str, ascii: bool, upper: bool) -> bool {
    match (ascii, upper) {
        (true, true) => s.bytes().any(|b| b.is_ascii_uppercase()),
        (true, false) => s.bytes().any(|b| b.is_ascii_lowercase()),
        (false, true) => s.chars().any(char::is_uppercase),
        (false, false) => s.chars().any(char::is_lowercase),
    }
}

fn check_min(f: &FieldConfig, v: f64) -> Result<(), Rejection> {
    if !v.is_finite() {
        return Err(reject(RejectKind::OutOfRange, format!("field `{}`: {v} is not finite", f.name)));
    }
    if let Some(min) = f.min
        && v < min
    {
        return Err(reject(
            RejectKind::OutOfRange,
            format!("field `{}`: {v} is below the minimum {min}", f.name),
        ));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// RFC 3339 (offset or `Z` required) to UTC microseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    utc_fast(s.as_bytes())
        .or_else(|| chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros()))
}

/// The common form `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (up to 9 digits of fraction, no leap
/// second) read directly; None for anything else, which chrono then reads (or refuses). For the
/// texts it reads it answers what chrono answers (a property test holds them together).
fn utc_fast(b: &[u8]) -> Option<i64> {
    if b.len() < 20 || b.len() > 30 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let digits = |at: usize, n: usize| -> Option<i64> {
        b[at..at + n].iter().try_fold(0i64, |v, &c| c.is_ascii_digit().then(|| v * 10 + i64::from(c - b'0')))
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let micros = match b.len() - 20 {
        0 => 0,
        // A point and 1 to 9 digits, cut to microseconds.
        n @ 2..=10 if b[19] == b'.' => {
            let fraction = digits(20, n - 1)?;
            fraction * 10i64.pow(10 - n as u32) / 1000
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 || second > 59 || !(1..=12).contains(&month) {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day < 1 || day > month_days[month as usize - 1] {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (years from March, as in Hinnant's
    // `days_from_civil`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

/// Epoch milliseconds to microseconds, if representable.
pub fn epoch_millis(ms: i64) -> Option<i64> {
    // chrono's range (years -262143..262142) bounds what a timestamp column can hold.
    chrono::DateTime::from_timestamp_millis(ms)?;
    ms.checked_mul(1000)
}

mod flat;
#[cfg(test)]
mod tests;
