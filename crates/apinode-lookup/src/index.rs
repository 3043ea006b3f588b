//! The hash index: one `u32` slot per distinct key (the first row holding it), plus, only
//! when the table has duplicate keys, a `next` chain through the rows sharing a key.
//! Keys are never copied and hashes are not stored: equality is checked against the Arrow
//! arrays, and hashbrown's control bytes (7 bits of the hash) make a wasted comparison rare.
//! About 5-6 bytes per distinct key, plus 4 bytes per row with duplicates.

use crate::key::{KeyValue, TypedColumn, hash_value};
use foldhash::fast::FixedState;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hasher};

const NONE: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct KeyIndex {
    keys: Vec<TypedColumn>,
    /// First row (in table order) of each distinct key.
    heads: HashTable<u32>,
    /// `next[row]`: the next row with the same key as `row`; empty when keys are unique.
    next: Vec<u32>,
    state: FixedState,
}

fn hash_row(keys: &[TypedColumn], state: &FixedState, row: usize) -> u64 {
    let mut hasher = state.build_hasher();
    for key in keys {
        key.hash_row(row, &mut hasher);
    }
    hasher.finish()
}

impl KeyIndex {
    pub(crate) fn build(keys: Vec<TypedColumn>, rows: usize) -> KeyIndex {
        let state = FixedState::with_seed(0x9e37_79b9_7f4a_7c15);
        let mut heads: HashTable<u32> = HashTable::with_capacity(rows);
        let mut next: Vec<u32> = Vec::new();
        // Backwards, so that prepending to a key's chain leaves it in table order.
        for row in (0..rows).rev() {
            if !keys.iter().all(|k| k.is_indexable(row)) {
                continue;
            }
            let hash = hash_row(&keys, &state, row);
            let entry = heads.entry(
                hash,
                |&head| keys.iter().all(|k| k.rows_equal(head as usize, row)),
                |&head| hash_row(&keys, &state, head as usize),
            );
            match entry {
                hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                    if next.is_empty() {
                        next = vec![NONE; rows];
                    }
                    next[row] = *occupied.get();
                    *occupied.get_mut() = row as u32;
                }
                hashbrown::hash_table::Entry::Vacant(vacant) => {
                    vacant.insert(row as u32);
                }
            }
        }
        heads.shrink_to_fit(|&head| hash_row(&keys, &state, head as usize));
        KeyIndex {
            keys,
            heads,
            next,
            state,
        }
    }

    /// The hash of a key given as values (one per key column).
    #[inline]
    pub(crate) fn hash_values(&self, values: &[KeyValue<'_>]) -> u64 {
        let mut hasher = self.state.build_hasher();
        for value in values {
            hash_value(value, &mut hasher);
        }
        hasher.finish()
    }

    /// The rows whose key equals `values` (one value per key column), in table order.
    #[inline]
    pub(crate) fn probe(&self, values: &[KeyValue<'_>]) -> Matches<'_> {
        self.probe_hashed(self.hash_values(values), values)
    }

    /// [`Self::probe`] with the hash already computed.
    #[inline]
    pub(crate) fn probe_hashed(&self, hash: u64, values: &[KeyValue<'_>]) -> Matches<'_> {
        let head = self
            .heads
            .find(hash, |&head| {
                self.keys
                    .iter()
                    .zip(values)
                    .all(|(k, v)| k.equals(head as usize, v))
            })
            .copied()
            .unwrap_or(NONE);
        Matches {
            next: &self.next,
            current: head,
        }
    }

    /// Number of distinct keys.
    pub(crate) fn distinct_keys(&self) -> usize {
        self.heads.len()
    }

    /// Heap bytes held by the index (not counting the table it refers to).
    pub(crate) fn memory_bytes(&self) -> usize {
        // hashbrown: a power-of-two number of buckets at most 7/8 full, one slot and one
        // control byte each (plus a group of trailing control bytes, ignored here).
        let buckets = if self.heads.capacity() == 0 {
            0
        } else {
            (self.heads.capacity() * 8 / 7).next_power_of_two()
        };
        buckets * (std::mem::size_of::<u32>() + 1) + self.next.capacity() * 4
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

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.current == NONE {
            return None;
        }
        let row = self.current as usize;
        self.current = self.next.get(row).copied().unwrap_or(NONE);
        Some(row)
    }
}
