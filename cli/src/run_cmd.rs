//! `gregor run JOB.toml`: runs a job with a built-in task in this process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use gregor::restore::RestoreKind;
use gregor::runtime::config::System;
use gregor::runtime::{JobConfig, RunOptions, RunStats, builtin, run_job_on, run_job_serving};
use gregor::serve::{ProcessInfo, Serving};
use gregor::statedir::StateDir;

use crate::progress;
use crate::serve_cmd::{backend_for, start_http};

/// Installs Ctrl-C / SIGTERM handling that asks the container to commit and stop.
pub fn stop_on_signal() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            eprintln!("second signal: exiting without a final commit");
            std::process::exit(130);
        }
        eprintln!("stopping: committing and closing (signal again to exit at once)");
    })
    .context("cannot install the signal handler")?;
    Ok(stop)
}

/// Prints a one-line summary of a run.
pub fn print_stats(stats: &RunStats) {
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "processed {} messages in {:.2}s ({:.0} msg/s) over {} tasks, {} commits; restore took {:.2}s",
        stats.processed,
        secs,
        stats.processed as f64 / secs,
        stats.tasks,
        stats.commits,
        stats.restore_elapsed.as_secs_f64()
    );
    let count = |kind| stats.restores.iter().filter(|r| r.kind == kind).count();
    let records = |kind| {
        stats
            .restores
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.records)
            .sum::<u64>()
    };
    eprintln!(
        "restore: {} stores up to date, {} delta ({} records replayed), {} full ({} records replayed)",
        count(RestoreKind::UpToDate),
        count(RestoreKind::Delta),
        records(RestoreKind::Delta),
        count(RestoreKind::Full),
        records(RestoreKind::Full)
    );
}

/// Which share of a job's tasks this process runs.
#[derive(Debug, Clone, Copy)]
pub struct Processors {
    /// This process (0-based).
    pub id: u32,
    /// How many processes run the job.
    pub count: u32,
}

/// Runs the job in `job_file`; with `http` (or the job's `http.listen`), serves its stores.
pub fn run(
    state_dir: &Path,
    job_file: &Path,
    until_end: bool,
    procs: Processors,
    http: Option<SocketAddr>,
    from_snapshot: Option<&Path>,
) -> Result<i32> {
    let job = JobConfig::from_file(job_file)?;
    let factory = builtin::factory(&job.task).ok_or_else(|| {
        anyhow!(
            "{}: job.task = \"{}\" is not a built-in task (built-in: {}); a Rust program can run its own task with gregor::runtime::run_job (see examples/)",
            job_file.display(),
            job.task,
            builtin::NAMES.join(", ")
        )
    })?;
    if procs.id >= procs.count {
        bail!(
            "--processor-id {} is out of range for --processors {} (0 to {})",
            procs.id,
            procs.count,
            procs.count - 1
        );
    }
    let state = match from_snapshot {
        None => StateDir::open(state_dir)?,
        Some(snapshot) => {
            if job.system == System::Kafka {
                bail!(
                    "{}: --from-snapshot: snapshots are built for embedded jobs only so far",
                    job_file.display()
                );
            }
            let state = StateDir::open_for_restore(state_dir)?;
            crate::snapshot_cmd::restore(&state, snapshot, false, Some(&job.name))?;
            state
        }
    };
    let mut opts = RunOptions {
        until_end,
        stop: stop_on_signal()?,
        progress: progress::for_stderr(),
        assignment: None,
    };
    let source = job_file.display().to_string();
    if job.system != System::Kafka && procs.count > 1 {
        bail!(
            "{source}: --processors needs a Kafka job (job.system = \"kafka\"); an embedded job runs in one process, which owns its state directory"
        );
    }
    let dynamic = matches!(
        job.coordinator,
        gregor::runtime::config::CoordinatorConfig::ZooKeeper(_)
    );
    if dynamic && procs.count > 1 {
        bail!(
            "{source}: --processors is for job.coordinator = \"static\"; with \"zookeeper\" every process just runs `gregor run` and the leader assigns the tasks"
        );
    }
    if dynamic && until_end {
        bail!(
            "{source}: --until-end needs job.coordinator = \"static\": under \"zookeeper\" tasks move between processes, so no process knows when the whole job is caught up"
        );
    }
    let backend = backend_for(&state, &job, &source, |_| Ok(()))?;
    if procs.count > 1 {
        // Tasks t with t mod N == I; the task count is known once the inputs are.
        let n = gregor::runtime::Container::task_count_of(&*backend, &job)?;
        opts.assignment = Some((0..n).filter(|t| t % procs.count == procs.id).collect());
        eprintln!(
            "processor {} of {}: tasks {:?}",
            procs.id,
            procs.count,
            opts.assignment
                .as_ref()
                .map(|a| a.iter().collect::<Vec<_>>())
        );
    }
    let stats = match http.or(job.http_listen) {
        None => run_job_on(backend, &state, &job, &factory, opts)?,
        Some(listen) => {
            let serving = Serving::new(job.clone(), false);
            let link = serving.link().context("serving link taken")?;
            let process = ProcessInfo {
                id: procs.id,
                count: procs.count,
            };
            let _server = start_http(&serving, listen, process, None)?;
            run_job_serving(backend, &state, &job, &factory, opts, link)?
        }
    };
    print_stats(&stats);
    Ok(0)
}
