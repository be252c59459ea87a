//! The common shape of an event read directly: one JSON object whose values are strings
//! without escapes, plain numbers, `true`, `false` or `null`.
//!
//! In: the text of one payload (already checked as UTF-8), the schema, one slot per field.
//! Out: `Some(())` with the slots set exactly as serde_json's reading sets them, or `None` when
//! the text is of any other shape (escapes, nested values, exponents, numbers past exact
//! arithmetic, invalid JSON): then serde_json reads it, and its answer — a value or a reason —
//! is the one kept. Every text this reader takes, serde_json reads the same way (a property test
//! holds them together); it only skips the general machinery for the events ingest sees by the
//! million.

use std::borrow::Cow;

use super::Raw;
use crate::schema::Schema;

/// Powers of ten that are exact as `f64`, the ones serde_json divides by.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// Significands below this are exact as `f64`: one division by an exact power of ten then
/// rounds correctly, as every JSON reader rounds.
const EXACT: u64 = 1 << 53;

/// The schema's field names, and which can be matched as raw bytes (no quote, backslash or
/// control character in them, so that equal bytes mean an equal key).
#[derive(Debug)]
pub(super) struct Keys {
    plain: Vec<bool>,
}

impl Keys {
    pub fn new(schema: &Schema) -> Keys {
        let plain = schema
            .fields()
            .iter()
            .map(|f| f.name.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\'))
            .collect();
        Keys { plain }
    }

    /// The key at `at` when it is the field at `hint` (events list their keys in schema
    /// order): the field and the index after the closing quote.
    fn expected(&self, schema: &Schema, hint: usize, b: &[u8], at: usize) -> Option<(usize, usize)> {
        if !*self.plain.get(hint)? {
            return None;
        }
        let name = schema.fields()[hint].name.as_bytes();
        let start = at + 1;
        let end = start + name.len();
        (b.get(at) == Some(&b'"') && b.get(start..end) == Some(name) && b.get(end) == Some(&b'"'))
            .then_some((hint, end + 1))
    }
}

/// Reads a flat object into `slots` (one per schema field; a repeated key keeps its last
/// value). `None`: not of the simple shape; the slots must then be reset by the caller.
pub(super) fn read<'a>(text: &'a str, schema: &Schema, keys: &Keys, slots: &mut [Raw<'a>]) -> Option<()> {
    let b = text.as_bytes();
    let mut at = skip_space(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(b, at + 1);
    let mut hint = 0;
    if b.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            let (field, after) = match keys.expected(schema, hint, b, at) {
                Some((i, after)) => (Some(i), after),
                None => string(text, at).map(|(key, after)| (schema.position_from(hint, key), after))?,
            };
            at = skip_space(b, after);
            if b.get(at) != Some(&b':') {
                return None;
            }
            at = skip_space(b, at + 1);
            let (value, after) = value(text, at)?;
            if let Some(i) = field {
                slots[i] = value;
                hint = i + 1;
            }
            at = skip_space(b, after);
            match b.get(at) {
                Some(b',') => at = skip_space(b, at + 1),
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_space(b, at) == b.len()).then_some(())
}

/// The index of the first byte at or after `at` that is not JSON whitespace.
fn skip_space(b: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(at) {
        at += 1;
    }
    at
}

/// A string starting at `at` with no escape and no control character: its text and the index
/// after its closing quote.
fn string(text: &str, at: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let end = special(b, start);
    if b.get(end) != Some(&b'"') {
        return None;
    }
    // The quotes are ASCII, so both ends fall on character boundaries.
    Some((text.get(start..end)?, end + 1))
}

/// The index of the first quote, backslash or control character at or after `at` (or the
/// length), eight bytes at a time: in each word, a byte's high bit is set where it is one of
/// them; a borrow only carries upwards, so the lowest set bit marks the first.
fn special(b: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    while let Some(word) = b.get(at..at + 8) {
        let v = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        let found = (zero(v ^ (ONES * u64::from(b'"')))
            | zero(v ^ (ONES * u64::from(b'\\')))
            | (v.wrapping_sub(ONES * 0x20) & !v))
            & HIGH;
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&c) = b.get(at) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        at += 1;
    }
    at
}

/// A value starting at `at`: the raw value and the index after it.
fn value(text: &str, at: usize) -> Option<(Raw<'_>, usize)> {
    let b = text.as_bytes();
    let literal = |word: &[u8], raw: Raw<'static>| {
        b.get(at..at + word.len()).is_some_and(|w| w == word).then(|| (raw, at + word.len()))
    };
    match *b.get(at)? {
        b'"' => string(text, at).map(|(s, after)| (Raw::Str(Cow::Borrowed(s)), after)),
        b't' => literal(b"true", Raw::Bool(true)),
        b'f' => literal(b"false", Raw::Bool(false)),
        b'n' => literal(b"null", Raw::Null),
        b'-' | b'0'..=b'9' => number(b, at),
        _ => None,
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` whose digits fit serde_json's exact cases: as serde_json
/// reads it, a non-negative integer as `UInt`, a negative one as `Int`, a decimal as `Float`.
fn number(b: &[u8], mut at: usize) -> Option<(Raw<'static>, usize)> {
    let negative = b[at] == b'-';
    if negative {
        at += 1;
    }
    let digits = |mut at: usize, mut value: u64| -> Option<(u64, usize, usize)> {
        let start = at;
        while let Some(&c @ b'0'..=b'9') = b.get(at) {
            value = value.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            at += 1;
        }
        Some((value, at - start, at))
    };
    // A leading zero stands alone.
    let (whole, _, after) = match b.get(at) {
        Some(b'0') => (0, 1, at + 1),
        Some(b'1'..=b'9') => digits(at, 0)?,
        _ => return None,
    };
    match b.get(after) {
        Some(b'.') => {
            let (significand, places, after) = digits(after + 1, whole)?;
            if places == 0 || places >= POW10.len() || significand >= EXACT {
                return None;
            }
            if let Some(b'e' | b'E') = b.get(after) {
                return None;
            }
            let f = significand as f64 / POW10[places];
            Some((Raw::Float(if negative { -f } else { f }), after))
        }
        Some(b'e' | b'E' | b'0'..=b'9') => None,
        _ if !negative => Some((Raw::UInt(whole), after)),
        _ => {
            // serde_json reads `-0` and integers below i64::MIN as floats: left to it.
            let neg = (whole as i64).wrapping_neg();
            (neg < 0).then_some((Raw::Int(neg), after))
        }
    }
}
