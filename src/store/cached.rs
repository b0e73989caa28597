//! The write-back cache layer: recently used entries bounded in bytes, whose dirty
//! entries are deduplicated until the task commits (after Kafka Streams' record cache and
//! Samza's `CachedStore`).
//!
//! - Writes go into the cache; a key joins the dirty list once, however often it is
//!   rewritten before the next flush, so a commit sends one changelog record and one engine
//!   write per key changed, not per write.
//! - Dirty entries are written below as one batch, in key order, at
//!   [`flush`](KeyValueStore::flush) (the task's commit), and earlier only when a bound forces
//!   it: the dirty entries' bytes pass
//!   half of the cache's byte limit, the dirty list reaches `write.batch.size` (when set), or
//!   a dirty entry is about to be evicted. An early flush is an ordinary `write_batch` below
//!   (changelog records sent, then one engine batch carrying the changelog end they reach), so
//!   the logged layer's ordering holds whatever triggers it.
//! - Reads hit the cache first; misses (including "no such key") are cached clean. A miss
//!   costs one hash computation and one table probe before the read below, and one copy of
//!   the key for the entry it caches; an entry is one cache line holding keys and values of
//!   up to 22 bytes inline (longer ones on the heap, the value read below kept as it is), and
//!   readers get the value borrowed through [`get_with`](KeyValueStore::get_with) or one copy
//!   through `get`.
//! - Ranges, `all` and snapshots flush the dirty list first, so they always see the newest
//!   writes, deletes included.
//!
//! **Memory.** Each entry counts its key and value bytes plus [`ENTRY_OVERHEAD`] bytes of
//! bookkeeping. A cache's limit is the smaller of its own `stores.<name>.cache.max.bytes` and
//! an even share of the process's [`CacheBudget`] (`job.cache.max.bytes` divided by the number
//! of caches open in the process, recomputed as stores open and close); on top of that the
//! budget's total is never exceeded by more than the entry being inserted: a cache that would
//! pass it evicts its own entries first. Eviction follows CLOCK (second chance), an
//! approximation of least-recently-used: a read or write marks its entry, the hand evicts the
//! first unmarked entry it reaches and unmarks the ones it passes. Samza's `object.cache.size`
//! (entries), when set, bounds the entry count as well.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{KeyValueStore, KvIter, KvSnapshot, Limits, Mutation, MutationRef, Result};
use crate::telemetry::StoreLabels;

/// Default `stores.<name>.cache.max.bytes`: 32 MiB per store.
pub const DEFAULT_CACHE_MAX_BYTES: usize = 32 << 20;
/// Default `job.cache.max.bytes`: 256 MiB for all the caches of a process together.
pub const DEFAULT_PROCESS_CACHE_MAX_BYTES: usize = 256 << 20;
/// Bytes counted per cache entry besides keys and values longer than 22 bytes (shorter ones
/// are stored inside the entry): the entry itself (64), its hash table slot (5) and room for
/// the allocator's headers of heap keys and values (32).
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<Node>() + std::mem::size_of::<u32>() + 1 + 32;

const NIL: u32 = u32::MAX;
/// The most entries a cache reserves room for when it opens (its table then takes ~1.3 MiB;
/// the entries themselves are only reserved address space until used).
const MAX_RESERVED_ENTRIES: usize = 1 << 17;

/// The memory shared by every cache of a process (`job.cache.max.bytes`): each cache gets
/// an even share as its limit (capped by its own `cache.max.bytes`), and the bytes all of
/// them hold together never pass the total by more than one entry.
#[derive(Debug)]
pub struct CacheBudget {
    total: AtomicUsize,
    used: AtomicUsize,
    peak: AtomicUsize,
    caches: AtomicUsize,
}

impl CacheBudget {
    /// A budget of `total` bytes of its own (tests, tools).
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(CacheBudget {
            total: AtomicUsize::new(total),
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            caches: AtomicUsize::new(0),
        })
    }

    /// The process's budget, set to `total` bytes (the job's `job.cache.max.bytes`; a
    /// process runs one job, and the last setting opened wins).
    pub fn process(total: usize) -> Arc<Self> {
        static PROCESS: OnceLock<Arc<CacheBudget>> = OnceLock::new();
        let b = PROCESS.get_or_init(|| CacheBudget::new(total));
        b.total.store(total, Ordering::Relaxed);
        Arc::clone(b)
    }

    /// The total in bytes.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes held by all the caches of this budget now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes all the caches of this budget held at once since the last
    /// [`reset_peak`](Self::reset_peak) (benchmarks check it against the bounds).
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new [`peak`](Self::peak) from what is held now.
    pub fn reset_peak(&self) {
        self.peak.store(self.used(), Ordering::Relaxed);
    }

    /// Caches open on this budget.
    pub fn caches(&self) -> usize {
        self.caches.load(Ordering::Relaxed)
    }

    /// One cache's share: the total divided by the caches open.
    fn share(&self) -> usize {
        self.total() / self.caches().max(1)
    }
}

/// How a cache is bounded and when it flushes early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// `stores.<name>.cache.max.bytes`: the most this cache holds (before the process share
    /// lowers it).
    pub max_bytes: usize,
    /// `object.cache.size` (Samza): the most entries it holds, if set.
    pub max_entries: Option<usize>,
    /// `write.batch.size` (Samza): flush once this many entries are dirty, if set.
    pub write_batch_size: Option<usize>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            max_entries: None,
            write_batch_size: None,
        }
    }
}

/// Bytes stored inline in a [`Slot`] up to this length (no heap allocation, no extra cache
/// miss to reach them).
const INLINE: usize = 22;

/// A key or value: inline when short, else on the heap; or missing (a value only).
#[derive(Clone)]
enum Slot {
    /// No value: the key is deleted or known to be missing.
    Missing,
    /// Up to [`INLINE`] bytes.
    Inline { len: u8, data: [u8; INLINE] },
    /// Longer.
    Heap(Box<[u8]>),
}

impl Slot {
    fn new(bytes: &[u8]) -> Slot {
        if bytes.len() <= INLINE {
            let mut data = [0u8; INLINE];
            data[..bytes.len()].copy_from_slice(bytes);
            Slot::Inline {
                len: bytes.len() as u8,
                data,
            }
        } else {
            Slot::Heap(bytes.into())
        }
    }

    fn from_vec(v: Vec<u8>) -> Slot {
        if v.len() <= INLINE {
            Slot::new(&v)
        } else {
            Slot::Heap(v.into_boxed_slice())
        }
    }

    fn of(v: Option<&[u8]>) -> Slot {
        v.map_or(Slot::Missing, Slot::new)
    }

    fn of_vec(v: Option<Vec<u8>>) -> Slot {
        v.map_or(Slot::Missing, Slot::from_vec)
    }

    fn get(&self) -> Option<&[u8]> {
        match self {
            Slot::Missing => None,
            Slot::Inline { len, data } => Some(&data[..*len as usize]),
            Slot::Heap(b) => Some(b),
        }
    }

    /// Replaces the bytes, reusing a heap buffer of the same length.
    fn set(&mut self, v: Option<&[u8]>) {
        match (&mut *self, v) {
            (Slot::Heap(b), Some(v)) if b.len() == v.len() => b.copy_from_slice(v),
            (_, v) => *self = Slot::of(v),
        }
    }

    /// Heap bytes held (0 inline).
    fn heap(&self) -> usize {
        match self {
            Slot::Heap(b) => b.len(),
            _ => 0,
        }
    }
}

/// One cache entry: one cache line, key and short values inline.
#[repr(align(64))]
struct Node {
    key: Slot,
    value: Slot,
    /// The key's hash (the table grows and entries leave without hashing keys again).
    hash: u64,
    /// Whether the slot holds an entry (free slots are reused).
    live: bool,
    dirty: bool,
    /// Used since the clock hand last passed (CLOCK's second chance).
    referenced: bool,
}

const _: () = assert!(
    std::mem::size_of::<Node>() == 64,
    "an entry is one cache line"
);

impl Node {
    fn key(&self) -> &[u8] {
        self.key.get().unwrap_or_default()
    }

    fn bytes(&self) -> usize {
        self.key.heap() + self.value.heap() + ENTRY_OVERHEAD
    }
}

/// A write-back cache over another store, bounded in bytes, evicting in CLOCK order (an
/// approximation of least-recently-used that marks an entry on use instead of relinking it,
/// so a hit touches no other entry's memory).
pub struct CachedStore {
    inner: Box<dyn KeyValueStore>,
    limits: Limits,
    settings: CacheSettings,
    budget: Arc<CacheBudget>,
    hasher: DefaultHashBuilder,
    table: HashTable<u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// The CLOCK hand: the next slot eviction looks at.
    hand: usize,
    len: usize,
    bytes: usize,
    /// The entry found or inserted last: a put right after a get of the same key (a
    /// read-modify-write) finds it without hashing.
    last: u32,
    /// Dirty entries in the order they first became dirty since the last flush.
    dirty: Vec<u32>,
    dirty_bytes: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
    metrics: Option<CacheMetrics>,
}

struct CacheMetrics {
    hits: metrics::Counter,
    misses: metrics::Counter,
    evictions: metrics::Counter,
    bytes: metrics::Gauge,
    entries: metrics::Gauge,
    published: (u64, u64, u64),
}

impl CachedStore {
    /// Samza's cache: at most `cache_size` entries, dirty entries flushed in batches of
    /// `write_batch_size` (clamped to `1..=cache_size`), with a byte budget of its own that
    /// does not limit it.
    pub fn new(
        inner: Box<dyn KeyValueStore>,
        limits: Limits,
        cache_size: NonZeroUsize,
        write_batch_size: usize,
    ) -> Self {
        let settings = CacheSettings {
            max_bytes: usize::MAX,
            max_entries: Some(cache_size.get()),
            write_batch_size: Some(write_batch_size.clamp(1, cache_size.get())),
        };
        Self::sized(inner, limits, settings, CacheBudget::new(usize::MAX))
    }

    /// A cache bounded by `settings` and by its share of `budget`.
    pub fn sized(
        inner: Box<dyn KeyValueStore>,
        limits: Limits,
        settings: CacheSettings,
        budget: Arc<CacheBudget>,
    ) -> Self {
        budget.caches.fetch_add(1, Ordering::Relaxed);
        // Room for as many entries as the limit allows (at most 128k), so the table rarely grows
        // (and rehashes) while the cache fills; the entries' memory is only reserved.
        let room = (settings.max_bytes.min(budget.share()) / ENTRY_OVERHEAD)
            .min(settings.max_entries.unwrap_or(usize::MAX))
            .min(MAX_RESERVED_ENTRIES);
        CachedStore {
            inner,
            limits,
            settings,
            budget,
            hasher: DefaultHashBuilder::default(),
            table: HashTable::with_capacity(room),
            nodes: Vec::with_capacity(room),
            free: Vec::new(),
            hand: 0,
            len: 0,
            bytes: 0,
            last: NIL,
            dirty: Vec::new(),
            dirty_bytes: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
            metrics: None,
        }
    }

    /// Exports hits, misses, evictions and size under `labels` (published at every flush,
    /// so the per-operation path only adds to plain integers).
    pub fn with_metrics(mut self, labels: &StoreLabels) -> Self {
        use crate::telemetry as t;
        let l = labels.labels();
        self.metrics = Some(CacheMetrics {
            hits: metrics::counter!(t::STORE_CACHE_HITS, l.clone()),
            misses: metrics::counter!(t::STORE_CACHE_MISSES, l.clone()),
            evictions: metrics::counter!(t::STORE_CACHE_EVICTIONS, l.clone()),
            bytes: metrics::gauge!(t::STORE_CACHE_BYTES, l.clone()),
            entries: metrics::gauge!(t::STORE_CACHE_ENTRIES, l.clone()),
            published: (0, 0, 0),
        });
        self
    }

    /// Cache hits and misses of `get` so far.
    pub fn hit_miss(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Number of dirty entries waiting to be written below.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Entries cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the cache holds (see [`ENTRY_OVERHEAD`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The byte limit in force now: the smaller of `cache.max.bytes` and the process share.
    pub fn limit_bytes(&self) -> usize {
        self.settings.max_bytes.min(self.budget.share())
    }

    fn publish(&mut self) {
        if let Some(m) = &mut self.metrics {
            let (h, mi, e) = m.published;
            m.hits.increment(self.hits - h);
            m.misses.increment(self.misses - mi);
            m.evictions.increment(self.evictions - e);
            m.bytes.set(self.bytes as f64);
            m.entries.set(self.len as f64);
            m.published = (self.hits, self.misses, self.evictions);
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(hash, |&i| nodes[i as usize].key() == key)
            .copied()
    }

    /// The entry of `key` if it is the one used last (no hashing needed).
    fn find_last(&self, key: &[u8]) -> Option<u32> {
        (self.last != NIL && self.nodes[self.last as usize].key() == key).then_some(self.last)
    }

    /// Marks entry `i` used (and the one a following write looks at first).
    fn touch(&mut self, i: u32) {
        self.nodes[i as usize].referenced = true;
        self.last = i;
    }

    fn add_bytes(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.bytes += n;
        let used = self.budget.used.fetch_add(n, Ordering::Relaxed) + n;
        self.budget.peak.fetch_max(used, Ordering::Relaxed);
    }

    fn sub_bytes(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.bytes -= n;
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Inserts a new entry (the key is not cached), marked used.
    fn insert(&mut self, hash: u64, key: Slot, value: Slot, dirty: bool) -> u32 {
        let node = Node {
            key,
            value,
            hash,
            live: true,
            dirty,
            referenced: true,
        };
        let size = node.bytes();
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let nodes = &self.nodes;
        self.table
            .insert_unique(hash, i, |&j| nodes[j as usize].hash);
        self.last = i;
        self.len += 1;
        self.add_bytes(size);
        if dirty {
            self.dirty.push(i);
            self.dirty_bytes += size;
        }
        i
    }

    /// Removes entry `i` (which must be clean).
    fn remove(&mut self, i: u32) {
        debug_assert!(!self.nodes[i as usize].dirty);
        let hash = self.nodes[i as usize].hash;
        if let Ok(e) = self.table.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        if self.last == i {
            self.last = NIL;
        }
        let n = &mut self.nodes[i as usize];
        let size = n.bytes();
        n.key = Slot::Missing;
        n.value = Slot::Missing;
        n.live = false;
        self.sub_bytes(size);
        self.len -= 1;
        self.free.push(i);
    }

    /// Evicts entries in CLOCK order until the cache is within its bounds: the hand skips
    /// (and unmarks) entries used since it last passed, and never takes `self.last` (the
    /// entry just written or read). A dirty entry about to be evicted first makes the whole
    /// dirty list go below, in order.
    fn evict(&mut self) -> Result<()> {
        let limit = self.limit_bytes();
        let total = self.budget.total();
        let max_entries = self.settings.max_entries.unwrap_or(usize::MAX);
        while self.len > 1
            && (self.bytes > limit || self.len > max_entries || self.budget.used() > total)
        {
            if self.hand >= self.nodes.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let n = &mut self.nodes[i];
            if !n.live || i as u32 == self.last {
                continue;
            }
            if n.referenced {
                n.referenced = false;
                continue;
            }
            if n.dirty {
                self.flush_dirty()?;
            }
            self.remove(i as u32);
            self.evictions += 1;
        }
        Ok(())
    }

    /// Flushes early if the dirty entries pass their bounds.
    fn check_dirty(&mut self) -> Result<()> {
        let over_count = self
            .settings
            .write_batch_size
            .is_some_and(|n| self.dirty.len() >= n);
        if over_count || self.dirty_bytes > self.limit_bytes() / 2 {
            self.flush_dirty()?;
        }
        Ok(())
    }

    /// Marks entry `i` dirty (its value just changed from `old_size` bytes).
    fn mark_dirty(&mut self, i: u32, old_size: usize) {
        let new_size = self.nodes[i as usize].bytes();
        if new_size >= old_size {
            self.add_bytes(new_size - old_size);
        } else {
            self.sub_bytes(old_size - new_size);
        }
        let n = &mut self.nodes[i as usize];
        if n.dirty {
            self.dirty_bytes = (self.dirty_bytes + new_size).saturating_sub(old_size);
        } else {
            n.dirty = true;
            self.dirty.push(i);
            self.dirty_bytes += new_size;
        }
    }

    /// Writes `key -> value` (borrowed; copied only where the cache needs its own copy).
    fn write_ref(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let found = match self.find_last(key) {
            Some(i) => Ok(i),
            None => {
                let hash = self.hash(key);
                self.find(hash, key).ok_or(hash)
            }
        };
        let (bytes, dirty_bytes) = (self.bytes, self.dirty_bytes);
        match found {
            Ok(i) => {
                let n = &mut self.nodes[i as usize];
                let old_size = n.bytes();
                // Short values are stored inline, longer ones reuse a buffer of the same
                // length: no allocation for a counter's rewrite.
                n.value.set(value);
                self.mark_dirty(i, old_size);
                self.touch(i);
            }
            Err(hash) => {
                self.insert(hash, Slot::new(key), Slot::of(value), true);
            }
        }
        self.bounds_after_write(bytes, dirty_bytes)
    }

    /// Enforces the bounds after a write, if it grew the cache or its dirty bytes (a
    /// rewrite in place, the common case, checks nothing).
    fn bounds_after_write(&mut self, bytes: usize, dirty_bytes: usize) -> Result<()> {
        if self.bytes > bytes || self.settings.max_entries.is_some() {
            self.evict()?;
        }
        if self.dirty_bytes > dirty_bytes || self.settings.write_batch_size.is_some() {
            self.check_dirty()?;
        }
        Ok(())
    }

    /// Writes `key -> value`, owned.
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
        let (bytes, dirty_bytes) = (self.bytes, self.dirty_bytes);
        let hash = self.hash(&key);
        match self.find(hash, &key) {
            Some(i) => {
                let old_size = self.nodes[i as usize].bytes();
                self.nodes[i as usize].value = Slot::of_vec(value);
                self.mark_dirty(i, old_size);
                self.touch(i);
            }
            None => {
                self.insert(hash, Slot::from_vec(key), Slot::of_vec(value), true);
            }
        }
        self.bounds_after_write(bytes, dirty_bytes)
    }

    /// Writes every dirty entry below as one batch, by reference (no copies of keys and
    /// values: they go from the entries to the changelog and the engine batch).
    fn flush_dirty(&mut self) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let nodes = &self.nodes;
        let mut batch: Vec<MutationRef<'_>> = self
            .dirty
            .iter()
            .map(|&i| {
                let n = &nodes[i as usize];
                MutationRef {
                    key: n.key(),
                    value: n.value.get(),
                }
            })
            .collect();
        // In key order (each key is in the batch once, so the order does not change what the
        // batch means): RocksDB's memtable inserts sorted keys several times faster, each
        // insert starting from where the previous one ended.
        batch.sort_unstable_by(|a, b| a.key.cmp(b.key));
        let r = self.inner.write_batch_refs(&batch);
        drop(batch);
        for i in self.dirty.drain(..) {
            self.nodes[i as usize].dirty = false;
        }
        self.dirty_bytes = 0;
        r
    }

    /// The entry of `key` for a read: a hit, or the read-through of a miss.
    fn lookup(&mut self, key: &[u8]) -> Result<u32> {
        let hash = self.hash(key);
        match self.find(hash, key) {
            Some(i) => {
                self.hits += 1;
                self.touch(i);
                Ok(i)
            }
            None => self.miss(hash, key),
        }
    }

    /// The read-through of a miss: reads `key` below and caches the value clean; `hash` is
    /// the key's hash, computed once by the caller.
    fn miss(&mut self, hash: u64, key: &[u8]) -> Result<u32> {
        self.misses += 1;
        // Borrowed from below (a pinned RocksDB read): short values are copied inline, longer
        // ones once into the entry.
        let mut value = Slot::Missing;
        self.inner.get_with(key, &mut |v| value = Slot::of(v))?;
        let i = self.insert(hash, Slot::new(key), value, false);
        self.evict()?;
        Ok(i)
    }
}

impl Drop for CachedStore {
    fn drop(&mut self) {
        self.publish();
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.caches.fetch_sub(1, Ordering::Relaxed);
    }
}

impl CachedStore {
    /// The value under `key`, borrowed from its cache entry (read from below and cached on
    /// a miss): what the TTL layer above reads without a closure or a copy.
    pub fn get_ref(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        let i = self.lookup(key)?;
        Ok(self.nodes[i as usize].value.get())
    }
}

impl KeyValueStore for CachedStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let i = self.lookup(key)?;
        Ok(self.nodes[i as usize].value.get().map(<[u8]>::to_vec))
    }

    fn get_with(&mut self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        let i = self.lookup(key)?;
        f(self.nodes[i as usize].value.get());
        Ok(())
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()> {
        self.limits.check_batch(self.inner.name(), &batch)?;
        for m in batch {
            self.write(m.key, m.value)?;
        }
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.limits.check_ref(self.inner.name(), key, Some(value))?;
        self.write_ref(key, Some(value))
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.limits.check_key(self.inner.name(), key)?;
        self.write_ref(key, None)
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        self.flush_dirty()?;
        self.inner.scan(from, to)
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        self.flush_dirty()?;
        self.inner.snapshot()
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_dirty()?;
        self.publish();
        self.inner.flush()
    }

    fn relog(&mut self, keys: &[Vec<u8>]) -> Result<()> {
        self.flush_dirty()?;
        self.inner.relog(keys)
    }

    fn flush_to_changelog(&mut self) -> Result<()> {
        self.flush_dirty()?;
        self.publish();
        self.inner.flush_to_changelog()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryEngine;

    fn cache(max_bytes: usize, budget: &Arc<CacheBudget>) -> CachedStore {
        CachedStore::sized(
            Box::new(MemoryEngine::new("c", Limits::default())),
            Limits::default(),
            CacheSettings {
                max_bytes,
                ..CacheSettings::default()
            },
            Arc::clone(budget),
        )
    }

    /// Rewrites of one key stay one dirty entry until the flush, and reads see them.
    #[test]
    fn rewrites_are_deduplicated_until_flush() {
        let budget = CacheBudget::new(1 << 20);
        let mut c = cache(1 << 20, &budget);
        for i in 0..100u32 {
            c.put(b"k", &i.to_be_bytes()).unwrap();
            c.put(b"other", b"x").unwrap();
        }
        assert_eq!(c.dirty_len(), 2);
        assert_eq!(c.get(b"k").unwrap(), Some(99u32.to_be_bytes().to_vec()));
        c.flush().unwrap();
        assert_eq!(c.dirty_len(), 0);
        assert_eq!(
            c.inner.get(b"k").unwrap(),
            Some(99u32.to_be_bytes().to_vec())
        );
    }

    /// The byte limit holds, dirty bytes force an early flush, and nothing written is lost.
    #[test]
    fn stays_within_its_byte_limit() {
        let budget = CacheBudget::new(1 << 30);
        let limit = 100 * (ENTRY_OVERHEAD + 20);
        let mut c = cache(limit, &budget);
        for i in 0..10_000u32 {
            c.put(format!("key-{i:06}").as_bytes(), &[7u8; 8]).unwrap();
            assert!(c.bytes() <= limit + ENTRY_OVERHEAD + 20, "{}", c.bytes());
            assert!(c.dirty_bytes <= limit / 2 + ENTRY_OVERHEAD + 20);
        }
        assert_eq!(budget.used(), c.bytes());
        for i in 0..10_000u32 {
            assert_eq!(
                c.get(format!("key-{i:06}").as_bytes()).unwrap(),
                Some(vec![7u8; 8]),
                "key {i}"
            );
        }
        assert!(c.evictions > 0 && c.hit_miss().1 > 0);
    }

    /// Caches on one budget share it: each gets its share, together they stay within the
    /// total, and closing one gives its bytes back.
    #[test]
    fn caches_share_the_process_budget() {
        let entry = ENTRY_OVERHEAD + 20;
        let budget = CacheBudget::new(400 * entry);
        let mut a = cache(usize::MAX, &budget);
        let mut b = cache(usize::MAX, &budget);
        assert_eq!(a.limit_bytes(), 200 * entry);
        for i in 0..1000u32 {
            a.put(format!("a-{i:08}").as_bytes(), &[1u8; 8]).unwrap();
            b.put(format!("b-{i:08}").as_bytes(), &[1u8; 8]).unwrap();
            assert!(budget.used() <= 400 * entry + 2 * entry);
        }
        assert!(a.bytes() <= 201 * entry && b.bytes() <= 201 * entry);
        assert!(budget.peak() >= budget.used() && budget.peak() <= 402 * entry);
        drop(b);
        assert_eq!(budget.caches(), 1);
        assert_eq!(budget.used(), a.bytes());
        assert_eq!(a.limit_bytes(), 400 * entry);
    }

    /// `object.cache.size` and `write.batch.size` keep their Samza meaning.
    #[test]
    fn samza_entry_bounds() {
        let mut c = CachedStore::new(
            Box::new(MemoryEngine::new("c", Limits::default())),
            Limits::default(),
            NonZeroUsize::new(10).unwrap(),
            4,
        );
        for i in 0..3u8 {
            c.put(&[i + 1], b"v").unwrap();
        }
        assert_eq!(c.dirty_len(), 3);
        c.put(&[9], b"v").unwrap();
        assert_eq!(c.dirty_len(), 0, "the 4th dirty entry flushes the batch");
        for i in 0..50u8 {
            c.put(&[i + 10], b"v").unwrap();
        }
        assert_eq!(c.len(), 10);
    }
}
