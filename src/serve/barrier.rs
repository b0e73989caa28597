//! The read barrier of one input partition of the key-value service: which acknowledged
//! writes a read must wait for its task to apply (pure bookkeeping; [`super::Serving`] keeps
//! one per partition under a lock).
//!
//! A write is acknowledged once durable in the input, before its task applies it; a read
//! must then see it. A read of one key only needs the writes *to that key* applied: it waits
//! until the task has processed the end of the last acknowledged group that wrote the key, if
//! that group is not applied yet, and not for the writes to other keys acknowledged
//! meanwhile (with many writers the task is nearly always a group or two behind, and every
//! read of the partition used to wait for it). Keys are tracked by a 64-bit hash: two keys
//! with one hash only make a read wait longer than it needs to. A read of a range waits for
//! every acknowledged write ([`Acknowledged::end`]).
//!
//! At most [`MAX_TRACKED`] unapplied writes are tracked (a task that does not keep up must
//! not make this grow without bound): past that the tracked keys are forgotten and, until the
//! task has processed up to where they were, every read waits for the whole partition.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Most unapplied writes tracked by key per partition.
pub const MAX_TRACKED: usize = 1 << 16;

/// The hash a key is tracked by (the same in every thread of the process): foldhash's
/// quality hasher with a fixed seed. Not keyed per process: a client able to choose
/// colliding keys can only make reads of those keys wait for the task to apply writes they
/// did not need, as any range read does anyway. SipHash (the std default), with the table
/// hashing the hash again, cost ~1,200 instructions of every PUT and GET; this ~600.
pub fn key_hash(key: &[u8]) -> u64 {
    foldhash::quality::FixedState::with_seed(0x9e37_79b9_7f4a_7c15).hash_one(key)
}

/// Hashes a [`key_hash`] for the table by itself: it is mixed already.
#[derive(Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here; anything else still gets a usable hash.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, h: u64) {
        self.0 = h;
    }
}

/// The acknowledged writes of one input partition (see the module doc).
#[derive(Debug, Default)]
pub struct Acknowledged {
    /// The end offset of every write acknowledged so far.
    end: u64,
    /// Key hash -> the end offset of the last acknowledged group that wrote it, for groups
    /// the task may not have applied.
    pending: HashMap<u64, u64, BuildHasherDefault<KeyHashHasher>>,
    /// `(group end, key hash)` in acknowledgement order, dropped from the front as the task
    /// applies them.
    order: VecDeque<(u64, u64)>,
    /// The keys of writes below this end offset are not tracked (more than [`MAX_TRACKED`]
    /// were unapplied): until the task has processed up to it, every read waits for it.
    untracked_until: u64,
}

impl Acknowledged {
    /// Records a group made durable up to `end` (exclusive) with writes to the keys hashed
    /// as `keys`, before it is acknowledged.
    pub fn acknowledge(&mut self, end: u64, keys: impl IntoIterator<Item = u64>) {
        self.end = self.end.max(end);
        for h in keys {
            self.pending.insert(h, end);
            self.order.push_back((end, h));
        }
        if self.order.len() > MAX_TRACKED {
            self.pending.clear();
            self.order.clear();
            self.untracked_until = self.end;
        }
    }

    /// The task has processed (and readers see) every record below `next`: its writes
    /// need no waiting any more.
    pub fn applied(&mut self, next: u64) {
        while let Some(&(end, h)) = self.order.front() {
            if end > next {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&h) == Some(&end) {
                self.pending.remove(&h);
            }
        }
    }

    /// The end of every write acknowledged so far: what a read of a range waits for the
    /// task to process.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// What a read of the key hashed as `key` waits for the task to process: the end of the
    /// last acknowledged group that wrote it, if not known applied, or of the untracked
    /// writes (0: nothing to wait for).
    pub fn barrier_for(&self, key: u64) -> u64 {
        self.pending
            .get(&key)
            .copied()
            .unwrap_or(0)
            .max(self.untracked_until)
    }

    /// Writes tracked by key and not known applied.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Distinct keys get distinct hashes: keys like the bench's, every short key (a key and
    /// the same key with zero bytes appended, too), keys differing in one bit anywhere; and
    /// every output bit is used (the table hashes by the hash itself).
    #[test]
    fn key_hashes_do_not_collide_on_usual_or_near_identical_keys() {
        let mut keys: Vec<Vec<u8>> = (0..100_000)
            .map(|i| format!("key-{i:06}").into_bytes())
            .collect();
        keys.push(Vec::new());
        for a in 0..=255u8 {
            keys.push(vec![a]);
            keys.push(vec![a, 0]);
            keys.push(vec![0, a]);
            keys.push(vec![a, 0, 0, 0, 0, 0, 0, 0]);
            keys.push(vec![a, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        let base = b"user-42/session/0123456789abcdef".to_vec();
        for bit in 0..base.len() * 8 {
            let mut k = base.clone();
            k[bit / 8] ^= 1 << (bit % 8);
            keys.push(k);
        }
        keys.push(base);
        keys.sort();
        keys.dedup();
        let mut hashes: Vec<u64> = keys.iter().map(|k| key_hash(k)).collect();
        let (mut ones, mut zeros) = (0u64, 0u64);
        for &h in &hashes {
            ones |= h;
            zeros |= !h;
        }
        assert_eq!(
            (ones, zeros),
            (u64::MAX, u64::MAX),
            "an output bit never changes"
        );
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), keys.len(), "two distinct keys got one hash");
    }

    /// Against a model that remembers every acknowledged write: whenever a write to a key
    /// was acknowledged and the task has not processed its end, a read of the key waits at
    /// least that far; a key with no such write waits for nothing (unless writes went
    /// untracked); a range waits for everything; tracking stays bounded.
    #[test]
    fn a_read_waits_for_every_unapplied_write_to_its_key_and_for_nothing_else() {
        for seed in 0..300u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let keys = rng.gen_range(1..40u64);
            let mut ack = Acknowledged::default();
            // (end, key) of every acknowledged write.
            let mut written: Vec<(u64, u64)> = Vec::new();
            let mut end = 0u64;
            let mut processed = 0u64;
            for _ in 0..rng.gen_range(1..200) {
                if rng.gen_bool(0.5) {
                    let group: Vec<u64> = (0..rng.gen_range(1..6))
                        .map(|_| rng.gen_range(0..keys))
                        .collect();
                    end += group.len() as u64;
                    written.extend(group.iter().map(|&k| (end, k)));
                    ack.acknowledge(end, group.iter().map(|k| key_hash(&k.to_be_bytes())));
                } else {
                    processed = rng.gen_range(processed..=end);
                    ack.applied(processed);
                }
                assert_eq!(ack.end(), end);
                for k in 0..keys {
                    let need = written
                        .iter()
                        .filter(|&&(e, key)| key == k && e > processed)
                        .map(|&(e, _)| e)
                        .max()
                        .unwrap_or(0);
                    let got = ack.barrier_for(key_hash(&k.to_be_bytes()));
                    assert!(
                        got >= need,
                        "seed {seed}: key {k} waits for {got}, needs {need}"
                    );
                    assert!(got <= end, "seed {seed}: key {k} waits past every write");
                    if need == 0 {
                        assert!(
                            got <= processed,
                            "seed {seed}: key {k} has nothing unapplied but waits for {got} \
                             (processed {processed})"
                        );
                    }
                }
                assert!(ack.tracked() <= written.iter().filter(|w| w.0 > processed).count());
            }
        }
    }

    #[test]
    fn past_the_bound_every_read_waits_for_the_untracked_writes_until_they_are_applied() {
        let mut ack = Acknowledged::default();
        let hashes: Vec<u64> = (0..=MAX_TRACKED as u64).collect();
        ack.acknowledge(10, hashes);
        assert_eq!(ack.tracked(), 0, "forgotten past the bound");
        assert_eq!(ack.barrier_for(key_hash(b"never written")), 10);
        ack.acknowledge(12, [key_hash(b"a")]);
        assert_eq!(ack.barrier_for(key_hash(b"a")), 12);
        assert_eq!(ack.barrier_for(key_hash(b"b")), 10);
        ack.applied(10);
        assert_eq!(
            ack.barrier_for(key_hash(b"b")),
            10,
            "processed 10: nothing to wait for"
        );
        assert_eq!(ack.barrier_for(key_hash(b"a")), 12);
        ack.applied(12);
        assert_eq!(ack.barrier_for(key_hash(b"a")), 10);
        assert_eq!(ack.tracked(), 0);
    }
}
