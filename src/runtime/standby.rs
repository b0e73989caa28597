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

use crate::backend::{Backend, TopicPartition};
use crate::restore::{NoProgress, apply_range};
use crate::statedir::StateDir;
use crate::store::Engine;
use crate::store::config::EngineKind;
use crate::store::stack::{self, Manifest};
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
    lag: metrics::Gauge,
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
            s.lag.set(offsets.end.saturating_sub(s.applied) as f64);
        }
        Ok(moved)
    }

    /// The changelog end each store holds.
    pub fn positions(&self) -> BTreeMap<String, u64> {
        self.stores
            .iter()
            .map(|s| (s.name.clone(), s.applied))
            .collect()
    }
}
