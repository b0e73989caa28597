//! The container: runs the tasks of a job it is given, one task per input partition, over a
//! [`Backend`]; batches of different tasks are processed in parallel on
//! `job.container.thread.pool.size` threads, each task on one thread at a time.
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
//! The commit protocol itself is [`TaskStorage::commit`]'s; tasks commit one at a time, on
//! the container's thread, between rounds of parallel processing (output is appended only at
//! commit, so on the embedded log the tail of an output partition only ever belongs to the
//! task committing, and the output ends its checkpoint records are exactly what it and the
//! tasks before it committed). Windows, HTTP reads and rollbacks run there too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::embedded::{EmbeddedBackend, EmbeddedSettings, TopicOverrides};
use crate::backend::roles::{Role, RoleClaim};
use crate::backend::{Backend, TopicPartition, TopicRole, TopicSpec};
use crate::changelog::now_ms;
use crate::checkpoint::CheckpointOwner;
use crate::coordinator::zookeeper::{JoinInfo, ZooKeeperCoordinator};
use crate::coordinator::{
    Coordinator as JobCoordinator, CoordinatorError, Directive, StaticCoordinator,
};
use crate::restore::{RestoreKind, RestoreProgress, RestoreStats};
use crate::runtime::shared_storage::SharedStorage;
use crate::serve::{
    DirectRead, Phase, QueryError, ReadAnswer, ReadOp, ServeLink, Serving, StatusProgress,
    TaskStores,
};
use crate::statedir::StateDir;
use crate::task_storage::{
    CommitFence, OutputRecord, TaskStorage, TaskStorageContext, TaskStoreError,
};

use super::config::{CoordinatorConfig, JobConfig};
use super::error::{RuntimeError, task_err, topic_err};
use super::input::Cursor;
use super::side_input::SideInputs;
use super::standby::{StandbyReadError, StandbyTask};
use super::task::{
    Collector, Coordinator, Envelope, OutgoingMessage, StreamTask, TaskContext, TaskError,
    TaskFactory,
};

/// Records read from one input partition per batch.
const FETCH_RECORDS: usize = 1024;

/// Most HTTP reads the run loop answers between two rounds of batches (each is a point
/// lookup or a scan of at most 1001 entries), so reads never stall processing for long.
const MAX_READS_PER_ROUND: usize = 64;

/// How long an idle run loop waits for new input (or a read to answer) before it looks again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Tasks gained in a rebalance opened at once, whatever `job.container.thread.pool.size` is
/// (see `Container::coordinate`).
const MIN_OPEN_THREADS: usize = 4;

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
    /// Restore progress display (tasks restored in parallel show as one, see
    /// [`crate::restore::ParallelProgress`]).
    pub progress: Box<dyn RestoreProgress + Send>,
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
    /// Its stores, shared with the HTTP workers that read them between batches.
    storage: Arc<SharedStorage>,
    cursors: Vec<Cursor>,
    collector: Collector,
    coordinator: Coordinator,
    /// Messages to skip (their processing failed under a skipping policy), with the error;
    /// kept until a commit passes them.
    skips: BTreeMap<(TopicPartition, u64), String>,
    /// Skipped messages a commit of this run passed.
    skipped: u64,
    /// Where its checkpoints are published, when the job is served over HTTP.
    serving: Option<Serving>,
    /// Its read-only views of the side-input stores.
    side: BTreeMap<String, crate::runtime::side_input::SideHandle>,
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
    claims.extend(
        job.side_inputs
            .values()
            .flat_map(|s| &s.topics)
            .map(|t| RoleClaim::new(t, Role::Input)),
    );
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
    opts: RunOptions,
    on_process_error: ProcessErrorPolicy,
) -> Result<RunStats, RuntimeError> {
    run_container(backend, state, job, factory, opts, on_process_error, None)
}

/// [`run_job_on`] serving the job's stores: `link` (from [`Serving::link`]) receives the
/// reads of an HTTP server ([`crate::serve::http`]) and gets the job's status and input
/// positions. Tasks answer reads between batches, through their own store stacks.
pub fn run_job_serving(
    backend: Arc<dyn Backend>,
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    opts: RunOptions,
    link: ServeLink,
) -> Result<RunStats, RuntimeError> {
    let policy = job.on_process_error.clone();
    run_container(backend, state, job, factory, opts, policy, Some(link))
}

fn run_container(
    backend: Arc<dyn Backend>,
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    mut opts: RunOptions,
    on_process_error: ProcessErrorPolicy,
    link: Option<ServeLink>,
) -> Result<RunStats, RuntimeError> {
    let mut c = Container::start_with(backend, state, job, factory, on_process_error)?;
    let restore_started = Instant::now();
    let mut stats = RunStats::default();
    // Static: open the assigned tasks now (in parallel). A dynamic coordinator's tasks are
    // opened by the run loop as its directives say.
    let (mut coordinator, assigned): (Box<dyn JobCoordinator>, Vec<u32>) = match &job.coordinator {
        CoordinatorConfig::ZooKeeper(zk) => {
            if opts.until_end {
                return Err(RuntimeError::Coordinator(CoordinatorError::Unsupported(
                    "running until the inputs end (--until-end) needs job.coordinator = \"static\": \
                     under ZooKeeper tasks move between processes"
                        .into(),
                )));
            }
            let info = JoinInfo {
                host: host_name(),
                http: link.as_ref().and_then(|l| l.serving().advertised()),
                holds: local_tasks(state, &job.name),
                newest_generation: newest_generation(&*c.backend, &job.name, c.n_tasks)?,
            };
            let zk = ZooKeeperCoordinator::join(
                zk,
                &job.name,
                c.n_tasks,
                job.standby_replicas as usize,
                info,
            )?;
            (Box::new(zk), Vec::new())
        }
        _ => {
            let assigned: Vec<u32> = (0..c.n_tasks)
                .filter(|p| opts.assignment.as_ref().is_none_or(|a| a.contains(p)))
                .collect();
            let coordinator = StaticCoordinator::new(assigned.iter().copied().collect());
            (Box::new(coordinator), assigned)
        }
    };
    if let Some(link) = link {
        c.serve(link, &assigned);
    }
    stats.restores = c.open_tasks(&assigned, &mut *opts.progress)?;
    stats.tasks = assigned.len() as u32;
    stats.restore_elapsed = restore_started.elapsed();
    let started = Instant::now();
    let looped = c.run_loop(&mut opts, &mut stats, &mut *coordinator);
    if let Some(link) = &c.serving {
        link.serving().set_phase(Phase::Stopping);
    }
    looped?;
    let open: Vec<u32> = c.tasks.keys().copied().collect();
    for p in open {
        match c.close_task(p) {
            Ok(()) => stats.commits += 1,
            Err(e) if is_fenced(&e) => {
                // The lease lapsed on the way out: drop the rest without committing.
                c.fence_all(&e.to_string());
                break;
            }
            Err(e) => return Err(e),
        }
    }
    coordinator.leave();
    stats.skipped = c.skipped;
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// Whether `e` is a commit refused because the process may no longer own its task.
fn is_fenced(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Store(TaskStoreError::Fenced { .. }))
}

/// The newest job model version named by the checkpoints of the job's `n_tasks` tasks.
fn newest_generation(backend: &dyn Backend, job: &str, n_tasks: u32) -> Result<u64, RuntimeError> {
    let mut newest = 0;
    for p in 0..n_tasks {
        let task = task_name(job, p);
        let cp = backend
            .read_checkpoint(&task)
            .map_err(|source| RuntimeError::Backend { task, source })?;
        if let Some(owner) = cp.and_then(|c| c.owner) {
            newest = newest.max(owner.generation);
        }
    }
    Ok(newest)
}

/// This machine's host name (for the coordinator; replicas go to different hosts).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The tasks of `job` that have local state under `state` (a directory under `tasks/`).
fn local_tasks(state: &StateDir, job: &str) -> BTreeSet<u32> {
    let prefix = format!("{job}.partition-");
    state
        .tasks()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.strip_prefix(&prefix)?.parse().ok())
        .collect()
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
    /// The HTTP server's reads and the status it shows, when the job is served.
    serving: Option<ServeLink>,
    /// The side-input stores, bootstrapped at start.
    side: Option<SideInputs>,
    /// For tasks opened from now on: the owner stamped on their checkpoints and the fence
    /// asked before each (from the coordinator's last `Run`).
    claim: Option<(Option<CheckpointOwner>, CommitFence)>,
    /// When the coordinator's task placement was last given to the HTTP server.
    routes_at: Option<Instant>,
    /// Standby copies of tasks other processes run, and when they last caught up.
    standbys: BTreeMap<u32, StandbyTask>,
    standby_at: Option<Instant>,
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
        // Side inputs are bootstrapped before any task opens (see `side_input`).
        let side = if job.side_inputs.is_empty() {
            None
        } else {
            Some(SideInputs::bootstrap(&*backend, state, job)?)
        };
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
            serving: None,
            side,
            claim: None,
            routes_at: None,
            standbys: BTreeMap::new(),
            standby_at: None,
        })
    }

    /// Serves the tasks' stores to the HTTP server at the other end of `link` (see
    /// [`run_job_serving`]); `assigned` are the tasks this process is going to open (shown
    /// as restoring until they run).
    pub fn serve(&mut self, link: ServeLink, assigned: &[u32]) {
        let job = &self.job.name;
        link.serving()
            .set_tasks(self.n_tasks, assigned, |p| task_name(job, p));
        self.serving = Some(link);
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
        if let Some(link) = self.serving.as_mut() {
            link.task_opening(p, &task_name(&self.job.name, p));
        }
        let (run, restored) = self.opener().prepare(p, progress)?;
        self.install_task(run)?;
        Ok(restored)
    }

    /// Opens the tasks of `partitions` as [`open_task`](Self::open_task) does, restoring up
    /// to `job.container.thread.pool.size` of them at once (their progress summed on
    /// `progress`); then commits their first checkpoints and calls `init`, one task at a
    /// time, in partition order.
    pub fn open_tasks(
        &mut self,
        partitions: &[u32],
        progress: &mut (dyn RestoreProgress + Send),
    ) -> Result<Vec<RestoreStats>, RuntimeError> {
        Ok(self
            .open_tasks_timed(partitions, self.job.thread_pool_size, progress)?
            .into_iter()
            .flat_map(|t| t.restores)
            .collect())
    }

    /// [`open_tasks`](Self::open_tasks) on up to `threads` threads, with what each task's
    /// opening took.
    fn open_tasks_timed(
        &mut self,
        partitions: &[u32],
        threads: usize,
        progress: &mut (dyn RestoreProgress + Send),
    ) -> Result<Vec<OpenedTask>, RuntimeError> {
        let threads = threads.min(partitions.len());
        if threads <= 1 {
            let mut opened = Vec::new();
            for &p in partitions {
                let started = Instant::now();
                let restores = self.open_task(p, progress)?;
                opened.push(OpenedTask {
                    partition: p,
                    elapsed: started.elapsed(),
                    restores,
                });
            }
            return Ok(opened);
        }
        if let Some(link) = self.serving.as_mut() {
            for &p in partitions {
                link.task_opening(p, &task_name(&self.job.name, p));
            }
        }
        let opener = self.opener();
        let shared = crate::restore::ParallelProgress::new(progress);
        let mut shares: Vec<Vec<u32>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, &p) in partitions.iter().enumerate() {
            shares[i % threads].push(p);
        }
        type Prepared = (
            u32,
            Duration,
            Result<(TaskRun, Vec<RestoreStats>), RuntimeError>,
        );
        let mut prepared: Vec<Prepared> = std::thread::scope(|scope| {
            let handles: Vec<_> = shares
                .into_iter()
                .map(|share| {
                    let (opener, shared) = (&opener, &shared);
                    scope.spawn(move || {
                        let mut progress = shared.handle();
                        let mut out = Vec::new();
                        for p in share {
                            let started = Instant::now();
                            let r = opener.prepare(p, &mut progress);
                            let failed = r.is_err();
                            out.push((p, started.elapsed(), r));
                            if failed {
                                break;
                            }
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                match h.join() {
                    Ok(out) => all.extend(out),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            all
        });
        prepared.sort_by_key(|(p, _, _)| *p);
        let mut opened = Vec::new();
        let mut runs = Vec::new();
        for (partition, elapsed, r) in prepared {
            let (run, restores) = r?;
            runs.push(run);
            opened.push(OpenedTask {
                partition,
                elapsed,
                restores,
            });
        }
        for run in runs {
            self.install_task(run)?;
        }
        Ok(opened)
    }

    /// What opening a task needs of the container, shareable between threads.
    fn opener(&self) -> Opener<'_> {
        Opener {
            backend: &self.backend,
            state: self.state,
            job: self.job,
            factory: self.factory,
            input_partitions: &self.input_partitions,
            output_partitions: &self.output_partitions,
            serving: self.serving.as_ref().map(|l| l.serving().clone()),
            side: self.side.as_ref().map(|s| s.views()).unwrap_or_default(),
        }
    }

    /// The second half of opening a task, on the container's thread: its first checkpoint
    /// if it has none covering its inputs, `init`, then it runs.
    fn install_task(&mut self, mut run: TaskRun) -> Result<(), RuntimeError> {
        set_crash_failpoint(&mut run.storage.lock());
        if let Some((owner, fence)) = &self.claim {
            let mut storage = run.storage.lock();
            storage.set_owner(owner.clone());
            storage.set_fence(Some(Arc::clone(fence)));
        }
        let inputs: Vec<TopicPartition> = run.cursors.iter().map(|c| c.tp.clone()).collect();
        if !run.storage.lock().checkpoint_covers(&inputs) {
            // A first checkpoint before any processing: from now on the checkpoint is the
            // single truth about what this task has committed (without it, a crash before
            // the first commit would make the next restore trust uncommitted changelog
            // records). It also seals what restore trimmed.
            commit_task(&mut run)?;
        }
        let name = run.name.clone();
        with_ctx(&mut run, self.job, |task, ctx| task.init(ctx))
            .map_err(task_err(&name, "init".into()))?;
        if let Some(s) = &run.serving {
            s.task_checkpoint(run.partition, run.storage.lock().checkpoint(), false);
        }
        self.tasks.insert(run.partition, run);
        Ok(())
    }

    /// Closes the task of partition `p`: `close`, a final commit, its stores closed.
    pub fn close_task(&mut self, p: u32) -> Result<(), RuntimeError> {
        let Some(mut run) = self.tasks.remove(&p) else {
            return Ok(());
        };
        with_ctx(&mut run, self.job, |task, ctx| task.close(ctx))
            .map_err(task_err(&run.name, "close".into()))?;
        if let Some(link) = self.serving.as_mut() {
            link.task_closed(p);
        }
        if let Err(e) = commit_task(&mut run) {
            // Not committed: drop it as a crash would (the next restore discards the rest).
            let _ = run.storage.close();
            return Err(e);
        }
        self.skipped += run.skipped;
        run.storage.close()?;
        Ok(())
    }

    /// Drops every open task *without committing* (the coordinator says another process
    /// may own them by now): what they did since their last commit is discarded by the
    /// next restore, wherever it runs.
    fn fence_all(&mut self, reason: &str) {
        let tasks = std::mem::take(&mut self.tasks);
        if tasks.is_empty() {
            return;
        }
        tracing::warn!(
            "fenced: dropping tasks {:?} without committing: {reason}",
            tasks.keys().collect::<Vec<_>>()
        );
        for (p, run) in tasks {
            if let Some(link) = self.serving.as_mut() {
                link.task_closed(p);
            }
            if let Err(e) = run.storage.close() {
                tracing::warn!(task = %run.name, "closing a fenced task: {e}");
            }
        }
    }

    /// Gives the HTTP server the coordinator's task placement (at most every 100 ms), so
    /// reads of keys whose task runs elsewhere are redirected there.
    fn publish_routes(&mut self, coordinator: &dyn JobCoordinator) {
        let Some(link) = &self.serving else { return };
        if self
            .routes_at
            .is_some_and(|at| at.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.routes_at = Some(Instant::now());
        let Some(status) = coordinator.status() else {
            return;
        };
        let Some(model) = status.model else { return };
        let owners = model
            .model
            .active
            .iter()
            .map(|(&t, m)| {
                let http = status.members.get(m).and_then(|i| i.http.clone());
                (t, (m.clone(), http))
            })
            .collect();
        link.serving().set_routes(Some(crate::serve::Routes {
            version: model.model.version,
            me: status.member,
            owners,
        }));
    }

    /// Asks the coordinator what to do and does it: release (commit and close) tasks that
    /// moved away, open the tasks gained once every process released them, or drop
    /// everything when fenced.
    fn coordinate(
        &mut self,
        coordinator: &mut dyn JobCoordinator,
        progress: &mut (dyn RestoreProgress + Send),
        stats: &mut RunStats,
    ) -> Result<(), RuntimeError> {
        self.publish_routes(coordinator);
        let open: BTreeSet<u32> = self.tasks.keys().copied().collect();
        match coordinator.poll(&open)? {
            Directive::Continue => {}
            Directive::Release { version, keep } => {
                let started = Instant::now();
                let lost: Vec<u32> = open.difference(&keep).copied().collect();
                for &p in &lost {
                    match self.close_task(p) {
                        Ok(()) => stats.commits += 1,
                        Err(e) if is_fenced(&e) => {
                            self.fence_all(&e.to_string());
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    }
                }
                tracing::info!(
                    job = %self.job.name,
                    "job model {version}: released tasks {lost:?} (committed and closed in {} ms)",
                    started.elapsed().as_millis()
                );
                coordinator.released(version)?;
            }
            Directive::Run { version, active } => {
                let started = Instant::now();
                let gained: Vec<u32> = active.difference(&open).copied().collect();
                let standbys: Vec<(u32, StandbyTask)> = gained
                    .iter()
                    .filter_map(|p| self.standbys.remove(p).map(|s| (*p, s)))
                    .collect();
                let promoted: Vec<u32> = standbys.iter().map(|(p, _)| *p).collect();
                if !promoted.is_empty() {
                    tracing::info!(job = %self.job.name, "promoting standbys of tasks {promoted:?}");
                }
                // Closing a standby's stores flushes their memtables: side by side.
                std::thread::scope(|scope| {
                    for (_, s) in standbys {
                        scope.spawn(move || drop(s));
                    }
                });
                self.claim = Some((coordinator.owner(version), coordinator.fence()));
                if let Some(link) = &self.serving {
                    let job = &self.job.name;
                    link.serving()
                        .set_tasks(self.n_tasks, &gained, |p| task_name(job, p));
                }
                // Tasks gained in a rebalance are opened at least `MIN_OPEN_THREADS` at a
                // time: opening is mostly waiting (broker round trips for the checkpoint,
                // changelog ends and input positions; fsyncs), so a failover onto standbys
                // is one round of waits, not one per task, even with a pool of one thread.
                let threads = self.job.thread_pool_size.max(MIN_OPEN_THREADS);
                let opened = match self.open_tasks_timed(&gained, threads, progress) {
                    Err(e) if is_fenced(&e) => {
                        self.fence_all(&e.to_string());
                        return Ok(());
                    }
                    r => r?,
                };
                for t in &opened {
                    tracing::info!(
                        job = %self.job.name,
                        "job model {version}: task {} opened in {} ms: {}",
                        t.partition,
                        t.elapsed.as_millis(),
                        restore_summary(&t.restores, promoted.contains(&t.partition))
                    );
                }
                let restores: Vec<RestoreStats> =
                    opened.into_iter().flat_map(|t| t.restores).collect();
                if let Some(link) = &self.serving {
                    link.serving().set_phase(Phase::Running);
                }
                let records: u64 = restores.iter().map(|r| r.records).sum();
                tracing::info!(
                    job = %self.job.name,
                    "job model {version}: running tasks {:?}; opened {gained:?} in {} ms ({records} changelog records restored)",
                    active,
                    started.elapsed().as_millis()
                );
                stats.tasks += gained.len() as u32;
                stats.restores.extend(restores);
                let mut holds = local_tasks(self.state, &self.job.name);
                holds.extend(&active);
                coordinator.holds(&holds);
            }
            Directive::Fence { reason } => self.fence_all(&reason),
        }
        self.follow_standbys(coordinator);
        Ok(())
    }

    /// Opens and closes standby copies as the coordinator's model says, and once per commit
    /// interval catches each up to its task's newest checkpoint. A standby that fails is
    /// dropped with a warning and tried again at the next catch-up.
    fn follow_standbys(&mut self, coordinator: &dyn JobCoordinator) {
        let every = Duration::from_millis(self.job.commit_ms);
        if self.standby_at.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.standby_at = Some(Instant::now());
        let mut wanted: BTreeSet<u32> = coordinator
            .standbys()
            .into_iter()
            .filter(|p| !self.tasks.contains_key(p))
            .collect();
        // A standby of a task moving here stays until the task opens on its state (promoted);
        // it is not caught up meanwhile (the task's restore does that, and the barrier is
        // not kept waiting).
        let promoting: BTreeSet<u32> = coordinator
            .assigned()
            .into_iter()
            .filter(|p| self.standbys.contains_key(p) && !self.tasks.contains_key(p))
            .collect();
        self.standbys.retain(|p, s| {
            let keep = wanted.contains(p) || promoting.contains(p);
            if !keep {
                tracing::info!(task = %s.task(), "standby: no longer following the task");
            }
            keep
        });
        wanted.extend(&promoting);
        for p in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.standbys.entry(p) {
                match StandbyTask::open(self.state, self.job, p) {
                    Ok(s) => {
                        tracing::info!(task = %s.task(), "standby: following the task's checkpoints");
                        slot.insert(s);
                    }
                    Err(e) => tracing::warn!(partition = p, "standby: cannot open: {e}"),
                }
            }
        }
        // The catch-ups run side by side (each is broker round trips: the checkpoint, the
        // changelog's ends, a reader): the container's thread waits for the slowest, not for
        // their sum, before it processes or answers its coordinator again.
        let backend = &*self.backend;
        let catch_up = |s: &mut StandbyTask| match s.catch_up(backend) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(task = %s.task(), "standby: catching up failed: {e}");
                false
            }
        };
        let mut due: Vec<(u32, &mut StandbyTask)> = self
            .standbys
            .iter_mut()
            .filter(|(p, _)| !promoting.contains(p))
            .map(|(&p, s)| (p, s))
            .collect();
        let failed: Vec<u32> = match due.len() {
            0 => Vec::new(),
            1 => {
                let (p, s) = due.pop().expect("one");
                if catch_up(s) { Vec::new() } else { vec![p] }
            }
            _ => std::thread::scope(|scope| {
                let handles: Vec<_> = due
                    .into_iter()
                    .map(|(p, s)| {
                        let catch_up = &catch_up;
                        (p, scope.spawn(move || catch_up(s)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|(p, h)| match h.join() {
                        Ok(true) => None,
                        Ok(false) => Some(p),
                        Err(panic) => std::panic::resume_unwind(panic),
                    })
                    .collect()
            }),
        };
        for p in failed {
            self.standbys.remove(&p);
        }
        if let Some(link) = &self.serving {
            link.serving()
                .set_standbys(self.standbys.keys().copied().collect());
        }
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
        coordinator: &mut dyn JobCoordinator,
    ) -> Result<(), RuntimeError> {
        let job = self.job;
        let commit_every = Duration::from_millis(job.commit_ms);
        let window_every = job.window_ms.map(Duration::from_millis);
        let cleanup_every = Duration::from_millis(job.changelog_cleanup_ms);
        let (mut last_commit, mut last_window, mut last_cleanup) =
            (Instant::now(), Instant::now(), Instant::now());
        let mut stop_requested = false;
        if let Some(link) = &self.serving {
            link.serving().set_phase(Phase::Running);
        }
        let threads = job.thread_pool_size.max(1);
        loop {
            self.coordinate(coordinator, &mut *opts.progress, stats)?;
            let mut progressed = 0u64;
            let mut poisoned = Vec::new();
            let mut fenced: Option<String> = None;
            let ends = process_round(
                &mut self.tasks,
                job,
                &*self.backend,
                &self.on_process_error,
                threads,
            );
            // A failure while the fence says the tasks may be gone (a write that gave up
            // waiting for a broker it cannot reach) is the fence, not a fault of the job.
            let fence = self.claim.as_ref().map(|(_, f)| Arc::clone(f));
            let fenced_now = || fence.as_ref().and_then(|f| f().err());
            for (p, end) in ends {
                let end = match end {
                    Ok(end) => end,
                    Err(e) => match fenced_now() {
                        Some(reason) => {
                            fenced.get_or_insert(format!("{reason} ({e})"));
                            continue;
                        }
                        None => return Err(e),
                    },
                };
                let run = self.tasks.get_mut(&p).expect("a task of this round");
                match end {
                    BatchEnd::Processed(n) => progressed += n,
                    BatchEnd::Poisoned(x) => {
                        poisoned.push((p, x));
                        continue;
                    }
                }
                // Commits run here, one task at a time (see the module doc).
                if run.coordinator.commit && fenced.is_none() {
                    run.coordinator.commit = false;
                    match commit_task(run) {
                        Ok(()) => stats.commits += 1,
                        Err(e) if is_fenced(&e) => fenced = Some(e.to_string()),
                        Err(e) => return Err(e),
                    }
                }
                stop_requested |= run.coordinator.shutdown;
            }
            if let Some(reason) = fenced.take() {
                self.fence_all(&reason);
                continue;
            }
            for (p, x) in poisoned {
                self.roll_back_task(p, x, &mut *opts.progress)?;
                progressed += 1;
            }
            stats.processed += progressed;
            // New side-input records, visible to the tasks from the next round on.
            let side_applied = match self.side.as_mut() {
                Some(side) => side.poll()?,
                None => 0,
            };
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
                    match commit_task(run) {
                        Ok(()) => stats.commits += 1,
                        Err(e) if is_fenced(&e) => {
                            fenced = Some(e.to_string());
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                    if clean {
                        // Right after the commit everything in the changelogs is committed.
                        run.storage.lock().clean_changelogs(now_ms())?;
                    }
                }
                if let Some(reason) = fenced.take() {
                    self.fence_all(&reason);
                    continue;
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
            // New input appended by this process's writer (the key-value service) while the
            // round ran: its limits are read again now. A wake taken here would otherwise be
            // gone, and the idle wait below would sleep its full length before the write is
            // applied.
            let woken = self.serve_reads(None);
            let idle = progressed == 0 && side_applied == 0;
            if idle && !woken {
                // Idle: wait for input, answering reads at once as they come.
                self.serve_reads(Some(IDLE_WAIT));
            }
            if idle || woken {
                for run in self.tasks.values_mut() {
                    for c in &mut run.cursors {
                        c.refresh_limit(&*self.backend)?;
                    }
                }
            }
        }
    }
}

impl Container<'_> {
    /// Publishes where the tasks are in their inputs and answers waiting HTTP reads (at
    /// most [`MAX_READS_PER_ROUND`]); with `idle`, first waits that long for one. Without
    /// serving, `idle` is a sleep. Returns whether new input was appended meanwhile
    /// ([`ServeLink::take_woken`]).
    fn serve_reads(&mut self, idle: Option<Duration>) -> bool {
        let Some(link) = self.serving.as_mut() else {
            if let Some(d) = idle {
                std::thread::sleep(d);
            }
            return false;
        };
        for (&p, run) in &self.tasks {
            let reads: Arc<dyn DirectRead> = run.storage.clone();
            link.publish_task(
                p,
                run.cursors.iter().map(|c| (&c.tp, c.next)),
                run.cursors.iter().all(|c| c.next >= c.target),
                run.storage.lock().checkpoint(),
                &reads,
            );
        }
        link.answer(
            idle,
            MAX_READS_PER_ROUND,
            &mut OpenTasks {
                tasks: &mut self.tasks,
                standbys: &mut self.standbys,
            },
        );
        link.take_woken()
    }
}

/// One task opened by [`Container::open_tasks`], with what it took (for the rebalance log).
struct OpenedTask {
    partition: u32,
    /// Opening it: restore, inputs positioned, task made (not its first commit and `init`).
    elapsed: Duration,
    restores: Vec<RestoreStats>,
}

/// How a task's stores were restored, for the log: `full restore, 124873 records replayed in
/// 201 ms`; `delta restore from a standby, ...` when it was a standby here.
fn restore_summary(restores: &[RestoreStats], from_standby: bool) -> String {
    if restores.is_empty() {
        return "no store with a changelog".into();
    }
    let kind = if restores.iter().any(|r| r.kind == RestoreKind::Full) {
        "full"
    } else if restores.iter().any(|r| r.kind == RestoreKind::Delta) {
        "delta"
    } else {
        "up-to-date"
    };
    let records: u64 = restores.iter().map(|r| r.records).sum();
    let elapsed: Duration = restores.iter().map(|r| r.elapsed).sum();
    format!(
        "{kind} restore{}, {records} records replayed in {} ms",
        if from_standby { " from a standby" } else { "" },
        elapsed.as_millis()
    )
}

/// What opening a task needs of the container: shared by the threads that restore tasks in
/// parallel ([`Container::open_tasks`]).
struct Opener<'a> {
    backend: &'a Arc<dyn Backend>,
    state: &'a StateDir,
    job: &'a JobConfig,
    factory: &'a TaskFactory,
    input_partitions: &'a BTreeMap<String, u32>,
    output_partitions: &'a BTreeMap<String, u32>,
    serving: Option<Serving>,
    side: crate::runtime::side_input::SideViews,
}

impl Opener<'_> {
    /// The first half of opening the task of partition `p`: its storage restored to its
    /// checkpoint, its inputs positioned there, its task object made.
    fn prepare(
        &self,
        p: u32,
        progress: &mut dyn RestoreProgress,
    ) -> Result<(TaskRun, Vec<RestoreStats>), RuntimeError> {
        let name = task_name(&self.job.name, p);
        let ctx = TaskStorageContext {
            backend: Arc::clone(self.backend),
            state: self.state,
            task: &name,
            changelog_partition: p,
        };
        let (storage, restored) = match &self.serving {
            None => TaskStorage::open(&ctx, &self.job.stores, progress)?,
            Some(serving) => {
                open_delay_failpoint();
                let mut progress = StatusProgress {
                    inner: progress,
                    serving,
                    task: p,
                };
                TaskStorage::open(&ctx, &self.job.stores, &mut progress)?
            }
        };
        let mut cursors = Vec::new();
        for (t, &np) in self.input_partitions {
            if p >= np {
                continue;
            }
            let tp = TopicPartition::new(t.clone(), p);
            cursors.push(Cursor::open(
                &**self.backend,
                &name,
                tp,
                storage.checkpoint(),
            )?);
        }
        let run = TaskRun {
            name: name.clone(),
            partition: p,
            task: (self.factory)(&name),
            storage: Arc::new(SharedStorage::new(storage)),
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
            serving: self.serving.clone(),
            side: self.side.handles(),
        };
        Ok((run, restored))
    }
}

/// The open tasks and the standby copies, as the HTTP reads see them.
struct OpenTasks<'a> {
    tasks: &'a mut BTreeMap<u32, TaskRun>,
    standbys: &'a mut BTreeMap<u32, StandbyTask>,
}

impl TaskStores for OpenTasks<'_> {
    fn read(
        &mut self,
        task: u32,
        store: &str,
        op: &ReadOp,
        published: &BTreeMap<TopicPartition, u64>,
    ) -> Result<ReadAnswer, QueryError> {
        let run = self.tasks.get_mut(&task).ok_or(QueryError::Unavailable {
            task,
            why: "is not open in this process",
        })?;
        // Behind a position already published (rolled back to its checkpoint and replaying):
        // its stores may not hold writes already acknowledged as applied.
        if run
            .cursors
            .iter()
            .any(|c| published.get(&c.tp).is_some_and(|&p| c.next < p))
        {
            return Err(QueryError::Unavailable {
                task,
                why: "is replaying its input after a rollback",
            });
        }
        crate::runtime::shared_storage::read(&mut run.storage.lock(), store, op)
    }

    fn standby_get(
        &mut self,
        task: u32,
        store: &str,
        key: &[u8],
        max_lag: u64,
    ) -> Result<crate::serve::StandbyAnswer, QueryError> {
        let standby = self
            .standbys
            .get_mut(&task)
            .ok_or_else(|| QueryError::NoStandby {
                task,
                why: "this process holds no standby of it".into(),
            })?;
        match standby.get(store, key, max_lag) {
            Ok((value, lag, age)) => Ok(crate::serve::StandbyAnswer::new(value, lag, age)),
            Err(StandbyReadError::Store(e)) => Err(QueryError::Store(e)),
            Err(e) => Err(QueryError::NoStandby {
                task,
                why: e.to_string(),
            }),
        }
    }
}

/// Tests of restore under HTTP: `GREGOR_TEST_OPEN_DELAY_MS=<ms>` makes opening each task of
/// a served job wait that long first (the task shows as restoring meanwhile).
fn open_delay_failpoint() {
    if let Some(ms) = std::env::var("GREGOR_TEST_OPEN_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

fn with_ctx<R>(
    run: &mut TaskRun,
    job: &JobConfig,
    f: impl FnOnce(&mut dyn StreamTask, &mut TaskContext<'_>) -> R,
) -> R {
    let mut storage = run.storage.lock();
    let mut ctx = TaskContext {
        task: &run.name,
        partition: run.partition,
        stores: storage.stores(),
        side: &mut run.side,
        collector: &mut run.collector,
        coordinator: &mut run.coordinator,
        config: job,
        now_ms: now_ms(),
    };
    f(&mut *run.task, &mut ctx)
}

/// Processes one batch of every open task, on up to `threads` threads (each task on one
/// thread; the tasks are dealt round-robin, the container's own thread taking a share), and
/// returns each task's outcome in partition order. With one thread, or one task, no thread
/// is started.
fn process_round(
    tasks: &mut BTreeMap<u32, TaskRun>,
    job: &JobConfig,
    backend: &dyn Backend,
    policy: &ProcessErrorPolicy,
    threads: usize,
) -> Vec<(u32, Result<BatchEnd, RuntimeError>)> {
    let threads = threads.min(tasks.len());
    if threads <= 1 {
        return tasks
            .iter_mut()
            .map(|(&p, run)| (p, process_batch(run, job, backend, policy)))
            .collect();
    }
    let mut shares: Vec<Vec<(u32, &mut TaskRun)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, (&p, run)) in tasks.iter_mut().enumerate() {
        shares[i % threads].push((p, run));
    }
    let work = |share: Vec<(u32, &mut TaskRun)>| -> Vec<(u32, Result<BatchEnd, RuntimeError>)> {
        share
            .into_iter()
            .map(|(p, run)| (p, process_batch(run, job, backend, policy)))
            .collect()
    };
    let mut ends = std::thread::scope(|scope| {
        let mut shares = shares.into_iter();
        let own = shares.next().unwrap_or_default();
        let handles: Vec<_> = shares
            .map(|share| scope.spawn(move || work(share)))
            .collect();
        let mut ends = work(own);
        for h in handles {
            match h.join() {
                Ok(e) => ends.extend(e),
                // A task panicked: let the panic go on, as it would on one thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        ends
    });
    ends.sort_by_key(|(p, _)| *p);
    ends
}

/// Processes up to one batch from each input of `run`; returns the number of messages, or
/// the message that failed if `policy` skips failed messages.
fn process_batch(
    run: &mut TaskRun,
    job: &JobConfig,
    backend: &dyn Backend,
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
        side,
        ..
    } = run;
    // Held for the whole batch: a direct read sees the stores between batches only.
    let mut held = storage.lock();
    let stores = held.stores();
    let mut n = 0;
    let now = now_ms();
    for c in cursors.iter_mut() {
        if c.next >= c.limit {
            continue;
        }
        // No more records than there are offsets below the limit: on a partition without
        // gaps (an input not compacted) the reader stops at the limit instead of reading on
        // to the end of what was written (records not yet readable, to step back from) and
        // then looking for more (a stat and a directory listing on the embedded log).
        let want =
            usize::try_from(c.limit - c.next).map_or(FETCH_RECORDS, |n| n.min(FETCH_RECORDS));
        let records = c.reader.next_batch(want).map_err(topic_err(&c.tp.topic))?;
        if records.is_empty() {
            // The end of the partition: offsets up to the reader's position hold nothing
            // (compacted away), so they count as processed.
            c.next = c.next.max(c.reader.position().min(c.limit));
            continue;
        }
        let (mut past_limit, mut refreshed) = (false, false);
        for r in records {
            if r.offset < c.next {
                // A backend may return records before the position asked for.
                continue;
            }
            if r.offset >= c.limit && !refreshed {
                // The limit is refreshed when the loop idles; the reader may be past it
                // because the input grew since. Ask again before stepping the reader back,
                // which costs a Kafka reader a new fetch (under a steady stream of writes
                // to `gregor serve`, one per batch).
                refreshed = true;
                c.refresh_limit(backend)?;
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
                side: &mut *side,
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
                // Its writes so far stay in the stores until the rollback: no direct read
                // may see them (set while the batch still holds the stores).
                storage.poison();
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
    let mut storage = run.storage.lock();
    storage.commit(&inputs, outputs)?;
    if let Some(s) = &run.serving {
        s.task_checkpoint(run.partition, storage.checkpoint(), false);
    }
    drop(storage);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(kind: RestoreKind, records: u64, ms: u64) -> RestoreStats {
        RestoreStats {
            store: "s".into(),
            kind,
            records,
            bytes: 0,
            truncated: 0,
            trimmed: 0,
            wiped: None,
            elapsed: Duration::from_millis(ms),
        }
    }

    #[test]
    fn restore_summaries_name_the_kind_and_the_source() {
        assert_eq!(restore_summary(&[], false), "no store with a changelog");
        assert_eq!(
            restore_summary(&[stats(RestoreKind::Full, 120, 30)], false),
            "full restore, 120 records replayed in 30 ms"
        );
        assert_eq!(
            restore_summary(
                &[
                    stats(RestoreKind::UpToDate, 0, 2),
                    stats(RestoreKind::Delta, 7, 3)
                ],
                true
            ),
            "delta restore from a standby, 7 records replayed in 5 ms"
        );
        assert_eq!(
            restore_summary(
                &[
                    stats(RestoreKind::Delta, 7, 3),
                    stats(RestoreKind::Full, 9, 1)
                ],
                true
            ),
            "full restore from a standby, 16 records replayed in 4 ms"
        );
        assert_eq!(
            restore_summary(&[stats(RestoreKind::UpToDate, 0, 1)], true),
            "up-to-date restore from a standby, 0 records replayed in 1 ms"
        );
    }
}
