//! `gregor-torture`: a crash-test workload. It opens store `s` of task `t` in a state
//! directory (restoring it to the task checkpoint), then applies a deterministic stream of
//! operations forever, committing at random points exactly like the container does (store
//! commit, then a checkpoint whose `inputs["ops"][0]` counts the committed operations).
//! A parent kills it with SIGKILL at random moments and checks that the restored store
//! equals the model of the committed operations (`cli/tests/crash_kill9.rs`).
//!
//! ```text
//! gregor-torture --state-dir DIR --seed S [--ops-per-commit-max N] [--engine rocksdb|memory]
//!                [--max-ops N [--crash-before-engine-flush]]
//! ```

#[path = "../../tests/support/torture_ops.rs"]
mod torture_ops;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gregor::log::LogDir;
use gregor::statedir::StateDir;
use gregor::store::config::EngineKind;
use gregor::task_storage::CommitStep;

/// Applies a deterministic workload to a store until killed.
#[derive(Parser, Debug)]
#[command(name = "gregor-torture")]
struct Args {
    /// The state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// Seed of the workload (the same seed must be used on every restart).
    #[arg(long)]
    seed: u64,
    /// Longest stretch of operations between commits.
    #[arg(long, default_value_t = 200)]
    ops_per_commit_max: u64,
    /// Engine: rocksdb or memory.
    #[arg(long, default_value = "rocksdb", value_parser = ["rocksdb", "memory"])]
    engine: String,
    /// Stop after this many operations in total (default: run until killed).
    #[arg(long)]
    max_ops: Option<u64>,
    /// With --max-ops: end with a crash (abort) inside the last commit, after the checkpoint
    /// is written and before the engine is flushed.
    #[arg(long, requires = "max_ops")]
    crash_before_engine_flush: bool,
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let engine = EngineKind::parse(&args.engine).ok_or("bad engine")?;
    let state = StateDir::open(&args.state_dir)?;
    let logs = LogDir::open(state.root())?;
    let mut opened = torture_ops::open(&state, &logs, engine)?;
    let mut i = opened.checkpoint.as_ref().map_or(0, torture_ops::ops_of);
    if opened.checkpoint.is_none() {
        // Like the container: a first checkpoint before any processing, so from now on the
        // checkpoint is the single truth about what was committed.
        torture_ops::commit(&mut opened.storage, 0)?;
    }
    let storage = &mut opened.storage;
    loop {
        if args.max_ops.is_some_and(|m| i >= m) {
            if args.crash_before_engine_flush {
                // A failpoint inside the production commit: abort right after the
                // checkpoint is written, before the engine is flushed.
                storage.set_failpoint(Box::new(|step| {
                    if step == CommitStep::CheckpointWritten {
                        std::process::abort()
                    }
                }));
            }
            torture_ops::commit(storage, i)?;
            return Ok(());
        }
        let store = storage.store(torture_ops::STORE).ok_or("no store")?;
        torture_ops::apply_to_store(store.stack(), torture_ops::op(args.seed, i))?;
        if torture_ops::commit_after(args.seed, i, args.ops_per_commit_max) {
            torture_ops::commit(storage, i + 1)?;
        }
        i += 1;
        if i.is_multiple_of(10_000) {
            eprintln!("gregor-torture: {i} operations");
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gregor-torture: error: {e}");
            ExitCode::from(2)
        }
    }
}
