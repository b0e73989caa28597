//! The container: runs the tasks of a job it is given, in one thread, one task per input
//! partition, over a [`Backend`].
//!
//! Start-up: check inputs, make sure changelog and output topics exist, recover the outputs
//! (the backend drops output no checkpoint covers, where it can), then open each assigned
//! task ([`Container::open_task`]: its [`TaskStorage`] restores the stores to the task's
//! checkpoint, its inputs are positioned at the checkpointed offsets). Then loop: read input
//! in batches, call `process`, call `window` every `job.window.ms`, commit every
//! `job.commit.ms`. A stop request (Ctrl-C, SIGTERM, a task's `shutdown`) or, with
//! `until_end`, reaching the end every input had at start, ends the loop; each task is then
//! closed ([`Container::close_task`]: `close`, a final commit, stores closed). Tasks can be
//! opened and closed at any time, so a coordinator can move them.
//!
//! The commit protocol itself is [`TaskStorage::commit`]'s; tasks commit one at a time (so on
//! the embedded log the tail of an output partition only ever belongs to the task
//! committing).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use crate::backend::{Backend, TopicPartition, TopicRole, TopicSpec};
use crate::changelog::now_ms;
use crate::restore::{RestoreProgress, RestoreStats};
use crate::statedir::StateDir;
use crate::task_storage::{OutputRecord, TaskStorage, TaskStorageContext};

use super::config::JobConfig;
use super::error::{RuntimeError, task_err, topic_err};
use super::input::Cursor;
use super::task::{Collector, Coordinator, Envelope, StreamTask, TaskContext, TaskFactory};

/// Records read from one input partition per batch.
const FETCH_RECORDS: usize = 1024;

/// How to run a job.
pub struct RunOptions {
    /// Stop once every input partition is consumed to the end it had at start (and committed).
    pub until_end: bool,
    /// Set to stop the container (commit, close, return).
    pub stop: Arc<AtomicBool>,
    /// Restore progress display.
    pub progress: Box<dyn RestoreProgress>,
    /// The partitions (tasks) this process runs; `None`: all of them.
    pub assignment: Option<BTreeSet<u32>>,
}

impl RunOptions {
    /// Runs every task until stopped, logging restore progress.
    pub fn new() -> Self {
        RunOptions {
            until_end: false,
            stop: Arc::new(AtomicBool::new(false)),
            progress: Box::new(crate::restore::LogProgress::default()),
            assignment: None,
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Tasks run.
    pub tasks: u32,
    /// Messages processed.
    pub processed: u64,
    /// Commits (per task).
    pub commits: u64,
    /// Time spent processing (after restore).
    pub elapsed: Duration,
    /// Time spent restoring stores.
    pub restore_elapsed: Duration,
    /// Per-store restore statistics.
    pub restores: Vec<RestoreStats>,
}

struct TaskRun {
    name: String,
    partition: u32,
    task: Box<dyn StreamTask>,
    storage: TaskStorage,
    cursors: Vec<Cursor>,
    collector: Collector,
    coordinator: Coordinator,
}

/// The name of job `job`'s task for input partition `p`: `<job>.partition-<p>`. Naming
/// tasks by job keeps the checkpoints and stores of several jobs in one state directory apart.
pub fn task_name(job: &str, p: u32) -> String {
    format!("{job}.partition-{p}")
}

/// The embedded backend of `state` with `job`'s topic settings.
pub fn embedded_backend(
    state: &StateDir,
    job: &JobConfig,
) -> Result<EmbeddedBackend, RuntimeError> {
    EmbeddedBackend::open(
        state.root(),
        EmbeddedSettings {
            changelog: job.changelog_topic_config(),
            output: job.output_topic_config(),
        },
    )
    .map_err(topic_err("*"))
}

/// Runs `job` in this process on the embedded log of `state` until it is stopped (or, with
/// `until_end`, caught up).
pub fn run_job(
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    opts: RunOptions,
) -> Result<RunStats, RuntimeError> {
    let backend = embedded_backend(state, job)?;
    run_job_on(Arc::new(backend), state, job, factory, opts)
}

/// Runs `job` over `backend`, with local stores under `state`.
pub fn run_job_on(
    backend: Arc<dyn Backend>,
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    mut opts: RunOptions,
) -> Result<RunStats, RuntimeError> {
    let mut c = Container::start(backend, state, job, factory)?;
    let restore_started = Instant::now();
    let mut stats = RunStats::default();
    let assigned: Vec<u32> = (0..c.n_tasks)
        .filter(|p| opts.assignment.as_ref().is_none_or(|a| a.contains(p)))
        .collect();
    for &p in &assigned {
        stats.restores.extend(c.open_task(p, &mut *opts.progress)?);
    }
    stats.tasks = assigned.len() as u32;
    stats.restore_elapsed = restore_started.elapsed();
    let started = Instant::now();
    c.run_loop(&opts, &mut stats)?;
    for p in assigned {
        c.close_task(p)?;
        stats.commits += 1;
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// The tasks of one job in this process.
pub struct Container<'a> {
    backend: Arc<dyn Backend>,
    state: &'a StateDir,
    job: &'a JobConfig,
    factory: &'a TaskFactory,
    n_tasks: u32,
    input_partitions: BTreeMap<String, u32>,
    output_partitions: BTreeMap<String, u32>,
    tasks: BTreeMap<u32, TaskRun>,
}

impl<'a> Container<'a> {
    /// Checks `job`'s inputs, makes sure its changelogs and outputs exist and recovers the
    /// outputs. Opens no task yet.
    pub fn start(
        backend: Arc<dyn Backend>,
        state: &'a StateDir,
        job: &'a JobConfig,
        factory: &'a TaskFactory,
    ) -> Result<Self, RuntimeError> {
        // Inputs decide the number of tasks.
        let mut input_partitions = BTreeMap::new();
        for t in &job.inputs {
            match backend.partitions(t).map_err(topic_err(t))? {
                Some(n) => input_partitions.insert(t.clone(), n),
                None => return Err(RuntimeError::NoInput { topic: t.clone() }),
            };
        }
        let n_tasks = input_partitions.values().copied().max().unwrap_or(0);

        // Changelogs: one partition per task, compacted; one topic per store.
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (store, cfg) in &job.stores {
            let Some(cl) = &cfg.changelog else { continue };
            if let Some(other) = seen.insert(cl, store) {
                return Err(RuntimeError::SharedChangelog {
                    topic: cl.clone(),
                    a: other.to_string(),
                    b: store.clone(),
                });
            }
            backend
                .ensure_topic(&TopicSpec {
                    name: cl.clone(),
                    partitions: n_tasks,
                    role: TopicRole::Changelog,
                })
                .map_err(topic_err(cl))?;
        }

        // Outputs: create if missing, then recover what the checkpoints committed.
        let mut output_partitions = BTreeMap::new();
        for t in &job.outputs {
            let n = backend
                .ensure_topic(&TopicSpec {
                    name: t.clone(),
                    partitions: n_tasks.max(1),
                    role: TopicRole::Output,
                })
                .map_err(topic_err(t))?;
            output_partitions.insert(t.clone(), n);
        }
        if !job.outputs.is_empty() {
            // Tasks commit one at a time, so the newest end any checkpoint records is where
            // committed output ends; anything after it was never committed.
            let mut committed: BTreeMap<TopicPartition, u64> = BTreeMap::new();
            for p in 0..n_tasks {
                let name = task_name(&job.name, p);
                let cp =
                    backend
                        .read_checkpoint(&name)
                        .map_err(|source| RuntimeError::Backend {
                            task: name.clone(),
                            source,
                        })?;
                for (t, parts) in cp.iter().flat_map(|cp| &cp.outputs) {
                    if !output_partitions.contains_key(t) {
                        continue;
                    }
                    for (&part, &end) in parts {
                        let e = committed
                            .entry(TopicPartition::new(t.clone(), part))
                            .or_default();
                        *e = (*e).max(end);
                    }
                }
            }
            for (t, &n) in &output_partitions {
                for part in 0..n {
                    let tp = TopicPartition::new(t.clone(), part);
                    if let std::collections::btree_map::Entry::Vacant(e) = committed.entry(tp) {
                        // No checkpoint records it: nothing of it was committed by this job
                        // yet, but what is there may be another writer's; keep it.
                        let end = backend.offsets(e.key()).map_err(topic_err(t))?.end;
                        e.insert(end);
                    }
                }
            }
            backend
                .recover_outputs(&committed)
                .map_err(topic_err(&job.outputs.join(",")))?;
        }
        Ok(Container {
            backend,
            state,
            job,
            factory,
            n_tasks,
            input_partitions,
            output_partitions,
            tasks: BTreeMap::new(),
        })
    }

    /// The number of tasks of the job (the most partitions of any input).
    pub fn task_count(&self) -> u32 {
        self.n_tasks
    }

    /// The number of tasks `job` has on `backend`: the most partitions of any input.
    pub fn task_count_of(backend: &dyn Backend, job: &JobConfig) -> Result<u32, RuntimeError> {
        let mut n = 0;
        for t in &job.inputs {
            match backend.partitions(t).map_err(topic_err(t))? {
                Some(p) => n = n.max(p),
                None => return Err(RuntimeError::NoInput { topic: t.clone() }),
            }
        }
        Ok(n)
    }

    /// Opens the task of partition `p`: restores its stores, positions its inputs, commits a
    /// first checkpoint if it has none covering them, calls `init`.
    pub fn open_task(
        &mut self,
        p: u32,
        progress: &mut dyn RestoreProgress,
    ) -> Result<Vec<RestoreStats>, RuntimeError> {
        let name = task_name(&self.job.name, p);
        let ctx = TaskStorageContext {
            backend: Arc::clone(&self.backend),
            state: self.state,
            task: &name,
            changelog_partition: p,
        };
        let (storage, restored) = TaskStorage::open(&ctx, &self.job.stores, progress)?;
        let mut cursors = Vec::new();
        for (t, &np) in &self.input_partitions {
            if p >= np {
                continue;
            }
            let tp = TopicPartition::new(t.clone(), p);
            cursors.push(Cursor::open(
                &*self.backend,
                &name,
                tp,
                storage.checkpoint(),
            )?);
        }
        let inputs: Vec<TopicPartition> = cursors.iter().map(|c| c.tp.clone()).collect();
        let covered = storage.checkpoint_covers(&inputs);
        let mut run = TaskRun {
            name: name.clone(),
            partition: p,
            task: (self.factory)(&name),
            storage,
            cursors,
            collector: Collector {
                partitions: self.output_partitions.clone(),
                pending: Vec::new(),
            },
            coordinator: Coordinator::default(),
        };
        if !covered {
            // A first checkpoint before any processing: from now on the checkpoint is the
            // single truth about what this task has committed (without it, a crash before
            // the first commit would make the next restore trust uncommitted changelog
            // records). It also seals what restore trimmed.
            commit_task(&mut run)?;
        }
        with_ctx(&mut run, self.job, |task, ctx| task.init(ctx))
            .map_err(task_err(&name, "init".into()))?;
        self.tasks.insert(p, run);
        Ok(restored)
    }

    /// Closes the task of partition `p`: `close`, a final commit, its stores closed.
    pub fn close_task(&mut self, p: u32) -> Result<(), RuntimeError> {
        let Some(mut run) = self.tasks.remove(&p) else {
            return Ok(());
        };
        with_ctx(&mut run, self.job, |task, ctx| task.close(ctx))
            .map_err(task_err(&run.name, "close".into()))?;
        commit_task(&mut run)?;
        run.storage.close()?;
        Ok(())
    }

    /// Processes, windows and commits the open tasks until a stop is asked for (or, with
    /// `until_end`, every input is caught up).
    fn run_loop(&mut self, opts: &RunOptions, stats: &mut RunStats) -> Result<(), RuntimeError> {
        let job = self.job;
        let commit_every = Duration::from_millis(job.commit_ms);
        let window_every = job.window_ms.map(Duration::from_millis);
        let cleanup_every = Duration::from_millis(job.changelog_cleanup_ms);
        let (mut last_commit, mut last_window, mut last_cleanup) =
            (Instant::now(), Instant::now(), Instant::now());
        let mut stop_requested = false;
        loop {
            let mut progressed = 0u64;
            for run in self.tasks.values_mut() {
                progressed += process_batch(run, job)?;
                if run.coordinator.commit {
                    run.coordinator.commit = false;
                    commit_task(run)?;
                    stats.commits += 1;
                }
                stop_requested |= run.coordinator.shutdown;
            }
            stats.processed += progressed;
            if let Some(w) = window_every
                && last_window.elapsed() >= w
            {
                for run in self.tasks.values_mut() {
                    with_ctx(run, job, |task, ctx| task.window(ctx))
                        .map_err(task_err(&run.name, "window".into()))?;
                    // A shutdown asked for in `window` stops the loop below, before more input.
                    stop_requested |= run.coordinator.shutdown;
                }
                last_window = Instant::now();
            }
            if last_commit.elapsed() >= commit_every {
                let clean = last_cleanup.elapsed() >= cleanup_every;
                for run in self.tasks.values_mut() {
                    commit_task(run)?;
                    stats.commits += 1;
                    if clean {
                        // Right after the commit everything in the changelogs is committed.
                        run.storage.clean_changelogs(now_ms())?;
                    }
                }
                if clean {
                    last_cleanup = Instant::now();
                }
                last_commit = Instant::now();
            }
            let caught_up = self
                .tasks
                .values()
                .all(|r| r.cursors.iter().all(|c| c.next >= c.target));
            if stop_requested || opts.stop.load(Ordering::SeqCst) || (opts.until_end && caught_up) {
                return Ok(());
            }
            if progressed == 0 {
                std::thread::sleep(Duration::from_millis(20));
                for run in self.tasks.values_mut() {
                    for c in &mut run.cursors {
                        c.refresh_limit(&*self.backend)?;
                    }
                }
            }
        }
    }
}

fn with_ctx<R>(
    run: &mut TaskRun,
    job: &JobConfig,
    f: impl FnOnce(&mut dyn StreamTask, &mut TaskContext<'_>) -> R,
) -> R {
    let mut ctx = TaskContext {
        task: &run.name,
        partition: run.partition,
        stores: run.storage.stores(),
        collector: &mut run.collector,
        coordinator: &mut run.coordinator,
        config: job,
        now_ms: now_ms(),
    };
    f(&mut *run.task, &mut ctx)
}

/// Processes up to one batch from each input of `run`; returns the number of messages.
fn process_batch(run: &mut TaskRun, job: &JobConfig) -> Result<u64, RuntimeError> {
    let TaskRun {
        name,
        partition,
        task,
        storage,
        cursors,
        collector,
        coordinator,
    } = run;
    let stores = storage.stores();
    let mut n = 0;
    let now = now_ms();
    for c in cursors.iter_mut() {
        if c.next >= c.limit {
            continue;
        }
        let records = c
            .reader
            .next_batch(FETCH_RECORDS)
            .map_err(topic_err(&c.tp.topic))?;
        if records.is_empty() {
            // The end of the partition: offsets up to the reader's position hold nothing
            // (compacted away), so they count as processed.
            c.next = c.next.max(c.reader.position().min(c.limit));
            continue;
        }
        let mut past_limit = false;
        for r in records {
            if r.offset < c.next {
                // A backend may return records before the position asked for.
                continue;
            }
            if r.offset >= c.limit {
                past_limit = true;
                break;
            }
            let env = Envelope {
                topic: &c.tp.topic,
                partition: c.tp.partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: &r.key,
                value: r.value.as_deref(),
            };
            let mut ctx = TaskContext {
                task: name,
                partition: *partition,
                stores: &mut *stores,
                collector: &mut *collector,
                coordinator: &mut *coordinator,
                config: job,
                now_ms: now,
            };
            // Format `during` only on error: this is the per-message hot path.
            task.process(&env, &mut ctx)
                .map_err(|source| RuntimeError::Task {
                    task: name.clone(),
                    during: format!("process of {}@{}", c.tp, r.offset),
                    source,
                })?;
            c.next = r.offset + 1;
            n += 1;
            if coordinator.commit || coordinator.shutdown {
                break;
            }
        }
        if past_limit || coordinator.commit || coordinator.shutdown {
            // The reader has read past `next`; reposition it so nothing is skipped.
            c.reposition()?;
            if !past_limit {
                break;
            }
        }
    }
    Ok(n)
}

/// Commits one task through its storage: its input positions and buffered output.
fn commit_task(run: &mut TaskRun) -> Result<(), RuntimeError> {
    let inputs: BTreeMap<TopicPartition, u64> =
        run.cursors.iter().map(|c| (c.tp.clone(), c.next)).collect();
    let outputs = std::mem::take(&mut run.collector.pending)
        .into_iter()
        .map(|m| OutputRecord {
            tp: TopicPartition::new(m.topic, m.partition),
            timestamp: m.timestamp,
            key: m.key,
            value: m.value,
        })
        .collect();
    run.storage.commit(&inputs, outputs)?;
    Ok(())
}
