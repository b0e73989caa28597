//! `gregor job …`: operator commands on a job's tasks, through the job's backend (embedded
//! or Kafka): print each task's checkpoint, and reset tasks to start from scratch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use gregor::backend::Backend;
use gregor::backend::kafka::KafkaBackend;
use gregor::checkpoint::Checkpoint;
use gregor::runtime::config::System;
use gregor::runtime::{Container, JobConfig, task_name};
use gregor::statedir::StateDir;
use gregor::task_storage::{ChangelogReset, TaskStorage, TaskStorageContext};

/// `gregor job` verbs.
#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Print each task's checkpoint: the next input offset per input partition, each
    /// store's changelog end, each output's end at the last commit.
    Checkpoints {
        /// The job file.
        job: PathBuf,
        /// Only this task (e.g. counts.partition-0).
        #[arg(long)]
        task: Option<String>,
        /// Print one JSON object per task: {"task": …, "checkpoint": … or null}.
        #[arg(long)]
        json: bool,
    },
    /// Start tasks from scratch (after a lost checkpoint): empty their stores' changelogs
    /// (truncated; on Kafka, a tombstone per key), delete their local stores, and write a
    /// checkpoint that restarts their inputs at the beginning (committed output is kept).
    /// The job must not be running.
    Reset {
        /// The job file.
        job: PathBuf,
        /// Only this task (default: every task of the job).
        #[arg(long)]
        task: Option<String>,
    },
}

/// The job's backend: Kafka for `job.system = "kafka"`, else the embedded log of `state`.
pub(crate) fn backend(state: &StateDir, job: &JobConfig, file: &Path) -> Result<Arc<dyn Backend>> {
    Ok(match job.system {
        System::Kafka => Arc::new(
            KafkaBackend::connect(job.kafka_settings())
                .with_context(|| format!("{}: connecting to Kafka", file.display()))?,
        ),
        _ => Arc::new(gregor::runtime::embedded_backend(state, job)?),
    })
}

/// The tasks a command acts on: `--task` (checked to be one of the job's) or all of them.
pub(crate) fn tasks(
    backend: &dyn Backend,
    job: &JobConfig,
    only: Option<String>,
) -> Result<Vec<String>> {
    let n = Container::task_count_of(backend, job)?;
    let all: Vec<String> = (0..n).map(|p| task_name(&job.name, p)).collect();
    match only {
        None => Ok(all),
        Some(t) if all.contains(&t) => Ok(vec![t]),
        Some(t) => bail!(
            "job `{}` has no task `{t}` (its tasks: {})",
            job.name,
            all.join(", ")
        ),
    }
}

/// The partition of task `<job>.partition-N` (0 for another name).
pub(crate) fn partition_of(task: &str) -> u32 {
    task.rsplit_once("partition-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

fn print_checkpoint(task: &str, cp: Option<&Checkpoint>) {
    let Some(cp) = cp else {
        println!("{task}: no checkpoint");
        return;
    };
    println!("{task}:");
    for (topic, parts) in &cp.inputs {
        for (p, o) in parts {
            println!("  input     {topic}/{p}\tnext offset {o}");
        }
    }
    for (store, end) in &cp.changelogs {
        println!("  changelog {store}\tend {end}");
    }
    for (topic, parts) in &cp.outputs {
        for (p, o) in parts {
            println!("  output    {topic}/{p}\tend {o}");
        }
    }
}

/// Runs a `job` verb; returns the exit status.
pub fn run(state_dir: &Path, cmd: JobCmd) -> Result<i32> {
    match cmd {
        JobCmd::Checkpoints {
            job: file,
            task,
            json,
        } => {
            let job = JobConfig::from_file(&file)?;
            let state = StateDir::open(state_dir)?;
            let backend = backend(&state, &job, &file)?;
            let mut status = 0;
            for t in tasks(&*backend, &job, task)? {
                match backend.read_checkpoint(&t) {
                    Ok(cp) if json => {
                        println!("{}", serde_json::json!({"task": t, "checkpoint": cp}));
                    }
                    Ok(cp) => print_checkpoint(&t, cp.as_ref()),
                    Err(e) => {
                        eprintln!("task `{t}`: cannot read its checkpoint: {e}");
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
        JobCmd::Reset { job: file, task } => {
            let job = JobConfig::from_file(&file)?;
            let state = StateDir::open(state_dir)?;
            let backend = backend(&state, &job, &file)?;
            // Only the job that holds the topics' roles may empty them.
            let dead_letter = match &job.on_process_error {
                gregor::runtime::ProcessErrorPolicy::DeadLetter(t) => Some(t.as_str()),
                _ => None,
            };
            gregor::runtime::claim_job_roles(&*backend, &job, dead_letter)?;
            for t in tasks(&*backend, &job, task)? {
                let ctx = TaskStorageContext {
                    backend: Arc::clone(&backend),
                    state: &state,
                    task: &t,
                    changelog_partition: partition_of(&t),
                };
                let r = TaskStorage::reset(&ctx, &job.stores)
                    .with_context(|| format!("resetting task `{t}`"))?;
                let mut done: Vec<String> = Vec::new();
                if r.local_removed {
                    done.push("local stores deleted".into());
                }
                for (store, tp, what) in &r.changelogs {
                    done.push(match what {
                        ChangelogReset::Empty => format!("changelog {tp} of `{store}` was empty"),
                        ChangelogReset::Truncated { records } => {
                            format!("changelog {tp} of `{store}`: {records} records removed")
                        }
                        ChangelogReset::Tombstoned { keys } => {
                            format!("changelog {tp} of `{store}`: {keys} keys deleted (tombstones)")
                        }
                        _ => format!("changelog {tp} of `{store}` emptied"),
                    });
                }
                let outputs: BTreeMap<_, _> = r.checkpoint.outputs.clone();
                eprintln!(
                    "reset task `{t}`: {}; inputs restart at their beginning{}",
                    if done.is_empty() {
                        "no state".to_string()
                    } else {
                        done.join(", ")
                    },
                    if outputs.is_empty() {
                        String::new()
                    } else {
                        "; committed output kept".to_string()
                    }
                );
            }
            Ok(0)
        }
    }
}
