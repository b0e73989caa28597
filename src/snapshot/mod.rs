//! Consistent snapshots (backups) of a job's state, and bringing a job up from one.
//!
//! A snapshot is a directory holding a copy of everything a stopped job keeps in its state
//! directory, laid out as in the state directory, plus a `MANIFEST`:
//!
//! ```text
//! <snapshot>/
//!   MANIFEST                                  written last, atomically, checksummed: format,
//!                                             job, created-at, per task its checkpoint, per
//!                                             store its changelog and the offset its engine
//!                                             holds, and every file with size and CRC32C
//!   tasks/<task>/checkpoint                   the task's last commit
//!   tasks/<task>/stores/<store>/store.json    the store's manifest (and OFFSET)
//!   tasks/<task>/stores/<store>/data/         a RocksDB checkpoint of the engine
//!   logs/<topic>/...                          the job's embedded topics (inputs, outputs,
//!                                             changelogs); a Kafka job has none here
//!   roles                                     the embedded topic role registry
//! ```
//!
//! **Consistency.** [`create`] runs while the state directory is locked, so no job runs: every
//! task is at its last commit (its checkpoint), each engine reflects its changelog up to an
//! offset recorded inside it (`E`, at most the checkpoint's `C` after a clean stop), and the
//! embedded changelogs hold `[start, C)` and maybe an uncommitted tail. Starting a job on a
//! restored copy is the same as restarting the job on the original at that moment:
//! [`crate::task_storage::TaskStorage::open`] replays `[E, C)` (a delta restore, usually
//! nothing), drops the uncommitted tail and resumes the inputs at the checkpoint. Nothing
//! here writes a checkpoint or replays a changelog itself.
//!
//! **Engines.** RocksDB engines are copied with RocksDB's checkpoint API: SST files are hard
//! links to the live database's (immutable) files on the same file system, copies elsewhere;
//! the small mutable files (`MANIFEST-*`, `CURRENT`, `OPTIONS-*`) are copies. A memory engine
//! has nothing on disk; it is rebuilt from its changelog (a full restore) as on every start.
//!
//! **Incremental.** A file of a new snapshot whose relative path, size and CRC32C equal a
//! file of a base snapshot (`--base`, or by default the newest complete snapshot of the same
//! job in the same parent directory) becomes a hard link to the base's file: unchanged SST
//! files and closed log segments are stored once. Snapshot files are never modified.
//!
//! **Restore** ([`restore`]) verifies every file first (size and CRC32C; the first bad or
//! missing file is named and nothing is written), then lays the files out in an empty state
//! directory: SST files hard-linked where possible (RocksDB never modifies an SST), every
//! other file copied, so running the restored job never changes the snapshot. While it lays
//! out files, the state directory holds [`crate::statedir::RESTORE_MARKER`], which makes
//! every other open of the directory fail until a restore completes.

mod create;
mod files;
mod manifest;
mod restore;

pub use create::{CreateOptions, CreateReport, create};
pub use manifest::{
    FORMAT_VERSION, FileEntry, MANIFEST_FILE, SnapshotManifest, StoreSnapshot, TaskSnapshot,
    read_manifest,
};
pub use restore::{RestoreOptions, RestoreReport, RestoredStore, restore};

use std::path::PathBuf;

/// Creating, verifying or restoring a snapshot failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The directory has no `MANIFEST`: it is not a snapshot, or its creation did not finish.
    #[error(
        "{path} is not a complete snapshot: it has no MANIFEST (a `gregor snapshot create` that did not finish leaves none); delete it and create the snapshot again"
    )]
    Partial {
        /// The snapshot directory.
        path: PathBuf,
    },
    /// The `MANIFEST` cannot be read or is not a snapshot manifest.
    #[error("snapshot manifest {path}: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the snapshot is missing or does not match the manifest.
    #[error("snapshot file {path} is {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (missing, size, checksum).
        reason: String,
    },
    /// A file operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The target directory already holds something.
    #[error("{path} {reason}")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
        /// What it holds.
        reason: String,
    },
    /// A store could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A checkpoint could not be read.
    #[error("task `{task}`: {source}")]
    Checkpoint {
        /// The task.
        task: String,
        /// The error.
        #[source]
        source: crate::checkpoint::CheckpointError,
    },
    /// The snapshot belongs to another job.
    #[error("the snapshot at {path} is of job `{snapshot}`, not `{job}`")]
    OtherJob {
        /// The snapshot directory.
        path: PathBuf,
        /// Its job.
        snapshot: String,
        /// The job asked for.
        job: String,
    },
    /// A bad task or store name, or the state directory cannot be opened.
    #[error(transparent)]
    Name(#[from] crate::statedir::StateDirError),
    /// What was asked is not built.
    #[error("{0}")]
    Unsupported(String),
}

impl SnapshotError {
    fn io(context: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SnapshotError::Io {
            context,
            path,
            source,
        }
    }
}

/// Checks every file of the snapshot in `dir` against its manifest (presence, size, CRC32C)
/// and returns the manifest. The error names the first bad or missing file.
pub fn verify(dir: &std::path::Path) -> Result<SnapshotManifest, SnapshotError> {
    let manifest = read_manifest(dir)?;
    files::par_each(&manifest.files, |f| files::check(dir, f))?;
    Ok(manifest)
}
