//! Per-account state for the history features: what earlier events of an account say about
//! the current one. The caller feeds events in the table's order (Kafka partition, then
//! offset: an account's events share a partition, so this is the order they arrived in);
//! `train` and `score` feed the same order and get the same values.
//!
//! Memory, per account (measured by `history_bytes_per_account` below): its id once in one
//! byte buffer, an 88-byte record (running sum and count of amounts, last and newest event time,
//! the times inside the window and the countries seen with their counts, each inline up to two
//! before they take a heap block), and a 5-byte slot in the hash index (which grows by
//! doubling: 6–12 bytes an account). Countries are kept as numbers; their names once per
//! history. Measured: 112 bytes an account with a million accounts.

use std::fmt;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};

use hashbrown::HashTable;
use smallvec::SmallVec;

/// Longest gap `seconds_since_previous` tells apart, and the value of a first event.
const GAP_CAP_S: f64 = 30.0 * 86_400.0;

/// Accounts per block of records: the records grow a block at a time, never by copying them all.
const BLOCK: usize = 1 << 14;

#[derive(Debug, Clone)]
struct Account {
    /// The times of its events inside the window, in the order they came.
    times: SmallVec<[i64; 2]>,
    /// Each country seen (its number in the history's list), with its number of events, in
    /// the order first seen.
    countries: SmallVec<[(u32, u32); 2]>,
    newest: i64,
    last: i64,
    sum: f64,
    /// Where its id starts in the history's id buffer.
    id_at: u64,
    /// Events with an amount (saturating).
    amounts: u32,
    /// Whether it had an event before (`last` is set).
    seen: bool,
}

fn put_u64(w: &mut impl Write, x: u64) -> io::Result<()> {
    w.write_all(&x.to_le_bytes())
}

fn put_bytes(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    put_u64(w, b.len() as u64)?;
    w.write_all(b)
}

fn get_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn get_bytes(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let n = get_u64(r)?;
    if n > 1 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("history snapshot: a {n}-byte string"),
        ));
    }
    let mut b = vec![0; n as usize];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// What an account's earlier events say about the current one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// Earlier events with a time in `(t − window, t]`.
    pub in_window: u32,
    /// `ln((amount + 1) / (earlier mean + 1))`, 0 without earlier amounts.
    pub amount_vs_mean: f64,
    /// `ln(1 + seconds since the previous event)`, the gap capped at 30 days (also for a first
    /// event) and at 0 for an event older than the previous one.
    pub log_seconds_since_previous: f64,
    /// µs since the previous event (0 for an event older than it); None for a first event.
    pub since_previous_us: Option<i64>,
    /// The account had events before, none from this country.
    pub new_country: bool,
    /// The account had events with a country before, and this country is not the one it used
    /// most (ties: the one seen first).
    pub unusual_country: bool,
    /// The mean of the account's earlier amounts (None: none before), for explanations.
    pub mean_amount: Option<f64>,
    /// The country the account used most before this event (see [`History::country_name`]).
    pub usual_country: Option<u32>,
}

/// The history of every account seen so far.
#[derive(Clone, Default)]
pub struct History {
    /// Account numbers, found by the hash of the id.
    index: HashTable<u32>,
    /// The accounts' records, in blocks of [`BLOCK`].
    blocks: Vec<Vec<Account>>,
    /// Every account id, one after the other.
    ids: Vec<u8>,
    /// Country names by number, and numbers by name.
    country_names: Vec<Box<str>>,
    country_numbers: HashTable<u32>,
    state: foldhash::fast::RandomState,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("accounts", &self.len())
            .field("countries", &self.country_names.len())
            .finish()
    }
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Accounts seen.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// About the bytes held, for the record of how memory grows with accounts: the index, the
    /// records' blocks, the id and country buffers, and the times and countries that spilled
    /// out of their records.
    pub fn heap_bytes(&self) -> usize {
        let spilled: usize = self
            .blocks
            .iter()
            .flatten()
            .map(|a| {
                let times = if a.times.spilled() { a.times.capacity() * 8 } else { 0 };
                let countries = if a.countries.spilled() { a.countries.capacity() * 8 } else { 0 };
                times + countries
            })
            .sum();
        let index = |t: &HashTable<u32>| t.capacity() * 8 / 7 * (size_of::<u32>() + 1);
        index(&self.index)
            + index(&self.country_numbers)
            + self.country_names.iter().map(|c| c.len() + 16).sum::<usize>()
            + self.blocks.iter().map(|b| b.capacity() * size_of::<Account>()).sum::<usize>()
            + self.ids.capacity()
            + spilled
    }

    /// The id of account number `n`.
    fn id_of<'h>(blocks: &[Vec<Account>], ids: &'h [u8], n: u32) -> &'h [u8] {
        let n = n as usize;
        let from = blocks[n / BLOCK][n % BLOCK].id_at as usize;
        let to = match blocks.get((n + 1) / BLOCK).and_then(|b| b.get((n + 1) % BLOCK)) {
            Some(next) => next.id_at as usize,
            None => ids.len(),
        };
        &ids[from..to]
    }

    /// The number of a country, given one when new.
    fn country_number(&mut self, country: &str) -> u32 {
        let hash = self.state.hash_one(country.as_bytes());
        let names = &self.country_names;
        if let Some(&n) = self.country_numbers.find(hash, |&n| &*names[n as usize] == country) {
            return n;
        }
        let n = u32::try_from(self.country_names.len()).expect("fewer than 2^32 countries");
        self.country_names.push(country.into());
        let (names, state) = (&self.country_names, &self.state);
        self.country_numbers.insert_unique(hash, n, |&m| state.hash_one(names[m as usize].as_bytes()));
        n
    }

    /// The record of `account`, added when new.
    fn account_mut(&mut self, account: &str) -> &mut Account {
        let key = account.as_bytes();
        let hash = self.state.hash_one(key);
        let (blocks, ids) = (&self.blocks, &self.ids);
        let found = self.index.find(hash, |&n| Self::id_of(blocks, ids, n) == key).copied();
        let n = match found {
            Some(n) => n as usize,
            None => {
                let n = self.index.len();
                if n.is_multiple_of(BLOCK) {
                    self.blocks.push(Vec::with_capacity(BLOCK));
                }
                self.blocks[n / BLOCK].push(Account {
                    times: SmallVec::new(),
                    countries: SmallVec::new(),
                    newest: 0,
                    last: 0,
                    sum: 0.0,
                    id_at: self.ids.len() as u64,
                    amounts: 0,
                    seen: false,
                });
                self.ids.extend_from_slice(key);
                let number = u32::try_from(n).expect("fewer than 2^32 accounts");
                let (blocks, ids, state) = (&self.blocks, &self.ids, &self.state);
                self.index.insert_unique(hash, number, |&m| state.hash_one(Self::id_of(blocks, ids, m)));
                n
            }
        };
        &mut self.blocks[n / BLOCK][n % BLOCK]
    }

    /// Writes the history in the form [`Self::read_from`] reads (little-endian; the accounts
    /// in the order first seen).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        put_u64(w, self.country_names.len() as u64)?;
        for c in &self.country_names {
            put_bytes(w, c.as_bytes())?;
        }
        put_u64(w, self.len() as u64)?;
        for n in 0..self.len() {
            let a = &self.blocks[n / BLOCK][n % BLOCK];
            put_bytes(w, Self::id_of(&self.blocks, &self.ids, n as u32))?;
            put_u64(w, a.times.len() as u64)?;
            for &t in &a.times {
                put_u64(w, t as u64)?;
            }
            put_u64(w, a.countries.len() as u64)?;
            for &(c, k) in &a.countries {
                put_u64(w, (u64::from(c) << 32) | u64::from(k))?;
            }
            for x in
                [a.newest as u64, a.last as u64, a.sum.to_bits(), u64::from(a.amounts), u64::from(a.seen)]
            {
                put_u64(w, x)?;
            }
        }
        Ok(())
    }

    /// Reads a history written by [`Self::write_to`]; an error for data it cannot have written.
    pub fn read_from(r: &mut impl Read) -> io::Result<History> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("history snapshot: {what}"));
        let mut h = History::new();
        let countries = get_u64(r)?;
        for _ in 0..countries {
            let name = String::from_utf8(get_bytes(r)?).map_err(|_| bad("a country that is not UTF-8"))?;
            if h.country_number(&name) as usize + 1 != h.country_names.len() {
                return Err(bad("a country listed twice"));
            }
        }
        let accounts = get_u64(r)?;
        for _ in 0..accounts {
            let id = String::from_utf8(get_bytes(r)?).map_err(|_| bad("an account id that is not UTF-8"))?;
            let known = h.len();
            let country_count = h.country_names.len() as u64;
            let a = h.account_mut(&id);
            if a.seen {
                return Err(bad("an account listed twice"));
            }
            let times = get_u64(r)?;
            for _ in 0..times {
                a.times.push(get_u64(r)? as i64);
            }
            let countries = get_u64(r)?;
            for _ in 0..countries {
                let x = get_u64(r)?;
                if x >> 32 >= country_count {
                    return Err(bad("an unknown country number"));
                }
                a.countries.push(((x >> 32) as u32, x as u32));
            }
            a.newest = get_u64(r)? as i64;
            a.last = get_u64(r)? as i64;
            a.sum = f64::from_bits(get_u64(r)?);
            a.amounts = u32::try_from(get_u64(r)?).map_err(|_| bad("an amount count out of range"))?;
            a.seen = match get_u64(r)? {
                1 => true,
                _ => return Err(bad("an account without events")),
            };
            debug_assert_eq!(h.len(), known + 1);
        }
        Ok(h)
    }

    /// What the account's history says about an event at `t` (µs), then the event itself
    /// added to it.
    pub fn observe(
        &mut self,
        account: &str,
        t: i64,
        amount: Option<f64>,
        country: Option<&str>,
        window_us: i64,
    ) -> Seen {
        let country = country.map(|c| self.country_number(c));
        let a = self.account_mut(account);
        let from = t.saturating_sub(window_us);
        let in_window = a.times.iter().filter(|&&s| s > from && s <= t).count() as u32;
        let mean_amount = (a.amounts > 0).then(|| a.sum / a.amounts as f64);
        let amount_vs_mean = match (amount, mean_amount) {
            (Some(x), Some(mean)) => ((x.max(0.0) + 1.0) / (mean + 1.0)).ln(),
            _ => 0.0,
        };
        let last = a.seen.then_some(a.last);
        let gap = last.map_or(GAP_CAP_S, |l| ((t - l) as f64 / 1e6).clamp(0.0, GAP_CAP_S));
        let since_previous_us = last.map(|l| t.saturating_sub(l).max(0));
        let new_country = a.seen && country.is_some_and(|c| !a.countries.iter().any(|&(s, _)| s == c));
        let usual = a.countries.iter().fold(None::<&(u32, u32)>, |best, e| match best {
            Some(b) if b.1 >= e.1 => Some(b),
            _ => Some(e),
        });
        let unusual_country = matches!((country, usual), (Some(c), Some(&(u, _))) if c != u);
        let usual_country = usual.map(|&(u, _)| u);
        // Then the event joins the history.
        if let Some(x) = amount {
            a.amounts = a.amounts.saturating_add(1);
            a.sum += x.max(0.0);
        }
        a.last = t;
        a.seen = true;
        if let Some(c) = country {
            match a.countries.iter_mut().find(|(s, _)| *s == c) {
                Some((_, n)) => *n = n.saturating_add(1),
                None => a.countries.push((c, 1)),
            }
        }
        a.newest = a.newest.max(t);
        a.times.push(t);
        let keep_from = a.newest.saturating_sub(window_us);
        let old = a.times.iter().take_while(|&&s| s <= keep_from).count();
        if old > 0 {
            a.times.drain(..old);
        }
        Seen {
            in_window,
            amount_vs_mean,
            log_seconds_since_previous: gap.ln_1p(),
            since_previous_us,
            new_country,
            unusual_country,
            mean_amount,
            usual_country,
        }
    }

    /// The name of a country number of [`Seen::usual_country`].
    pub fn country_name(&self, n: u32) -> Option<&str> {
        self.country_names.get(n as usize).map(|c| &**c)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use proptest::prelude::*;

    use super::*;

    /// The history in its plainest form (a map of accounts, strings and deques): what the
    /// compact one must agree with, value for value.
    /// Times in the window, newest, events, amounts, their sum, the last time, countries.
    type PlainAccount = (VecDeque<i64>, i64, u64, u64, f64, Option<i64>, Vec<(String, u64)>);

    #[derive(Default)]
    struct Plain {
        accounts: HashMap<String, PlainAccount>,
    }

    impl Plain {
        fn observe(
            &mut self,
            account: &str,
            t: i64,
            amount: Option<f64>,
            country: Option<&str>,
            window_us: i64,
        ) -> (Seen, Option<String>) {
            let (times, newest, count, amounts, sum, last, countries) =
                self.accounts.entry(account.to_string()).or_default();
            let from = t.saturating_sub(window_us);
            let in_window = times.iter().filter(|&&s| s > from && s <= t).count() as u32;
            let mean_amount = (*amounts > 0).then(|| *sum / *amounts as f64);
            let amount_vs_mean = match (amount, mean_amount) {
                (Some(x), Some(mean)) => ((x.max(0.0) + 1.0) / (mean + 1.0)).ln(),
                _ => 0.0,
            };
            let gap = last.map_or(GAP_CAP_S, |l| ((t - l) as f64 / 1e6).clamp(0.0, GAP_CAP_S));
            let since_previous_us = last.map(|l| t.saturating_sub(l).max(0));
            let new_country = *count > 0 && country.is_some_and(|c| !countries.iter().any(|(s, _)| s == c));
            let mut usual: Option<&(String, u64)> = None;
            for e in countries.iter() {
                if usual.is_none_or(|b| e.1 > b.1) {
                    usual = Some(e);
                }
            }
            let unusual_country = matches!((country, usual), (Some(c), Some((u, _))) if c != u);
            let usual_name = usual.map(|(u, _)| u.clone());
            *count += 1;
            if let Some(x) = amount {
                *amounts += 1;
                *sum += x.max(0.0);
            }
            *last = Some(t);
            if let Some(c) = country {
                match countries.iter_mut().find(|(s, _)| s == c) {
                    Some((_, n)) => *n += 1,
                    None => countries.push((c.to_string(), 1)),
                }
            }
            *newest = (*newest).max(t);
            times.push_back(t);
            while times.front().is_some_and(|&s| s <= newest.saturating_sub(window_us)) {
                times.pop_front();
            }
            let seen = Seen {
                in_window,
                amount_vs_mean,
                log_seconds_since_previous: gap.ln_1p(),
                since_previous_us,
                new_country,
                unusual_country,
                mean_amount,
                usual_country: None,
            };
            (seen, usual_name)
        }
    }

    /// A compact history's answer in the plain one's terms: the usual country by name.
    fn named(h: &History, seen: Seen) -> (Seen, Option<String>) {
        let usual = seen.usual_country.map(|n| h.country_name(n).expect("a known country").to_string());
        (Seen { usual_country: None, ..seen }, usual)
    }

    proptest! {
        /// Any events (out of order, repeated times, missing amounts and countries, a window
        /// that changes as models do): the compact history says what the plain one says.
        #[test]
        fn the_compact_history_agrees_with_the_plain_one(
            events in proptest::collection::vec(
                (0u8..40, -50i64..5_000, proptest::option::of(0.0f64..500.0), proptest::option::of(0u8..5), prop_oneof![Just(60i64), Just(600), Just(3_600)]),
                1..400,
            )
        ) {
            let (mut compact, mut plain) = (History::new(), Plain::default());
            for (account, t, amount, country, window) in events {
                // Ids of different lengths, some sharing a prefix.
                let id = format!("acct-{}", "7".repeat(account as usize % 3) + &account.to_string());
                let country = country.map(|c| ["FR", "DE", "GB", "US", "F"][c as usize]);
                let (t, window) = (t * S, window * S);
                let seen = compact.observe(&id, t, amount, country, window);
                prop_assert_eq!(named(&compact, seen), plain.observe(&id, t, amount, country, window));
            }
            prop_assert_eq!(compact.len(), plain.accounts.len());
        }
    }

    proptest! {
        /// A history written and read back goes on exactly as the original does.
        #[test]
        fn a_history_read_back_goes_on_as_the_original(
            events in proptest::collection::vec((0u8..30, 0i64..5_000, proptest::option::of(0.0f64..500.0), proptest::option::of(0u8..4)), 2..300),
            split in 0usize..300,
        ) {
            let split = split % events.len();
            let mut original = History::new();
            let id = |a: u8| format!("acct-{a}");
            let country = |c: Option<u8>| c.map(|c| ["FR", "DE", "GB", "US"][c as usize]);
            for &(a, t, amount, c) in &events[..split] {
                original.observe(&id(a), t * S, amount, country(c), 600 * S);
            }
            let mut bytes = Vec::new();
            original.write_to(&mut bytes).unwrap();
            let mut copy = History::read_from(&mut bytes.as_slice()).unwrap();
            prop_assert_eq!(copy.len(), original.len());
            for &(a, t, amount, c) in &events[split..] {
                prop_assert_eq!(
                    copy.observe(&id(a), t * S, amount, country(c), 600 * S),
                    original.observe(&id(a), t * S, amount, country(c), 600 * S)
                );
            }
            // Cut short anywhere, it is refused, never half read.
            let cut = 1 + (split * 7_919) % (bytes.len() - 1);
            prop_assert!(History::read_from(&mut &bytes[..cut]).is_err());
        }
    }

    /// The bytes an account costs, for the record (printed with `--nocapture`): a million
    /// accounts of two to four events each, across the record blocks' and the index's growth.
    #[test]
    fn history_bytes_per_account() {
        let mut h = History::new();
        let n = 1_000_000u64;
        for e in 0..3 * n {
            let account = format!("acct-{:07}", (e * 7_919) % n);
            h.observe(
                &account,
                (e as i64) * S,
                Some(12.5),
                Some(["FR", "DE"][(e % 7 == 0) as usize]),
                3_600 * S,
            );
        }
        let per_account = h.heap_bytes() as f64 / h.len() as f64;
        println!("history: {} accounts, {:.0} bytes each", h.len(), per_account);
        assert_eq!(h.len(), n as usize);
        assert!(size_of::<Account>() <= 88, "the record grew: {} bytes", size_of::<Account>());
        assert!(per_account < 120.0, "{per_account:.0} bytes an account");
    }

    const S: i64 = 1_000_000;

    #[test]
    fn an_accounts_earlier_events_only() {
        let mut h = History::new();
        let first = h.observe("a", 100 * S, Some(10.0), Some("FR"), 3_600 * S);
        assert_eq!(
            first,
            Seen {
                in_window: 0,
                amount_vs_mean: 0.0,
                log_seconds_since_previous: GAP_CAP_S.ln_1p(),
                since_previous_us: None,
                new_country: false,
                unusual_country: false,
                mean_amount: None,
                usual_country: None,
            }
        );
        let second = h.observe("a", 160 * S, Some(32.0), Some("DE"), 3_600 * S);
        assert_eq!(second.in_window, 1);
        assert!((second.amount_vs_mean - (33.0f64 / 11.0).ln()).abs() < 1e-12);
        assert!((second.log_seconds_since_previous - 60f64.ln_1p()).abs() < 1e-12);
        assert_eq!(second.since_previous_us, Some(60 * S));
        assert!(second.new_country && second.unusual_country);
        assert_eq!(second.mean_amount, Some(10.0));
        assert_eq!(second.usual_country.and_then(|n| h.country_name(n)), Some("FR"));
        // Another account knows nothing of the first.
        assert_eq!(h.observe("b", 170 * S, Some(1.0), Some("DE"), 3_600 * S).in_window, 0);
        // Two hours later the window is empty again; DE is not new any more.
        let later = h.observe("a", 7_400 * S, None, Some("DE"), 3_600 * S);
        assert_eq!((later.in_window, later.new_country), (0, false));
        // FR and DE once each: FR, seen first, is the usual one, so DE is still unusual.
        assert!(later.unusual_country);
        // Now DE twice: FR becomes the unusual one.
        assert!(h.observe("a", 7_500 * S, None, Some("FR"), 3_600 * S).unusual_country);
        // FR twice, DE twice: a tie, FR seen first is usual; then DE three times is.
        assert!(h.observe("a", 7_600 * S, None, Some("DE"), 3_600 * S).unusual_country);
        assert!(!h.observe("a", 7_700 * S, None, Some("DE"), 3_600 * S).unusual_country);
        assert!((later.amount_vs_mean).abs() < 1e-12, "no amount: 0");
        assert_eq!(h.len(), 2);
    }
}
