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
use gregor::coordinator::barrier::leader_of;
use gregor::coordinator::zookeeper::read_status;
use gregor::runtime::config::{CoordinatorConfig, System};
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
    /// Print who runs what: with job.coordinator = "zookeeper", the members (the leader
    /// marked), the job model (task -> active process, standbys) and whether its barrier is
    /// passed; for every coordinator, each task's lag (input end minus its checkpoint).
    Status {
        /// The job file.
        job: PathBuf,
        /// Print one JSON object.
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
    if let Some(owner) = &cp.owner {
        println!(
            "  owner     {} (job model {})",
            owner.member, owner.generation
        );
    }
}

/// The input lag of task `p` of `job`: per input partition, its end minus the task's
/// checkpointed next offset, summed (`None`: an end could not be read).
fn task_lag(
    backend: &dyn Backend,
    job: &JobConfig,
    p: u32,
    cp: Option<&Checkpoint>,
) -> Option<u64> {
    let mut lag = 0;
    for topic in &job.inputs {
        let tp = gregor::backend::TopicPartition::new(topic.clone(), p);
        let Ok(offsets) = backend.offsets(&tp) else {
            return None;
        };
        let next = cp.and_then(|c| c.input(topic, p)).unwrap_or(offsets.start);
        lag += offsets.end.saturating_sub(next);
    }
    Some(lag)
}

fn status(state_dir: &Path, file: &Path, json: bool) -> Result<i32> {
    let job = JobConfig::from_file(file)?;
    // A Kafka job's status needs no local state (its processes may hold the directory).
    let backend: Arc<dyn Backend> = match job.system {
        System::Kafka => Arc::new(
            KafkaBackend::connect(job.kafka_settings())
                .with_context(|| format!("{}: connecting to Kafka", file.display()))?,
        ),
        _ => backend(&StateDir::open(state_dir)?, &job, file)?,
    };
    let n = Container::task_count_of(&*backend, &job)?;
    let zk = match &job.coordinator {
        CoordinatorConfig::ZooKeeper(zk) => {
            Some(read_status(zk, &job.name).with_context(|| {
                format!("{}: reading the job's state in ZooKeeper", file.display())
            })?)
        }
        _ => None,
    };
    let gregor::coordinator::zookeeper::JobCoordination {
        members,
        model,
        acked,
    } = zk.clone().unwrap_or_default();
    let leader = leader_of(members.keys().map(String::as_str)).map(str::to_string);
    let mut tasks = Vec::new();
    for p in 0..n {
        let cp = backend
            .read_checkpoint(&task_name(&job.name, p))
            .ok()
            .flatten();
        let lag = task_lag(&*backend, &job, p, cp.as_ref());
        let active = model.as_ref().and_then(|m| m.model.active.get(&p).cloned());
        let standbys = model
            .as_ref()
            .and_then(|m| m.model.standbys.get(&p).cloned())
            .unwrap_or_default();
        tasks.push((p, active, standbys, lag, cp.and_then(|c| c.owner)));
    }
    let barrier_waiting: Vec<String> = model
        .as_ref()
        .map(|m| {
            m.members
                .iter()
                .filter(|id| !acked.contains(*id))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if json {
        let tasks: Vec<_> = tasks
            .iter()
            .map(|(p, active, standbys, lag, owner)| {
                serde_json::json!({
                    "task": task_name(&job.name, *p), "partition": p, "active": active,
                    "standbys": standbys, "lag": lag, "checkpoint_owner": owner,
                })
            })
            .collect();
        let out = serde_json::json!({
            "job": job.name,
            "coordinator": if zk.is_some() { "zookeeper" } else { "static" },
            "members": members.values().collect::<Vec<_>>(),
            "leader": leader,
            "model_version": model.as_ref().map(|m| m.model.version),
            "model_members": model.as_ref().map(|m| &m.members),
            "barrier_waiting_for": barrier_waiting,
            "tasks": tasks,
        });
        println!("{out}");
        return Ok(0);
    }
    if zk.is_none() {
        println!("job {}: coordinator static, {n} tasks", job.name);
    } else {
        println!(
            "job {}: coordinator zookeeper, {} members, {n} tasks, job model {}",
            job.name,
            members.len(),
            model.as_ref().map_or("none yet".to_string(), |m| {
                let barrier = if barrier_waiting.is_empty() {
                    "barrier passed".to_string()
                } else {
                    format!("barrier waiting for {}", barrier_waiting.join(", "))
                };
                format!("{} ({barrier})", m.model.version)
            })
        );
        println!("members:");
        for m in members.values() {
            println!(
                "  {}  host {} pid {}{}{}",
                m.id,
                m.host,
                m.pid,
                m.http
                    .as_ref()
                    .map(|h| format!(" http {h}"))
                    .unwrap_or_default(),
                if leader.as_deref() == Some(m.id.as_str()) {
                    "  (leader)"
                } else {
                    ""
                }
            );
        }
    }
    println!("tasks:");
    for (p, active, standbys, lag, owner) in &tasks {
        println!(
            "  {}  active {}  standbys {}  lag {}{}",
            task_name(&job.name, *p),
            active.as_deref().unwrap_or("-"),
            if standbys.is_empty() {
                "-".to_string()
            } else {
                standbys.join(",")
            },
            lag.map_or("?".to_string(), |l| l.to_string()),
            owner
                .as_ref()
                .map(|o| format!("  last commit by {} under model {}", o.member, o.generation))
                .unwrap_or_default()
        );
    }
    Ok(0)
}

/// Runs a `job` verb; returns the exit status.
pub fn run(state_dir: &Path, cmd: JobCmd) -> Result<i32> {
    match cmd {
        JobCmd::Status { job, json } => status(state_dir, &job, json),
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
