//! Key-value stores: the bytes-level contract every engine and layer implements, and the
//! layers themselves.
//!
//! A store is a stack assembled from config (see [`crate::store::stack`]), top to bottom:
//!
//! ```text
//! Store<K, V>   typed facade (serdes)                       typed.rs
//!  └ Metered    counters (+ latency histograms if enabled)  metered.rs
//!   └ Ttl       expiry header, hides expired entries        ttl.rs
//!               (only with stores.<name>.ttl.ms)
//!     └ Cached  write-back cache bounded in bytes, dirty     cached.rs
//!               entries deduplicated until the commit
//!        └ Logged  one changelog record per put/delete      logged.rs
//!           └ Engine  RocksDB | Memory                      rocks.rs, memory.rs
//! ```
//!
//! Every layer implements [`KeyValueStore`]; engines also implement [`Engine`], which
//! restore and the logged layer use to write batches together with the changelog offset
//! they bring the engine to.

pub mod cached;
pub mod config;
mod error;
pub mod limits;
pub mod logged;
pub mod memory;
pub mod metered;
pub mod rocks;
pub mod stack;
pub mod ttl;
pub mod typed;

pub use error::{Result, StoreError};
pub use limits::Limits;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An iterator over entries in ascending unsigned-byte key order. It borrows the store
/// (or snapshot) it came from, so it cannot outlive it.
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<Entry>> + 'a>;

/// One write: a put (`value: Some`) or a delete (`value: None`, a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// The key written.
    pub key: Vec<u8>,
    /// The new value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// One write by reference: what a cache flushing its dirty entries hands down, so the bytes
/// go to the changelog and the engine without being copied into owned [`Mutation`]s first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MutationRef<'a> {
    /// The key written.
    pub key: &'a [u8],
    /// The new value, or `None` for a delete.
    pub value: Option<&'a [u8]>,
}

impl MutationRef<'_> {
    /// An owned copy.
    pub fn to_mutation(self) -> Mutation {
        Mutation {
            key: self.key.to_vec(),
            value: self.value.map(<[u8]>::to_vec),
        }
    }
}

impl<'a> From<&'a Mutation> for MutationRef<'a> {
    fn from(m: &'a Mutation) -> Self {
        MutationRef {
            key: &m.key,
            value: m.value.as_deref(),
        }
    }
}

impl Mutation {
    /// A put of `value` under `key`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Mutation {
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Mutation {
            key: key.into(),
            value: None,
        }
    }
}

/// The key-value store contract, kept from Samza's `KeyValueStore`.
///
/// - Keys are ordered as unsigned bytes: `0x00` sorts first, `0xFF` last, and a key sorts
///   before every longer key it is a prefix of.
/// - Keys must be non-empty and at most [`Limits::max_key_bytes`] (64 KiB); values at most
///   [`Limits::max_value_bytes`] (1 MiB by default). A write breaking a limit is refused with
///   an error naming the store, the size and the limit, and nothing of it is written: a batch
///   (`put_all`, `delete_all`, [`write_batch`](Self::write_batch)) is checked whole first.
/// - Reads always see the newest write made through the same store, whatever layer holds it.
/// - `range(from, to)` covers `[from, to)`; `from >= to` is an empty range, not an error.
/// - Iterators borrow the store and so cannot outlive it; a [`snapshot`](Self::snapshot) is
///   an owned, consistent view that later writes do not change.
/// - After an I/O failure a store may refuse every later write ([`StoreError::Poisoned`]):
///   it never acknowledges a write it could not make durable.
///
/// Methods take `&mut self`: a store belongs to one task, and even reads change the cache
/// (they mark entries used, and a miss caches what it read).
pub trait KeyValueStore: Send {
    /// The store's name, used in errors and metrics.
    fn name(&self) -> &str;

    /// The value under `key`, if any.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Hands the value under `key` (or `None`) to `f`, borrowed where the layer holds it
    /// (the cache, the memory engine, a pinned RocksDB read): a typed read decodes from it
    /// without an owned copy.
    fn get_with(&mut self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        let v = self.get(key)?;
        f(v.as_deref());
        Ok(())
    }

    /// The values under `keys`, in the same order (`None` where missing).
    fn get_all(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Applies `batch` in order; every mutation is validated before any is applied.
    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()>;

    /// [`write_batch`](Self::write_batch) from borrowed bytes. The default copies them into
    /// owned mutations; the logged layer and RocksDB write them without copies.
    fn write_batch_refs(&mut self, batch: &[MutationRef<'_>]) -> Result<()> {
        self.write_batch(batch.iter().map(|m| m.to_mutation()).collect())
    }

    /// Stores `value` under `key`, replacing any previous value.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write_batch(vec![Mutation::put(key, value)])
    }

    /// Stores every entry, in order (a later entry for the same key wins).
    fn put_all(&mut self, entries: Vec<Entry>) -> Result<()> {
        self.write_batch(
            entries
                .into_iter()
                .map(|(k, v)| Mutation {
                    key: k,
                    value: Some(v),
                })
                .collect(),
        )
    }

    /// Stores `value` under `key` for `ttl_ms` milliseconds from now (the store's clock),
    /// instead of the store's `ttl.ms`. Only a store with `stores.<name>.ttl.ms` has expiry
    /// times; others refuse.
    fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl_ms: u64) -> Result<()> {
        let _ = (key, value, ttl_ms);
        Err(no_ttl(self.name()))
    }

    /// Stores `value` under `key` until `expires_at_ms` (milliseconds since the epoch;
    /// [`ttl::NEVER`]: no expiry). Only a store with `stores.<name>.ttl.ms` has expiry
    /// times; others refuse.
    fn put_expiring(&mut self, key: &[u8], value: &[u8], expires_at_ms: u64) -> Result<()> {
        let _ = (key, value, expires_at_ms);
        Err(no_ttl(self.name()))
    }

    /// One bounded pass removing expired entries (tombstones through the changelog, which
    /// the next commit makes durable); returns how many it removed. A store without TTL has
    /// nothing to expire.
    fn expire(&mut self) -> Result<u64> {
        Ok(0)
    }

    /// Removes `key`; deleting a missing key is not an error.
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.write_batch(vec![Mutation::delete(key)])
    }

    /// Removes every key in `keys`.
    fn delete_all(&mut self, keys: Vec<Vec<u8>>) -> Result<()> {
        self.write_batch(keys.into_iter().map(Mutation::delete).collect())
    }

    /// Entries with `from <= key` and, if `to` is given, `key < to`, in key order.
    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>>;

    /// Entries with `from <= key < to`, in key order.
    fn range(&mut self, from: &[u8], to: &[u8]) -> Result<KvIter<'_>> {
        self.scan(from, Some(to))
    }

    /// Entries whose key starts with `prefix`, in key order.
    fn prefix(&mut self, prefix: &[u8]) -> Result<KvIter<'_>> {
        let end = prefix_successor(prefix);
        self.scan(prefix, end.as_deref())
    }

    /// Every entry, in key order.
    fn all(&mut self) -> Result<KvIter<'_>> {
        self.scan(&[], None)
    }

    /// An owned, consistent view of the store as of now.
    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>>;

    /// Writes everything buffered in this layer below it and flushes the layers below.
    fn flush(&mut self) -> Result<()>;

    /// The first half of a commit: writes everything buffered in this layer and the layers
    /// below into the store's changelog and makes the changelog durable, leaving the
    /// engine's own flush for later. A stack without a changelog simply [`flush`](Self::flush)es.
    fn flush_to_changelog(&mut self) -> Result<()> {
        self.flush()
    }

    /// Appends the current value (or a tombstone) of each of `keys` to the store's changelog
    /// again, as stored below every layer: the repair of a changelog in which records of
    /// another writer turned up (see [`crate::task_storage::TaskStorage::commit`]). Call it
    /// right after [`flush_to_changelog`](Self::flush_to_changelog). A stack without a
    /// changelog refuses.
    fn relog(&mut self, keys: &[Vec<u8>]) -> Result<()> {
        let _ = keys;
        Err(StoreError::Config {
            store: self.name().to_string(),
            reason: "the store has no changelog to repair".into(),
        })
    }

    /// Flushes and releases the store. Dropping a store without closing it loses only what
    /// was buffered and never flushed (the changelog makes that recoverable up to the last
    /// commit).
    fn close(&mut self) -> Result<()> {
        self.flush()
    }
}

/// A consistent, read-only view of a store taken by [`KeyValueStore::snapshot`].
pub trait KvSnapshot: Send {
    /// The value under `key` in the view.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Entries with `from <= key` and, if `to` is given, `key < to`, in key order.
    fn scan(&self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>>;

    /// Entries with `from <= key < to`.
    fn range(&self, from: &[u8], to: &[u8]) -> Result<KvIter<'_>> {
        self.scan(from, Some(to))
    }

    /// Entries whose key starts with `prefix`.
    fn prefix(&self, prefix: &[u8]) -> Result<KvIter<'_>> {
        let end = prefix_successor(prefix);
        self.scan(prefix, end.as_deref())
    }

    /// Every entry.
    fn all(&self) -> Result<KvIter<'_>> {
        self.scan(&[], None)
    }
}

/// An engine: the bottom of a stack, where data lives. Restore and the logged layer write
/// through [`Engine::write_logged`], which records the changelog end a batch brings the
/// engine to (the offset after the last changelog record it reflects) atomically with the
/// batch, so that after a crash restore knows exactly which changelog records the engine
/// already holds.
pub trait Engine: KeyValueStore {
    /// Applies `batch` and records `changelog_end` (the offset after the last changelog
    /// record the engine now reflects) in the same atomic write.
    fn write_logged(&mut self, batch: Vec<Mutation>, changelog_end: u64) -> Result<()>;

    /// [`write_logged`](Self::write_logged) from borrowed bytes (the default copies them).
    fn write_logged_refs(&mut self, batch: &[MutationRef<'_>], changelog_end: u64) -> Result<()> {
        self.write_logged(
            batch.iter().map(|m| m.to_mutation()).collect(),
            changelog_end,
        )
    }

    /// The changelog end recorded by the last [`write_logged`](Self::write_logged) that is
    /// durable in the engine, or `None` if there is none.
    fn changelog_end(&mut self) -> Result<Option<u64>>;

    /// Loads `entries` — sorted by key, each key at most once — and records `changelog_end`.
    /// Used by full restores; engines may build their files directly (RocksDB ingests a
    /// sorted SST file). The default is [`write_logged`](Self::write_logged).
    fn bulk_load(&mut self, entries: Vec<Mutation>, changelog_end: u64) -> Result<()> {
        self.write_logged(entries, changelog_end)
    }

    /// [`bulk_load`](Self::bulk_load) from borrowed bytes (a full restore hands over slices
    /// of the buffer it read the changelog into). The default copies them.
    fn bulk_load_refs(&mut self, entries: &[MutationRef<'_>], changelog_end: u64) -> Result<()> {
        self.bulk_load(
            entries.iter().map(|m| m.to_mutation()).collect(),
            changelog_end,
        )
    }

    /// Removes every entry and the recorded changelog end.
    fn wipe(&mut self) -> Result<()>;

    /// Whether the engine holds no entries.
    fn is_empty(&mut self) -> Result<bool> {
        Ok(self.all()?.next().is_none())
    }
}

/// The error of a per-write TTL on a store without `ttl.ms`.
fn no_ttl(store: &str) -> StoreError {
    StoreError::Config {
        store: store.to_string(),
        reason: format!(
            "a write with its own TTL needs a store with expiry times: set stores.{store}.ttl.ms"
        ),
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is
/// none (empty prefix or all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_successor;

    #[test]
    fn prefix_successor_carries_over_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[0x01, 0xFF]), Some(vec![0x02]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_successor(&[]), None);
    }
}
