//! Features as data: one module that turns an event into its feature vector, for training
//! (`train`) and for scoring (`score`) alike, so that both compute the same numbers.
//!
//! In: a validated [`FeatureSpec`] (from `[features]`), events as schema-ordered
//! [`Value`]s, in the order the table holds them (Kafka partition, then offset). Out: fitted
//! statistics ([`FittedFeatures`], stored in `model.json`) and one `f32` vector per event. Every
//! value is computed in `f64` and rounded to `f32` once, at the end.

mod history;
mod reasons;
mod spec;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use history::{History, Seen};
pub use reasons::{Explainer, Reason, Reasons};
pub use spec::{
    CategoricalFeature, FeatureConfig, FeatureSpec, HistoryFeatures, HistorySpec, NumericFeature,
    NumericTransform,
};

use crate::error::{Error, Result};
use crate::event::Value;
use crate::schema::Schema;

/// A numeric feature with its fitted statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericFitted {
    pub field: String,
    pub transform: NumericTransform,
    pub clip: Option<[f64; 2]>,
    /// Set when the feature is standardised.
    pub mean: Option<f64>,
    pub std: Option<f64>,
}

/// A categorical feature: its columns are `values` in order, then "other".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalFitted {
    pub field: String,
    pub values: Vec<String>,
}

/// Everything needed to compute the features of an event, as stored with a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedFeatures {
    pub names: Vec<String>,
    pub numeric: Vec<NumericFitted>,
    pub categorical: Vec<CategoricalFitted>,
    pub boolean: Vec<String>,
    pub hour_of_day: bool,
    pub day_of_week: bool,
    /// Parts of the day, one-hot (absent in models of earlier releases: none).
    #[serde(default)]
    pub hour_bins: Vec<u32>,
    /// The history settings as configured (None: no history features).
    pub history: Option<HistoryFeatures>,
}

/// [`FittedFeatures`] bound to a schema: field positions resolved.
#[derive(Debug, Clone)]
pub struct Features {
    pub fitted: FittedFeatures,
    numeric: Vec<usize>,
    categorical: Vec<(usize, HashMap<String, usize, foldhash::fast::RandomState>)>,
    boolean: Vec<usize>,
    time: usize,
    history: Option<HistorySpec>,
}

fn as_f64(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        Value::Long(l) => Some(*l as f64),
        _ => None,
    }
}

fn numeric_value(n: &NumericFitted, v: &Value<'_>) -> f64 {
    let raw = as_f64(v).unwrap_or(0.0);
    let mut x = match n.transform {
        NumericTransform::Identity => raw,
        NumericTransform::Log1p => raw.max(0.0).ln_1p(),
    };
    if let Some([lo, hi]) = n.clip {
        x = x.clamp(lo, hi);
    }
    x
}

impl FeatureSpec {
    /// Fits the statistics of the features on `rows` (the training slice): the mean and
    /// standard deviation of standardised numeric features, the most frequent values of each
    /// categorical one (ties by value, so the fit is deterministic).
    pub fn fit<'a, 'v: 'a>(
        &self,
        schema: &Schema,
        rows: impl Iterator<Item = &'a [Value<'v>]>,
    ) -> FittedFeatures {
        let mut fitter = self.fitter(schema);
        for row in rows {
            fitter.add(row);
        }
        fitter.finish()
    }

    /// The statistics of [`Self::fit`], gathered one row at a time.
    pub fn fitter<'s>(&'s self, schema: &'s Schema) -> Fitter<'s> {
        let numeric: Vec<NumericFitted> = self
            .config
            .numeric
            .iter()
            .zip(&self.numeric)
            .map(|(n, &i)| NumericFitted {
                field: schema.fields()[i].name.clone(),
                transform: n.transform,
                clip: n.clip,
                mean: None,
                std: None,
            })
            .collect();
        Fitter {
            spec: self,
            schema,
            sums: vec![(0.0, 0.0, 0); numeric.len()],
            numeric,
            counts: vec![HashMap::new(); self.categorical.len()],
        }
    }
}

/// Gathers the statistics of a fit, one row at a time.
pub struct Fitter<'s> {
    spec: &'s FeatureSpec,
    schema: &'s Schema,
    numeric: Vec<NumericFitted>,
    /// Per numeric feature: sum, sum of squares, count.
    sums: Vec<(f64, f64, u64)>,
    counts: Vec<HashMap<String, u64>>,
}

impl Fitter<'_> {
    /// One training row, in schema order.
    pub fn add(&mut self, row: &[Value<'_>]) {
        for (k, (&i, n)) in self.spec.numeric.iter().zip(&self.numeric).enumerate() {
            let x = numeric_value(n, &row[i]);
            self.sums[k].0 += x;
            self.sums[k].1 += x * x;
            self.sums[k].2 += 1;
        }
        for (k, &i) in self.spec.categorical.iter().enumerate() {
            if let Some(s) = row[i].as_str() {
                match self.counts[k].get_mut(s) {
                    Some(c) => *c += 1,
                    None => {
                        self.counts[k].insert(s.to_string(), 1);
                    }
                }
            }
        }
    }

    /// The fitted statistics and the feature names.
    pub fn finish(self) -> FittedFeatures {
        let Fitter { spec, schema, mut numeric, sums, counts } = self;
        let field = |i: usize| schema.fields()[i].name.clone();
        for ((n, cfg), (sum, sq, count)) in numeric.iter_mut().zip(&spec.config.numeric).zip(sums) {
            if cfg.standardize {
                let c = count.max(1) as f64;
                let mean = sum / c;
                let std = (sq / c - mean * mean).max(0.0).sqrt();
                n.mean = Some(mean);
                n.std = Some(if std > 1e-12 { std } else { 1.0 });
            }
        }
        let categorical: Vec<CategoricalFitted> = spec
            .config
            .categorical
            .iter()
            .zip(&spec.categorical)
            .zip(counts)
            .map(|((c, &i), counts)| {
                let mut by_count: Vec<(String, u64)> = counts.into_iter().collect();
                by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                CategoricalFitted {
                    field: field(i),
                    values: by_count.into_iter().take(c.top_k).map(|(v, _)| v).collect(),
                }
            })
            .collect();
        let mut names = Vec::new();
        for n in &numeric {
            let t = match n.transform {
                NumericTransform::Identity => "",
                NumericTransform::Log1p => "log1p_",
            };
            names.push(format!("{t}{}", n.field));
        }
        for c in &categorical {
            names.extend(c.values.iter().map(|v| format!("{}={v}", c.field)));
            names.push(format!("{}=other", c.field));
        }
        let boolean: Vec<String> = spec.boolean.iter().map(|&i| field(i)).collect();
        names.extend(boolean.iter().cloned());
        let time = field(spec.time);
        if spec.config.hour_of_day {
            names.extend([format!("{time}_hour_sin"), format!("{time}_hour_cos")]);
        }
        if spec.config.day_of_week {
            names.extend([format!("{time}_weekday_sin"), format!("{time}_weekday_cos")]);
        }
        if !spec.config.hour_bins.is_empty() {
            let mut from = 0;
            for &to in spec.config.hour_bins.iter().chain([24].iter()) {
                names.push(format!("{time}_hours_{from}_{to}"));
                from = to;
            }
        }
        let h = &spec.config.history;
        let history = spec.history.as_ref().map(|_| {
            for (on, name) in [
                (h.count_in_window, format!("account_events_in_{}", h.window)),
                (h.amount_vs_mean, "account_amount_vs_mean".to_string()),
                (h.seconds_since_previous, "account_log_seconds_since_previous".to_string()),
                (h.new_country, "account_new_country".to_string()),
                (h.amount_over_mean, "account_amount_over_mean".to_string()),
                (h.unusual_country, "account_unusual_country".to_string()),
            ] {
                if on {
                    names.push(name);
                }
            }
            if let Some(d) = &h.previous_within {
                names.push(format!("account_previous_within_{d}"));
            }
            h.clone()
        });
        FittedFeatures {
            names,
            numeric,
            categorical,
            boolean,
            hour_of_day: spec.config.hour_of_day,
            day_of_week: spec.config.day_of_week,
            hour_bins: spec.config.hour_bins.clone(),
            history,
        }
    }
}

impl FittedFeatures {
    /// Binds the fitted features to `schema` (the one scoring reads with); every field must be
    /// there with a fitting type.
    pub fn bind(&self, schema: &Schema) -> Result<Features> {
        let config = FeatureConfig {
            numeric: self
                .numeric
                .iter()
                .map(|n| NumericFeature {
                    field: n.field.clone(),
                    transform: n.transform,
                    clip: n.clip,
                    standardize: n.mean.is_some(),
                })
                .collect(),
            categorical: self
                .categorical
                .iter()
                .map(|c| CategoricalFeature { field: c.field.clone(), top_k: c.values.len().max(1) })
                .collect(),
            boolean: self.boolean.clone(),
            hour_of_day: self.hour_of_day,
            day_of_week: self.day_of_week,
            hour_bins: self.hour_bins.clone(),
            history: self.history.clone().unwrap_or_default(),
        };
        let spec = config.validate(schema)?;
        let categorical = spec
            .categorical
            .iter()
            .zip(&self.categorical)
            .map(|(&i, c)| (i, c.values.iter().enumerate().map(|(k, v)| (v.clone(), k)).collect()))
            .collect();
        let features = Features {
            fitted: self.clone(),
            numeric: spec.numeric,
            categorical,
            boolean: spec.boolean,
            time: spec.time,
            history: spec.history,
        };
        if features.width() != self.names.len() {
            return Err(Error::config(
                "features",
                self.names.len(),
                format!("{} names for {} features", self.names.len(), features.width()),
            ));
        }
        Ok(features)
    }
}

impl Features {
    /// How many values a row has.
    pub fn width(&self) -> usize {
        let f = &self.fitted;
        f.numeric.len()
            + f.categorical.iter().map(|c| c.values.len() + 1).sum::<usize>()
            + f.boolean.len()
            + 2 * usize::from(f.hour_of_day)
            + 2 * usize::from(f.day_of_week)
            + if f.hour_bins.is_empty() { 0 } else { f.hour_bins.len() + 1 }
            + f.history.as_ref().map_or(0, |h| {
                [
                    h.count_in_window,
                    h.amount_vs_mean,
                    h.seconds_since_previous,
                    h.new_country,
                    h.amount_over_mean,
                    h.unusual_country,
                    h.previous_within.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count()
            })
    }

    pub fn names(&self) -> &[String] {
        &self.fitted.names
    }

    /// The window of the history's `count_in_window` (µs); None without history features.
    pub fn history_window_us(&self) -> Option<i64> {
        match (&self.history, &self.fitted.history) {
            (Some(h), Some(_)) => Some(h.window_us),
            _ => None,
        }
    }

    /// The field the account history is kept by (None without history features).
    pub fn history_account(&self) -> Option<usize> {
        self.history_window_us()?;
        self.history.as_ref().map(|h| h.account)
    }

    /// The fields the account history reads (event time, account, then amount and country
    /// when used); empty without history features. Rows fed only into the history need no
    /// other field.
    pub fn history_fields(&self) -> Vec<usize> {
        if self.history_window_us().is_none() {
            return Vec::new();
        }
        let h = self.history.as_ref().expect("history features");
        [Some(self.time), Some(h.account), h.amount, h.country].into_iter().flatten().collect()
    }

    /// The positions in a row of each categorical feature's one-hot columns (its top values,
    /// then "other"): exactly one of them is 1 in every row.
    pub fn one_hot_groups(&self) -> Vec<std::ops::Range<usize>> {
        let f = &self.fitted;
        let mut start = f.numeric.len();
        let mut groups: Vec<std::ops::Range<usize>> = f
            .categorical
            .iter()
            .map(|c| {
                let group = start..start + c.values.len() + 1;
                start = group.end;
                group
            })
            .collect();
        if !f.hour_bins.is_empty() {
            start += f.boolean.len() + 2 * usize::from(f.hour_of_day) + 2 * usize::from(f.day_of_week);
            groups.push(start..start + f.hour_bins.len() + 1);
        }
        groups
    }

    /// The features of one event into `out` (`width()` values), then the event into the
    /// account's history. Events must come in the table's order. Returns what the history
    /// said of the event (None without history features), for its explanation.
    pub fn row(&self, values: &[Value<'_>], history: &mut History, out: &mut [f32]) -> Option<Seen> {
        let mut k = 0;
        let mut put = |x: f64| {
            out[k] = x as f32;
            k += 1;
        };
        for (n, &i) in self.fitted.numeric.iter().zip(&self.numeric) {
            let mut x = numeric_value(n, &values[i]);
            if let (Some(m), Some(s)) = (n.mean, n.std) {
                x = (x - m) / s;
            }
            put(x);
        }
        for (i, lookup) in &self.categorical {
            let hit = values[*i].as_str().and_then(|s| lookup.get(s)).copied();
            for c in 0..=lookup.len() {
                let other = hit.is_none() && c == lookup.len();
                put(if hit == Some(c) || other { 1.0 } else { 0.0 });
            }
        }
        for &i in &self.boolean {
            put(if matches!(values[i], Value::Bool(true)) { 1.0 } else { 0.0 });
        }
        let t = match values[self.time] {
            Value::Timestamp(t) => t,
            _ => 0,
        };
        const US_PER_HOUR: f64 = 3_600_000_000.0;
        if self.fitted.hour_of_day {
            // The remainder in integers (exact, and no software `fmod`).
            let hour = t.rem_euclid(24 * US_PER_HOUR as i64) as f64 / US_PER_HOUR;
            let a = std::f64::consts::TAU * hour / 24.0;
            put(a.sin());
            put(a.cos());
        }
        if self.fitted.day_of_week {
            // 1970-01-01 was a Thursday: shifted by 3, Monday is day 0.
            let day = (t.div_euclid(86_400_000_000) + 3).rem_euclid(7) as f64;
            let a = std::f64::consts::TAU * day / 7.0;
            put(a.sin());
            put(a.cos());
        }
        if !self.fitted.hour_bins.is_empty() {
            let hour = t.div_euclid(US_PER_HOUR as i64).rem_euclid(24) as u32;
            let part = self.fitted.hour_bins.iter().filter(|&&b| b <= hour).count();
            for k in 0..=self.fitted.hour_bins.len() {
                put(if k == part { 1.0 } else { 0.0 });
            }
        }
        if let (Some(spec), Some(h)) = (&self.history, &self.fitted.history) {
            let account = values[spec.account].as_str().unwrap_or("");
            let amount = spec.amount.and_then(|i| as_f64(&values[i]));
            let country = spec.country.and_then(|i| values[i].as_str());
            let seen = history.observe(account, t, amount, country, spec.window_us);
            if h.count_in_window {
                put(seen.in_window as f64);
            }
            if h.amount_vs_mean {
                put(seen.amount_vs_mean);
            }
            if h.seconds_since_previous {
                put(seen.log_seconds_since_previous);
            }
            if h.new_country {
                put(if seen.new_country { 1.0 } else { 0.0 });
            }
            if h.amount_over_mean {
                put(seen.amount_vs_mean.max(0.0));
            }
            if h.unusual_country {
                put(if seen.unusual_country { 1.0 } else { 0.0 });
            }
            if let Some(within) = spec.previous_within_us {
                put(if seen.since_previous_us.is_some_and(|g| g < within) { 1.0 } else { 0.0 });
            }
            return Some(seen);
        }
        None
    }
}

#[cfg(test)]
mod tests;
