//! Reasons an analyst can read: why the model scored one transaction above its baseline.
//!
//! In: the fitted features (their layout), the model's weights, one row of feature values and
//! what the account history said of the event. Out: at most three [`Reason`]s, each a stable
//! machine code (`merchant_category=gambling`, `amount_vs_account_mean`, `hour_of_day`) and on
//! request a text with the values (`amount 4.2× the account's mean (59.10)`).
//!
//! A feature's contribution is its coefficient times its standardised value: its push on the
//! log-odds against the model's baseline (the training mean of every feature). Columns that
//! describe one thing are read as one reason whose push is their sum: the one-hot columns of a
//! categorical field (named by the value the transaction has, never by a value it lacks), the
//! sine and cosine of the hour with the parts of the day (`hour_of_day`), those of the weekday
//! (`day_of_week`), the amount against the account's mean with the part above it, and the
//! country flags (`new_country`, else `unusual_country`). A reason pushes the score up; a flag
//! (a boolean field, a history flag) is a reason only when it is set. So a field appears at
//! most once, and a column whose value is 0 never names a value.

use std::fmt::Write;

use super::{Features, History, Seen};
use crate::event::Value;

/// What a group of columns means, for its text.
#[derive(Debug, Clone)]
enum Meaning {
    Numeric {
        field: usize,
    },
    /// `other` is the position of the "other" column in the group.
    Categorical {
        field: usize,
        other: usize,
    },
    Boolean,
    HourOfDay,
    DayOfWeek,
    EventsInWindow {
        window: String,
    },
    AmountVsMean {
        amount: Option<usize>,
    },
    SincePrevious,
    Country {
        country: Option<usize>,
    },
    Burst {
        within: String,
    },
}

/// How a group picks its code, and whether it can be a reason at all.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    /// Always the first code.
    Fixed,
    /// Only when one of its columns is 1: the code of the first such column.
    Hot,
}

#[derive(Debug, Clone)]
struct Group {
    meaning: Meaning,
    pick: Pick,
    /// The group's columns in the feature row, and a code per column (`Fixed`: one code).
    columns: Vec<usize>,
    codes: Vec<String>,
}

/// One reason: a group, the code it chose, and its push on the log-odds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reason {
    group: u16,
    code: u16,
    /// The push on the log-odds against the model's baseline (> 0).
    pub push: f64,
}

/// A row's reasons, largest push first (at most three; no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reasons {
    top: [Reason; 3],
    len: usize,
}

impl Reasons {
    fn offer(&mut self, r: Reason) {
        // Insert keeping the order (largest first; a later equal push stays behind).
        let mut at = self.len;
        while at > 0 && self.top[at - 1].push < r.push {
            at -= 1;
        }
        if at >= 3 {
            return;
        }
        let end = self.len.min(2);
        for k in (at..end).rev() {
            self.top[k + 1] = self.top[k];
        }
        self.top[at] = r;
        self.len = (self.len + 1).min(3);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Reason> {
        self.top[..self.len].iter()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The reason groups of one model's features, and its weights per column.
#[derive(Debug, Clone)]
pub struct Explainer {
    groups: Vec<Group>,
    /// Per column: standardised coefficient / standard deviation, and the training mean.
    weight: Vec<f64>,
    center: Vec<f64>,
    time: usize,
}

const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

impl Explainer {
    /// The groups of `features`' columns; `standardized`, `means` and `stds` are the model's,
    /// one per column.
    pub fn new(features: &Features, standardized: &[f64], means: &[f64], stds: &[f64]) -> Explainer {
        let f = &features.fitted;
        let mut groups: Vec<Group> = Vec::new();
        let mut col = 0usize;
        let mut next = |n: usize| {
            let cols: Vec<usize> = (col..col + n).collect();
            col += n;
            cols
        };
        let fixed =
            |meaning, columns, code: String| Group { meaning, pick: Pick::Fixed, columns, codes: vec![code] };
        for (n, &field) in f.numeric.iter().zip(&features.numeric) {
            groups.push(fixed(Meaning::Numeric { field }, next(1), n.field.clone()));
        }
        for (c, (field, _)) in f.categorical.iter().zip(&features.categorical) {
            let mut codes: Vec<String> = c.values.iter().map(|v| format!("{}={v}", c.field)).collect();
            codes.push(format!("{}=other", c.field));
            let meaning = Meaning::Categorical { field: *field, other: c.values.len() };
            groups.push(Group { meaning, pick: Pick::Hot, columns: next(c.values.len() + 1), codes });
        }
        for name in &f.boolean {
            groups.push(Group {
                meaning: Meaning::Boolean,
                pick: Pick::Hot,
                columns: next(1),
                codes: vec![name.clone()],
            });
        }
        let hour = f.hour_of_day.then(|| next(2));
        let weekday = f.day_of_week.then(|| next(2));
        let bins = (!f.hour_bins.is_empty()).then(|| next(f.hour_bins.len() + 1));
        if hour.is_some() || bins.is_some() {
            let columns = hour.into_iter().chain(bins).flatten().collect();
            groups.push(fixed(Meaning::HourOfDay, columns, "hour_of_day".into()));
        }
        if let Some(columns) = weekday {
            groups.push(fixed(Meaning::DayOfWeek, columns, "day_of_week".into()));
        }
        if let (Some(h), Some(spec)) = (&f.history, &features.history) {
            let mut take = |on: bool| on.then(|| next(1)[0]);
            let in_window = take(h.count_in_window);
            let vs_mean = take(h.amount_vs_mean);
            let since = take(h.seconds_since_previous);
            let new_country = take(h.new_country);
            let over_mean = take(h.amount_over_mean);
            let unusual = take(h.unusual_country);
            let burst = take(h.previous_within.is_some());
            if let Some(c) = in_window {
                let window = h.window.clone();
                groups.push(fixed(
                    Meaning::EventsInWindow { window: window.clone() },
                    vec![c],
                    format!("events_in_{window}"),
                ));
            }
            let amount: Vec<usize> = vs_mean.into_iter().chain(over_mean).collect();
            if !amount.is_empty() {
                let meaning = Meaning::AmountVsMean { amount: spec.amount };
                groups.push(fixed(meaning, amount, "amount_vs_account_mean".into()));
            }
            if let Some(c) = since {
                groups.push(fixed(Meaning::SincePrevious, vec![c], "time_since_previous".into()));
            }
            let mut columns = Vec::new();
            let mut codes = Vec::new();
            for (c, code) in [(new_country, "new_country"), (unusual, "unusual_country")] {
                if let Some(c) = c {
                    columns.push(c);
                    codes.push(code.to_string());
                }
            }
            if !columns.is_empty() {
                let meaning = Meaning::Country { country: spec.country };
                groups.push(Group { meaning, pick: Pick::Hot, columns, codes });
            }
            if let (Some(c), Some(within)) = (burst, &h.previous_within) {
                groups.push(Group {
                    meaning: Meaning::Burst { within: within.clone() },
                    pick: Pick::Hot,
                    columns: vec![c],
                    codes: vec![format!("burst_{within}")],
                });
            }
        }
        let weight = standardized.iter().zip(stds).map(|(b, s)| b / s).collect();
        Explainer { groups, weight, center: means.to_vec(), time: features.time }
    }

    /// The reasons of one feature row (at most three, largest push first).
    pub fn reasons(&self, x: &[f32]) -> Reasons {
        let mut top = Reasons::default();
        for (g, group) in self.groups.iter().enumerate() {
            let code = match group.pick {
                Pick::Fixed => 0,
                Pick::Hot => match group.columns.iter().position(|&c| x[c] == 1.0) {
                    Some(k) => k,
                    None => continue,
                },
            };
            let push: f64 =
                group.columns.iter().map(|&c| self.weight[c] * (x[c] as f64 - self.center[c])).sum();
            if push > 0.0 {
                top.offer(Reason { group: g as u16, code: code as u16, push });
            }
        }
        top
    }

    /// Every code this model's reasons can take.
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().flat_map(|g| g.codes.iter().map(String::as_str))
    }

    /// A reason's machine code.
    pub fn code(&self, r: &Reason) -> &str {
        &self.groups[r.group as usize].codes[r.code as usize]
    }

    /// The reasons' texts with the event's values, joined by "; ", into `out` (cleared first).
    /// `values` and `seen` are the event's (as scored), `history` the one it was scored with.
    pub fn explain(
        &self,
        reasons: &Reasons,
        values: &[Value<'_>],
        seen: Option<&Seen>,
        history: &History,
        out: &mut String,
    ) {
        out.clear();
        for (k, r) in reasons.iter().enumerate() {
            if k > 0 {
                out.push_str("; ");
            }
            self.text(r, values, seen, history, out);
        }
    }

    fn text(
        &self,
        r: &Reason,
        values: &[Value<'_>],
        seen: Option<&Seen>,
        history: &History,
        out: &mut String,
    ) {
        let group = &self.groups[r.group as usize];
        let code = group.codes[r.code as usize].as_str();
        let time = match values[self.time] {
            Value::Timestamp(t) => Some(t),
            _ => None,
        };
        let mut out = Out(out);
        match &group.meaning {
            Meaning::Numeric { field } => out.s(code).s(" ").value(&values[*field]),
            Meaning::Categorical { field, other } => {
                let name = code.split('=').next().unwrap_or(code);
                match &values[*field] {
                    Value::Null => out.s(name).s(" missing"),
                    v if r.code as usize == *other => out.s(name).s(" ").value(v).s(" (uncommon)"),
                    v => out.s(name).s(" ").value(v),
                }
            }
            Meaning::Boolean => out.s(code).s(": yes"),
            Meaning::HourOfDay => match time {
                Some(t) => {
                    let minute = t.div_euclid(60_000_000).rem_euclid(24 * 60);
                    out.s("at ").two(minute / 60).s(":").two(minute % 60).s(" UTC")
                }
                None => out.s("time of day unknown"),
            },
            Meaning::DayOfWeek => match time {
                Some(t) => {
                    let day = (t.div_euclid(86_400_000_000) + 3).rem_euclid(7) as usize;
                    out.s("on a ").s(WEEKDAYS[day])
                }
                None => out.s("day unknown"),
            },
            Meaning::EventsInWindow { window } => match seen {
                Some(s) => out.int(s.in_window as i64).s(" earlier payments within ").s(window),
                None => out.s("earlier payments within ").s(window),
            },
            Meaning::AmountVsMean { amount } => {
                let x = amount.and_then(|i| number(&values[i]));
                match (x, seen.and_then(|s| s.mean_amount)) {
                    (Some(x), Some(mean)) if mean > 0.0 => {
                        out.s("amount ").fixed(x / mean, 1).s("× the account's mean (").num(mean).s(")")
                    }
                    (Some(x), Some(mean)) => {
                        out.s("amount ").num(x).s(" against the account's mean ").num(mean)
                    }
                    (_, None) => out.s("the account's first amount"),
                    (None, Some(mean)) => out.s("amount missing, the account's mean ").num(mean),
                }
            }
            Meaning::SincePrevious => match seen.and_then(|s| s.since_previous_us) {
                Some(us) => out.gap(us).s(" after the account's previous payment"),
                None => out.s("the account's first payment"),
            },
            Meaning::Country { country } => {
                let here = country.and_then(|i| values[i].as_str()).unwrap_or("?");
                let usual = seen.and_then(|s| s.usual_country).and_then(|n| history.country_name(n));
                out.s("country ").s(here);
                match (code, usual) {
                    ("new_country", Some(u)) => out.s(", new for the account (usually ").s(u).s(")"),
                    ("new_country", None) => out.s(", new for the account"),
                    (_, Some(u)) => out.s(", usually ").s(u),
                    (_, None) => out.s(", not the account's usual one"),
                }
            }
            Meaning::Burst { within } => match seen.and_then(|s| s.since_previous_us) {
                Some(us) => out.gap(us).s(" after the account's previous payment (within ").s(within).s(")"),
                None => out.s("a payment within ").s(within).s(" of the previous one"),
            },
        };
    }
}

fn number(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        Value::Long(l) => Some(*l as f64),
        _ => None,
    }
}

/// Appends the pieces of an explanation. It runs for every row scored: integers go through
/// `itoa` and decimals through integers, several times faster than `write!` and `{:.N}`.
struct Out<'a>(&'a mut String);

impl Out<'_> {
    fn s(&mut self, s: &str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    fn int(&mut self, n: i64) -> &mut Self {
        self.s(itoa::Buffer::new().format(n))
    }

    /// At least two digits (`07`).
    fn two(&mut self, n: i64) -> &mut Self {
        if (0..10).contains(&n) {
            self.0.push('0');
        }
        self.int(n)
    }

    /// `decimals` (at most 3) decimals, rounded half away from zero; no sign on a zero.
    fn fixed(&mut self, x: f64, decimals: u32) -> &mut Self {
        let decimals = decimals.min(3);
        let scale = 10u64.pow(decimals);
        let scaled = (x.abs() * scale as f64).round();
        if !scaled.is_finite() || scaled >= 1e15 {
            let _ = write!(self.0, "{:.*}", decimals as usize, x);
            return self;
        }
        let n = scaled as u64;
        if x < 0.0 && n != 0 {
            self.0.push('-');
        }
        self.s(itoa::Buffer::new().format(n / scale));
        if decimals > 0 {
            self.0.push('.');
            let frac = n % scale;
            let mut pad = scale / 10;
            while pad > 1 && frac < pad {
                self.0.push('0');
                pad /= 10;
            }
            self.s(itoa::Buffer::new().format(frac));
        }
        self
    }

    /// A number as a person reads it: whole numbers without decimals, others with two.
    fn num(&mut self, x: f64) -> &mut Self {
        if x.fract() == 0.0 && x.abs() < 1e15 { self.int(x as i64) } else { self.fixed(x, 2) }
    }

    /// A field's value as text.
    fn value(&mut self, v: &Value<'_>) -> &mut Self {
        match v {
            Value::Str(s) => self.s(s),
            Value::Double(d) => self.num(*d),
            Value::Long(l) => self.int(*l),
            Value::Bool(b) => self.s(if *b { "true" } else { "false" }),
            Value::Timestamp(t) => self.int(*t).s(" µs"),
            Value::Null => self.s("missing"),
        }
    }

    /// A gap in µs as a person reads it: seconds, minutes, hours or days.
    fn gap(&mut self, us: i64) -> &mut Self {
        let s = us / 1_000_000;
        match s {
            ..60 => self.int(s).s(" s"),
            60..3_600 => self.int(s / 60).s(" min"),
            3_600..86_400 => self.fixed(s as f64 / 3_600.0, 1).s(" h"),
            _ => self.fixed(s as f64 / 86_400.0, 1).s(" days"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::EventParser;
    use crate::features::FeatureConfig;
    use crate::generator::{Generator, GeneratorConfig};
    use crate::schema::Schema;

    fn text(write: impl FnOnce(&mut Out<'_>)) -> String {
        let mut s = String::new();
        write(&mut Out(&mut s));
        s
    }

    #[test]
    fn fixed_decimals_read_as_the_standard_formatting_does() {
        let fixed = |x: f64, d: u32| {
            text(|o| {
                o.fixed(x, d);
            })
        };
        assert_eq!(fixed(4.24, 1), "4.2");
        assert_eq!(fixed(4.26, 1), "4.3");
        assert_eq!(fixed(0.04, 1), "0.0");
        assert_eq!(fixed(-0.04, 1), "0.0", "no minus sign on a zero");
        assert_eq!(fixed(-12.345, 2), "-12.35");
        assert_eq!(fixed(1234.5, 2), "1234.50");
        assert_eq!(fixed(3.05, 2), "3.05");
        assert_eq!(fixed(1.007, 3), "1.007");
        assert_eq!(fixed(0.999, 2), "1.00");
        assert_eq!(fixed(7.0, 0), "7");
        assert_eq!(fixed(f64::NAN, 1), "NaN");
        assert_eq!(fixed(1e300, 1), format!("{:.1}", 1e300));
    }

    proptest! {
            /// Away from a tie, the digits are those of `{:.N}`.
            #[test]
            fn fixed_matches_the_standard_formatting_away_from_ties(x in -1e9f64..1e9, d in 0u32..=3) {
                let scaled = x.abs() * 10f64.powi(d as i32);
                prop_assume!((scaled.fract() - 0.5).abs() > 1e-3);
                let standard = format!("{:.*}", d as usize, x);
                // `{:.N}` keeps the sign of a negative number rounded to zero ("-0.0").
                let zero = standard.trim_start_matches('-').chars().all(|c| c == '0' || c == '.');
                let expected = if zero { standard.trim_start_matches('-').to_string() } else { standard };
                prop_assert_eq!(text(|o| {
    o.fixed(x, d);
    }), expected);
            }
        }

    /// Generated events of the default schema, parsed, with the default features fitted on them.
    fn world(count: u64, seed: u64) -> (Schema, Vec<Vec<Value<'static>>>, Features) {
        let schema = Schema::default_schema();
        let parser = EventParser::new(schema.clone());
        let config = GeneratorConfig { seed, count, malformed_rate: 0.0, ..Default::default() };
        let mut generator = Generator::new(&schema, config).unwrap();
        let mut rows = Vec::new();
        for payload in generator.payloads(count as usize) {
            let text: &'static [u8] = Box::leak(payload.into_boxed_slice());
            let mut values = Vec::new();
            parser.parse(text, &mut values).unwrap();
            rows.push(values);
        }
        let spec = FeatureConfig::default().validate(&schema).unwrap();
        let features = spec.fit(&schema, rows.iter().map(Vec::as_slice)).bind(&schema).unwrap();
        (schema, rows, features)
    }

    fn column(features: &Features, name: &str) -> usize {
        features.names().iter().position(|n| n == name).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any model over generated rows: a reason pushes the score up, names a value the
        /// transaction has (never a one-hot column at 0), names each field once, reads a flag
        /// only when it is set, and never names a sine or cosine.
        #[test]
        fn reasons_name_what_the_transaction_has_once_each(
            seed in 0u64..1_000,
            weights in proptest::collection::vec(-3.0f64..3.0, 64),
            centers in proptest::collection::vec(-1.0f64..1.0, 64),
        ) {
            let (schema, rows, features) = world(300, seed);
            let width = features.width();
            prop_assert!(width <= 64);
            let stds = vec![0.5; width];
            let explainer = Explainer::new(&features, &weights[..width], &centers[..width], &stds);
            let mut history = History::new();
            let mut x = vec![0f32; width];
            let mut text = String::new();
            let field = |name: &str| schema.fields().iter().position(|f| f.name == name).unwrap();
            for values in &rows {
                let seen = features.row(values, &mut history, &mut x);
                let reasons = explainer.reasons(&x);
                let mut fields_named = Vec::new();
                let mut last = f64::INFINITY;
                for r in reasons.iter() {
                    prop_assert!(r.push > 0.0 && r.push <= last, "pushes up, largest first");
                    last = r.push;
                    let code = explainer.code(r);
                    prop_assert!(!code.ends_with("_sin") && !code.ends_with("_cos"), "{code}");
                    match code.split_once('=') {
                        Some((f, v)) => {
                            let has = values[field(f)].as_str();
                            let fitted = &features.fitted.categorical.iter().find(|c| c.field == f).unwrap().values;
                            if v == "other" {
                                prop_assert!(has.is_none_or(|h| !fitted.iter().any(|k| k == h)), "{code} for {has:?}");
                            } else {
                                prop_assert_eq!(has, Some(v), "a value the transaction lacks");
                            }
                            fields_named.push(f.to_string());
                        }
                        None => fields_named.push(code.to_string()),
                    }
                    for (flag, name) in [
                        ("new_country", "account_new_country"),
                        ("unusual_country", "account_unusual_country"),
                        ("burst_5m", "account_previous_within_5m"),
                    ] {
                        if code == flag {
                            prop_assert_eq!(x[column(&features, name)], 1.0, "{} is not set", flag);
                        }
                    }
                }
                let before = fields_named.len();
                fields_named.sort();
                fields_named.dedup();
                prop_assert_eq!(fields_named.len(), before, "a field named twice");
                explainer.explain(&reasons, values, seen.as_ref(), &history, &mut text);
                prop_assert_eq!(text.matches("; ").count(), reasons.len().saturating_sub(1), "{}", text);
            }
        }
    }

    #[test]
    fn a_value_the_transaction_lacks_is_never_a_reason_and_the_text_has_values() {
        let (schema, rows, features) = world(2_000, 7);
        let width = features.width();
        // A model that likes point-of-sale payments and dislikes online ones, so that a
        // contribution per column would name `channel=pos` (below its mean) on an online
        // payment; hours and the account's amount push up too.
        let mut weights = vec![0.0; width];
        let mut centers = vec![0.0; width];
        for (name, w, c) in [
            ("channel=pos", 2.0, 0.6),
            ("channel=online", -1.0, 0.3),
            ("event_time_hour_sin", 0.5, 0.0),
            ("event_time_hour_cos", 0.5, 0.0),
            ("account_amount_vs_mean", 1.5, 0.0),
        ] {
            let j = column(&features, name);
            weights[j] = w;
            centers[j] = c;
        }
        let explainer = Explainer::new(&features, &weights, &centers, &vec![1.0; width]);
        let channel = schema.fields().iter().position(|f| f.name == "channel").unwrap();
        let mut history = History::new();
        let mut x = vec![0f32; width];
        let (mut online, mut text) = (0, String::new());
        let mut texts = Vec::new();
        for values in &rows {
            let seen = features.row(values, &mut history, &mut x);
            let reasons = explainer.reasons(&x);
            let codes: Vec<&str> = reasons.iter().map(|r| explainer.code(r)).collect();
            if values[channel].as_str() == Some("online") {
                online += 1;
                assert!(!codes.iter().any(|c| c.starts_with("channel=")), "{codes:?} for an online payment");
            }
            explainer.explain(&reasons, values, seen.as_ref(), &history, &mut text);
            texts.push(text.clone());
        }
        assert!(online > 0);
        assert!(texts.iter().any(|t| t.contains("channel pos")), "point-of-sale payments say so");
        assert!(texts.iter().any(|t| t.starts_with("at ") && t.contains(" UTC")), "the hour, as one reason");
        assert!(texts.iter().any(|t| t.contains("× the account's mean (")), "the amount against the mean");
    }

    #[test]
    fn gaps_and_numbers_read_as_a_person_writes_them() {
        assert_eq!(
            text(|o| {
                o.gap(40_000_000);
            }),
            "40 s"
        );
        assert_eq!(
            text(|o| {
                o.gap(180_000_000);
            }),
            "3 min"
        );
        assert_eq!(
            text(|o| {
                o.gap(5_400_000_000);
            }),
            "1.5 h"
        );
        assert_eq!(
            text(|o| {
                o.gap(3 * 86_400_000_000);
            }),
            "3.0 days"
        );
        assert_eq!(
            text(|o| {
                o.num(12.0);
            }),
            "12"
        );
        assert_eq!(
            text(|o| {
                o.num(12.345);
            }),
            "12.35"
        );
        assert_eq!(
            text(|o| {
                o.num(-3.5);
            }),
            "-3.50"
        );
        assert_eq!(
            text(|o| {
                o.s("at ").two(7).s(":").two(45);
            }),
            "at 07:45"
        );
        assert_eq!(
            text(|o| {
                o.value(&Value::Bool(true)).s(" ").value(&Value::Long(-4));
            }),
            "true -4"
        );
    }
}
