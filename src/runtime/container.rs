//! The container: runs every task of a job in one thread, one task per input partition.
//!
//! Start-up: check inputs, create changelog and output topics, drop output that no
//! checkpoint covers, open each task's stores (restoring them to the task's checkpoint) and
//! position its inputs at the checkpointed offsets. Then loop: read input in batches, call
//! `process`, call `window` every `job.window.ms`, commit every `job.commit.ms`. A stop
//! request (Ctrl-C, SIGTERM, a task's `shutdown`) or, with `until_end`, reaching the end every
//! input had at start, ends the loop with a final commit.
//!
//! Commit, one task at a time (so the tail of an output partition only ever belongs to the
//! task committing): flush the stores' caches into their changelogs and fsync those (see
//! [`crate::task_stores`]); append the task's buffered output and fsync it; write the
//! checkpoint (input offsets, changelog ends, output ends); update the output partitions'
//! read-committed markers; flush the stores' engines and write their `OFFSET` files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::changelog::now_ms;
use crate::checkpoint::Checkpoint;
use crate::log::{LogDir, LogError};
use crate::restore::{RestoreProgress, RestoreStats};
use crate::statedir::StateDir;
use crate::task_stores::{StoreOpenContext, TaskStore, open_stores};

use super::config::JobConfig;
use super::error::{RuntimeError, log_err, task_err};
use super::input::Cursor;
use super::outputs::Outputs;
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
}

impl RunOptions {
    /// Runs until stopped, logging restore progress.
    pub fn new() -> Self {
        RunOptions {
            until_end: false,
            stop: Arc::new(AtomicBool::new(false)),
            progress: Box::new(crate::restore::LogProgress::default()),
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
    /// The checkpoint read at start: its entries for other jobs' inputs, stores and outputs
    /// (jobs sharing a state directory share `tasks/<task>/checkpoint`) are kept on commit.
    base: Checkpoint,
    partition: u32,
    task: Box<dyn StreamTask>,
    stores: BTreeMap<String, TaskStore>,
    cursors: Vec<Cursor>,
    collector: Collector,
    coordinator: Coordinator,
}

/// The name of job `job`'s task for input partition `p`: `<job>.partition-<p>`. Naming
/// tasks by job keeps the checkpoints and stores of several jobs in one state directory apart.
pub fn task_name(job: &str, p: u32) -> String {
    format!("{job}.partition-{p}")
}

/// Runs `job` in this process until it is stopped (or, with `until_end`, caught up).
pub fn run_job(
    state: &StateDir,
    job: &JobConfig,
    factory: &TaskFactory,
    mut opts: RunOptions,
) -> Result<RunStats, RuntimeError> {
    let logs = LogDir::open(state.root()).map_err(|source| RuntimeError::Log {
        topic: "*".into(),
        source,
    })?;

    // Inputs decide the number of tasks.
    let mut input_partitions = BTreeMap::new();
    for t in &job.inputs {
        let topic = match logs.topic(t) {
            Ok(topic) => topic,
            Err(LogError::TopicNotFound { .. }) => {
                return Err(RuntimeError::NoInput { topic: t.clone() });
            }
            Err(e) => return Err(log_err(t)(e)),
        };
        input_partitions.insert(t.clone(), topic.partitions());
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
        let t = logs
            .topic_or_create(cl, n_tasks, job.changelog_topic_config())
            .map_err(log_err(cl))?;
        if t.partitions() < n_tasks {
            return Err(RuntimeError::ChangelogPartitions {
                topic: cl.clone(),
                has: t.partitions(),
                needs: n_tasks,
            });
        }
    }

    // Checkpoints of every task.
    let mut checkpoints = Vec::new();
    for p in 0..n_tasks {
        let name = task_name(&job.name, p);
        let cp = Checkpoint::read(&state.checkpoint_path(&name)).map_err(|source| {
            RuntimeError::Checkpoint {
                task: name.clone(),
                source,
            }
        })?;
        checkpoints.push(cp);
    }

    // Outputs: create if missing, drop what no checkpoint covers, write the markers.
    let mut outputs = Outputs::recover(&logs, job, n_tasks, &checkpoints)?;
    let collector_partitions = outputs.partition_counts();

    // Open every task: stores (restored), inputs at the checkpoint.
    let restore_started = Instant::now();
    let mut stats = RunStats {
        tasks: n_tasks,
        ..Default::default()
    };
    let mut runs = Vec::new();
    for p in 0..n_tasks {
        let name = task_name(&job.name, p);
        let cp = checkpoints[p as usize].clone();
        let ctx = StoreOpenContext {
            state,
            logs: &logs,
            task: &name,
            changelog_partition: p,
            checkpoint: cp.as_ref(),
        };
        let (stores, restored) = open_stores(&ctx, &job.stores, &mut *opts.progress)?;
        stats.restores.extend(restored);
        let mut cursors = Vec::new();
        for (t, &np) in &input_partitions {
            if p >= np {
                continue;
            }
            cursors.push(Cursor::open(&logs, &name, t, p, cp.as_ref())?);
        }
        let task = factory(&name);
        // Does the checkpoint record every input and changelog of this job? It may not exist
        // yet, or belong to another job run in this state directory, or predate a store.
        let covered = cp.as_ref().is_some_and(|cp| {
            cursors
                .iter()
                .all(|c| cp.input(&c.topic, c.partition).is_some())
                && job
                    .stores
                    .iter()
                    .all(|(s, cfg)| cfg.changelog.is_none() || cp.changelogs.contains_key(s))
        });
        let mut run = TaskRun {
            name: name.clone(),
            base: cp.clone().unwrap_or_default(),
            partition: p,
            task,
            stores,
            cursors,
            collector: Collector {
                partitions: collector_partitions.clone(),
                pending: Vec::new(),
            },
            coordinator: Coordinator::default(),
        };
        if !covered {
            // A first checkpoint before any processing: from now on the checkpoint is the
            // single truth about what this task has committed (without it, a crash before
            // the first commit would make the next restore trust uncommitted changelog
            // records).
            commit_task(&mut run, &mut outputs, state)?;
        }
        runs.push(run);
    }
    stats.restore_elapsed = restore_started.elapsed();
    for run in &mut runs {
        with_ctx(run, job, |task, ctx| task.init(ctx))
            .map_err(task_err(&run.name, "init".into()))?;
    }

    // The loop.
    let started = Instant::now();
    let commit_every = Duration::from_millis(job.commit_ms);
    let window_every = job.window_ms.map(Duration::from_millis);
    let cleanup_every = Duration::from_millis(job.changelog_cleanup_ms);
    let (mut last_commit, mut last_window, mut last_cleanup) =
        (Instant::now(), Instant::now(), Instant::now());
    let mut stop_requested = false;
    loop {
        let mut progressed = 0u64;
        for run in &mut runs {
            progressed += process_batch(run, job)?;
            if run.coordinator.commit {
                run.coordinator.commit = false;
                commit_task(run, &mut outputs, state)?;
                stats.commits += 1;
            }
            stop_requested |= run.coordinator.shutdown;
        }
        stats.processed += progressed;
        if let Some(w) = window_every
            && last_window.elapsed() >= w
        {
            for run in &mut runs {
                with_ctx(run, job, |task, ctx| task.window(ctx))
                    .map_err(task_err(&run.name, "window".into()))?;
                // A shutdown asked for in `window` stops the loop below, before more input.
                stop_requested |= run.coordinator.shutdown;
            }
            last_window = Instant::now();
        }
        if last_commit.elapsed() >= commit_every {
            let clean = last_cleanup.elapsed() >= cleanup_every;
            for run in &mut runs {
                commit_task(run, &mut outputs, state)?;
                stats.commits += 1;
                if clean {
                    // Right after the commit everything in the changelogs is committed.
                    for store in run.stores.values_mut() {
                        store.clean_changelog(now_ms())?;
                    }
                }
            }
            if clean {
                last_cleanup = Instant::now();
            }
            last_commit = Instant::now();
        }
        let caught_up = runs
            .iter()
            .all(|r| r.cursors.iter().all(|c| c.next >= c.target));
        if stop_requested || opts.stop.load(Ordering::SeqCst) || (opts.until_end && caught_up) {
            break;
        }
        if progressed == 0 {
            std::thread::sleep(Duration::from_millis(20));
            for run in &mut runs {
                for c in &mut run.cursors {
                    c.refresh_limit()?;
                }
            }
        }
    }

    // Clean stop: close, final commit, close stores.
    for run in &mut runs {
        with_ctx(run, job, |task, ctx| task.close(ctx))
            .map_err(task_err(&run.name, "close".into()))?;
        commit_task(run, &mut outputs, state)?;
        stats.commits += 1;
    }
    for run in runs {
        for (_, s) in run.stores {
            s.close()?;
        }
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

fn with_ctx<R>(
    run: &mut TaskRun,
    job: &JobConfig,
    f: impl FnOnce(&mut dyn StreamTask, &mut TaskContext<'_>) -> R,
) -> R {
    let mut ctx = TaskContext {
        task: &run.name,
        partition: run.partition,
        stores: &mut run.stores,
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
        stores,
        cursors,
        collector,
        coordinator,
        ..
    } = run;
    let mut n = 0;
    let now = now_ms();
    for c in cursors.iter_mut() {
        if c.next >= c.limit {
            continue;
        }
        let topic = c.topic.clone();
        let records = c
            .reader
            .next_batch(FETCH_RECORDS)
            .map_err(|source| RuntimeError::Log {
                topic: topic.clone(),
                source,
            })?;
        let mut past_limit = false;
        for r in records {
            if r.offset >= c.limit {
                past_limit = true;
                break;
            }
            let env = Envelope {
                topic: &c.topic,
                partition: c.partition,
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
                    during: format!("process of {}/{}@{}", c.topic, c.partition, r.offset),
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
            c.reposition()
                .map_err(|source| RuntimeError::Log { topic, source })?;
            if !past_limit {
                break;
            }
        }
    }
    Ok(n)
}

/// Commits one task: stores into their changelogs, then its output, then its checkpoint,
/// then output markers, then the stores' engines (see `TaskStore::finish_commit`).
fn commit_task(
    run: &mut TaskRun,
    outputs: &mut Outputs,
    state: &StateDir,
) -> Result<(), RuntimeError> {
    let mut cp = run.base.clone();
    for (name, store) in &mut run.stores {
        if let Some(end) = store.prepare_commit()? {
            cp.changelogs.insert(name.clone(), end);
        }
    }
    let touched = outputs.append(std::mem::take(&mut run.collector.pending))?;
    for c in &run.cursors {
        cp.inputs
            .entry(c.topic.clone())
            .or_default()
            .insert(c.partition, c.next);
    }
    cp.outputs = outputs.ends();
    cp.write(&state.checkpoint_path(&run.name))
        .map_err(|source| RuntimeError::Checkpoint {
            task: run.name.clone(),
            source,
        })?;
    outputs.mark_committed(&touched)?;
    for store in run.stores.values_mut() {
        store.finish_commit()?;
    }
    metrics::counter!("job.commits").increment(1);
    Ok(())
}
