//! The logged layer: every put and delete becomes a changelog record before it reaches the
//! engine, and each engine batch carries the changelog end it brings the engine to.
//!
//! Order inside one batch: send every record to the task's sink, hand them to the OS where
//! the backend can, then write the engine batch with the changelog end the records are
//! expected to reach (see [`crate::changelog`]). Durability comes from the task's commit,
//! which flushes the sink for every store and output at once. Any failure poisons the layer:
//! later writes are refused, because the engine and changelog may now disagree until the
//! store is restored.

use std::sync::Arc;

use super::{
    Engine, KeyValueStore, KvIter, KvSnapshot, Limits, Mutation, MutationRef, Result, StoreError,
};
use crate::changelog::{SharedChangelog, now_ms};
use crate::telemetry::StoreLabels;

/// Appends every write to a changelog partition, then applies it to the engine.
pub struct LoggedStore {
    engine: Box<dyn Engine>,
    changelog: SharedChangelog,
    limits: Limits,
    poisoned: Option<String>,
    records: metrics::Counter,
    bytes: metrics::Counter,
}

impl LoggedStore {
    /// Logs writes to `changelog` and applies them to `engine`.
    pub fn new(engine: Box<dyn Engine>, changelog: SharedChangelog, limits: Limits) -> Self {
        LoggedStore {
            engine,
            changelog,
            limits,
            poisoned: None,
            records: metrics::Counter::noop(),
            bytes: metrics::Counter::noop(),
        }
    }

    /// Counts the records and bytes sent to the changelog under `labels`.
    pub fn with_metrics(mut self, labels: &StoreLabels) -> Self {
        let l = labels.labels();
        self.records = metrics::counter!(crate::telemetry::CHANGELOG_RECORDS, l.clone());
        self.bytes = metrics::counter!(crate::telemetry::CHANGELOG_BYTES, l);
        self
    }

    /// The changelog this layer appends to.
    pub fn changelog(&self) -> SharedChangelog {
        Arc::clone(&self.changelog)
    }

    fn check_poisoned(&self) -> Result<()> {
        let reason = match &self.poisoned {
            Some(reason) => Some(reason.clone()),
            None => self
                .changelog
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .poisoned()
                .map(str::to_string),
        };
        match reason {
            Some(reason) => Err(StoreError::Poisoned {
                store: self.engine.name().to_string(),
                reason,
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

    fn log_batch(&mut self, batch: &[MutationRef<'_>]) -> Result<u64> {
        self.records.increment(batch.len() as u64);
        self.bytes.increment(
            batch
                .iter()
                .map(|m| m.key.len() + m.value.map_or(0, <[u8]>::len))
                .sum::<usize>() as u64,
        );
        let mut log = self.changelog.lock().unwrap_or_else(|p| p.into_inner());
        log.append_refs(now_ms(), batch)
            .map_err(|source| StoreError::Changelog {
                store: self.engine.name().to_string(),
                source,
            })
    }
}

impl KeyValueStore for LoggedStore {
    fn name(&self) -> &str {
        self.engine.name()
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(key)
    }

    fn get_with(&mut self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        self.engine.get_with(key, f)
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
        let refs: Vec<MutationRef<'_>> = batch.iter().map(MutationRef::from).collect();
        let end = self.log_batch(&refs);
        drop(refs);
        let end = self.poison(end)?;
        let r = self.engine.write_logged(batch, end);
        self.poison(r)
    }

    fn write_batch_refs(&mut self, batch: &[MutationRef<'_>]) -> Result<()> {
        self.check_poisoned()?;
        self.limits.check_refs(self.engine.name(), batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        let end = self.log_batch(batch);
        let end = self.poison(end)?;
        let r = self.engine.write_logged_refs(batch, end);
        self.poison(r)
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        self.engine.scan(from, to)
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        self.engine.snapshot()
    }

    /// Records the changelog end reached so far in the engine and flushes it. Call it (through
    /// the task's commit) only once the changelog records are durable and checkpointed: a
    /// flushed engine ahead of the checkpoint must be rebuilt after a crash.
    fn flush(&mut self) -> Result<()> {
        self.check_poisoned()?;
        let end = self
            .changelog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .end();
        let r = self.engine.write_logged(Vec::new(), end);
        self.poison(r)?;
        let r = self.engine.flush();
        self.poison(r)
    }

    /// Every write has already been sent to the changelog; the task's commit makes the
    /// sink durable. Refuses if an earlier failure poisoned the layer.
    fn flush_to_changelog(&mut self) -> Result<()> {
        self.check_poisoned()
    }

    /// The engine's value of each key (or a tombstone), sent to the changelog; the engine
    /// itself is unchanged.
    fn relog(&mut self, keys: &[Vec<u8>]) -> Result<()> {
        self.check_poisoned()?;
        for chunk in keys.chunks(1024) {
            let mut batch = Vec::with_capacity(chunk.len());
            for key in chunk {
                batch.push(Mutation {
                    key: key.clone(),
                    value: self.engine.get(key)?,
                });
            }
            let refs: Vec<MutationRef<'_>> = batch.iter().map(MutationRef::from).collect();
            let r = self.log_batch(&refs);
            self.poison(r)?;
        }
        Ok(())
    }
}
