//! `gregor snapshot …`: consistent snapshots (backups) of a stopped job's state: create one,
//! verify its checksums, restore it into a new state directory (see `gregor::snapshot`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use gregor::restore::RestoreKind;
use gregor::runtime::JobConfig;
use gregor::runtime::config::System;
use gregor::snapshot::{self, CreateOptions, RestoreOptions, RestoreReport};
use gregor::statedir::StateDir;

use crate::job_cmd;

/// `gregor snapshot` verbs.
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Copy the job's state (every task's checkpoint, each store's engine and manifest, the
    /// job's embedded topics) into the new directory DIR, with a MANIFEST of checksums written
    /// last. The job must not be running. Shares unchanged files (hard links) with the newest
    /// snapshot of the job next to DIR, or with --base.
    Create {
        /// The job file.
        job: PathBuf,
        /// The new snapshot directory (must not exist, or be empty).
        dir: PathBuf,
        /// The snapshot to share unchanged files with (default: the newest snapshot of the
        /// job in DIR's parent directory).
        #[arg(long, conflicts_with = "no_base")]
        base: Option<PathBuf>,
        /// Share no file with an earlier snapshot.
        #[arg(long)]
        no_base: bool,
    },
    /// Check every file of the snapshot in DIR against its MANIFEST (presence, size, CRC32C).
    /// Exit status 1 naming the first bad or missing file.
    Verify {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// Lay the snapshot in DIR out in the empty state directory --state-dir, after checking
    /// every file; the job's next start replays only the changelog its engines lack. The
    /// snapshot is never modified.
    Restore {
        /// The snapshot directory.
        dir: PathBuf,
        /// Copy every file, SST files too (by default they are hard links where the file
        /// system allows: RocksDB never modifies them).
        #[arg(long)]
        copy: bool,
    },
}

/// Runs a `snapshot` verb; returns the exit status.
pub fn run(state_dir: &Path, cmd: SnapshotCmd) -> Result<i32> {
    match cmd {
        SnapshotCmd::Create {
            job: file,
            dir,
            base,
            no_base,
        } => {
            let job = JobConfig::from_file(&file)?;
            if job.system == System::Kafka {
                bail!(
                    "{}: job `{}` runs on Kafka; snapshots are built for embedded jobs only so far (a Kafka job's changelogs and checkpoints live in Kafka)",
                    file.display(),
                    job.name
                );
            }
            let state = StateDir::open(state_dir)?;
            let backend = job_cmd::backend(&state, &job, &file)?;
            let tasks = job_cmd::tasks(&*backend, &job, None)?;
            drop(backend);
            // Test hook: a pause after each file, so a kill -9 test can stop the command
            // part-way.
            let delay = std::env::var("GREGOR_SNAPSHOT_FILE_DELAY_MS")
                .ok()
                .and_then(|s| s.parse().ok())
                .map(std::time::Duration::from_millis);
            let mut progress = |_: &str| {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
            };
            let opts = CreateOptions { base, no_base };
            let r = snapshot::create(&state, &job, &tasks, &dir, &opts, &mut progress)
                .with_context(|| format!("creating the snapshot {}", dir.display()))?;
            let m = &r.manifest;
            for (task, t) in &m.tasks {
                for (store, s) in &t.stores {
                    println!(
                        "{task}/{store}: {} engine at changelog offset {}, checkpoint {}",
                        s.engine,
                        opt(s.engine_offset),
                        opt(s.checkpoint_offset)
                    );
                }
            }
            let shared = match &r.base {
                Some(b) => format!(
                    "; {} files ({} bytes) shared with {}",
                    r.shared_files,
                    r.shared_bytes,
                    b.display()
                ),
                None => String::new(),
            };
            println!("{}{shared}", summary(&dir, m));
            Ok(0)
        }
        SnapshotCmd::Verify { dir } => match snapshot::verify(&dir) {
            Ok(m) => {
                println!("{}: every size and checksum matches", summary(&dir, &m));
                Ok(0)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(1)
            }
        },
        SnapshotCmd::Restore { dir, copy } => {
            let state = StateDir::open_for_restore(state_dir)?;
            restore(&state, &dir, copy, None)?;
            Ok(0)
        }
    }
}

/// Restores the snapshot in `dir` into `state` (which must be empty) and prints what the
/// job's first start will replay; with `job`, the snapshot must be of that job (checked
/// before anything is written).
pub fn restore(
    state: &StateDir,
    dir: &Path,
    copy_all: bool,
    job: Option<&str>,
) -> Result<RestoreReport> {
    if let Some(job) = job {
        let m = snapshot::read_manifest(dir)?;
        if m.job != job {
            bail!(
                "the snapshot at {} is of job `{}`, not `{job}`",
                dir.display(),
                m.job
            );
        }
    }
    let r = snapshot::restore(dir, state, &RestoreOptions { copy_all })
        .with_context(|| format!("restoring the snapshot {}", dir.display()))?;
    for s in &r.stores {
        let what = match s.kind {
            Some(RestoreKind::UpToDate) => "up to date, nothing to replay".to_string(),
            Some(RestoreKind::Delta) => format!("delta restore of {} records", s.replay),
            Some(RestoreKind::Full) => format!(
                "FULL restore of {} records from the changelog ({})",
                s.replay,
                s.full_reason.as_deref().unwrap_or("no engine copy")
            ),
            _ => "no changelog".to_string(),
        };
        eprintln!(
            "restored {}/{}: engine at changelog offset {}, checkpoint {}: first start: {what}",
            s.task,
            s.store,
            opt(s.engine_offset),
            opt(s.checkpoint_offset)
        );
    }
    eprintln!(
        "restored snapshot {} (job `{}`) into {}: {} files ({} bytes), {} hard-linked",
        dir.display(),
        r.manifest.job,
        state.root().display(),
        r.linked_files + r.copied_files,
        r.bytes,
        r.linked_files
    );
    Ok(r)
}

/// `snapshot DIR: job `J`, N tasks, N files, N bytes`.
fn summary(dir: &Path, m: &snapshot::SnapshotManifest) -> String {
    format!(
        "snapshot {}: job `{}`, {} tasks, {} files, {} bytes",
        dir.display(),
        m.job,
        m.tasks.len(),
        m.files.len(),
        m.bytes()
    )
}

fn opt(o: Option<u64>) -> String {
    o.map_or_else(|| "-".to_string(), |v| v.to_string())
}
