//! Repeated transaction ids in the stream: the last [`RECENT_IDS`] ids seen, as 64-bit hashes
//! (about 24 MB), a repeat among them dropped. `train` drops every repeat (the first copy in
//! table order wins); a repeat further apart than this is scored again, and its row replaces
//! the first in ClickHouse (ReplacingMergeTree keyed by id).

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;

/// Transaction ids remembered for dropping repeats.
pub const RECENT_IDS: usize = 1 << 20;

/// The last [`RECENT_IDS`] transaction ids seen, as 64-bit hashes with a seed of their own
/// (kept in score's state file with them).
pub(crate) struct RecentIds {
    order: VecDeque<u64>,
    set: HashSet<u64, foldhash::fast::RandomState>,
    seed: u64,
    hasher: foldhash::quality::FixedState,
}

impl RecentIds {
    pub(crate) fn new() -> RecentIds {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u64);
        RecentIds::with_seed(seed)
    }

    pub(crate) fn with_seed(seed: u64) -> RecentIds {
        // Sized for the whole window at once: growing, the set rehashed every id seen so far
        // each time it doubled. Pages are touched only as ids come, except the set's control
        // bytes (2 MB).
        RecentIds {
            order: VecDeque::with_capacity(RECENT_IDS + 1),
            set: HashSet::with_capacity_and_hasher(RECENT_IDS + 1, Default::default()),
            seed,
            hasher: foldhash::quality::FixedState::with_seed(seed),
        }
    }

    /// Whether `id` is new (then it is remembered).
    pub(crate) fn first(&mut self, id: &str) -> bool {
        let h = self.hasher.hash_one(id.as_bytes());
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// The seed and the hashes, oldest first.
    pub(crate) fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        w.write_all(&self.seed.to_le_bytes())?;
        w.write_all(&(self.order.len() as u64).to_le_bytes())?;
        for h in &self.order {
            w.write_all(&h.to_le_bytes())?;
        }
        Ok(())
    }

    pub(crate) fn read_from(r: &mut impl std::io::Read) -> std::io::Result<RecentIds> {
        let mut b = [0; 8];
        r.read_exact(&mut b)?;
        let mut recent = RecentIds::with_seed(u64::from_le_bytes(b));
        r.read_exact(&mut b)?;
        let n = u64::from_le_bytes(b);
        if n > RECENT_IDS as u64 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{n} recent ids")));
        }
        for _ in 0..n {
            r.read_exact(&mut b)?;
            let h = u64::from_le_bytes(b);
            if recent.set.insert(h) {
                recent.order.push_back(h);
            }
        }
        Ok(recent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_dropped_until_it_falls_out_of_the_window() {
        let mut recent = RecentIds::with_seed(7);
        assert!(recent.first("a") && recent.first("b"));
        assert!(!recent.first("a"), "a repeat");
        for i in 0..RECENT_IDS - 1 {
            recent.first(&i.to_string());
        }
        // "a" was the oldest and is forgotten; "b" is the oldest now, then forgotten by "a".
        assert!(recent.first("a"));
        assert!(recent.first("b"));
    }

    #[test]
    fn written_and_read_back_it_remembers_the_same_ids() {
        let mut recent = RecentIds::with_seed(11);
        for id in ["x", "y", "z"] {
            recent.first(id);
        }
        let mut bytes = Vec::new();
        recent.write_to(&mut bytes).unwrap();
        let mut back = RecentIds::read_from(&mut bytes.as_slice()).unwrap();
        assert!(!back.first("y") && back.first("w"));
        assert!(RecentIds::read_from(&mut &bytes[..bytes.len() - 1]).is_err(), "cut short");
    }
}
