//! Standby replicas: warm copies of tasks that run in other processes.
//!
//! A standby keeps the local stores of a task it does not run (RocksDB stores with a
//! changelog; a memory store would not survive to be promoted) and follows the task's
//! checkpoints: each catch-up reads the task's newest checkpoint and applies its changelog
//! records up to the changelog end that checkpoint names, never further, so a standby is never
//! ahead of committed state. It writes nothing to the changelog or the checkpoint. When the
//! task moves to this process, the standby is closed and the task opens on the same
//! directories: its restore is the delta since the last catch-up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::backend::{Backend, TopicPartition};
use crate::restore::{NoProgress, apply_range};
use crate::statedir::StateDir;
use crate::store::config::EngineKind;
use crate::store::stack::{self, Manifest};
use crate::store::ttl::Clock;
use crate::store::{Engine, StoreError};
use crate::task_storage::TaskStoreError;
use crate::telemetry::{self, StoreLabels};

use super::RuntimeError;
use super::config::JobConfig;
use super::container::task_name;

/// A standby copy of one task's stores.
pub struct StandbyTask {
    task: String,
    stores: Vec<StandbyStore>,
}

struct StandbyStore {
    name: String,
    dir: PathBuf,
    engine: Box<dyn Engine>,
    tp: TopicPartition,
    /// The changelog end the engine holds.
    applied: u64,
    /// The changelog's end at the last catch-up (`None` before the first one).
    end_seen: Option<u64>,
    /// When the last catch-up ended.
    caught_up_at: Option<Instant>,
    /// The store's clock when it has `ttl.ms` (values carry an expiry header).
    ttl_clock: Option<Clock>,
    lag: metrics::Gauge,
}

impl StandbyStore {
    /// `gregor_standby_lag_records`: the changelog's end at the last catch-up minus the
    /// changelog end applied; `None` before the first catch-up.
    fn lag(&self) -> Option<u64> {
        self.end_seen.map(|end| end.saturating_sub(self.applied))
    }
}

/// A standby copy cannot answer a read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandbyReadError {
    /// The standby has not caught up since it was opened: its lag is unknown.
    #[error("its standby here has not caught up yet")]
    NotCaughtUp,
    /// The standby is further behind than the read allows.
    #[error("its standby here is {lag} changelog records behind, more than max_lag={max_lag}")]
    TooFarBehind {
        /// Its lag in records.
        lag: u64,
        /// What the read allowed.
        max_lag: u64,
    },
    /// The task has no such store, or the store is not kept by standbys (not RocksDB, or
    /// without a changelog).
    #[error(
        "its standby here keeps no store `{0}` (standbys keep RocksDB stores with a changelog)"
    )]
    NoStore(String),
    /// The engine failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StandbyTask {
    /// Opens the local stores of `job`'s task `partition` as a standby (creating them if
    /// missing). Catches up nothing yet.
    pub fn open(state: &StateDir, job: &JobConfig, partition: u32) -> Result<Self, RuntimeError> {
        let task = task_name(&job.name, partition);
        let mut stores = Vec::new();
        for (name, cfg) in &job.stores {
            let Some(topic) = &cfg.changelog else {
                continue;
            };
            if cfg.engine != EngineKind::Rocksdb {
                continue;
            }
            let err = |e: crate::store::StoreError| RuntimeError::Store(TaskStoreError::from(e));
            let dir = state.store_dir(&task, name);
            if let Some(m) = stack::read_manifest(name, &dir).map_err(err)? {
                stack::check_compatible(name, &m.config, cfg).map_err(err)?;
            }
            stack::write_manifest(
                &dir,
                &Manifest {
                    store: name.clone(),
                    config: cfg.clone(),
                    changelog_partition: partition,
                },
            )
            .map_err(err)?;
            let mut engine = stack::open_engine(name, &dir, cfg).map_err(err)?;
            let applied = match engine.changelog_end().map_err(err)? {
                Some(end) => end,
                None => {
                    // Entries without a changelog position cannot be followed: start over.
                    engine.wipe().map_err(err)?;
                    0
                }
            };
            let labels = StoreLabels::of_task(&task, name).labels();
            stores.push(StandbyStore {
                name: name.clone(),
                dir,
                engine,
                tp: TopicPartition::new(topic.clone(), partition),
                applied,
                end_seen: None,
                caught_up_at: None,
                ttl_clock: cfg.ttl_ms.map(|_| cfg.clock.clone()),
                lag: metrics::gauge!(telemetry::STANDBY_LAG, labels),
            });
        }
        Ok(StandbyTask { task, stores })
    }

    /// The task's name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// Applies the changelog records up to the task's newest checkpoint; returns how many
    /// offsets it moved forward.
    pub fn catch_up(&mut self, backend: &dyn Backend) -> Result<u64, RuntimeError> {
        let backend_err = |source| RuntimeError::Backend {
            task: self.task.clone(),
            source,
        };
        let Some(cp) = backend.read_checkpoint(&self.task).map_err(backend_err)? else {
            return Ok(0);
        };
        let mut moved = 0;
        for s in &mut self.stores {
            let offsets = backend
                .offsets(&s.tp)
                .map_err(|source| RuntimeError::Backend {
                    task: self.task.clone(),
                    source,
                })?;
            let Some(&target) = cp.changelogs.get(&s.name) else {
                continue;
            };
            let err = |e: crate::store::StoreError| RuntimeError::Store(TaskStoreError::from(e));
            if target < s.applied || (s.applied > 0 && s.applied < offsets.start) {
                // The changelog was reset, or records the standby still needs are gone.
                tracing::info!(task = %self.task, store = %s.name, "standby: rebuilding from the changelog");
                s.engine.wipe().map_err(err)?;
                s.applied = 0;
            }
            if target > s.applied {
                let bulk = s.applied == 0;
                let from = if bulk { offsets.start } else { s.applied };
                apply_range(
                    &mut *s.engine,
                    backend,
                    &s.tp,
                    from,
                    target,
                    bulk,
                    &mut NoProgress,
                )
                .map_err(|e| RuntimeError::Store(TaskStoreError::from(e)))?;
                stack::write_offset_file(&s.name, &s.dir, target).map_err(err)?;
                moved += target - s.applied;
                s.applied = target;
            }
            s.end_seen = Some(offsets.end);
            s.caught_up_at = Some(Instant::now());
            s.lag.set(offsets.end.saturating_sub(s.applied) as f64);
        }
        Ok(moved)
    }

    /// The value under `key` in `store` as this standby holds it, with its lag in records
    /// (see [`StandbyReadError::TooFarBehind`]) and the time since its last catch-up; only if
    /// that lag is at most `max_lag`. Expired entries of a store with `ttl.ms` are absent.
    ///
    /// Called on the container's thread, like [`catch_up`](Self::catch_up): a read never
    /// sees a catch-up half applied.
    pub fn get(
        &mut self,
        store: &str,
        key: &[u8],
        max_lag: u64,
    ) -> Result<(Option<Vec<u8>>, u64, Duration), StandbyReadError> {
        let s = self
            .stores
            .iter_mut()
            .find(|s| s.name == store)
            .ok_or_else(|| StandbyReadError::NoStore(store.to_string()))?;
        let (Some(lag), Some(at)) = (s.lag(), s.caught_up_at) else {
            return Err(StandbyReadError::NotCaughtUp);
        };
        if lag > max_lag {
            return Err(StandbyReadError::TooFarBehind { lag, max_lag });
        }
        let stored = s.engine.get(key)?;
        let value = match (&s.ttl_clock, stored) {
            (Some(clock), Some(v)) => {
                crate::store::ttl::visible(&s.name, &v, clock.now_ms())?.map(<[u8]>::to_vec)
            }
            (_, v) => v,
        };
        Ok((value, lag, at.elapsed()))
    }

    /// The changelog end each store holds.
    pub fn positions(&self) -> BTreeMap<String, u64> {
        self.stores
            .iter()
            .map(|s| (s.name.clone(), s.applied))
            .collect()
    }
}
