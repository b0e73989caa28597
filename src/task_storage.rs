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
use crate::checkpoint::{Checkpoint, CheckpointOwner};
use crate::restore::{
    self, ChangelogAccess, LocalStore, RestoreError, RestoreInputs, RestoreProgress, RestoreStats,
};
use crate::statedir::{StateDir, StateDirError, validate_name};
use crate::store::config::{EngineKind, StoreConfig};
use crate::store::logged::LoggedStore;
use crate::store::stack::{self, Manifest};
use crate::store::{Engine, KeyValueStore, Mutation, StoreError};
use crate::telemetry::{self, StoreLabels};

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
    /// The process may no longer commit the task (its coordinator lease lapsed: another
    /// process may own the task by now). Nothing was checkpointed; what the task did since
    /// its last commit is discarded by whoever restores it next.
    #[error("task `{task}`: fenced, not committed: {reason}")]
    Fenced {
        /// Task name.
        task: String,
        /// Why (from the coordinator).
        reason: String,
    },
    /// The task has no checkpoint but one of its stores holds state: started, it would
    /// process its inputs again from the beginning on top of that state.
    #[error(
        "task `{task}` has no checkpoint, but its store `{store}` holds state ({evidence}): \
         started like this it would process its inputs again from the beginning on top of \
         that state (every count doubled). If the checkpoint was deleted or lost, start the \
         task from scratch with `gregor job reset JOB.toml --task {task}` (drops its stores, \
         empties their changelogs, restarts its inputs at the beginning)"
    )]
    NoCheckpoint {
        /// Task name.
        task: String,
        /// The store holding state.
        store: String,
        /// What shows the state (an engine marker, an `OFFSET` file, changelog records).
        evidence: String,
    },
    /// A changelog was turned on for a store with data, and the changelog topic already holds
    /// records, so it cannot be seeded from the store.
    #[error(
        "store `{store}` of task `{task}` holds data and gets a changelog now, but the \
         changelog `{topic}` already holds records up to offset {end}: gregor seeds a new \
         changelog from the store only when it is empty. Use a new (empty) changelog topic"
    )]
    SeedTargetNotEmpty {
        /// Task name.
        task: String,
        /// Store name.
        store: String,
        /// The changelog topic.
        topic: String,
        /// Its end offset.
        end: u64,
    },
    /// A store's changelog topic changed between runs.
    #[error(
        "store `{store}` of task `{task}`: its changelog was `{old}` and is `{new}` in the \
         config now; a store's changelog cannot be renamed (its engine and checkpoint refer \
         to `{old}`). Keep `changelog = \"{old}\"`, or reset the task (`gregor job reset \
         JOB.toml --task {task}`) to start it from scratch with `{new}`"
    )]
    ChangelogChanged {
        /// Task name.
        task: String,
        /// Store name.
        store: String,
        /// The changelog in the store's manifest.
        old: String,
        /// The changelog in the config.
        new: String,
    },
    /// Removing a task's local stores failed.
    #[error("task `{task}`: cannot remove {path}: {source}")]
    Io {
        /// Task name.
        task: String,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
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
        self.changelog
            .as_ref()
            .map(|c| crate::sync::lock(c).topic_partition().clone())
    }

    /// The changelog end the store's writes so far reach (expected until the next commit
    /// learns the acknowledged one); `None` without a changelog.
    pub fn changelog_end(&self) -> Option<u64> {
        self.changelog.as_ref().map(|c| crate::sync::lock(c).end())
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
    meters: TaskMeters,
    /// Stamped on every checkpoint this storage writes (see [`Self::set_owner`]).
    owner: Option<CheckpointOwner>,
    /// Asked right before each checkpoint write (see [`Self::set_fence`]).
    fence: Option<CommitFence>,
}

/// Asked right before a checkpoint is written: `Err(reason)` refuses the commit (the process
/// may no longer own the task). Shared by the tasks of a process.
pub type CommitFence = crate::backend::AbortCheck;

/// A task's commit and input-lag metrics, resolved once when the task opens.
struct TaskMeters {
    labels: Vec<metrics::Label>,
    commits: metrics::Counter,
    commit_duration: metrics::Histogram,
    lag: BTreeMap<TopicPartition, metrics::Gauge>,
    /// When reading an input's end last failed: the lag is not asked for again for a while.
    lag_failed: Option<std::time::Instant>,
}

impl TaskMeters {
    fn new(task: &str) -> Self {
        let labels = telemetry::task_labels(task);
        TaskMeters {
            commits: metrics::counter!(telemetry::COMMITS, labels.clone()),
            commit_duration: metrics::histogram!(telemetry::COMMIT_DURATION, labels.clone()),
            labels,
            lag: BTreeMap::new(),
            lag_failed: None,
        }
    }

    /// Sets the lag of each input partition: its end (as the backend knows it now) minus
    /// the task's next offset. Best effort: an end that cannot be read leaves the gauge, and
    /// no end is asked for in the 10 s after a failure (a commit must not wait on a broker
    /// that does not answer).
    fn input_lag(&mut self, backend: &dyn Backend, inputs: &BTreeMap<TopicPartition, u64>) {
        if self
            .lag_failed
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(10))
        {
            return;
        }
        for (tp, &next) in inputs {
            let Ok(end) = backend.end_for_metrics(tp) else {
                self.lag_failed = Some(std::time::Instant::now());
                return;
            };
            let labels = &self.labels;
            let gauge = self.lag.entry(tp.clone()).or_insert_with(|| {
                let mut l = labels.clone();
                l.push(metrics::Label::new("topic", tp.topic.clone()));
                l.push(metrics::Label::new("partition", tp.partition.to_string()));
                metrics::gauge!(telemetry::INPUT_LAG, l)
            });
            gauge.set(end.saturating_sub(next) as f64);
        }
    }
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
        let mut checkpoint = checkpoint;
        let mut stores = BTreeMap::new();
        let mut stats = Vec::new();
        for (name, config) in configs {
            let started = std::time::Instant::now();
            let (store, st) = open_store(ctx, &sink, &mut checkpoint, name, config, progress)?;
            tracing::debug!(
                task = ctx.task,
                store = %name,
                "opened in {} ms ({})",
                started.elapsed().as_millis(),
                st.as_ref().map_or("no changelog".to_string(), |s| format!(
                    "{:?} restore, {} records in {} ms",
                    s.kind,
                    s.records,
                    s.elapsed.as_millis()
                ))
            );
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
                meters: TaskMeters::new(ctx.task),
                owner: None,
                fence: None,
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

    /// Stamps `owner` (process and job model version) on every checkpoint written from now
    /// on.
    pub fn set_owner(&mut self, owner: Option<CheckpointOwner>) {
        self.owner = owner;
    }

    /// Asks `fence` right before every checkpoint write from now on; when it refuses, the
    /// commit fails with [`TaskStoreError::Fenced`] and writes no checkpoint (the changelog
    /// and output records already flushed lie past the checkpoint: the next restore trims
    /// them).
    pub fn set_fence(&mut self, fence: Option<CommitFence>) {
        crate::sync::lock(&self.sink).set_abort(fence.clone());
        self.fence = fence;
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

    /// Step 3 of a commit: sends `outputs`, then waits until everything sent is durable;
    /// returns the acknowledged end of every partition written since the last flush. On
    /// failure the changelogs refuse later writes (which records are durable is unknown
    /// until a restore), and a failure while the fence says the task may be gone is
    /// [`TaskStoreError::Fenced`].
    fn flush_sink(
        &mut self,
        outputs: &[OutputRecord],
    ) -> Result<BTreeMap<TopicPartition, u64>, TaskStoreError> {
        let sent: Result<_, BackendError> = {
            let mut sink = crate::sync::lock(&self.sink);
            outputs
                .iter()
                .try_for_each(|r| sink.send(&r.tp, r.timestamp, &r.key, r.value.as_deref()))
                .and_then(|()| sink.flush())
        };
        let e = match sent {
            Ok(acked) => return Ok(acked),
            Err(e) => e,
        };
        for store in self.stores.values() {
            if let Some(cl) = &store.changelog {
                crate::sync::lock(cl).poison(format!("a commit failed: {e}"));
            }
        }
        // The sink stops waiting once the fence says the task may be gone.
        if let Some(fence) = &self.fence
            && let Err(reason) = fence()
        {
            return Err(TaskStoreError::Fenced {
                task: self.task.clone(),
                reason: format!("{reason} ({e})"),
            });
        }
        Err(TaskStoreError::Backend {
            task: self.task.clone(),
            source: e,
        })
    }

    /// Step 3b of a commit (see [`crate::changelog::Changelog::unexpected_records`]): while
    /// a changelog's acknowledged end lies past the end its own records explain, re-logs the
    /// current value of every key the records in between touched and flushes again, so that
    /// the newest record of each such key is this task's. Gives up (an error, nothing
    /// checkpointed) if stray records keep arriving.
    fn repair_changelogs(
        &mut self,
        acked: &mut BTreeMap<TopicPartition, u64>,
    ) -> Result<(), TaskStoreError> {
        const ROUNDS: usize = 10;
        for _ in 0..ROUNDS {
            let mut repaired = false;
            for store in self.stores.values_mut() {
                let Some(cl) = &store.changelog else { continue };
                let (tp, range) = {
                    let mut cl = crate::sync::lock(cl);
                    let tp = cl.topic_partition().clone();
                    let Some(&end) = acked.get(&tp) else { continue };
                    let range = cl.unexpected_records(end);
                    cl.acknowledged(end);
                    (tp, range)
                };
                let Some((from, end)) = range else { continue };
                let keys: Vec<Vec<u8>> =
                    crate::restore::exec::keys_in_range(&*self.backend, &tp, from, end)
                        .map_err(|source| TaskStoreError::Changelog {
                            store: store.name.clone(),
                            topic: tp.topic.clone(),
                            source,
                        })?
                        .into_iter()
                        .collect();
                tracing::warn!(
                    task = %self.task,
                    store = %store.name,
                    changelog = %tp,
                    "records this task did not send in [{from}, {end}) (a former owner's late writes, or producer retries): writing the {} keys they touch again",
                    keys.len()
                );
                store.stack.relog(&keys)?;
                repaired = true;
            }
            if !repaired {
                return Ok(());
            }
            acked.extend(self.flush_sink(&[])?);
        }
        Err(TaskStoreError::Backend {
            task: self.task.clone(),
            source: BackendError::retriable(
                "repairing its changelogs",
                format!("records of another writer still arrive after {ROUNDS} rounds"),
            ),
        })
    }

    /// Commits the task (see the module docs for the order): its stores, `outputs`, and a
    /// checkpoint recording `inputs` (the next offset to process per input partition; input
    /// partitions not given keep their checkpointed offsets). Returns the checkpoint written.
    pub fn commit(
        &mut self,
        inputs: &BTreeMap<TopicPartition, u64>,
        outputs: Vec<OutputRecord>,
    ) -> Result<&Checkpoint, TaskStoreError> {
        let started = std::time::Instant::now();
        // 0: a bounded expiry pass of each store with `ttl.ms`: its tombstones are dirty
        // cache entries that step 1 sends to the changelog with this commit.
        for store in self.stores.values_mut() {
            if store.config.ttl_ms.is_some() {
                store.stack.expire()?;
            }
        }
        // 1-3: everything into the sink, then make it durable. A store without a changelog
        // (at-least-once) has no other copy than its engine: it is flushed here, before the
        // checkpoint, so a checkpoint never covers input whose effect a crash could lose
        // (with the WAL off, unflushed memtables die with the process).
        for store in self.stores.values_mut() {
            if store.changelog.is_some() {
                store.stack.flush_to_changelog()?;
            } else {
                store.stack.flush()?;
            }
        }
        let mut acked = self.flush_sink(&outputs)?;
        // 3b: records this task did not send in one of its changelogs (a former owner cut
        // off by a network partition, whose writes arrived after the task moved here; or the
        // duplicates of a producer retry): the keys they touch are written again, so that the
        // checkpoint below covers this task's values of them, not the stray ones.
        self.repair_changelogs(&mut acked)?;
        let backend_err = |source| TaskStoreError::Backend {
            task: self.task.clone(),
            source,
        };
        if let Some(hook) = &mut self.failpoint {
            hook(CommitStep::SinkFlushed);
        }
        // 4: the checkpoint.
        let mut cp = self.checkpoint.clone().unwrap_or_default();
        let mut output_ends = acked;
        for store in self.stores.values() {
            let Some(cl) = &store.changelog else { continue };
            let mut cl = crate::sync::lock(cl);
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
        if let Some(owner) = &self.owner {
            cp.owner = Some(owner.clone());
        }
        if let Some(fence) = &self.fence
            && let Err(reason) = fence()
        {
            return Err(TaskStoreError::Fenced {
                task: self.task.clone(),
                reason,
            });
        }
        let written = match &self.fence {
            Some(fence) => self.backend.write_checkpoint_unless(&self.task, &cp, fence),
            None => self.backend.write_checkpoint(&self.task, &cp),
        };
        if let Err(e) = written {
            if let Some(fence) = &self.fence
                && let Err(reason) = fence()
            {
                return Err(TaskStoreError::Fenced {
                    task: self.task.clone(),
                    reason: format!("{reason} ({e})"),
                });
            }
            return Err(backend_err(e));
        }
        if let Some(hook) = &mut self.failpoint {
            hook(CommitStep::CheckpointWritten);
        }
        // 5: output committed.
        self.backend
            .outputs_committed(&output_ends)
            .map_err(backend_err)?;
        // 6: the engines, after the checkpoint.
        for store in self.stores.values_mut() {
            if let Some(end) = store.changelog_end() {
                store.stack.flush()?;
                stack::write_offset_file(&store.name, &store.dir, end)?;
            }
        }
        self.meters.commits.increment(1);
        self.meters
            .commit_duration
            .record(started.elapsed().as_secs_f64());
        self.meters.input_lag(&*self.backend, inputs);
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

/// What [`TaskStorage::reset`] did to one store's changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangelogReset {
    /// The changelog partition held no records (or does not exist).
    Empty,
    /// Its records were removed (the backend can truncate).
    Truncated {
        /// How many offsets were dropped.
        records: u64,
    },
    /// The backend cannot remove records: a tombstone was appended for every key, so a
    /// replay of the whole changelog gives an empty store.
    Tombstoned {
        /// How many keys.
        keys: u64,
    },
}

/// What [`TaskStorage::reset`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// The task.
    pub task: String,
    /// Whether a local store directory was removed.
    pub local_removed: bool,
    /// Per store with a changelog: its partition and what was done to it.
    pub changelogs: Vec<(String, TopicPartition, ChangelogReset)>,
    /// The checkpoint written: no inputs (they restart at their beginning), the emptied
    /// changelogs' ends, the previous checkpoint's output ends (so committed output is kept).
    pub checkpoint: Checkpoint,
}

impl TaskStorage {
    /// Starts the task in `ctx` from scratch, for when its checkpoint was lost: drops the
    /// state of every store in `configs` and writes a checkpoint that makes the task process
    /// its inputs again from their beginning. In order:
    ///
    /// 1. every store's changelog partition is emptied: truncated to its start where the
    ///    backend can, otherwise a tombstone is appended for every key in it (Kafka);
    /// 2. the task's local stores are removed (`tasks/<task>/stores`);
    /// 3. a checkpoint is written with no input offsets (inputs restart at their first
    ///    offset), each changelog's new end, and the output ends of the previous checkpoint
    ///    if it could be read (output already committed stays; the reprocessed input writes
    ///    its output again).
    ///
    /// A crash part-way leaves a task that refuses to start (its checkpoint names changelog
    /// records that are gone, or it has state and no checkpoint) or one that starts from its
    /// old checkpoint; running the reset again finishes it. No process may run the task
    /// meanwhile (embedded: the state directory lock).
    pub fn reset(
        ctx: &TaskStorageContext<'_>,
        configs: &BTreeMap<String, StoreConfig>,
    ) -> Result<ResetReport, TaskStoreError> {
        validate_name("task", ctx.task)?;
        let backend = &*ctx.backend;
        let backend_err = |source| TaskStoreError::Backend {
            task: ctx.task.to_string(),
            source,
        };
        let old = match backend.read_checkpoint(ctx.task) {
            Ok(cp) => cp,
            Err(e) => {
                tracing::warn!(
                    task = ctx.task,
                    "the old checkpoint cannot be read ({e}); its output ends are not kept"
                );
                None
            }
        };
        let mut cp = Checkpoint {
            outputs: old.map(|c| c.outputs).unwrap_or_default(),
            ..Checkpoint::default()
        };
        let mut changelogs = Vec::new();
        for (name, config) in configs {
            validate_name("store", name)?;
            let Some(topic) = &config.changelog else {
                continue;
            };
            let tp = TopicPartition::new(topic.clone(), ctx.changelog_partition);
            let cl_err = |source| TaskStoreError::Changelog {
                store: name.clone(),
                topic: topic.clone(),
                source,
            };
            if backend
                .partitions(topic)
                .map_err(cl_err)?
                .is_none_or(|n| n <= tp.partition)
            {
                continue;
            }
            let offsets = backend.offsets(&tp).map_err(cl_err)?;
            let what = if offsets.end == offsets.start {
                ChangelogReset::Empty
            } else if backend.can_truncate() {
                backend.truncate(&tp, offsets.start).map_err(cl_err)?;
                ChangelogReset::Truncated {
                    records: offsets.end - offsets.start,
                }
            } else {
                let keys = tombstone_all(backend, ctx.task, &tp, offsets).map_err(cl_err)?;
                ChangelogReset::Tombstoned { keys }
            };
            let end = backend.offsets(&tp).map_err(cl_err)?.end;
            cp.changelogs.insert(name.clone(), end);
            changelogs.push((name.clone(), tp, what));
        }
        let stores = ctx.state.task_dir(ctx.task).join("stores");
        let local_removed = stores.exists();
        if local_removed {
            let io = |path: &std::path::Path, source| TaskStoreError::Io {
                task: ctx.task.to_string(),
                path: path.to_path_buf(),
                source,
            };
            std::fs::remove_dir_all(&stores).map_err(|e| io(&stores, e))?;
            let task_dir = ctx.state.task_dir(ctx.task);
            crate::fsutil::fsync_dir(&task_dir).map_err(|e| io(&task_dir, e))?;
        }
        backend
            .write_checkpoint(ctx.task, &cp)
            .map_err(backend_err)?;
        Ok(ResetReport {
            task: ctx.task.to_string(),
            local_removed,
            changelogs,
            checkpoint: cp,
        })
    }
}

/// Appends a tombstone for every key in `[offsets.start, offsets.end)` of `tp` through a sink
/// of `task`, and flushes it. Returns how many keys.
fn tombstone_all(
    backend: &dyn Backend,
    task: &str,
    tp: &TopicPartition,
    offsets: crate::backend::Offsets,
) -> Result<u64, BackendError> {
    let mut keys = std::collections::BTreeSet::new();
    let mut reader = backend.open_reader(tp, offsets.start)?;
    'read: loop {
        let records = reader.next_batch(4096)?;
        if records.is_empty() {
            break;
        }
        for r in records {
            if r.offset >= offsets.end {
                break 'read;
            }
            keys.insert(r.key);
        }
    }
    let mut sink = backend.open_sink(task)?;
    let now = crate::changelog::now_ms();
    for k in &keys {
        sink.send(tp, now, k, None)?;
    }
    sink.flush()?;
    Ok(keys.len() as u64)
}

/// Opens store `name` of the task in `ctx` with `config`, restoring it to `checkpoint`.
///
/// A store that had no changelog and gets one now while it holds data is *seeded*: every
/// entry is written to the new changelog (see [`seed`]), and the checkpoint updated, before
/// its manifest records the changelog.
fn open_store(
    ctx: &TaskStorageContext<'_>,
    sink: &SharedSink,
    checkpoint: &mut Option<Checkpoint>,
    name: &str,
    config: &StoreConfig,
    progress: &mut dyn RestoreProgress,
) -> Result<(TaskStore, Option<RestoreStats>), TaskStoreError> {
    validate_name("store", name)?;
    let dir = ctx.state.store_dir(ctx.task, name);
    let on_disk = stack::read_manifest(name, &dir)?;
    if let Some(m) = &on_disk {
        stack::check_compatible(name, &m.config, config)?;
        if let (Some(old), Some(new)) = (&m.config.changelog, &config.changelog)
            && old != new
        {
            return Err(TaskStoreError::ChangelogChanged {
                task: ctx.task.to_string(),
                store: name.to_string(),
                old: old.clone(),
                new: new.clone(),
            });
        }
    }
    let manifest = Manifest {
        store: name.to_string(),
        config: config.clone(),
        changelog_partition: ctx.changelog_partition,
    };
    // A changelog turned on for an existing RocksDB store: until the seed is done, the store
    // is what it was (no changelog), so its manifest keeps saying so and its engine is opened
    // as a store without a changelog (never moved aside: it holds the only copy).
    let turning_on = config.changelog.is_some()
        && config.engine == EngineKind::Rocksdb
        && on_disk
            .as_ref()
            .is_some_and(|m| m.config.changelog.is_none());
    if !turning_on {
        stack::write_manifest(&dir, &manifest)?;
    }
    let open_as = if turning_on {
        StoreConfig {
            changelog: None,
            ..config.clone()
        }
    } else {
        config.clone()
    };
    let (mut engine, mut local) = open_local(name, &dir, &open_as)?;
    if checkpoint.is_none()
        && let Some(evidence) = local_state(&local)
    {
        return Err(no_checkpoint(ctx.task, name, evidence));
    }

    let Some(topic) = &config.changelog else {
        let labels = StoreLabels::of_task(ctx.task, name);
        let stack = stack::add_layers_labelled(engine, config, &labels);
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
    let mut offsets = backend.offsets(&tp).map_err(cl_err)?;
    if checkpoint.is_none() && offsets.end > 0 {
        let evidence = format!(
            "its changelog `{tp}` holds records up to offset {}",
            offsets.end
        );
        return Err(no_checkpoint(ctx.task, name, evidence));
    }
    let mut changelog = Changelog::new(Arc::clone(sink), tp.clone(), offsets.end);
    let marker = read_seed_marker(name, &dir)?;
    let must_seed = turning_on
        && (marker.is_some() || matches!(local, LocalStore::Present { empty: false, .. }));
    if must_seed {
        let end = seed(
            ctx,
            sink,
            name,
            &dir,
            &mut *engine,
            &mut changelog,
            offsets,
            marker,
        )?;
        // The checkpoint now names the seeded changelog end (it is the store's committed
        // state), then the manifest records the changelog: that is the commit point of the
        // seed. A crash before it seeds again.
        let mut cp = checkpoint.clone().unwrap_or_default();
        cp.changelogs.insert(name.to_string(), end);
        backend
            .write_checkpoint(ctx.task, &cp)
            .map_err(|source| TaskStoreError::Backend {
                task: ctx.task.to_string(),
                source,
            })?;
        *checkpoint = Some(cp);
        seed_failpoint(ctx.task, SeedStep::CheckpointWritten);
        stack::write_manifest(&dir, &manifest)?;
        remove_seed_marker(name, &dir)?;
        tracing::info!(store = name, changelog = %tp, "seeded the new changelog with the store's {} entries", end - marker.unwrap_or(offsets.end));
        offsets = backend.offsets(&tp).map_err(cl_err)?;
        local = LocalStore::Present {
            engine_end: Some(end),
            offset_file: Some(end),
            empty: false,
        };
    } else {
        if turning_on {
            stack::write_manifest(&dir, &manifest)?;
        }
        if marker.is_some() {
            // A seed that finished after its manifest was written.
            remove_seed_marker(name, &dir)?;
        }
    }
    let checkpoint = checkpoint.as_ref();
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
    let labels = StoreLabels::of_task(ctx.task, name);
    let mut metered = MeteredProgress::new(progress, &labels);
    let stats = restore::execute(&plan, &mut *engine, access, &mut metered)?;
    if plan.kind != restore::RestoreKind::UpToDate {
        // The engine now holds (flushed) exactly `plan.target`; an older OFFSET file ahead
        // of it (a crash between OFFSET and checkpoint) would make every later open rebuild
        // the store from scratch until the next commit.
        stack::write_offset_file(name, &dir, plan.target)?;
    }
    let changelog = Arc::new(Mutex::new(changelog));
    let logged = LoggedStore::new(engine, Arc::clone(&changelog), config.stored_limits())
        .with_metrics(&labels);
    let stack = stack::add_layers_labelled(Box::new(logged), config, &labels);
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

/// Restore progress passed on to the display, and recorded as the restore metrics of one
/// store (progress ratio while it runs; records, bytes, truncated records and seconds when
/// it finishes).
struct MeteredProgress<'a> {
    inner: &'a mut dyn RestoreProgress,
    labels: Vec<metrics::Label>,
    progress: metrics::Gauge,
    total: u64,
    done: u64,
}

impl<'a> MeteredProgress<'a> {
    fn new(inner: &'a mut dyn RestoreProgress, labels: &StoreLabels) -> Self {
        let labels = labels.labels();
        let progress = metrics::gauge!(telemetry::RESTORE_PROGRESS, labels.clone());
        MeteredProgress {
            inner,
            labels,
            progress,
            total: 0,
            done: 0,
        }
    }
}

impl RestoreProgress for MeteredProgress<'_> {
    fn start(&mut self, store: &str, records: u64) {
        (self.total, self.done) = (records, 0);
        self.progress.set(if records == 0 { 1.0 } else { 0.0 });
        self.inner.start(store, records);
    }

    fn advance(&mut self, records: u64, bytes: u64) {
        self.done += records;
        if self.total > 0 {
            self.progress
                .set((self.done as f64 / self.total as f64).min(1.0));
        }
        self.inner.advance(records, bytes);
    }

    fn finish(&mut self, stats: &RestoreStats) {
        let l = &self.labels;
        metrics::counter!(telemetry::RESTORE_RECORDS, l.clone()).increment(stats.records);
        metrics::counter!(telemetry::RESTORE_BYTES, l.clone()).increment(stats.bytes);
        metrics::counter!(telemetry::RESTORE_TRUNCATED_RECORDS, l.clone())
            .increment(stats.truncated);
        metrics::gauge!(telemetry::RESTORE_DURATION, l.clone()).set(stats.elapsed.as_secs_f64());
        self.progress.set(1.0);
        self.inner.finish(stats);
    }
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

/// The `TaskStoreError::NoCheckpoint` error.
fn no_checkpoint(task: &str, store: &str, evidence: String) -> TaskStoreError {
    TaskStoreError::NoCheckpoint {
        task: task.to_string(),
        store: store.to_string(),
        evidence,
    }
}

/// What shows that a local store holds state, if anything does. An engine at changelog
/// offset 0 holds nothing (a first start killed before its first checkpoint leaves one); an
/// engine that cannot be opened is rebuilt from the changelog, whose records are checked
/// separately.
fn local_state(local: &LocalStore) -> Option<String> {
    match local {
        LocalStore::Missing | LocalStore::Unusable { .. } => None,
        LocalStore::Present {
            engine_end,
            offset_file,
            empty,
        } => match (engine_end, offset_file) {
            (Some(e), _) if *e > 0 => Some(format!(
                "its engine reflects the changelog up to offset {e}"
            )),
            (_, Some(o)) if *o > 0 => Some(format!("its OFFSET file says {o}")),
            _ if !*empty => Some("its engine holds entries".to_string()),
            _ => None,
        },
    }
}

/// The file in a store directory that says a seed of a new changelog is under way, holding
/// the changelog end before the seed's first record.
pub const SEED_MARKER_FILE: &str = "SEEDING";

fn read_seed_marker(store: &str, dir: &std::path::Path) -> Result<Option<u64>, TaskStoreError> {
    let path = dir.join(SEED_MARKER_FILE);
    let corrupt = |reason: String| StoreError::Corrupt {
        store: store.to_string(),
        reason: format!("{}: {reason}", path.display()),
    };
    let bytes = crate::checked_file::read(&path).map_err(|e| corrupt(e.to_string()))?;
    let Some(bytes) = bytes else { return Ok(None) };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| corrupt("does not hold a number".into()).into())
}

fn remove_seed_marker(store: &str, dir: &std::path::Path) -> Result<(), TaskStoreError> {
    let path = dir.join(SEED_MARKER_FILE);
    let io = |context, source| StoreError::Io {
        store: store.to_string(),
        context,
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => crate::fsutil::fsync_dir(dir).map_err(|e| io("cannot sync", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove", e).into()),
    }
    Ok(())
}

/// A point inside the seed of a new changelog where a crash test can stop it (see
/// [`set_seed_failpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeedStep {
    /// The `SEEDING` marker was written; nothing sent yet.
    MarkerWritten,
    /// A batch of the store's entries was sent (not flushed); a seed sends one per
    /// 4096 entries.
    BatchSent,
    /// Every entry was sent and flushed; the engine marker and `OFFSET` written.
    Flushed,
    /// The checkpoint names the seeded end; the manifest does not record the changelog yet.
    CheckpointWritten,
}

/// Seed failpoints by task.
type SeedHooks = BTreeMap<String, Box<dyn FnMut(SeedStep) + Send>>;

static SEED_FAILPOINTS: Mutex<SeedHooks> = Mutex::new(BTreeMap::new());

/// A failpoint for crash tests of seeding: `hook` runs at each [`SeedStep`] of every later
/// seed of a store of task `task` (e.g. it panics at one of them); `None` removes it.
pub fn set_seed_failpoint(task: &str, hook: Option<Box<dyn FnMut(SeedStep) + Send>>) {
    let mut fps = crate::sync::lock(&SEED_FAILPOINTS);
    match hook {
        Some(h) => fps.insert(task.to_string(), h),
        None => fps.remove(task),
    };
}

fn seed_failpoint(task: &str, step: SeedStep) {
    // The hook may panic (a simulated crash): take it out of the map while it runs, so the
    // lock is not held (poisoned) by the panic, and put it back afterwards.
    let hook = crate::sync::lock(&SEED_FAILPOINTS).remove(task);
    if let Some(mut hook) = hook {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(step)));
        crate::sync::lock(&SEED_FAILPOINTS)
            .entry(task.to_string())
            .or_insert(hook);
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}

/// Entries per batch sent while seeding.
const SEED_BATCH: usize = 4096;

/// Seeds the empty new changelog of store `name` from its engine and returns the
/// acknowledged changelog end, which the engine (marker) and `OFFSET` now also record.
///
/// Crash safety: a `SEEDING` marker naming the changelog end before the first record is
/// written (fsynced) first; the engine is not changed except for its marker. A crash at any
/// point leaves the manifest saying "no changelog" and the marker in place, so the next
/// open seeds again: it first drops what the interrupted seed sent (truncated where the
/// backend can; elsewhere overwritten with the engine's values or tombstones, as a restore's
/// TRIM does) and then sends every entry again.
#[allow(clippy::too_many_arguments)]
fn seed(
    ctx: &TaskStorageContext<'_>,
    sink: &SharedSink,
    name: &str,
    dir: &std::path::Path,
    engine: &mut dyn Engine,
    changelog: &mut Changelog,
    offsets: crate::backend::Offsets,
    marker: Option<u64>,
) -> Result<u64, TaskStoreError> {
    let backend = &*ctx.backend;
    let tp = changelog.topic_partition().clone();
    let cl_err = |source| TaskStoreError::Changelog {
        store: name.to_string(),
        topic: tp.topic.clone(),
        source,
    };
    match marker {
        Some(from) if offsets.end > from => {
            if backend.can_truncate() {
                backend.truncate(&tp, from).map_err(cl_err)?;
                changelog.acknowledged(from);
            } else {
                let access = ChangelogAccess {
                    backend,
                    changelog: &mut *changelog,
                };
                restore::exec::overwrite_touched_keys(engine, access, from, offsets.end)?;
            }
        }
        Some(_) => {}
        None => {
            if offsets.end > offsets.start {
                return Err(TaskStoreError::SeedTargetNotEmpty {
                    task: ctx.task.to_string(),
                    store: name.to_string(),
                    topic: tp.topic.clone(),
                    end: offsets.end,
                });
            }
            crate::checked_file::write(
                &dir.join(SEED_MARKER_FILE),
                offsets.end.to_string().as_bytes(),
            )
            .map_err(|e| StoreError::Corrupt {
                store: name.to_string(),
                reason: format!("cannot write {SEED_MARKER_FILE}: {e}"),
            })?;
        }
    }
    seed_failpoint(ctx.task, SeedStep::MarkerWritten);
    let mut batch = Vec::with_capacity(SEED_BATCH);
    let mut send = |batch: &mut Vec<Mutation>| -> Result<(), TaskStoreError> {
        changelog
            .append_batch(crate::changelog::now_ms(), &std::mem::take(batch))
            .map_err(cl_err)?;
        seed_failpoint(ctx.task, SeedStep::BatchSent);
        Ok(())
    };
    for e in engine.all()? {
        let (k, v) = e?;
        batch.push(Mutation::put(k, v));
        if batch.len() == SEED_BATCH {
            send(&mut batch)?;
        }
    }
    if !batch.is_empty() {
        send(&mut batch)?;
    }
    let acked = crate::sync::lock(sink).flush().map_err(cl_err)?;
    if let Some(&end) = acked.get(&tp) {
        changelog.acknowledged(end);
    }
    let end = changelog.end();
    engine.write_logged(Vec::new(), end)?;
    engine.flush()?;
    stack::write_offset_file(name, dir, end)?;
    seed_failpoint(ctx.task, SeedStep::Flushed);
    Ok(end)
}

/// A store opened for inspection only (see [`open_read_only`]).
pub struct ReadOnlyStore {
    /// The store's configuration, from its manifest.
    pub config: StoreConfig,
    /// The engine, opened read-only (writes are refused).
    pub engine: Box<dyn Engine>,
    /// What the reader should know about what it sees: the store is behind or ahead of its
    /// task's checkpoint, or the checkpoint cannot be read.
    pub notes: Vec<String>,
}

/// Opens store `store` of task `task` in the state directory at `root` for reading only, as
/// of what is on disk: no lock, no manifest rewrite, no restore; nothing under `root` is
/// written, so a read-only copy (a backup) or a full disk can be inspected, even while a job
/// runs. Where the engine does not match the task's (embedded) checkpoint, a note says so
/// instead of restoring.
pub fn open_read_only(
    root: &std::path::Path,
    task: &str,
    store: &str,
) -> Result<ReadOnlyStore, TaskStoreError> {
    validate_name("task", task)?;
    validate_name("store", store)?;
    let dir = crate::statedir::store_dir_in(root, task, store);
    let Some(manifest) = stack::read_manifest(store, &dir)? else {
        return Err(StoreError::Config {
            store: store.to_string(),
            reason: format!(
                "no store `{store}` in task `{task}` ({} has no {})",
                dir.display(),
                stack::MANIFEST_FILE
            ),
        }
        .into());
    };
    let config = manifest.config;
    if config.engine == EngineKind::Memory {
        return Err(StoreError::Config {
            store: store.to_string(),
            reason: "a memory store keeps nothing on disk to inspect; its state is in its changelog (`gregor topic consume`)".into(),
        }
        .into());
    }
    let mut engine = crate::store::rocks::RocksEngine::open_read_only(
        store,
        &dir.join(stack::DATA_DIR),
        config.stored_limits(),
        &config.rocksdb,
    )?;
    let mut notes = Vec::new();
    if config.changelog.is_some() {
        let engine_end = engine.changelog_end()?;
        let cp_path = crate::statedir::checkpoint_file(root, task);
        match Checkpoint::read(&cp_path) {
            Err(e) => notes.push(format!("the task's checkpoint cannot be read ({e}); what is shown is the engine as it is on disk")),
            Ok(None) => notes.push(format!("task `{task}` has no checkpoint file here ({}; a Kafka job keeps it in Kafka): what is shown is the engine as it is on disk", cp_path.display())),
            Ok(Some(cp)) => match (cp.changelogs.get(store).copied(), engine_end) {
                (Some(c), Some(e)) if e < c => notes.push(format!(
                    "store `{store}` is behind its checkpoint: the engine reflects the changelog up to offset {e}, the checkpoint {c}; the last {} committed changelog records are not shown (opening without --read-only restores them)",
                    c - e
                )),
                (Some(c), Some(e)) if e > c => notes.push(format!(
                    "store `{store}` is ahead of its checkpoint (engine at changelog offset {e}, checkpoint {c}): it shows writes that were never committed, which the next start rolls back"
                )),
                (Some(_), Some(_)) => {}
                (None, _) => notes.push(format!("the checkpoint of task `{task}` does not cover store `{store}` yet")),
                (Some(c), None) => notes.push(format!(
                    "the engine records no changelog offset (checkpoint {c}): it is rebuilt from the changelog at the next start; what is shown may not be the committed state"
                )),
            },
        }
    }
    Ok(ReadOnlyStore {
        config,
        engine: Box::new(engine),
        notes,
    })
}
