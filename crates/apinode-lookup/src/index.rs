//! The hash index: key hash → first row, with a chain through the rows sharing a key.
//! Keys are never copied: equality is checked against the Arrow arrays.

use crate::key::{KeyArray, KeyValue, hash_value};
use foldhash::fast::FixedState;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hasher};

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    hash: u64,
    head: u32,
    tail: u32,
}

#[derive(Debug)]
pub(crate) struct KeyIndex {
    keys: Vec<KeyArray>,
    entries: HashTable<Entry>,
    /// `next[row]`: the next row (in table order) with the same key as `row`.
    next: Vec<u32>,
    state: FixedState,
}

impl KeyIndex {
    pub(crate) fn build(keys: Vec<KeyArray>, rows: usize) -> KeyIndex {
        let mut index = KeyIndex {
            keys,
            entries: HashTable::with_capacity(rows),
            next: vec![NONE; rows],
            state: FixedState::with_seed(0x9e37_79b9_7f4a_7c15),
        };
        for row in 0..rows {
            if !index.keys.iter().all(|k| k.is_indexable(row)) {
                continue;
            }
            let hash = index.hash_row(row);
            let keys = &index.keys;
            let entry = index.entries.entry(
                hash,
                |e| e.hash == hash && keys.iter().all(|k| k.rows_equal(e.head as usize, row)),
                |e| e.hash,
            );
            match entry {
                hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                    let e = occupied.get_mut();
                    index.next[e.tail as usize] = row as u32;
                    e.tail = row as u32;
                }
                hashbrown::hash_table::Entry::Vacant(vacant) => {
                    vacant.insert(Entry {
                        hash,
                        head: row as u32,
                        tail: row as u32,
                    });
                }
            }
        }
        index.entries.shrink_to_fit(|e| e.hash);
        index
    }

    fn hash_row(&self, row: usize) -> u64 {
        let mut hasher = self.state.build_hasher();
        for key in &self.keys {
            key.hash_row(row, &mut hasher);
        }
        hasher.finish()
    }

    /// The rows whose key equals `values` (one value per key column), in table order.
    pub(crate) fn probe(&self, values: &[KeyValue<'_>]) -> Matches<'_> {
        let mut hasher = self.state.build_hasher();
        for value in values {
            hash_value(value, &mut hasher);
        }
        let hash = hasher.finish();
        let head = self
            .entries
            .find(hash, |e| {
                e.hash == hash
                    && self
                        .keys
                        .iter()
                        .zip(values)
                        .all(|(k, v)| k.equals(e.head as usize, v))
            })
            .map_or(NONE, |e| e.head);
        Matches {
            next: &self.next,
            current: head,
        }
    }

    /// Number of distinct keys.
    pub(crate) fn distinct_keys(&self) -> usize {
        self.entries.len()
    }

    /// Heap bytes held by the index (not counting the table it refers to).
    pub(crate) fn memory_bytes(&self) -> usize {
        // hashbrown: one slot plus one control byte per bucket.
        let buckets = self.entries.capacity().next_power_of_two().max(1);
        buckets * (std::mem::size_of::<Entry>() + 1) + self.next.capacity() * 4
    }
}

/// Iterator over the rows of one key.
#[derive(Debug)]
pub(crate) struct Matches<'a> {
    next: &'a [u32],
    current: u32,
}

impl Iterator for Matches<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.current == NONE {
            return None;
        }
        let row = self.current as usize;
        self.current = self.next[row];
        Some(row)
    }
}
