//! The hash index: an open-addressing table of 16-byte slots, each holding the first row (in
//! table order) of one distinct key, 32 bits of the key's hash, and where the key is (its
//! value for a single fixed-width key, its byte range in the Arrow string buffer for a single
//! string key), plus, only when the table has duplicate keys, a `next` chain through the rows
//! sharing a key.
//!
//! Why not hashbrown: a probe there reads a control group, then the slot it points to, two
//! dependent cache misses before the key can even be compared. Here the slot carries the hash
//! tag, so a probe of a table larger than the cache costs one miss to reach the row id; and it
//! carries the key's location, so confirming a string key costs one more miss (the key's
//! bytes) instead of two (the Arrow offsets, then the bytes), and a fixed-width key none
//! (measured in docs/benchmarks.md). Keys are never copied: strings are compared against the
//! Arrow buffer, and the tag makes a wasted comparison about one in four billion.
//! 16 bytes per slot at a load factor between 0.35 and 0.7 (23 to 46 bytes per distinct key),
//! plus 4 bytes per row when there are duplicates.

use crate::key::{KeyValue, TypedColumn, hash_value};
use foldhash::fast::FixedState;
use std::hash::{BuildHasher, Hasher};

const NONE: u32 = u32::MAX;
const EMPTY: u64 = u64::MAX;

/// `[tag << 32 | row, locator]` for the first row of each distinct key; `[EMPTY, _]` where
/// none. The locator is [`KeyIndex::locator`] of the row.
type Slot = [u64; 2];

#[derive(Debug)]
pub(crate) struct KeyIndex {
    keys: Vec<TypedColumn>,
    slots: Vec<Slot>,
    /// `slots.len() - 1` (the length is a power of two).
    mask: usize,
    distinct: usize,
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

#[inline]
fn tag(hash: u64) -> u64 {
    hash >> 32
}

/// The first slot to look at: the hash's low bits (the tag is its high bits).
#[inline]
fn home(hash: u64, mask: usize) -> usize {
    hash as usize & mask
}

/// Slots for `keys` distinct keys: a power of two, at most 70% full.
fn slot_count(keys: usize) -> usize {
    (keys.max(1) * 10 / 7 + 1).next_power_of_two()
}

impl KeyIndex {
    pub(crate) fn build(keys: Vec<TypedColumn>, rows: usize) -> KeyIndex {
        let state = FixedState::with_seed(0x9e37_79b9_7f4a_7c15);
        let locator = |row: usize| match keys.as_slice() {
            [single] => single.locator(row),
            _ => 0,
        };
        let mut slots = vec![[EMPTY, 0]; slot_count(rows)];
        let mut mask = slots.len() - 1;
        let mut next: Vec<u32> = Vec::new();
        let mut distinct = 0;
        // Backwards, so that prepending to a key's chain leaves it in table order.
        for row in (0..rows).rev() {
            if !keys.iter().all(|k| k.is_indexable(row)) {
                continue;
            }
            let hash = hash_row(&keys, &state, row);
            let mut at = home(hash, mask);
            loop {
                let [word, _] = slots[at];
                if word == EMPTY {
                    slots[at] = [tag(hash) << 32 | row as u64, locator(row)];
                    distinct += 1;
                    break;
                }
                let head = (word & 0xffff_ffff) as usize;
                if word >> 32 == tag(hash) && keys.iter().all(|k| k.rows_equal(head, row)) {
                    if next.is_empty() {
                        next = vec![NONE; rows];
                    }
                    next[row] = head as u32;
                    slots[at] = [tag(hash) << 32 | row as u64, locator(row)];
                    break;
                }
                at = (at + 1) & mask;
            }
        }
        // Many duplicates leave the table mostly empty: rebuild it at the size it needs.
        if slot_count(distinct) < slots.len() {
            let mut fitted = vec![[EMPTY, 0]; slot_count(distinct)];
            mask = fitted.len() - 1;
            for &slot in slots.iter().filter(|s| s[0] != EMPTY) {
                let head = (slot[0] & 0xffff_ffff) as usize;
                let mut at = home(hash_row(&keys, &state, head), mask);
                while fitted[at][0] != EMPTY {
                    at = (at + 1) & mask;
                }
                fitted[at] = slot;
            }
            slots = fitted;
        }
        KeyIndex {
            keys,
            slots,
            mask,
            distinct,
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
        let mut at = home(hash, self.mask);
        let head = loop {
            let [word, locator] = self.slots[at];
            if word == EMPTY {
                break NONE;
            }
            let head = (word & 0xffff_ffff) as usize;
            if word >> 32 == tag(hash) && self.confirm(head, locator, values) {
                break head as u32;
            }
            at = (at + 1) & self.mask;
        };
        Matches {
            next: &self.next,
            current: head,
        }
    }

    /// Whether the key of `row` (whose slot holds `locator`) equals `values`: from the locator
    /// alone for a single key, against the Arrow arrays for a composite one.
    #[inline]
    fn confirm(&self, row: usize, locator: u64, values: &[KeyValue<'_>]) -> bool {
        match (self.keys.as_slice(), values) {
            ([single], [value]) => single.matches_locator(locator, value),
            _ => self.keys.iter().zip(values).all(|(k, v)| k.equals(row, v)),
        }
    }

    /// Number of distinct keys.
    pub(crate) fn distinct_keys(&self) -> usize {
        self.distinct
    }

    /// Heap bytes held by the index (not counting the table it refers to).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.next.capacity() * std::mem::size_of::<u32>()
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array};
    use std::sync::Arc;

    fn index_of(values: Vec<Option<i64>>) -> KeyIndex {
        let rows = values.len();
        let array: ArrayRef = Arc::new(Int64Array::from(values));
        KeyIndex::build(vec![TypedColumn::new(&array).unwrap()], rows)
    }

    fn rows_of(index: &KeyIndex, key: i64) -> Vec<usize> {
        index.probe(&[KeyValue::Int(key)]).collect()
    }

    #[test]
    fn duplicates_chain_in_table_order_and_shrink_the_table() {
        // 3,000 rows, 3 distinct keys and a NULL every 7th row.
        let index = index_of((0..3000).map(|i| (i % 7 != 0).then_some(i % 3)).collect());
        assert_eq!(index.distinct_keys(), 3);
        assert_eq!(index.slots.len(), slot_count(3));
        let ones = rows_of(&index, 1);
        assert_eq!(
            ones.len(),
            (0..3000).filter(|i| i % 7 != 0 && i % 3 == 1).count()
        );
        assert!(ones.windows(2).all(|w| w[0] < w[1]), "table order");
        assert!(rows_of(&index, 3).is_empty());
        assert!(index.memory_bytes() >= 3000 * 4, "the chain is counted");
    }

    #[test]
    fn unique_keys_fill_at_most_70_percent_and_all_are_found() {
        let index = index_of((0..10_000).map(|i| Some(i * 7919)).collect());
        assert_eq!(index.distinct_keys(), 10_000);
        assert!(index.slots.len() * 7 >= 10_000 * 10);
        assert!(index.next.is_empty());
        for i in 0..10_000 {
            assert_eq!(rows_of(&index, i * 7919), vec![i as usize]);
        }
        assert!(rows_of(&index, 1).is_empty());
    }
}
