//! The synthetic world behind `txpipe produce`: accounts, merchants, a calendar with daily and
//! weekly cycles, and the generative fraud process whose true probability is known per event.
//!
//! In: a seed and the world's sizes. Out: one [`Draw`] per event, in increasing event time:
//! who paid whom, how much, where, how, when, and the true fraud probability with its label.
//!
//! The fraud process (documented in the README): every event has a risk score
//!
//! ```text
//! x = 1.1·max(0, ln(amount / account's typical amount))   unusual amount for the account
//!   + 1.6·[country ≠ account's home country]              foreign
//!   + 1.2·risk(category)                                  risky category (0 … 1)
//!   + risk(channel)                                       online 0.7, atm 0.5, pos 0
//!   + 1.0·[hour of day in 00:00–05:59 UTC]                night
//!   + 2.2·[event is part of a burst]                      burst of a compromised card
//! ```
//!
//! and `P(fraud) = sigmoid(b0 + x)`, with `b0` calibrated on a pilot sample so that the mean
//! probability is the requested fraud rate. The label is a Bernoulli draw from that probability.
//! A burst starts on a random account with probability `0.35 × fraud rate` per event and adds
//! 3–8 events of that account 20 s–4 min apart, with unusual amounts, mostly foreign, risky
//! categories and online: patterns that per-account velocity and amount features can learn.

use rand::{Rng, SeedableRng};

use super::GeneratorConfig;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

pub const CATEGORIES: [(&str, f64, f64); 12] = [
    // name, weight in normal spending, fraud risk
    ("grocery", 0.24, 0.0),
    ("restaurants", 0.16, 0.05),
    ("fuel", 0.10, 0.1),
    ("retail", 0.14, 0.2),
    ("utilities", 0.05, 0.0),
    ("health", 0.05, 0.0),
    ("entertainment", 0.07, 0.3),
    ("travel", 0.06, 0.5),
    ("electronics", 0.05, 0.8),
    ("digital_goods", 0.04, 0.9),
    ("jewelry", 0.02, 0.9),
    ("gambling", 0.02, 1.0),
];

pub const COUNTRIES: [(&str, &str, f64); 14] = [
    // code, currency, share of accounts at home there
    ("US", "USD", 0.30),
    ("GB", "GBP", 0.12),
    ("DE", "EUR", 0.12),
    ("FR", "EUR", 0.09),
    ("NL", "EUR", 0.05),
    ("ES", "EUR", 0.06),
    ("IT", "EUR", 0.05),
    ("PL", "PLN", 0.05),
    ("SE", "SEK", 0.03),
    ("CA", "CAD", 0.05),
    ("BR", "BRL", 0.04),
    ("IN", "INR", 0.02),
    ("NG", "NGN", 0.01),
    ("RU", "RUB", 0.01),
];

pub const CHANNELS: [(&str, f64); 3] = [("pos", 0.0), ("online", 0.7), ("atm", 0.5)];

/// Relative activity by hour of day (UTC) and by day of week (Monday first).
const HOURLY: [f64; 24] = [
    0.25, 0.15, 0.10, 0.10, 0.12, 0.20, 0.40, 0.70, 1.00, 1.10, 1.20, 1.25, 1.35, 1.30, 1.20, 1.15, 1.20,
    1.35, 1.50, 1.50, 1.30, 1.00, 0.70, 0.45,
];
const WEEKDAY: [f64; 7] = [1.0, 1.0, 1.0, 1.05, 1.2, 1.25, 0.9];

const W_AMOUNT: f64 = 1.1;
const W_FOREIGN: f64 = 1.6;
const W_CATEGORY: f64 = 1.2;
const W_NIGHT: f64 = 1.0;
const W_BURST: f64 = 2.2;
const PILOT_EVENTS: u64 = 20_000;

const HOUR_US: i64 = 3_600_000_000;

#[derive(Debug, Clone)]
struct Account {
    home: usize,
    typical_amount: f64,
    categories: [usize; 3],
    online_share: f64,
}

/// One drawn event, before it is rendered to JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    pub index: u64,
    pub account: usize,
    pub merchant: usize,
    pub category: usize,
    pub amount: f64,
    pub country: usize,
    pub channel: usize,
    pub time_us: i64,
    pub in_burst: bool,
    /// The risk score x (without the intercept).
    pub risk: f64,
    /// The true fraud probability.
    pub fraud_probability: f64,
    pub is_fraud: bool,
}

/// Accounts, merchants, calendar and fraud process, with the random state that walks them.
pub struct World {
    rng: ChaCha8Rng,
    accounts: Vec<Account>,
    account_cdf: Vec<f64>,
    merchants_by_category: Vec<Vec<usize>>,
    /// Calendar segments: (start µs, length µs, cumulative weight at start, weight per µs).
    segments: Vec<(i64, i64, f64, f64)>,
    total_weight: f64,
    segment: usize,
    count: u64,
    next_index: u64,
    burst_rate: f64,
    pending: VecDeque<(i64, usize)>,
    intercept: f64,
    last_time: i64,
}

impl World {
    pub fn new(config: &GeneratorConfig) -> World {
        let mut world = World::build(config);
        world.intercept = calibrate(config);
        world
    }

    fn build(config: &GeneratorConfig) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let accounts: Vec<Account> = (0..config.accounts.max(1))
            .map(|_| Account {
                home: pick(&mut rng, COUNTRIES.iter().map(|c| c.2)),
                typical_amount: (3.3 + 0.8 * normal(&mut rng)).exp().clamp(2.0, 5_000.0),
                categories: [0; 3].map(|_| pick(&mut rng, CATEGORIES.iter().map(|c| c.1))),
                online_share: rng.random_range(0.05..0.5),
            })
            .collect();
        let mut account_cdf = Vec::with_capacity(accounts.len());
        let mut acc = 0.0;
        for _ in &accounts {
            acc += (normal(&mut rng)).exp();
            account_cdf.push(acc);
        }
        let mut merchants_by_category = vec![Vec::new(); CATEGORIES.len()];
        for m in 0..config.merchants.max(CATEGORIES.len()) {
            // Every category gets at least one merchant; the rest follow normal spending.
            let c = if m < CATEGORIES.len() { m } else { pick(&mut rng, CATEGORIES.iter().map(|c| c.1)) };
            merchants_by_category[c].push(m);
        }
        let (segments, total_weight) = calendar(config.start_us, config.span_us.max(1));
        World {
            rng,
            accounts,
            account_cdf,
            merchants_by_category,
            segments,
            total_weight,
            segment: 0,
            count: config.count.max(1),
            next_index: 0,
            burst_rate: 0.35 * config.fraud_rate.clamp(0.0, 1.0),
            pending: VecDeque::new(),
            intercept: 0.0,
            last_time: config.start_us,
        }
    }

    /// The random state, for the renderer's own draws (keeps one deterministic stream).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Draws the next event.
    pub fn draw(&mut self) -> Draw {
        let index = self.next_index;
        self.next_index += 1;
        let u: f64 = self.rng.random();
        let calendar_time = self.time_at((index as f64 + u) / self.count as f64);
        let (time_us, account, in_burst) = match self.pending.front() {
            Some(&(t, a)) if t <= calendar_time => {
                self.pending.pop_front();
                (t, a, true)
            }
            _ => (calendar_time, self.pick_account(), false),
        };
        let time_us = time_us.max(self.last_time);
        self.last_time = time_us;
        if !in_burst && self.rng.random::<f64>() < self.burst_rate {
            self.start_burst(time_us, account);
        }
        let a = &self.accounts[account];
        let (ratio, foreign, category, channel) = if in_burst {
            let ratio = (0.9 + 0.7 * normal(&mut self.rng)).exp();
            let foreign = self.rng.random::<f64>() < 0.6;
            let category = pick(&mut self.rng, CATEGORIES.iter().map(|c| 0.02 + c.2));
            let channel = pick(&mut self.rng, [0.1, 0.75, 0.15].into_iter());
            (ratio, foreign, category, channel)
        } else {
            let ratio = (0.55 * normal(&mut self.rng)).exp();
            let foreign = self.rng.random::<f64>() < 0.04;
            let category = if self.rng.random::<f64>() < 0.8 {
                a.categories[self.rng.random_range(0..3)]
            } else {
                pick(&mut self.rng, CATEGORIES.iter().map(|c| c.1))
            };
            let online = a.online_share;
            let channel = pick(&mut self.rng, [0.9 - online, online, 0.1].into_iter());
            (ratio, foreign, category, channel)
        };
        let country = if foreign {
            let other = self.rng.random_range(0..COUNTRIES.len() - 1);
            if other >= a.home { other + 1 } else { other }
        } else {
            a.home
        };
        let amount = (a.typical_amount * ratio * 100.0).round().max(1.0) / 100.0;
        let hour = time_us.div_euclid(HOUR_US).rem_euclid(24);
        let risk = W_AMOUNT * (amount / a.typical_amount).ln().max(0.0)
            + W_FOREIGN * f64::from(u8::from(foreign))
            + W_CATEGORY * CATEGORIES[category].2
            + CHANNELS[channel].1
            + W_NIGHT * f64::from(u8::from(hour < 6))
            + W_BURST * f64::from(u8::from(in_burst));
        let fraud_probability = sigmoid(self.intercept + risk);
        let is_fraud = self.rng.random::<f64>() < fraud_probability;
        let merchants = &self.merchants_by_category[category];
        let merchant = merchants[self.rng.random_range(0..merchants.len())];
        Draw {
            index,
            account,
            merchant,
            category,
            amount,
            country,
            channel,
            time_us,
            in_burst,
            risk,
            fraud_probability,
            is_fraud,
        }
    }

    fn pick_account(&mut self) -> usize {
        let total = self.account_cdf.last().copied().unwrap_or(1.0);
        let x = self.rng.random::<f64>() * total;
        self.account_cdf.partition_point(|&c| c <= x).min(self.accounts.len() - 1)
    }

    fn start_burst(&mut self, at: i64, account: usize) {
        let n = self.rng.random_range(3..=8);
        let mut t = at;
        let mut added = Vec::with_capacity(n);
        for _ in 0..n {
            t += self.rng.random_range(20_000_000..240_000_000);
            added.push((t, account));
        }
        self.pending.extend(added);
        self.pending.make_contiguous().sort_by_key(|p| p.0);
    }

    /// Maps a fraction of the whole calendar weight (0 … 1, non-decreasing between calls) to a
    /// time.
    fn time_at(&mut self, fraction: f64) -> i64 {
        let target = fraction.clamp(0.0, 1.0) * self.total_weight;
        while self.segment + 1 < self.segments.len() && self.segments[self.segment + 1].2 <= target {
            self.segment += 1;
        }
        let (start, len, cum, per_us) = self.segments[self.segment];
        let offset = ((target - cum) / per_us).clamp(0.0, (len - 1) as f64);
        start + offset as i64
    }
}

/// Hour-aligned calendar segments weighted by time of day and day of week.
fn calendar(start: i64, span: i64) -> (Vec<(i64, i64, f64, f64)>, f64) {
    let mut segments = Vec::new();
    let mut t = start;
    let end = start.saturating_add(span);
    let mut cum = 0.0;
    while t < end {
        let next = ((t.div_euclid(HOUR_US) + 1) * HOUR_US).min(end);
        let hour = t.div_euclid(HOUR_US).rem_euclid(24) as usize;
        // 1970-01-01 was a Thursday: day 0 is index 3 with Monday first.
        let weekday = (t.div_euclid(24 * HOUR_US) + 3).rem_euclid(7) as usize;
        let per_us = HOURLY[hour] * WEEKDAY[weekday];
        let len = next - t;
        segments.push((t, len, cum, per_us));
        cum += per_us * len as f64;
        t = next;
    }
    (segments, cum)
}

/// Finds b0 such that the mean of sigmoid(b0 + x) over a pilot sample is the fraud rate.
fn calibrate(config: &GeneratorConfig) -> f64 {
    let rate = config.fraud_rate;
    if rate <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if rate >= 1.0 {
        return f64::INFINITY;
    }
    let mut pilot = World::build(&GeneratorConfig {
        seed: config.seed ^ 0x9e37_79b9_7f4a_7c15,
        count: PILOT_EVENTS,
        ..config.clone()
    });
    let risks: Vec<f64> = (0..PILOT_EVENTS).map(|_| pilot.draw().risk).collect();
    let mean_at = |b0: f64| risks.iter().map(|x| sigmoid(b0 + x)).sum::<f64>() / risks.len() as f64;
    let (mut lo, mut hi) = (-40.0, 40.0);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if mean_at(mid) < rate { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An index drawn in proportion to the weights.
pub fn pick(rng: &mut impl Rng, weights: impl Iterator<Item = f64> + Clone) -> usize {
    let total: f64 = weights.clone().sum();
    let mut x = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        if x < w {
            return i;
        }
        x -= w;
        last = i;
    }
    last
}
