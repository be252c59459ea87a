//! The `[features]` section: which features to compute from which fields, declared as data,
//! and its validation against the schema before any data is read.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schema::{FieldType, Schema};
use crate::units::parse_duration_us;

/// How a numeric field becomes a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumericTransform {
    Identity,
    /// `ln(1 + max(x, 0))`.
    Log1p,
}

/// A numeric field (double or long).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericFeature {
    pub field: String,
    #[serde(default = "identity")]
    pub transform: NumericTransform,
    /// `[low, high]`: values are clipped into it (after the transform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<[f64; 2]>,
    /// Subtract the fitted mean and divide by the fitted standard deviation.
    #[serde(default)]
    pub standardize: bool,
}

fn identity() -> NumericTransform {
    NumericTransform::Identity
}

/// A string field, one-hot over its most frequent values in the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalFeature {
    pub field: String,
    /// How many of the most frequent values get a column; the rest (and null) share "other".
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

fn default_top_k() -> usize {
    10
}

/// Features from the account's earlier events, in the order the table holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryFeatures {
    /// The field naming the account (default: the schema's Kafka key field).
    pub account_field: Option<String>,
    /// The amount field (`amount_vs_mean`, `amount_over_mean`).
    pub amount_field: Option<String>,
    /// The country field (`new_country`, `unusual_country`).
    pub country_field: Option<String>,
    /// The window of `count_in_window`, as a duration (`1h`, `24h`).
    pub window: String,
    /// Number of the account's earlier events within the window.
    pub count_in_window: bool,
    /// `ln((amount + 1) / (the account's earlier mean + 1))`; 0 for a first event.
    pub amount_vs_mean: bool,
    /// `ln(1 + seconds since the account's previous event)`, capped at 30 days.
    pub seconds_since_previous: bool,
    /// 1 when the account had events before and none from this country.
    pub new_country: bool,
    /// `max(0, amount_vs_mean)`: only amounts above the account's mean (beside
    /// `amount_vs_mean`, a model weighs amounts above and below the mean differently).
    pub amount_over_mean: bool,
    /// 1 when the country is not the one the account used most so far (0 for a first event):
    /// away from home, also when that country was seen before.
    pub unusual_country: bool,
    /// A duration (`5m`): 1 when the account's previous event is less than this earlier, as in
    /// a burst of payments with a stolen card (a step that `seconds_since_previous` alone, a
    /// straight line in its logarithm, cannot draw). Absent: no such feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_within: Option<String>,
}

impl HistoryFeatures {
    /// Whether any history feature is asked for.
    pub fn any(&self) -> bool {
        self.count_in_window
            || self.amount_vs_mean
            || self.seconds_since_previous
            || self.new_country
            || self.amount_over_mean
            || self.unusual_country
            || self.previous_within.is_some()
    }
}

impl Default for HistoryFeatures {
    fn default() -> Self {
        HistoryFeatures {
            account_field: None,
            amount_field: None,
            country_field: None,
            window: "1h".into(),
            count_in_window: false,
            amount_vs_mean: false,
            seconds_since_previous: false,
            new_country: false,
            amount_over_mean: false,
            unusual_country: false,
            previous_within: None,
        }
    }
}

/// `[features]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    pub numeric: Vec<NumericFeature>,
    pub categorical: Vec<CategoricalFeature>,
    /// Boolean fields, as 0/1 (null: 0).
    pub boolean: Vec<String>,
    /// Cyclical hour of day (sin, cos) of the event time, UTC.
    pub hour_of_day: bool,
    /// Cyclical day of week (sin, cos) of the event time, UTC.
    pub day_of_week: bool,
    /// Parts of the day, one-hot: the hours (UTC) where a part ends and the next begins, in
    /// increasing order within 1–23 (`[6, 12, 18]`: night, morning, afternoon, evening). Unlike
    /// the cyclical hour, a part can carry a risk of its own. Empty: none.
    pub hour_bins: Vec<u32>,
    pub history: HistoryFeatures,
}

impl Default for FeatureConfig {
    /// The features of the built-in schema.
    fn default() -> Self {
        FeatureConfig {
            numeric: vec![NumericFeature {
                field: "amount".into(),
                transform: NumericTransform::Log1p,
                clip: None,
                standardize: false,
            }],
            categorical: vec![
                CategoricalFeature { field: "merchant_category".into(), top_k: 12 },
                CategoricalFeature { field: "channel".into(), top_k: 4 },
            ],
            boolean: Vec::new(),
            hour_of_day: true,
            day_of_week: true,
            hour_bins: vec![6, 12, 18],
            history: HistoryFeatures {
                amount_field: Some("amount".into()),
                country_field: Some("country".into()),
                count_in_window: true,
                amount_vs_mean: true,
                seconds_since_previous: true,
                new_country: true,
                amount_over_mean: true,
                unusual_country: true,
                previous_within: Some("5m".into()),
                ..HistoryFeatures::default()
            },
        }
    }
}

/// A validated feature configuration: field names resolved to schema positions.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    pub config: FeatureConfig,
    pub numeric: Vec<usize>,
    pub categorical: Vec<usize>,
    pub boolean: Vec<usize>,
    pub time: usize,
    pub history: Option<HistorySpec>,
}

/// Resolved history settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySpec {
    pub account: usize,
    pub amount: Option<usize>,
    pub country: Option<usize>,
    pub window_us: i64,
    /// `previous_within`, in µs.
    pub previous_within_us: Option<i64>,
}

impl FeatureConfig {
    /// Checks every name and transform against `schema`; an error names the key.
    pub fn validate(&self, schema: &Schema) -> Result<FeatureSpec> {
        let find = |key: &str, field: &str, types: &[FieldType], what: &str| -> Result<usize> {
            let i = schema
                .fields()
                .iter()
                .position(|f| f.name == field)
                .ok_or_else(|| Error::config(key, field, "a field of the schema"))?;
            if !types.contains(&schema.fields()[i].kind) {
                return Err(Error::config(
                    key,
                    field,
                    format!("{what} (it is a {:?} field)", schema.fields()[i].kind),
                ));
            }
            if Some(i) == schema.label_index() {
                return Err(Error::config(key, field, "a field other than the label"));
            }
            Ok(i)
        };
        let numeric = self
            .numeric
            .iter()
            .map(|n| {
                if let Some([lo, hi]) = n.clip
                    && !(lo.is_finite() && hi.is_finite() && lo < hi)
                {
                    return Err(Error::config(
                        "features.numeric.clip",
                        format!("[{lo}, {hi}]"),
                        "[low, high] with low < high",
                    ));
                }
                find(
                    "features.numeric.field",
                    &n.field,
                    &[FieldType::Double, FieldType::Long],
                    "a double or long field",
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let categorical = self
            .categorical
            .iter()
            .map(|c| {
                if !(1..=1000).contains(&c.top_k) {
                    return Err(Error::config("features.categorical.top_k", c.top_k, "from 1 to 1000"));
                }
                find("features.categorical.field", &c.field, &[FieldType::String], "a string field")
            })
            .collect::<Result<Vec<_>>>()?;
        let boolean = self
            .boolean
            .iter()
            .map(|b| find("features.boolean", b, &[FieldType::Boolean], "a boolean field"))
            .collect::<Result<Vec<_>>>()?;
        let h = &self.history;
        if self.hour_bins.iter().any(|&b| !(1..=23).contains(&b))
            || self.hour_bins.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(Error::config(
                "features.hour_bins",
                format!("{:?}", self.hour_bins),
                "hours from 1 to 23 in increasing order, such as [6, 12, 18]",
            ));
        }
        let history = if h.any() {
            let account_name = match (&h.account_field, schema.key_index()) {
                (Some(name), _) => name.clone(),
                (None, Some(k)) => schema.fields()[k].name.clone(),
                (None, None) => {
                    return Err(Error::config(
                        "features.history.account_field",
                        "",
                        "the field naming the account (the schema has no key field)",
                    ));
                }
            };
            let account = find(
                "features.history.account_field",
                &account_name,
                &[FieldType::String],
                "a string field",
            )?;
            let amount = match (&h.amount_field, h.amount_vs_mean || h.amount_over_mean) {
                (Some(a), true) => Some(find(
                    "features.history.amount_field",
                    a,
                    &[FieldType::Double, FieldType::Long],
                    "a double or long field",
                )?),
                (None, true) => {
                    return Err(Error::config(
                        "features.history.amount_field",
                        "",
                        "the amount field, for amount_vs_mean and amount_over_mean",
                    ));
                }
                _ => None,
            };
            let country = match (&h.country_field, h.new_country || h.unusual_country) {
                (Some(c), true) => {
                    Some(find("features.history.country_field", c, &[FieldType::String], "a string field")?)
                }
                (None, true) => {
                    return Err(Error::config(
                        "features.history.country_field",
                        "",
                        "the country field, for new_country and unusual_country",
                    ));
                }
                _ => None,
            };
            let window_us = parse_duration_us(&h.window).filter(|&us| us > 0).ok_or_else(|| {
                Error::config("features.history.window", &h.window, "a positive duration such as 1h")
            })?;
            let previous_within_us = match &h.previous_within {
                Some(d) => Some(parse_duration_us(d).filter(|&us| us > 0).ok_or_else(|| {
                    Error::config("features.history.previous_within", d, "a positive duration such as 5m")
                })?),
                None => None,
            };
            Some(HistorySpec { account, amount, country, window_us, previous_within_us })
        } else {
            None
        };
        if numeric.is_empty()
            && categorical.is_empty()
            && boolean.is_empty()
            && !self.hour_of_day
            && !self.day_of_week
            && self.hour_bins.is_empty()
            && history.is_none()
        {
            return Err(Error::config("features", "(none)", "at least one feature"));
        }
        Ok(FeatureSpec {
            config: self.clone(),
            numeric,
            categorical,
            boolean,
            time: schema.time_index(),
            history,
        })
    }
}
