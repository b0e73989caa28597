//! `gregor run JOB.toml`: runs a job with a built-in task in this process.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow};
use gregor::runtime::{JobConfig, RunOptions, RunStats, builtin, run_job};
use gregor::statedir::StateDir;

use crate::progress;

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
}

/// Runs the job in `job_file`.
pub fn run(state_dir: &Path, job_file: &Path, until_end: bool) -> Result<i32> {
    let job = JobConfig::from_file(job_file)?;
    let factory = builtin::factory(&job.task).ok_or_else(|| {
        anyhow!(
            "{}: job.task = \"{}\" is not a built-in task (built-in: {}); a Rust program can run its own task with gregor::runtime::run_job (see examples/)",
            job_file.display(),
            job.task,
            builtin::NAMES.join(", ")
        )
    })?;
    let state = StateDir::open(state_dir)?;
    let opts = RunOptions {
        until_end,
        stop: stop_on_signal()?,
        progress: progress::for_stderr(),
        assignment: None,
    };
    let stats = run_job(&state, &job, &factory, opts)?;
    print_stats(&stats);
    Ok(0)
}
