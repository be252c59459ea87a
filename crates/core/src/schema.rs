//! The event schema, declared as data.
//!
//! In: a [`SchemaConfig`] (the `[schema]` section of a config file, or the built-in default of
//! DESIGN.md section 1). Out: a validated [`Schema`] that the parser, the generator and the table
//! writers share: field order, types, rules, and which field is the id, the event time, the label
//! and the Kafka key.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::error::{Error, Result};

/// The default schema, as shipped in `default_schema.toml`.
pub const DEFAULT_SCHEMA_TOML: &str = include_str!("default_schema.toml");

/// Types a field can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// UTF-8 string.
    String,
    /// 64-bit float; must be finite.
    Double,
    /// 64-bit signed integer.
    Long,
    /// `true`, `false`, `0` or `1`.
    Boolean,
    /// RFC 3339 with an offset or `Z`, or integer epoch milliseconds; stored as UTC microseconds.
    Timestamp,
}

/// Case normalisation for string fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Case {
    Lower,
    Upper,
}

/// One field, as declared in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// JSON key of the field.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// A required field that is missing, null or wrongly typed quarantines the event.
    #[serde(default)]
    pub required: bool,
    /// Case normalisation (strings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<Case>,
    /// Exact length in characters (strings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// Smallest accepted value (numbers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// What the synthetic producer puts in this field; see [`crate::generator::Source`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<String>,
}

/// The schema as declared in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// The field that identifies an event everywhere downstream (a required string).
    pub id_field: String,
    /// The event-time field (a required timestamp).
    pub time_field: String,
    /// The label field (a boolean), if events carry one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_field: Option<String>,
    /// The field whose value is the Kafka message key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// The fields, in the order they are written.
    pub fields: Vec<FieldConfig>,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        // The embedded default is checked by a unit test; parsing it cannot fail at run time
        // unless the source itself is broken.
        toml::from_str(DEFAULT_SCHEMA_TOML).unwrap_or_else(|e| panic!("default_schema.toml: {e}"))
    }
}

/// A validated schema.
#[derive(Debug, Clone)]
pub struct Schema {
    fields: Vec<FieldConfig>,
    id: usize,
    time: usize,
    label: Option<usize>,
    key: Option<usize>,
}

impl Schema {
    /// Validates a declared schema: unique, non-empty names; the id a required string; the
    /// time a required timestamp; the label a boolean; rules only on types they apply to.
    pub fn new(config: SchemaConfig) -> Result<Self> {
        let bad = |msg: String| Err(Error::Schema(msg));
        if config.fields.is_empty() {
            return bad("schema.fields: at least one field is needed".into());
        }
        let mut index = HashMap::new();
        for (i, f) in config.fields.iter().enumerate() {
            if f.name.trim().is_empty() {
                return bad(format!("schema.fields[{i}].name: empty; expected a JSON key"));
            }
            if index.insert(f.name.clone(), i).is_some() {
                return bad(format!("schema.fields[{i}].name: `{}` is declared twice", f.name));
            }
            let string_rule = f.case.is_some() || f.length.is_some();
            if string_rule && f.kind != FieldType::String {
                return bad(format!(
                    "schema.fields[{i}] `{}`: case/length apply to string fields only",
                    f.name
                ));
            }
            if f.min.is_some() && !matches!(f.kind, FieldType::Double | FieldType::Long) {
                return bad(format!(
                    "schema.fields[{i}] `{}`: min applies to double/long fields only",
                    f.name
                ));
            }
            if let Some(m) = f.min
                && !m.is_finite()
            {
                return bad(format!("schema.fields[{i}] `{}`: min must be finite", f.name));
            }
        }
        let find = |key: &str, name: &str| -> Result<usize> {
            index
                .get(name)
                .copied()
                .ok_or_else(|| Error::Schema(format!("schema.{key}: `{name}` is not one of schema.fields")))
        };
        let id = find("id_field", &config.id_field)?;
        let time = find("time_field", &config.time_field)?;
        let label = config.label_field.as_deref().map(|n| find("label_field", n)).transpose()?;
        let key = config.key_field.as_deref().map(|n| find("key_field", n)).transpose()?;
        let fields = config.fields;
        if fields[id].kind != FieldType::String || !fields[id].required {
            return bad(format!("schema.id_field: `{}` must be a required string field", fields[id].name));
        }
        if fields[time].kind != FieldType::Timestamp || !fields[time].required {
            return bad(format!(
                "schema.time_field: `{}` must be a required timestamp field",
                fields[time].name
            ));
        }
        if let Some(l) = label
            && fields[l].kind != FieldType::Boolean
        {
            return bad(format!("schema.label_field: `{}` must be a boolean field", fields[l].name));
        }
        if let Some(k) = key
            && fields[k].kind != FieldType::String
        {
            return bad(format!("schema.key_field: `{}` must be a string field", fields[k].name));
        }
        Ok(Schema { fields, id, time, label, key })
    }

    /// The built-in default schema.
    pub fn default_schema() -> Self {
        Schema::new(SchemaConfig::default()).unwrap_or_else(|e| panic!("default schema: {e}"))
    }

    /// The fields, in declared order.
    pub fn fields(&self) -> &[FieldConfig] {
        &self.fields
    }

    /// Position of a field by name, trying position `hint` first (events usually list their
    /// keys in schema order). A scan, not a hash: schemas are short, and this runs for every key
    /// of every event.
    pub fn position_from(&self, hint: usize, name: &str) -> Option<usize> {
        let name = name.as_bytes();
        if self.fields.get(hint).is_some_and(|f| same_key(f.name.as_bytes(), name)) {
            return Some(hint);
        }
        self.fields.iter().position(|f| same_key(f.name.as_bytes(), name))
    }

    /// Position of the id field.
    pub fn id_index(&self) -> usize {
        self.id
    }

    /// Position of the event-time field.
    pub fn time_index(&self) -> usize {
        self.time
    }

    /// Position of the label field, if any.
    pub fn label_index(&self) -> Option<usize> {
        self.label
    }

    /// Position of the Kafka-key field, if any.
    pub fn key_index(&self) -> Option<usize> {
        self.key
    }

    /// The declaration this schema was built from.
    pub fn to_config(&self) -> SchemaConfig {
        SchemaConfig {
            id_field: self.fields[self.id].name.clone(),
            time_field: self.fields[self.time].name.clone(),
            label_field: self.label.map(|i| self.fields[i].name.clone()),
            key_field: self.key.map(|i| self.fields[i].name.clone()),
            fields: self.fields.clone(),
        }
    }
}

/// Byte equality for short keys without a library call: keys of 8 to 16 bytes are compared
/// as two (overlapping) 8-byte words.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schema_matches_design() {
        let s = Schema::default_schema();
        let names: Vec<_> = s.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "transaction_id",
                "account_id",
                "merchant_id",
                "merchant_category",
                "amount",
                "currency",
                "country",
                "channel",
                "event_time",
                "is_fraud"
            ]
        );
        assert_eq!(s.fields()[s.id_index()].name, "transaction_id");
        assert_eq!(s.fields()[s.time_index()].name, "event_time");
        assert_eq!(s.label_index().map(|i| s.fields()[i].name.as_str()), Some("is_fraud"));
        assert_eq!(s.key_index().map(|i| s.fields()[i].name.as_str()), Some("account_id"));
        let required: Vec<_> = s.fields().iter().filter(|f| f.required).map(|f| f.name.as_str()).collect();
        assert_eq!(
            required,
            ["transaction_id", "account_id", "merchant_category", "amount", "currency", "event_time"]
        );
    }

    fn with(edit: impl FnOnce(&mut SchemaConfig)) -> Result<Schema> {
        let mut c = SchemaConfig::default();
        edit(&mut c);
        Schema::new(c)
    }

    #[test]
    fn invalid_declarations_name_the_key() {
        let msg = |r: Result<Schema>| r.unwrap_err().to_string();
        assert!(msg(with(|c| c.id_field = "nope".into())).contains("schema.id_field: `nope`"));
        assert!(msg(with(|c| c.time_field = "amount".into())).contains("required timestamp"));
        assert!(msg(with(|c| c.label_field = Some("amount".into()))).contains("boolean"));
        assert!(msg(with(|c| c.fields[4].case = Some(Case::Lower))).contains("string fields"));
        assert!(msg(with(|c| c.fields[0].min = Some(1.0))).contains("double/long"));
        assert!(msg(with(|c| c.fields[1].name = "transaction_id".into())).contains("twice"));
        assert!(msg(with(|c| c.fields.clear())).contains("at least one field"));
    }

    #[test]
    fn round_trips_through_toml() {
        let s = Schema::default_schema();
        let text = toml::to_string(&s.to_config()).unwrap();
        let back: SchemaConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, s.to_config());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<SchemaConfig>(
            "id_field='a'\ntime_field='t'\n[[fields]]\nname='a'\ntype='string'\nrequird=true\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("requird"), "{err}");
    }

    #[test]
    fn fields_are_found_from_a_hint_or_by_scan() {
        let schema = Schema::default_schema();
        let id = schema.id_index();
        assert_eq!(schema.position_from(id, "transaction_id"), Some(id));
        assert_eq!(schema.position_from(id, "event_time"), Some(schema.time_index()));
        assert_eq!(schema.position_from(99, "account_id"), Some(1));
        assert_eq!(schema.position_from(0, "transaction_iD"), None);
    }

    proptest::proptest! {
        #[test]
        fn short_key_comparison_is_byte_equality(
            a in proptest::collection::vec(0u8..4, 0..24),
            b in proptest::collection::vec(0u8..4, 0..24),
        ) {
            proptest::prop_assert_eq!(same_key(&a, &b), a == b);
            proptest::prop_assert!(same_key(&a, &a));
        }
    }
}
