//! The write-back cache layer, after Samza's `CachedStore`: an LRU of recently used entries
//! plus a dirty list.
//!
//! - Writes go into the cache and the key joins the dirty list once, however often it is
//!   rewritten before the next flush (repeated writes are deduplicated).
//! - Dirty entries are written below as one batch when the dirty list reaches
//!   `write.batch.size`, when a dirty entry is evicted, and on [`flush`](KeyValueStore::flush).
//! - Reads hit the cache first; misses (including "no such key") are cached clean.
//! - Ranges, `all` and snapshots flush the dirty list first, so they always see the newest
//!   writes, deletes included.

use std::num::NonZeroUsize;

use lru::LruCache;

use super::{KeyValueStore, KvIter, KvSnapshot, Limits, Mutation, Result};

/// Default `stores.<name>.object.cache.size`: entries kept in the cache.
pub const DEFAULT_OBJECT_CACHE_SIZE: usize = 1000;
/// Default `stores.<name>.write.batch.size`: dirty entries written below in one batch.
pub const DEFAULT_WRITE_BATCH_SIZE: usize = 500;

struct CacheEntry {
    /// The newest value, or `None` if the key is deleted or known to be missing.
    value: Option<Vec<u8>>,
    dirty: bool,
}

/// A write-back LRU cache over another store.
pub struct CachedStore {
    inner: Box<dyn KeyValueStore>,
    limits: Limits,
    cache: LruCache<Vec<u8>, CacheEntry>,
    /// Dirty keys in the order they first became dirty since the last flush.
    dirty: Vec<Vec<u8>>,
    write_batch_size: usize,
    hits: u64,
    misses: u64,
}

impl CachedStore {
    /// Wraps `inner` with a cache of `cache_size` entries (must be > 0) flushing dirty
    /// entries in batches of `write_batch_size` (clamped to `1..=cache_size`).
    pub fn new(
        inner: Box<dyn KeyValueStore>,
        limits: Limits,
        cache_size: NonZeroUsize,
        write_batch_size: usize,
    ) -> Self {
        let write_batch_size = write_batch_size.clamp(1, cache_size.get());
        CachedStore {
            inner,
            limits,
            cache: LruCache::new(cache_size),
            dirty: Vec::with_capacity(write_batch_size),
            write_batch_size,
            hits: 0,
            misses: 0,
        }
    }

    /// Cache hits and misses of `get` so far.
    pub fn hit_miss(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Number of dirty entries waiting to be written below.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
        if let Some(e) = self.cache.get_mut(&key) {
            e.value = value;
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(key);
            }
        } else {
            self.dirty.push(key.clone());
            if let Some((old_key, old)) = self.cache.push(key, CacheEntry { value, dirty: true })
                && old.dirty
            {
                // A dirty entry fell out of the cache: write it and the rest of the dirty
                // list below now, so nothing is lost and order is kept.
                return self.flush_dirty(Some((old_key, old.value)));
            }
        }
        if self.dirty.len() >= self.write_batch_size {
            self.flush_dirty(None)?;
        }
        Ok(())
    }

    /// Writes every dirty entry (and `evicted`, which is no longer in the cache) below as
    /// one batch.
    fn flush_dirty(&mut self, evicted: Option<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(self.dirty.len());
        for key in self.dirty.drain(..) {
            if let Some(e) = self.cache.peek_mut(&key) {
                e.dirty = false;
                batch.push(Mutation {
                    key,
                    value: e.value.clone(),
                });
            } else if let Some((ek, ev)) = &evicted
                && *ek == key
            {
                batch.push(Mutation {
                    key,
                    value: ev.clone(),
                });
            }
        }
        self.inner.write_batch(batch)
    }
}

impl KeyValueStore for CachedStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(e) = self.cache.get(key) {
            self.hits += 1;
            return Ok(e.value.clone());
        }
        self.misses += 1;
        let value = self.inner.get(key)?;
        if let Some((old_key, old)) = self.cache.push(
            key.to_vec(),
            CacheEntry {
                value: value.clone(),
                dirty: false,
            },
        ) && old.dirty
        {
            self.flush_dirty(Some((old_key, old.value)))?;
        }
        Ok(value)
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()> {
        self.limits.check_batch(self.inner.name(), &batch)?;
        for m in batch {
            self.write(m.key, m.value)?;
        }
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let m = Mutation::put(key, value);
        self.limits.check(self.inner.name(), &m)?;
        self.write(m.key, m.value)
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.limits.check_key(self.inner.name(), key)?;
        self.write(key.to_vec(), None)
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        self.flush_dirty(None)?;
        self.inner.scan(from, to)
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        self.flush_dirty(None)?;
        self.inner.snapshot()
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_dirty(None)?;
        self.inner.flush()
    }

    fn flush_to_changelog(&mut self) -> Result<()> {
        self.flush_dirty(None)?;
        self.inner.flush_to_changelog()
    }
}
