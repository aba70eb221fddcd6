//! A Bloom filter over event id hashes: answers "certainly never held" or
//! "maybe", so that looking up a new event (nearly every event is new) need
//! not search `event_index` (`event_index.rs`).
//!
//! It never forgets a key and never says "no" for a key it was given; it
//! says "maybe" for about 1% of the others. It grows by stages (a scalable
//! Bloom filter): when a stage has taken as many keys as it was sized for,
//! the next, twice as large, takes the new ones, and a lookup asks each.
//!
//! Written here rather than taken from a crate: the keys are already 64-bit
//! hashes (FNV-1a of the id, `codec.rs`), which a crate would hash again,
//! and what is needed (set a few bits, test them, add a stage) is a few
//! lines.

/// Bits per key a stage is sized for: with [`PROBES`] bits per key, about
/// 1% of absent keys are answered "maybe".
const BITS_PER_KEY: usize = 10;

/// Bits set (and tested) per key.
const PROBES: u64 = 7;

/// Keys of the first stage (at 10 bits each, 128 KiB), unless more are
/// known at the start.
const FIRST_CAPACITY: usize = 1 << 16;

/// The filter: every key [`KeyFilter::insert`]ed answers "maybe" forever.
pub(crate) struct KeyFilter {
    stages: Vec<Stage>,
}

/// A plain Bloom filter of a power-of-two number of bits.
struct Stage {
    words: Box<[u64]>,
    /// The number of bits, less one (a mask).
    mask: u64,
    capacity: usize,
    count: usize,
}

impl KeyFilter {
    /// An empty filter sized for `keys` keys before it adds a stage.
    pub fn with_capacity(keys: usize) -> KeyFilter {
        KeyFilter {
            stages: vec![Stage::new(keys.max(FIRST_CAPACITY))],
        }
    }

    /// Remembers `key`, in a new stage twice the size of the last once
    /// that one has taken as many keys as it was sized for.
    pub fn insert(&mut self, key: i64) {
        let grown = self
            .stages
            .last()
            .filter(|last| last.count >= last.capacity)
            .map(|last| Stage::new(last.capacity * 2));
        self.stages.extend(grown);
        if let Some(stage) = self.stages.last_mut() {
            stage.insert(key);
        }
    }

    /// False only for a key never inserted.
    pub fn may_contain(&self, key: i64) -> bool {
        self.stages.iter().any(|stage| stage.may_contain(key))
    }
}

impl Stage {
    fn new(capacity: usize) -> Stage {
        let bits = (capacity * BITS_PER_KEY).next_power_of_two().max(64);
        Stage {
            words: vec![0u64; bits / 64].into_boxed_slice(),
            mask: bits as u64 - 1,
            capacity,
            count: 0,
        }
    }

    fn insert(&mut self, key: i64) {
        for bit in probes(key, self.mask) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.count += 1;
    }

    fn may_contain(&self, key: i64) -> bool {
        probes(key, self.mask).all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

/// The bits of `key` (double hashing of a remixed key: FNV's low bits vary
/// little between similar ids).
fn probes(key: i64, mask: u64) -> impl Iterator<Item = u64> {
    let hash = mix(key as u64);
    let step = hash.rotate_left(32) | 1;
    (0..PROBES).map(move |i| hash.wrapping_add(i.wrapping_mul(step)) & mask)
}

/// MurmurHash3's 64-bit finalizer: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::codec::event_id_hash;

    #[test]
    fn every_inserted_key_is_kept_across_stages() {
        let mut filter = KeyFilter::with_capacity(0);
        let keys: Vec<i64> = (0..FIRST_CAPACITY * 3 + 17)
            .map(|n| event_id_hash(&format!("evt-{n}")))
            .collect();
        for &key in &keys {
            filter.insert(key);
        }
        assert!(filter.stages.len() >= 2, "it grew past its first stage");
        assert!(keys.iter().all(|&key| filter.may_contain(key)));
    }

    #[test]
    fn few_absent_keys_are_maybe() {
        let mut filter = KeyFilter::with_capacity(0);
        for n in 0..FIRST_CAPACITY {
            filter.insert(event_id_hash(&format!("evt-{n}")));
        }
        let absent = 100_000;
        let maybe = (0..absent)
            .filter(|n| filter.may_contain(event_id_hash(&format!("other-{n}"))))
            .count();
        // About 1% when full; allow for the keys' own spread.
        assert!(
            maybe < absent / 50,
            "{maybe} of {absent} absent keys said maybe"
        );
    }

    #[test]
    fn an_empty_filter_holds_nothing() {
        let filter = KeyFilter::with_capacity(10);
        assert!(!filter.may_contain(event_id_hash("e1")));
        assert!(!filter.may_contain(0));
    }
}
