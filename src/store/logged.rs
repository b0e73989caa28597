//! The logged layer: every put and delete becomes a changelog record before it reaches the
//! engine, and each engine batch carries the changelog end it brings the engine to.
//!
//! Order inside one batch: append every record, hand them to the OS, then write the engine
//! batch (with its changelog marker). So whatever the engine holds after a process crash is
//! in the changelog file too. Any failure poisons the layer: later writes are refused,
//! because the engine and changelog may now disagree until the store is restored.

use std::sync::Arc;

use super::{Engine, KeyValueStore, KvIter, KvSnapshot, Limits, Mutation, Result, StoreError};
use crate::changelog::{SharedChangelog, now_ms};

/// Appends every write to a changelog partition, then applies it to the engine.
pub struct LoggedStore {
    engine: Box<dyn Engine>,
    changelog: SharedChangelog,
    limits: Limits,
    poisoned: Option<String>,
}

impl LoggedStore {
    /// Logs writes to `changelog` and applies them to `engine`.
    pub fn new(engine: Box<dyn Engine>, changelog: SharedChangelog, limits: Limits) -> Self {
        LoggedStore {
            engine,
            changelog,
            limits,
            poisoned: None,
        }
    }

    /// The changelog this layer appends to.
    pub fn changelog(&self) -> SharedChangelog {
        Arc::clone(&self.changelog)
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(StoreError::Poisoned {
                store: self.engine.name().to_string(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.poisoned = Some(e.to_string());
        }
        r
    }

    fn log_batch(&mut self, batch: &[Mutation]) -> Result<u64> {
        let name = self.engine.name().to_string();
        let cl = |source| StoreError::Changelog {
            store: name.clone(),
            source,
        };
        let mut log = self.changelog.lock().unwrap_or_else(|p| p.into_inner());
        let ts = now_ms();
        for m in batch {
            log.append(ts, &m.key, m.value.as_deref()).map_err(cl)?;
        }
        log.flush_to_os().map_err(cl)?;
        Ok(log.end_offset())
    }
}

impl KeyValueStore for LoggedStore {
    fn name(&self) -> &str {
        self.engine.name()
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(key)
    }

    fn get_all(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.engine.get_all(keys)
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()> {
        self.check_poisoned()?;
        self.limits.check_batch(self.engine.name(), &batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        let end = self.log_batch(&batch);
        let end = self.poison(end)?;
        let r = self.engine.write_logged(batch, end);
        self.poison(r)
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        self.engine.scan(from, to)
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        self.engine.snapshot()
    }

    /// Syncs the changelog first, then flushes the engine: the engine never holds flushed
    /// data whose changelog records are not durable.
    fn flush(&mut self) -> Result<()> {
        self.flush_to_changelog()?;
        let r = self.engine.flush();
        self.poison(r)
    }

    /// Makes every record appended so far durable in the changelog (fsync); the engine's
    /// data stays in its memtable until the next [`flush`](KeyValueStore::flush).
    fn flush_to_changelog(&mut self) -> Result<()> {
        self.check_poisoned()?;
        let name = self.engine.name().to_string();
        let synced = self
            .changelog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync()
            .map(|_| ())
            .map_err(|source| StoreError::Changelog {
                store: name,
                source,
            });
        self.poison(synced)
    }
}
