//! The snapshot `MANIFEST`: what the snapshot holds and the checksum of every file. It is a
//! checksummed file ([`crate::checked_file`]) written atomically, last.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::checkpoint::Checkpoint;

/// The manifest's file name in a snapshot directory.
pub const MANIFEST_FILE: &str = "MANIFEST";

/// The manifest format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the snapshot directory, `/`-separated (the same path in a state
    /// directory).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32C of the content.
    pub crc32c: u32,
}

/// What a snapshot holds of one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSnapshot {
    /// The engine (`rocksdb` or `memory`).
    pub engine: String,
    /// The changelog topic, if the store has one.
    pub changelog_topic: Option<String>,
    /// The changelog partition the task writes.
    pub changelog_partition: u32,
    /// The changelog end the engine copy reflects (`None`: no engine copy, or an engine never
    /// written through a changelog).
    pub engine_offset: Option<u64>,
    /// The changelog end in the task's checkpoint.
    pub checkpoint_offset: Option<u64>,
}

/// What a snapshot holds of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    /// The task's checkpoint (its last commit), if it had one.
    pub checkpoint: Option<Checkpoint>,
    /// Its stores.
    pub stores: BTreeMap<String, StoreSnapshot>,
}

/// The `MANIFEST` of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// [`FORMAT_VERSION`].
    pub format: u32,
    /// The job's name.
    pub job: String,
    /// The job's backend (`embedded`).
    pub system: String,
    /// Milliseconds since the epoch when the snapshot was created.
    pub created_at_ms: u64,
    /// The snapshot it shares files with, if any (informational: each snapshot is complete).
    pub base: Option<String>,
    /// The embedded topics included.
    pub topics: Vec<String>,
    /// Per task.
    pub tasks: BTreeMap<String, TaskSnapshot>,
    /// Every file of the snapshot except the manifest.
    pub files: Vec<FileEntry>,
}

impl SnapshotManifest {
    /// Total bytes of the snapshot's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Reads and checks the manifest of the snapshot in `dir` (not the files it lists; see
/// [`super::verify`]).
pub fn read_manifest(dir: &Path) -> Result<SnapshotManifest, SnapshotError> {
    let path = dir.join(MANIFEST_FILE);
    let bad = |reason: String| SnapshotError::Manifest {
        path: path.clone(),
        reason,
    };
    let bytes = match crate::checked_file::read(&path) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(SnapshotError::Partial {
                path: dir.to_path_buf(),
            });
        }
        Err(crate::checked_file::CheckedFileError::Corrupt { reason, .. }) => {
            return Err(bad(format!("corrupt: {reason}")));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let m: SnapshotManifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if m.format != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {} (this gregor reads version {FORMAT_VERSION})",
            m.format
        )));
    }
    for f in &m.files {
        if relative(&f.path).is_none() {
            return Err(bad(format!(
                "file path {:?} is not a relative path inside the snapshot",
                f.path
            )));
        }
    }
    Ok(m)
}

/// Writes the manifest of the snapshot in `dir` atomically (fsynced, with its directory).
pub(super) fn write_manifest(dir: &Path, m: &SnapshotManifest) -> Result<(), SnapshotError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = serde_json::to_vec_pretty(m).expect("a snapshot manifest serializes");
    crate::checked_file::write(&path, &bytes).map_err(|e| SnapshotError::Manifest {
        path,
        reason: format!("cannot write: {e}"),
    })
}

/// The relative path `p` (`/`-separated) as a path, if it stays inside its root: no
/// absolute path, no `..`, no `.`.
pub(super) fn relative(p: &str) -> Option<PathBuf> {
    let path = PathBuf::from(p);
    let ok = !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        assert!(relative("tasks/t/checkpoint").is_some());
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "./a"] {
            assert!(relative(bad).is_none(), "{bad}");
        }
    }
}
