//! The stores of one task: opening each one (manifest check, engine, restore from its
//! changelog, layers) and the store half of a commit.
//!
//! Commit order for a store: flush the cache (dirty batch → changelog append → engine
//! batch), sync the changelog and take its end ([`TaskStore::prepare_commit`]); the task writes
//! its checkpoint; then flush the engine and write the store's `OFFSET` file
//! ([`TaskStore::finish_commit`]). DESIGN.md flushes the engine before the checkpoint; see
//! `finish_commit` for why gregor does it after.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::changelog::SharedChangelog;
use crate::checkpoint::Checkpoint;
use crate::log::{LogDir, LogError, Partition, TopicConfig};
use crate::restore::{
    self, LocalStore, RestoreError, RestoreInputs, RestoreProgress, RestoreStats,
};
use crate::statedir::{StateDir, StateDirError, validate_name};
use crate::store::config::{EngineKind, StoreConfig};
use crate::store::logged::LoggedStore;
use crate::store::stack::{self, Manifest};
use crate::store::{Engine, KeyValueStore, StoreError};

/// Opening or committing a task's store failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskStoreError {
    /// The store itself failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Restoring it failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// Its changelog could not be opened or created.
    #[error("store `{store}`: changelog `{topic}`: {source}")]
    Changelog {
        /// Store name.
        store: String,
        /// Changelog topic.
        topic: String,
        /// The log error.
        #[source]
        source: LogError,
    },
    /// A bad task or store name.
    #[error(transparent)]
    Name(#[from] StateDirError),
}

/// Where a task's stores live and what they restore to.
pub struct StoreOpenContext<'a> {
    /// The state directory.
    pub state: &'a StateDir,
    /// The embedded log holding changelogs.
    pub logs: &'a LogDir,
    /// The task's name (its directory under `tasks/`).
    pub task: &'a str,
    /// The changelog partition this task writes (its input partition).
    pub changelog_partition: u32,
    /// The task's last checkpoint, if any.
    pub checkpoint: Option<&'a Checkpoint>,
}

/// One open store of a task.
pub struct TaskStore {
    name: String,
    config: StoreConfig,
    dir: PathBuf,
    stack: Box<dyn KeyValueStore>,
    changelog: Option<Arc<Mutex<Partition>>>,
    /// The changelog end of a prepared, not yet finished commit.
    prepared: Option<u64>,
}

impl TaskStore {
    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The top of the store's stack.
    pub fn stack(&mut self) -> &mut dyn KeyValueStore {
        &mut *self.stack
    }

    /// The store half of a commit, in one step: [`prepare_commit`](Self::prepare_commit) then
    /// [`finish_commit`](Self::finish_commit). Returns the changelog end to checkpoint (`None`
    /// without a changelog). Use it when nothing is checkpointed in between (tools, tests).
    pub fn commit(&mut self) -> Result<Option<u64>, TaskStoreError> {
        let end = self.prepare_commit()?;
        self.finish_commit()?;
        Ok(end)
    }

    /// Commit, first half (before the checkpoint is written): flushes the cache into the
    /// changelog and the engine's memtable, fsyncs the changelog, and returns its end — the
    /// changelog end to checkpoint (`None` without a changelog).
    pub fn prepare_commit(&mut self) -> Result<Option<u64>, TaskStoreError> {
        self.stack.flush_to_changelog()?;
        let end = self
            .changelog
            .as_ref()
            .map(|cl| cl.lock().unwrap_or_else(|p| p.into_inner()).end_offset());
        self.prepared = end;
        Ok(end)
    }

    /// Commit, second half (after the checkpoint is written): flushes the engine and records
    /// the prepared changelog end in the `OFFSET` file.
    ///
    /// Flushing the engine after the checkpoint rather than before it keeps every crash
    /// window cheap: a crash before the checkpoint leaves the engine at (or, if RocksDB flushed
    /// a memtable on its own, past) the previous checkpoint, a crash after it leaves the engine
    /// behind the new one, which a delta restore from the durable changelog closes. Flushing
    /// first would leave the engine *ahead* of the checkpoint after a crash in between, and an
    /// engine ahead of its checkpoint can only be rebuilt from scratch.
    pub fn finish_commit(&mut self) -> Result<(), TaskStoreError> {
        self.stack.flush()?;
        if let Some(end) = self.prepared.take() {
            stack::write_offset_file(&self.name, &self.dir, end)?;
        }
        Ok(())
    }

    /// Runs the changelog's cleanup policy (compaction for changelogs) over its closed
    /// segments. Call it only right after [`commit`](Self::commit): compaction keeps the
    /// newest record per key over the whole log, so an uncommitted record could otherwise
    /// shadow a committed one that a crash would then need.
    pub fn clean_changelog(&mut self, now_ms: i64) -> Result<(), TaskStoreError> {
        let Some(cl) = &self.changelog else {
            return Ok(());
        };
        let topic = self.config.changelog.clone().unwrap_or_default();
        cl.lock()
            .unwrap_or_else(|p| p.into_inner())
            .clean(now_ms)
            .map(|report| tracing::debug!(store = %self.name, "changelog cleanup: {report:?}"))
            .map_err(|source| TaskStoreError::Changelog {
                store: self.name.clone(),
                topic,
                source,
            })
    }

    /// Flushes and closes the store.
    pub fn close(mut self) -> Result<(), TaskStoreError> {
        self.stack.close()?;
        Ok(())
    }
}

/// Opens store `name` of the task in `ctx` with `config`, restoring it to the task's
/// checkpoint from its changelog first.
pub fn open_store(
    ctx: &StoreOpenContext<'_>,
    name: &str,
    config: &StoreConfig,
    progress: &mut dyn RestoreProgress,
) -> Result<(TaskStore, Option<RestoreStats>), TaskStoreError> {
    validate_name("task", ctx.task)?;
    validate_name("store", name)?;
    let dir = ctx.state.store_dir(ctx.task, name);
    if let Some(m) = stack::read_manifest(name, &dir)? {
        stack::check_compatible(name, &m.config, config)?;
    }
    stack::write_manifest(
        &dir,
        &Manifest {
            store: name.to_string(),
            config: config.clone(),
            changelog_partition: ctx.changelog_partition,
        },
    )?;
    let (mut engine, local) = open_local(name, &dir, config)?;

    let Some(topic) = &config.changelog else {
        let stack = stack::add_layers(engine, config);
        return Ok((
            TaskStore {
                name: name.to_string(),
                config: config.clone(),
                dir,
                stack,
                changelog: None,
                prepared: None,
            },
            None,
        ));
    };
    let cl_err = |source| TaskStoreError::Changelog {
        store: name.to_string(),
        topic: topic.clone(),
        source,
    };
    let mut partition = open_changelog(ctx.logs, topic, ctx.changelog_partition).map_err(cl_err)?;
    let inputs = RestoreInputs {
        local,
        checkpoint: ctx.checkpoint.and_then(|c| c.changelogs.get(name).copied()),
        changelog_start: partition.start_offset(),
        changelog_end: partition.end_offset(),
    };
    let plan = restore::plan::plan(&inputs).map_err(|source| RestoreError::Plan {
        store: name.to_string(),
        source,
    })?;
    let stats = restore::execute(&plan, &mut *engine, &mut partition, progress)?;
    if plan.kind != restore::RestoreKind::UpToDate {
        // The engine now holds (flushed) exactly `plan.target`; an older OFFSET file ahead
        // of it (a crash between OFFSET and checkpoint) would make every later open rebuild
        // the store from scratch until the next commit.
        stack::write_offset_file(name, &dir, plan.target)?;
    }
    let partition = Arc::new(Mutex::new(partition));
    let shared: SharedChangelog = partition.clone();
    let logged = LoggedStore::new(engine, shared, config.limits);
    let stack = stack::add_layers(Box::new(logged), config);
    Ok((
        TaskStore {
            name: name.to_string(),
            config: config.clone(),
            dir,
            stack,
            changelog: Some(partition),
            prepared: None,
        },
        Some(stats),
    ))
}

/// Opens the engine and describes what it holds for the planner. A RocksDB store with a
/// changelog that fails to open is moved aside (to `data.broken`, replacing an older one) and
/// recreated empty, reported as unusable so it is rebuilt from the changelog. Without a
/// changelog the engine holds the only copy of the data, so the failure is returned instead.
fn open_local(
    name: &str,
    dir: &std::path::Path,
    config: &StoreConfig,
) -> Result<(Box<dyn Engine>, LocalStore), TaskStoreError> {
    if config.engine == EngineKind::Memory {
        return Ok((stack::open_engine(name, dir, config)?, LocalStore::Missing));
    }
    let existed = dir.join(stack::DATA_DIR).exists();
    let mut engine = match stack::open_engine(name, dir, config) {
        Ok(e) => e,
        Err(e) if config.changelog.is_none() => return Err(e.into()),
        Err(e) => {
            let reason = format!("the engine failed to open: {e}");
            let data = dir.join(stack::DATA_DIR);
            let aside = dir.join("data.broken");
            tracing::warn!(
                store = name,
                "{reason}; moving it to {} and rebuilding it from the changelog",
                aside.display()
            );
            let io_err = |context, path: &std::path::Path| {
                let path = path.to_path_buf();
                move |source| StoreError::Io {
                    store: name.to_string(),
                    context,
                    path,
                    source,
                }
            };
            if aside.exists() {
                std::fs::remove_dir_all(&aside).map_err(io_err("cannot remove", &aside))?;
            }
            std::fs::rename(&data, &aside).map_err(io_err("cannot move aside", &data))?;
            crate::fsutil::fsync_dir(dir).map_err(io_err("cannot sync", dir))?;
            return Ok((
                stack::open_engine(name, dir, config)?,
                LocalStore::Unusable { reason },
            ));
        }
    };
    if !existed {
        return Ok((engine, LocalStore::Missing));
    }
    let local = match (engine.changelog_end(), stack::read_offset_file(name, dir)) {
        (Ok(engine_end), Ok(offset_file)) => LocalStore::Present {
            engine_end,
            offset_file,
            empty: engine.is_empty()?,
        },
        (Err(e), _) | (_, Err(e)) => LocalStore::Unusable {
            reason: e.to_string(),
        },
    };
    Ok((engine, local))
}

/// Opens partition `partition` of changelog `topic`, creating the topic (compacted) if it
/// does not exist.
pub fn open_changelog(logs: &LogDir, topic: &str, partition: u32) -> Result<Partition, LogError> {
    let t = logs.topic_or_create(topic, partition + 1, TopicConfig::compacted())?;
    let (p, report) = t.open_partition(partition)?;
    if let Some(cut) = &report.torn_tail {
        tracing::warn!(
            topic,
            partition,
            "cut a torn tail off the changelog: {cut:?}"
        );
    }
    Ok(p)
}

/// Opens every store of a task; returns them by name with their restore statistics.
pub fn open_stores(
    ctx: &StoreOpenContext<'_>,
    configs: &BTreeMap<String, StoreConfig>,
    progress: &mut dyn RestoreProgress,
) -> Result<(BTreeMap<String, TaskStore>, Vec<RestoreStats>), TaskStoreError> {
    let mut stores = BTreeMap::new();
    let mut stats = Vec::new();
    for (name, config) in configs {
        let (s, st) = open_store(ctx, name, config, progress)?;
        stores.insert(name.clone(), s);
        stats.extend(st);
    }
    Ok((stores, stats))
}
