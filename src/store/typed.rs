//! The typed facade: `Store<K, V>` encodes keys and values with the serdes named in config
//! and decodes what it reads; undecodable bytes are errors naming the store and serde.
//!
//! A `Store` either owns its stack (`Store<K, V>`, over `Box<dyn KeyValueStore>`) or borrows
//! it (`Store<K, V, &mut dyn KeyValueStore>`, how tasks get typed access to their stores;
//! the built-in serdes are zero-sized, so making one costs no allocation).

use std::cell::Cell;
use std::ops::DerefMut;

use super::{KeyValueStore, KvSnapshot, Mutation, Result, StoreError};
use crate::serde::{Codec, Serde, SerdeError, SerdeName};

/// A typed view of a bytes-level store stack, owned (`S = Box<dyn KeyValueStore>`) or
/// borrowed (`S = &mut dyn KeyValueStore`).
pub struct Store<K, V, S = Box<dyn KeyValueStore>> {
    inner: S,
    keys: Box<dyn Serde<K>>,
    values: Box<dyn Serde<V>>,
}

thread_local! {
    /// Reused encode buffers (key, value) of the typed reads and writes of this thread, so a
    /// `get` or `put` allocates nothing to encode. Taken out while in use (a nested use, if
    /// any, simply allocates).
    static KEY_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static VALUE_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's reusable buffer `buf`, emptied.
fn with_buf<R>(
    buf: &'static std::thread::LocalKey<Cell<Vec<u8>>>,
    f: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    let mut b = buf.take();
    b.clear();
    let r = f(&mut b);
    if b.capacity() <= 64 << 10 {
        buf.set(b);
    }
    r
}

fn serde_err(store: &str, action: &'static str, what: &'static str, e: SerdeError) -> StoreError {
    StoreError::Serde {
        store: store.to_string(),
        action,
        what,
        serde: e.serde,
        message: e.message,
    }
}

impl<K: Codec, V: Codec, S> Store<K, V, S>
where
    S: DerefMut,
    S::Target: KeyValueStore,
{
    /// Wraps `inner`, using the serdes named `key_serde` / `value_serde`. Fails if `K` or `V`
    /// cannot use the named serde (e.g. `u64` keys with `key.serde = "string"`).
    pub fn new(inner: S, key_serde: SerdeName, value_serde: SerdeName) -> Result<Self> {
        // Built only on error: a task makes a `Store` per message.
        let mismatch = |what: &str, serde: SerdeName, ty: &str| StoreError::Config {
            store: inner.name().to_string(),
            reason: format!("{what}.serde = \"{serde}\" cannot encode the Rust type {ty}"),
        };
        let keys = K::serde(key_serde)
            .ok_or_else(|| mismatch("key", key_serde, std::any::type_name::<K>()))?;
        let values = V::serde(value_serde)
            .ok_or_else(|| mismatch("value", value_serde, std::any::type_name::<V>()))?;
        Ok(Store {
            inner,
            keys,
            values,
        })
    }
}

impl<K, V, S> Store<K, V, S>
where
    S: DerefMut,
    S::Target: KeyValueStore,
{
    /// Wraps `inner` with explicit serdes.
    pub fn with_serdes(inner: S, keys: Box<dyn Serde<K>>, values: Box<dyn Serde<V>>) -> Self {
        Store {
            inner,
            keys,
            values,
        }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    fn ek(&self, k: &K) -> Result<Vec<u8>> {
        self.keys
            .encode(k)
            .map_err(|e| serde_err(self.inner.name(), "encode", "key", e))
    }

    fn ev(&self, v: &V) -> Result<Vec<u8>> {
        self.values
            .encode(v)
            .map_err(|e| serde_err(self.inner.name(), "encode", "value", e))
    }

    fn decode_entry(&self, (k, v): (Vec<u8>, Vec<u8>)) -> Result<(K, V)> {
        let name = self.inner.name();
        let k = self
            .keys
            .decode(&k)
            .map_err(|e| serde_err(name, "decode", "key", e))?;
        let v = self
            .values
            .decode(&v)
            .map_err(|e| serde_err(name, "decode", "value", e))?;
        Ok((k, v))
    }

    /// The value under `key`. The key is encoded into a reused buffer; the value is decoded
    /// from the store's copy where the serde reads borrowed bytes (`u64`, `json`, ...), or
    /// taken owned without a copy (`bytes`, `string`).
    pub fn get(&mut self, key: &K) -> Result<Option<V>> {
        self.with_key(key, |inner, values, k| {
            let decoded = if values.prefers_owned() {
                inner.get(k)?.map(|v| values.decode_owned(v))
            } else {
                let mut out = None;
                inner.get_with(k, &mut |v| out = v.map(|v| values.decode(v)))?;
                out
            };
            decoded
                .transpose()
                .map_err(|e| serde_err(inner.name(), "decode", "value", e))
        })
    }

    /// The values under `keys`, in order.
    pub fn get_all(&mut self, keys: &[K]) -> Result<Vec<Option<V>>> {
        let encoded = keys
            .iter()
            .map(|k| self.ek(k))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u8]> = encoded.iter().map(|k| k.as_slice()).collect();
        let vs = self.inner.get_all(&refs)?;
        vs.into_iter()
            .map(|v| match v {
                None => Ok(None),
                Some(v) => self
                    .values
                    .decode(&v)
                    .map(Some)
                    .map_err(|e| serde_err(self.inner.name(), "decode", "value", e)),
            })
            .collect()
    }

    /// Stores `value` under `key` (encoded into reused buffers: no allocation here).
    pub fn put(&mut self, key: &K, value: &V) -> Result<()> {
        self.with_key(key, |inner, values, k| {
            with_buf(&VALUE_BUF, |v| {
                values
                    .encode_into(value, v)
                    .map_err(|e| serde_err(inner.name(), "encode", "value", e))?;
                inner.put(k, v)
            })
        })
    }

    /// Stores `value` under `key` for `ttl` from now (the store's clock) instead of the
    /// store's `ttl.ms`; refused by a store without `stores.<name>.ttl.ms`.
    pub fn put_with_ttl(&mut self, key: &K, value: &V, ttl: std::time::Duration) -> Result<()> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.put_by(key, value, |inner, k, v| inner.put_with_ttl(k, v, ttl_ms))
    }

    /// Stores `value` under `key` until `expires_at_ms` (milliseconds since the epoch;
    /// [`super::ttl::NEVER`] for never), e.g. an input record's timestamp plus a TTL, which
    /// a replay of that record gives again; refused by a store without
    /// `stores.<name>.ttl.ms`.
    pub fn put_expiring_at(&mut self, key: &K, value: &V, expires_at_ms: u64) -> Result<()> {
        self.put_by(key, value, |inner, k, v| {
            inner.put_expiring(k, v, expires_at_ms)
        })
    }

    fn put_by(
        &mut self,
        key: &K,
        value: &V,
        put: impl FnOnce(&mut S::Target, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.with_key(key, |inner, values, k| {
            with_buf(&VALUE_BUF, |v| {
                values
                    .encode_into(value, v)
                    .map_err(|e| serde_err(inner.name(), "encode", "value", e))?;
                put(inner, k, v)
            })
        })
    }

    /// Stores every entry; nothing is written if any entry fails to encode or breaks a limit.
    pub fn put_all(&mut self, entries: &[(K, V)]) -> Result<()> {
        let batch = entries
            .iter()
            .map(|(k, v)| {
                Ok(Mutation {
                    key: self.ek(k)?,
                    value: Some(self.ev(v)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.inner.write_batch(batch)
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &K) -> Result<()> {
        self.with_key(key, |inner, _, k| inner.delete(k))
    }

    /// Encodes `key` into this thread's reused key buffer and runs `f` with the stack, the
    /// value serde and the encoded key.
    fn with_key<R>(
        &mut self,
        key: &K,
        f: impl FnOnce(&mut S::Target, &dyn Serde<V>, &[u8]) -> Result<R>,
    ) -> Result<R> {
        let Store {
            inner,
            keys,
            values,
        } = self;
        with_buf(&KEY_BUF, |k| {
            keys.encode_into(key, k)
                .map_err(|e| serde_err(inner.name(), "encode", "key", e))?;
            f(inner, &**values, k)
        })
    }

    /// Removes every key in `keys`.
    pub fn delete_all(&mut self, keys: &[K]) -> Result<()> {
        let batch = keys
            .iter()
            .map(|k| {
                Ok(Mutation {
                    key: self.ek(k)?,
                    value: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.inner.write_batch(batch)
    }

    /// Entries with `from <= key < to` in encoded-key order (numeric order for `u64`/`i64`).
    pub fn range(&mut self, from: &K, to: &K) -> Result<impl Iterator<Item = Result<(K, V)>> + '_> {
        let (f, t) = (self.ek(from)?, self.ek(to)?);
        self.iter_of(f, Some(t))
    }

    /// Every entry in key order.
    pub fn all(&mut self) -> Result<impl Iterator<Item = Result<(K, V)>> + '_> {
        self.iter_of(Vec::new(), None)
    }

    /// Entries whose encoded key starts with `prefix` (raw bytes, e.g. a string prefix).
    pub fn prefix(&mut self, prefix: &[u8]) -> Result<impl Iterator<Item = Result<(K, V)>> + '_> {
        let end = super::prefix_successor(prefix);
        self.iter_of(prefix.to_vec(), end)
    }

    fn iter_of(
        &mut self,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
    ) -> Result<impl Iterator<Item = Result<(K, V)>> + '_> {
        let Store {
            inner,
            keys,
            values,
        } = self;
        let name = inner.name().to_string();
        let it = inner.scan(&from, to.as_deref())?;
        let (keys, values) = (&**keys, &**values);
        Ok(it.map(move |r| {
            let (k, v) = r?;
            let k = keys
                .decode(&k)
                .map_err(|e| serde_err(&name, "decode", "key", e))?;
            let v = values
                .decode(&v)
                .map_err(|e| serde_err(&name, "decode", "value", e))?;
            Ok((k, v))
        }))
    }

    /// A consistent, owned bytes-level view as of now (decode with the store's serdes).
    pub fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        self.inner.snapshot()
    }

    /// Flushes every layer.
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }

    /// Flushes and closes the store.
    pub fn close(mut self) -> Result<()> {
        self.inner.close()
    }

    /// The bytes-level stack under this facade.
    pub fn inner_mut(&mut self) -> &mut S::Target {
        &mut self.inner
    }

    /// Decodes one raw entry with this store's serdes.
    pub fn decode(&self, entry: (Vec<u8>, Vec<u8>)) -> Result<(K, V)> {
        self.decode_entry(entry)
    }
}
