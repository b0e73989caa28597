//! A task's storage: its stores, its record sink and its checkpoint. [`TaskStorage`] is the
//! one owner of the per-task restore and commit protocol; the container, the CLI and the
//! tests all go through it.
//!
//! **Open** ([`TaskStorage::open`]): read the task's checkpoint; for each store check its
//! manifest, open its engine, plan its restore (a pure function of what is local, the
//! checkpoint and the changelog's offsets, see [`crate::restore::plan`]) and run the plan.
//!
//! **Commit** ([`TaskStorage::commit`]), in this order:
//! 1. flush each store's cache: dirty entries become changelog records (sent through the
//!    task's sink) and an engine batch (in the memtable);
//! 2. send the task's output records through the same sink;
//! 3. flush the sink: every changelog and output record is durable (fsynced / acknowledged),
//!    and the acknowledged ends are known;
//! 4. write the checkpoint: input offsets, changelog ends, output ends;
//! 5. tell the backend the output up to those ends is committed (embedded: read-committed
//!    markers);
//! 6. flush each store's engine with the changelog end it now reflects, and write `OFFSET`.
//!
//! The engine is flushed after the checkpoint, never before: a crash between 4 and 6 leaves
//! the engine *behind* the checkpoint, which a delta restore closes; flushing first would
//! leave it *ahead*, and an engine ahead of its checkpoint can only be rebuilt.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, BackendError, TopicPartition, TopicRole, TopicSpec};
use crate::changelog::{Changelog, SharedChangelog, SharedSink};
use crate::checkpoint::Checkpoint;
use crate::restore::{
    self, ChangelogAccess, LocalStore, RestoreError, RestoreInputs, RestoreProgress, RestoreStats,
};
use crate::statedir::{StateDir, StateDirError, validate_name};
use crate::store::config::{EngineKind, StoreConfig};
use crate::store::logged::LoggedStore;
use crate::store::stack::{self, Manifest};
use crate::store::{Engine, KeyValueStore, StoreError};

/// Opening, restoring or committing a task's storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskStoreError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Restoring a store failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// A store's changelog could not be created, checked or read.
    #[error("store `{store}`: changelog `{topic}`: {source}")]
    Changelog {
        /// Store name.
        store: String,
        /// Changelog topic.
        topic: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// The task's sink or checkpoint failed.
    #[error("task `{task}`: {source}")]
    Backend {
        /// Task name.
        task: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A bad task or store name.
    #[error(transparent)]
    Name(#[from] StateDirError),
}

/// One open store of a task.
pub struct TaskStore {
    name: String,
    config: StoreConfig,
    dir: PathBuf,
    stack: Box<dyn KeyValueStore>,
    changelog: Option<SharedChangelog>,
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

    /// The changelog partition, if the store has one.
    pub fn changelog_partition(&self) -> Option<TopicPartition> {
        self.changelog.as_ref().map(|c| {
            c.lock()
                .unwrap_or_else(|p| p.into_inner())
                .topic_partition()
                .clone()
        })
    }

    /// The changelog end the store's writes so far reach (expected until the next commit
    /// learns the acknowledged one); `None` without a changelog.
    pub fn changelog_end(&self) -> Option<u64> {
        self.changelog
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).end())
    }
}

/// A record a task sends to an output, handed to [`TaskStorage::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Where it goes.
    pub tp: TopicPartition,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Value bytes (`None`: tombstone).
    pub value: Option<Vec<u8>>,
}

/// Where a task's storage lives.
pub struct TaskStorageContext<'a> {
    /// The backend holding changelogs, outputs and checkpoints.
    pub backend: Arc<dyn Backend>,
    /// The state directory holding the stores' local engines.
    pub state: &'a StateDir,
    /// The task's name (its directory under `tasks/`, its checkpoint's key).
    pub task: &'a str,
    /// The changelog partition this task writes (its input partition).
    pub changelog_partition: u32,
}

/// A task's stores, sink and checkpoint: restore on open, the commit protocol, close.
pub struct TaskStorage {
    task: String,
    backend: Arc<dyn Backend>,
    sink: SharedSink,
    stores: BTreeMap<String, TaskStore>,
    checkpoint: Option<Checkpoint>,
    failpoint: Option<Box<dyn FnMut(CommitStep) + Send>>,
}

/// A point inside [`TaskStorage::commit`] where a crash test can stop it (see
/// [`TaskStorage::set_failpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitStep {
    /// The sink was flushed (changelog and output records durable), no checkpoint yet.
    SinkFlushed,
    /// The checkpoint was written; engines not flushed yet.
    CheckpointWritten,
}

impl TaskStorage {
    /// Opens every store in `configs` for the task in `ctx`, restoring each to the task's
    /// checkpoint; returns the storage and the restore statistics of the stores with a
    /// changelog.
    pub fn open(
        ctx: &TaskStorageContext<'_>,
        configs: &BTreeMap<String, StoreConfig>,
        progress: &mut dyn RestoreProgress,
    ) -> Result<(TaskStorage, Vec<RestoreStats>), TaskStoreError> {
        validate_name("task", ctx.task)?;
        let backend_err = |source| TaskStoreError::Backend {
            task: ctx.task.to_string(),
            source,
        };
        let checkpoint = ctx.backend.read_checkpoint(ctx.task).map_err(backend_err)?;
        let sink: SharedSink = Arc::new(Mutex::new(
            ctx.backend.open_sink(ctx.task).map_err(backend_err)?,
        ));
        let mut stores = BTreeMap::new();
        let mut stats = Vec::new();
        for (name, config) in configs {
            let (store, st) = open_store(ctx, &sink, checkpoint.as_ref(), name, config, progress)?;
            stores.insert(name.clone(), store);
            stats.extend(st);
        }
        Ok((
            TaskStorage {
                task: ctx.task.to_string(),
                backend: Arc::clone(&ctx.backend),
                sink,
                stores,
                checkpoint,
                failpoint: None,
            },
            stats,
        ))
    }

    /// A failpoint for crash tests: `hook` runs inside every later [`commit`](Self::commit)
    /// at each [`CommitStep`] (e.g. it aborts the process or panics at one of them, to test a
    /// crash in that window through the production commit).
    pub fn set_failpoint(&mut self, hook: Box<dyn FnMut(CommitStep) + Send>) {
        self.failpoint = Some(hook);
    }

    /// The task's name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The task's last checkpoint (read at open, then the one each commit wrote).
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// Whether the checkpoint records every input partition in `inputs` and the changelog of
    /// every store. Until it does, a crash would leave restore nothing to go by, so the
    /// container commits once before the first message.
    pub fn checkpoint_covers(&self, inputs: &[TopicPartition]) -> bool {
        self.checkpoint.as_ref().is_some_and(|cp| {
            inputs
                .iter()
                .all(|tp| cp.input(&tp.topic, tp.partition).is_some())
                && self
                    .stores
                    .values()
                    .all(|s| s.changelog.is_none() || cp.changelogs.contains_key(&s.name))
        })
    }

    /// The task's stores by name.
    pub fn stores(&mut self) -> &mut BTreeMap<String, TaskStore> {
        &mut self.stores
    }

    /// Store `name`, if the task has it.
    pub fn store(&mut self, name: &str) -> Option<&mut TaskStore> {
        self.stores.get_mut(name)
    }

    /// Commits the task (see the module docs for the order): its stores, `outputs`, and a
    /// checkpoint recording `inputs` (the next offset to process per input partition; input
    /// partitions not given keep their checkpointed offsets). Returns the checkpoint written.
    pub fn commit(
        &mut self,
        inputs: &BTreeMap<TopicPartition, u64>,
        outputs: Vec<OutputRecord>,
    ) -> Result<&Checkpoint, TaskStoreError> {
        let backend_err = |source| TaskStoreError::Backend {
            task: self.task.clone(),
            source,
        };
        // 1-3: everything into the sink, then make it durable.
        for store in self.stores.values_mut() {
            store.stack.flush_to_changelog()?;
        }
        let acked = {
            let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            let sent: Result<_, BackendError> = outputs
                .iter()
                .try_for_each(|r| sink.send(&r.tp, r.timestamp, &r.key, r.value.as_deref()))
                .and_then(|()| sink.flush());
            match sent {
                Ok(acked) => acked,
                Err(e) => {
                    // Which records are durable is unknown now: refuse every later write
                    // until the task is reopened (and restored).
                    for store in self.stores.values() {
                        if let Some(cl) = &store.changelog {
                            cl.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .poison(format!("a commit failed: {e}"));
                        }
                    }
                    return Err(backend_err(e));
                }
            }
        };
        if let Some(hook) = &mut self.failpoint {
            hook(CommitStep::SinkFlushed);
        }
        // 4: the checkpoint.
        let mut cp = self.checkpoint.clone().unwrap_or_default();
        let mut output_ends = acked;
        for store in self.stores.values() {
            let Some(cl) = &store.changelog else { continue };
            let mut cl = cl.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(end) = output_ends.remove(cl.topic_partition()) {
                cl.acknowledged(end);
            }
            cp.changelogs.insert(store.name.clone(), cl.end());
        }
        for (tp, &next) in inputs {
            cp.inputs
                .entry(tp.topic.clone())
                .or_default()
                .insert(tp.partition, next);
        }
        for (tp, &end) in &output_ends {
            cp.outputs
                .entry(tp.topic.clone())
                .or_default()
                .insert(tp.partition, end);
        }
        self.backend
            .write_checkpoint(&self.task, &cp)
            .map_err(backend_err)?;
        if let Some(hook) = &mut self.failpoint {
            hook(CommitStep::CheckpointWritten);
        }
        // 5: output committed.
        self.backend
            .outputs_committed(&output_ends)
            .map_err(backend_err)?;
        // 6: the engines, after the checkpoint.
        for store in self.stores.values_mut() {
            store.stack.flush()?;
            if let Some(end) = store.changelog_end() {
                stack::write_offset_file(&store.name, &store.dir, end)?;
            }
        }
        metrics::counter!("job.commits").increment(1);
        self.checkpoint = Some(cp);
        Ok(self.checkpoint.as_ref().expect("just set"))
    }

    /// Runs the cleanup policy (compaction) of each store's changelog where the backend does
    /// it in-process. Call it only right after [`commit`](Self::commit): compaction keeps the
    /// newest record per key over the whole log, so an uncommitted record could otherwise
    /// shadow a committed one that a crash would then need.
    pub fn clean_changelogs(&mut self, now_ms: i64) -> Result<(), TaskStoreError> {
        for store in self.stores.values() {
            let Some(tp) = store.changelog_partition() else {
                continue;
            };
            self.backend
                .clean(&tp, now_ms)
                .map_err(|source| TaskStoreError::Changelog {
                    store: store.name.clone(),
                    topic: tp.topic.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Closes the stores without committing: whatever was written since the last commit is
    /// discarded by the next restore. Commit first to keep it.
    pub fn close(self) -> Result<(), TaskStoreError> {
        for (_, mut store) in self.stores {
            if store.changelog.is_some() {
                // A logged store's flush would record uncommitted writes in the engine.
                drop(store);
            } else {
                store.stack.close()?;
            }
        }
        Ok(())
    }
}

/// Opens store `name` of the task in `ctx` with `config`, restoring it to `checkpoint`.
fn open_store(
    ctx: &TaskStorageContext<'_>,
    sink: &SharedSink,
    checkpoint: Option<&Checkpoint>,
    name: &str,
    config: &StoreConfig,
    progress: &mut dyn RestoreProgress,
) -> Result<(TaskStore, Option<RestoreStats>), TaskStoreError> {
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
            },
            None,
        ));
    };
    let cl_err = |source| TaskStoreError::Changelog {
        store: name.to_string(),
        topic: topic.clone(),
        source,
    };
    let backend = &*ctx.backend;
    backend
        .ensure_topic(&TopicSpec {
            name: topic.clone(),
            partitions: ctx.changelog_partition + 1,
            role: TopicRole::Changelog,
        })
        .map_err(cl_err)?;
    let tp = TopicPartition::new(topic.clone(), ctx.changelog_partition);
    let offsets = backend.offsets(&tp).map_err(cl_err)?;
    let mut changelog = Changelog::new(Arc::clone(sink), tp, offsets.end);
    let inputs = RestoreInputs {
        local,
        checkpoint: checkpoint.and_then(|c| c.changelogs.get(name).copied()),
        changelog_start: offsets.start,
        changelog_end: offsets.end,
        truncatable: backend.can_truncate(),
    };
    let plan = restore::plan::plan(&inputs).map_err(|source| RestoreError::Plan {
        store: name.to_string(),
        source,
    })?;
    let access = ChangelogAccess {
        backend,
        changelog: &mut changelog,
    };
    let stats = restore::execute(&plan, &mut *engine, access, progress)?;
    if plan.kind != restore::RestoreKind::UpToDate {
        // The engine now holds (flushed) exactly `plan.target`; an older OFFSET file ahead
        // of it (a crash between OFFSET and checkpoint) would make every later open rebuild
        // the store from scratch until the next commit.
        stack::write_offset_file(name, &dir, plan.target)?;
    }
    let changelog = Arc::new(Mutex::new(changelog));
    let logged = LoggedStore::new(engine, Arc::clone(&changelog), config.limits);
    let stack = stack::add_layers(Box::new(logged), config);
    Ok((
        TaskStore {
            name: name.to_string(),
            config: config.clone(),
            dir,
            stack,
            changelog: Some(changelog),
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
