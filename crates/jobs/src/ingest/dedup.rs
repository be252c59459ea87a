//! The transaction ids of one buffer, to write each id once per commit.
//!
//! In: the id column of each clean batch. Out: per row, whether its id is new to the buffer.
//! The set refers to the id columns themselves (kept alive, not copied): one small entry per
//! row, no allocation per id.

use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;
use hashbrown::hash_table::{Entry, HashTable};
use txpipe_connectors::delta::arrow::array::{Array, StringArray};

/// Ids seen in one buffer.
#[derive(Default)]
pub(super) struct IdSet {
    /// (hash of the id, column, row).
    entries: HashTable<(u64, u32, u32)>,
    columns: Vec<StringArray>,
    hasher: DefaultHashBuilder,
}

impl IdSet {
    /// Per row of `ids`: true when the id is not in the set yet (it is added), false for a
    /// repeat. Null ids are always kept.
    pub fn insert_column(&mut self, ids: &StringArray) -> Vec<bool> {
        let IdSet { entries, columns, hasher } = self;
        let column = columns.len() as u32;
        columns.push(ids.clone());
        entries.reserve(ids.len(), |e| e.0);
        (0..ids.len())
            .map(|row| {
                if ids.is_null(row) {
                    return true;
                }
                let id = ids.value(row);
                let hash = hasher.hash_one(id);
                let same =
                    |&(h, c, r): &(u64, u32, u32)| h == hash && columns[c as usize].value(r as usize) == id;
                match entries.entry(hash, same, |e| e.0) {
                    Entry::Occupied(_) => false,
                    Entry::Vacant(v) => {
                        v.insert((hash, column, row as u32));
                        true
                    }
                }
            })
            .collect()
    }

    /// Forgets all ids, keeping the allocated room.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.columns.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_and_across_columns_are_marked() {
        let mut set = IdSet::default();
        let a = StringArray::from(vec![Some("a"), Some("b"), Some("a"), None, None]);
        assert_eq!(set.insert_column(&a), vec![true, true, false, true, true]);
        let b = StringArray::from(vec![Some("c"), Some("b"), Some("c"), Some("d")]);
        assert_eq!(set.insert_column(&b), vec![true, false, false, true]);
        set.clear();
        assert_eq!(set.insert_column(&b), vec![true, true, false, true]);
    }

    #[test]
    fn many_distinct_ids_are_all_new() {
        let mut set = IdSet::default();
        let ids: Vec<String> = (0..100_000).map(|i| format!("tx-{i:08}")).collect();
        let column = StringArray::from(ids.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(set.insert_column(&column).iter().all(|k| *k));
        assert!(set.insert_column(&column).iter().all(|k| !*k));
    }
}
