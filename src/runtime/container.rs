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

use crate::backend::embedded::{EmbeddedBackend, EmbeddedSettings, TopicOverrides};
use crate::backend::roles::{Role, RoleClaim};
use crate::backend::{Backend, TopicPartition, TopicRole, TopicSpec};
use crate::changelog::now_ms;
use crate::restore::{RestoreProgress, RestoreStats};
use crate::statedir::StateDir;
use crate::task_storage::{OutputRecord, TaskStorage, TaskStorageContext};

use super::config::JobConfig;
use super::error::{RuntimeError, task_err, topic_err};
use super::input::Cursor;
use super::task::{
    Collector, Coordinator, Envelope, OutgoingMessage, StreamTask, TaskContext, TaskError,
    TaskFactory,
};

/// Records read from one input partition per batch.
const FETCH_RECORDS: usize = 1024;

/// What the container does when a task's `process` returns an error (a *poison message*:
/// one that fails the same way on every restart), like Kafka Streams' processing exception
/// handlers.
///
/// **How a skipped message keeps exactly-once.** A failed `process` may have changed things
/// before it failed: written some keys to a store, sent output, changed the task's own
/// memory. None of that may be committed. So on an error under `Skip` or `DeadLetter` the
/// container *rolls the task back*: it discards the task's stores, output and task object
/// without committing, reopens the task (its stores are restored to its last checkpoint, its
/// inputs positioned there, `init` called again) and processes again from the checkpoint,
/// skipping the failed message (by input partition and offset) when it reaches it. Messages
/// before it are processed again exactly as a restart after a crash would. Everything the
/// failed call did is thereby gone, whatever it was; the cost is one restore per poison
/// message. Stores without a changelog cannot be rolled back (as after any crash) and keep
/// what the failed call wrote. The skip is remembered until the task commits past it; if the
/// process dies first, the message fails again at the next start and is skipped again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessErrorPolicy {
    /// Stop the job with the error (the default): the message fails again at every start.
    #[default]
    Fail,
    /// Skip the message: log it (task, topic, partition, offset, error) as a warning and
    /// count it in the metric `gregor_skipped_messages_total`.
    Skip,
    /// Skip the message as [`Skip`](Self::Skip) does, and send it to this topic, through the
    /// task's output path (so exactly once, at the task's next commit): the original key, and
    /// as value a JSON object `{"error", "topic", "partition", "offset", "value"}` (`value`:
    /// the original value as a string, `null` for a tombstone, or `value_hex` if it is not
    /// UTF-8). The topic is created like an output (one partition per task, task N writes
    /// partition N) and recorded as an output of the job.
    DeadLetter(String),
}

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
    /// Messages skipped because their processing failed (see [`ProcessErrorPolicy`]).
    pub skipped: u64,
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
    /// Messages to skip (their processing failed under a skipping policy), with the error;
    /// kept until a commit passes them.
    skips: BTreeMap<(TopicPartition, u64), String>,
    /// Skipped messages a commit of this run passed.
    skipped: u64,
}

/// A message whose processing failed under a skipping [`ProcessErrorPolicy`].
struct Poisoned {
    tp: TopicPartition,
    offset: u64,
    error: TaskError,
}

/// What processing a batch ended with.
enum BatchEnd {
    /// This many messages processed.
    Processed(u64),
    /// A message failed and must be skipped after a rollback.
    Poisoned(Poisoned),
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
            // Settings the job sets apply to existing topics too (never silently ignored):
            // the segment size if the job names one, fsync always (`embedded.log.fsync`
            // defaults to true, so a topic only loses fsync when a job asks for it).
            changelog_overrides: TopicOverrides {
                segment_bytes: job.changelog_segment_bytes,
                fsync: Some(job.log_fsync),
            },
            output_overrides: TopicOverrides {
                segment_bytes: None,
                fsync: Some(job.log_fsync),
            },
        },
    )
    .map_err(topic_err("*"))
}

/// Records the topics `job` uses (inputs, outputs, the dead-letter topic, each store's
/// changelog) in the backend's role registry, refusing roles another job holds. Anything
/// that creates, truncates or empties a job's topics (the container's start, `gregor job
/// reset`) calls it first.
pub fn claim_job_roles(
    backend: &dyn Backend,
    job: &JobConfig,
    dead_letter: Option<&str>,
) -> Result<(), RuntimeError> {
    let mut claims: Vec<RoleClaim> = Vec::new();
    claims.extend(job.inputs.iter().map(|t| RoleClaim::new(t, Role::Input)));
    claims.extend(job.outputs.iter().map(|t| RoleClaim::new(t, Role::Output)));
    claims.extend(dead_letter.map(|t| RoleClaim::new(t, Role::Output)));
    for (store, cfg) in &job.stores {
        if let Some(cl) = &cfg.changelog {
            claims.push(RoleClaim::new(
                cl,
                Role::Changelog {
                    store: store.clone(),
                },
            ));
        }
    }
    backend
        .claim_roles(&job.name, &claims)
        .map_err(|source| RuntimeError::Roles {
            job: job.name.clone(),
            source,
        })
}

/// Runs `job` in this process on the embedded log of `state` until it is stopped (or, with
/// `until_end`, caught up). Messages whose processing fails are handled as the job's
/// `job.process.error` says.
pub fn run_job(
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    opts: RunOptions,
) -> Result<RunStats, RuntimeError> {
    run_job_with(state, job, factory, opts, job.on_process_error.clone())
}

/// [`run_job`] with a policy for messages whose processing fails.
pub fn run_job_with(
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    opts: RunOptions,
    on_process_error: ProcessErrorPolicy,
) -> Result<RunStats, RuntimeError> {
    let backend = embedded_backend(state, job)?;
    run_job_on_with(
        Arc::new(backend),
        state,
        job,
        factory,
        opts,
        on_process_error,
    )
}

/// Runs `job` over `backend`, with local stores under `state`.
pub fn run_job_on(
    backend: Arc<dyn Backend>,
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    opts: RunOptions,
) -> Result<RunStats, RuntimeError> {
    let policy = job.on_process_error.clone();
    run_job_on_with(backend, state, job, factory, opts, policy)
}

/// [`run_job_on`] with a policy for messages whose processing fails.
pub fn run_job_on_with(
    backend: Arc<dyn Backend>,
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    mut opts: RunOptions,
    on_process_error: ProcessErrorPolicy,
) -> Result<RunStats, RuntimeError> {
    let mut c = Container::start_with(backend, state, job, factory, on_process_error)?;
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
    c.run_loop(&mut opts, &mut stats)?;
    for p in assigned {
        c.close_task(p)?;
        stats.commits += 1;
    }
    stats.skipped = c.skipped;
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
    on_process_error: ProcessErrorPolicy,
    /// Skipped messages committed by tasks closed or rolled back.
    skipped: u64,
}

impl<'a> Container<'a> {
    /// Checks `job`'s inputs, records the roles of its topics (refusing a role another job
    /// holds, see [`crate::backend::roles`]), makes sure its changelogs and outputs exist and
    /// recovers the outputs. Opens no task yet. A failing `process` stops the job.
    pub fn start(
        backend: Arc<dyn Backend>,
        state: &'a StateDir,
        job: &'a JobConfig,
        factory: &'a TaskFactory,
    ) -> Result<Self, RuntimeError> {
        Self::start_with(backend, state, job, factory, ProcessErrorPolicy::Fail)
    }

    /// [`start`](Self::start) with a policy for messages whose processing fails.
    pub fn start_with(
        backend: Arc<dyn Backend>,
        state: &'a StateDir,
        job: &'a JobConfig,
        factory: &'a TaskFactory,
        on_process_error: ProcessErrorPolicy,
    ) -> Result<Self, RuntimeError> {
        let dead_letter = match &on_process_error {
            ProcessErrorPolicy::DeadLetter(t) => Some(t.clone()),
            _ => None,
        };
        if let Some(t) = &dead_letter {
            crate::log::validate_topic_name(t).map_err(|e| RuntimeError::DeadLetter {
                topic: t.clone(),
                reason: e.to_string(),
            })?;
            let role = if job.inputs.contains(t) {
                Some("an input")
            } else if job.outputs.contains(t) {
                Some("an output")
            } else if job.stores.values().any(|s| s.changelog.as_ref() == Some(t)) {
                Some("a changelog")
            } else {
                None
            };
            if let Some(role) = role {
                return Err(RuntimeError::DeadLetter {
                    topic: t.clone(),
                    reason: format!(
                        "it is already {role} of job `{}`; a dead-letter topic needs a topic of its own",
                        job.name
                    ),
                });
            }
        }
        // Topic roles across jobs: refuse before anything is created or truncated.
        claim_job_roles(&*backend, job, dead_letter.as_deref())?;

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
        for t in job.outputs.iter().chain(&dead_letter) {
            let n = backend
                .ensure_topic(&TopicSpec {
                    name: t.clone(),
                    partitions: n_tasks.max(1),
                    role: TopicRole::Output,
                })
                .map_err(topic_err(t))?;
            output_partitions.insert(t.clone(), n);
        }
        if !output_partitions.is_empty() {
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
                        // No checkpoint of the job records it: nothing of it was committed
                        // by this job (a new output, or one added to a job whose checkpoints
                        // predate it). What is there up to the read-committed end is someone
                        // else's committed data (records written before it became the job's
                        // output, with no marker: all of them); anything past the marker
                        // was appended by a commit of this job that crashed before its
                        // checkpoint, and is dropped.
                        let end = backend.readable_end(e.key()).map_err(topic_err(t))?;
                        e.insert(end);
                    }
                }
            }
            backend.recover_outputs(&committed).map_err(topic_err(
                &output_partitions
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
            ))?;
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
            on_process_error,
            skipped: 0,
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
                partitions: self
                    .output_partitions
                    .iter()
                    .filter(|(t, _)| self.job.outputs.contains(t))
                    .map(|(t, &n)| (t.clone(), n))
                    .collect(),
                pending: Vec::new(),
            },
            coordinator: Coordinator::default(),
            skips: BTreeMap::new(),
            skipped: 0,
        };
        set_crash_failpoint(&mut run.storage);
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
        self.skipped += run.skipped;
        run.storage.close()?;
        Ok(())
    }

    /// Rolls the task of partition `p` back to its last checkpoint because the message
    /// `x` failed (see [`ProcessErrorPolicy`]): drops its storage, output and task object
    /// without committing, reopens it and remembers to skip the message.
    fn roll_back_task(
        &mut self,
        p: u32,
        x: Poisoned,
        progress: &mut dyn RestoreProgress,
    ) -> Result<(), RuntimeError> {
        let Some(run) = self.tasks.remove(&p) else {
            return Ok(());
        };
        tracing::warn!(
            task = %run.name,
            topic = %x.tp.topic,
            partition = x.tp.partition,
            offset = x.offset,
            "processing failed: {}; rolling the task back to its last checkpoint to skip the message",
            x.error
        );
        let TaskRun {
            storage,
            mut skips,
            skipped,
            ..
        } = run;
        self.skipped += skipped;
        // Nothing since the last commit is kept: the next restore discards it.
        storage.close()?;
        skips.insert((x.tp, x.offset), x.error.to_string());
        self.open_task(p, progress)?;
        if let Some(run) = self.tasks.get_mut(&p) {
            run.skips = skips;
        }
        Ok(())
    }

    /// Processes, windows and commits the open tasks until a stop is asked for (or, with
    /// `until_end`, every input is caught up).
    fn run_loop(
        &mut self,
        opts: &mut RunOptions,
        stats: &mut RunStats,
    ) -> Result<(), RuntimeError> {
        let job = self.job;
        let commit_every = Duration::from_millis(job.commit_ms);
        let window_every = job.window_ms.map(Duration::from_millis);
        let cleanup_every = Duration::from_millis(job.changelog_cleanup_ms);
        let (mut last_commit, mut last_window, mut last_cleanup) =
            (Instant::now(), Instant::now(), Instant::now());
        let mut stop_requested = false;
        loop {
            let mut progressed = 0u64;
            let mut poisoned = Vec::new();
            for (&p, run) in self.tasks.iter_mut() {
                match process_batch(run, job, &self.on_process_error)? {
                    BatchEnd::Processed(n) => progressed += n,
                    BatchEnd::Poisoned(x) => {
                        poisoned.push((p, x));
                        continue;
                    }
                }
                if run.coordinator.commit {
                    run.coordinator.commit = false;
                    commit_task(run)?;
                    stats.commits += 1;
                }
                stop_requested |= run.coordinator.shutdown;
            }
            for (p, x) in poisoned {
                self.roll_back_task(p, x, &mut *opts.progress)?;
                progressed += 1;
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

/// Processes up to one batch from each input of `run`; returns the number of messages, or
/// the message that failed if `policy` skips failed messages.
fn process_batch(
    run: &mut TaskRun,
    job: &JobConfig,
    policy: &ProcessErrorPolicy,
) -> Result<BatchEnd, RuntimeError> {
    let TaskRun {
        name,
        partition,
        task,
        storage,
        cursors,
        collector,
        coordinator,
        skips,
        ..
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
            if !skips.is_empty()
                && let Some(error) = skips.get(&(c.tp.clone(), r.offset))
            {
                // Kept until a commit passes it: a later rollback replays from the checkpoint.
                skip_message(&c.tp, &r, error, policy, *partition, collector);
                c.next = r.offset + 1;
                n += 1;
                continue;
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
            if let Err(source) = task.process(&env, &mut ctx) {
                if *policy == ProcessErrorPolicy::Fail {
                    return Err(RuntimeError::Task {
                        task: name.clone(),
                        during: format!("process of {}@{}", c.tp, r.offset),
                        source,
                    });
                }
                return Ok(BatchEnd::Poisoned(Poisoned {
                    tp: c.tp.clone(),
                    offset: r.offset,
                    error: source,
                }));
            }
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
    Ok(BatchEnd::Processed(n))
}

/// Skips message `r` of `tp` whose processing failed with `error`: under
/// [`ProcessErrorPolicy::DeadLetter`], queues it for the dead-letter topic (written at the
/// task's next commit, like any output). It is logged and counted when a commit passes it.
fn skip_message(
    tp: &TopicPartition,
    r: &crate::backend::Record,
    error: &str,
    policy: &ProcessErrorPolicy,
    partition: u32,
    collector: &mut Collector,
) {
    if let ProcessErrorPolicy::DeadLetter(topic) = policy {
        let mut v = serde_json::json!({
            "error": error,
            "topic": tp.topic,
            "partition": tp.partition,
            "offset": r.offset,
        });
        match &r.value {
            None => v["value"] = serde_json::Value::Null,
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => v["value"] = s.into(),
                Err(_) => {
                    v["value_hex"] = b
                        .iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<String>()
                        .into()
                }
            },
        }
        collector.pending.push(OutgoingMessage {
            topic: topic.clone(),
            partition,
            key: r.key.clone(),
            value: Some(v.to_string().into_bytes()),
            timestamp: r.timestamp,
        });
    }
}

/// Crash tests of real processes: `GREGOR_CRASH_AT=<step>:<n>` aborts the process (no
/// destructors, like `kill -9`) the `n`-th time (1-based, counted over all tasks of the
/// process) a commit reaches `<step>`: `sink-flushed` (changelog and output records durable,
/// no checkpoint yet) or `checkpoint-written` (engines not flushed yet). Unset, or not of
/// that form: nothing happens.
fn set_crash_failpoint(storage: &mut TaskStorage) {
    use crate::task_storage::CommitStep;
    use std::sync::atomic::AtomicU64;
    static PASSED: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("GREGOR_CRASH_AT") else {
        return;
    };
    let Some((step, n)) = spec.split_once(':') else {
        return;
    };
    let step = match step {
        "sink-flushed" => CommitStep::SinkFlushed,
        "checkpoint-written" => CommitStep::CheckpointWritten,
        _ => return,
    };
    let Ok(n) = n.parse::<u64>() else { return };
    storage.set_failpoint(Box::new(move |s| {
        if s == step && PASSED.fetch_add(1, Ordering::SeqCst) + 1 == n {
            eprintln!("GREGOR_CRASH_AT={spec}: aborting");
            std::process::abort();
        }
    }));
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
    if !run.skips.is_empty() {
        // Skips this commit passed are final: log and count each once.
        let name = &run.name;
        let mut passed = 0;
        run.skips.retain(|(tp, offset), error| {
            if inputs.get(tp).is_none_or(|&next| next <= *offset) {
                return true;
            }
            tracing::warn!(
                task = %name,
                topic = %tp.topic,
                partition = tp.partition,
                offset,
                "skipped a message whose processing failed: {error}"
            );
            passed += 1;
            false
        });
        crate::telemetry::skipped_messages(name).increment(passed);
        run.skipped += passed;
    }
    Ok(())
}
