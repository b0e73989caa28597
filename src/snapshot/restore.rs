//! `restore`: lays a snapshot out in an empty state directory, so that the job's next start
//! (through [`crate::task_storage::TaskStorage::open`], as every start) replays only the
//! changelog records its engines lack.

use std::path::{Path, PathBuf};

use super::SnapshotError;
use super::files;
use super::manifest::{SnapshotManifest, relative};
use crate::restore::{LocalStore, RestoreInputs, RestoreKind, plan};
use crate::statedir::{RESTORE_MARKER, StateDir};

/// How to restore a snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Copy every file, SST files too, so the restored state shares no file with the
    /// snapshot (by default SST files, which RocksDB never modifies, are hard-linked where
    /// the file system allows).
    pub copy_all: bool,
}

/// What the job's first start will do with one restored store (the restore planner's answer
/// for the restored files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredStore {
    /// The task.
    pub task: String,
    /// The store.
    pub store: String,
    /// The changelog end the restored engine holds.
    pub engine_offset: Option<u64>,
    /// The changelog end of the task's checkpoint.
    pub checkpoint_offset: Option<u64>,
    /// The restored changelog's first offset (`None`: no changelog, or it cannot be read).
    pub changelog_start: Option<u64>,
    /// The kind of restore the first start does (`None`: a store without a changelog, or
    /// one the planner refuses; the start reports why).
    pub kind: Option<RestoreKind>,
    /// Changelog records the first start replays.
    pub replay: u64,
    /// Why the first start rebuilds the store from its whole changelog, if it does.
    pub full_reason: Option<String>,
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The snapshot's manifest.
    pub manifest: SnapshotManifest,
    /// Files hard-linked from the snapshot (SST files).
    pub linked_files: u64,
    /// Files copied.
    pub copied_files: u64,
    /// Bytes of all files.
    pub bytes: u64,
    /// Per store, what the first start will replay.
    pub stores: Vec<RestoredStore>,
}

/// Restores the snapshot in `snapshot` into the locked state directory `state`, which must
/// be empty (but for its lock, or a restore into it that did not finish).
///
/// Every file of the snapshot is checked first (size, CRC32C): a partial or damaged
/// snapshot is refused with an error naming the first bad file, and nothing is written.
/// Then the files are laid out under [`RESTORE_MARKER`] (removed last): SST files
/// hard-linked where possible (unless [`RestoreOptions::copy_all`]), every other file copied,
/// so nothing the restored job does changes the snapshot. Open `state` with
/// [`StateDir::open_for_restore`] to restore again after an interrupted restore.
pub fn restore(
    snapshot: &Path,
    state: &StateDir,
    opts: &RestoreOptions,
) -> Result<RestoreReport, SnapshotError> {
    let manifest = super::verify(snapshot)?;
    let root = state.root();
    let marker = root.join(RESTORE_MARKER);
    let leftovers = leftovers(root)?;
    if marker.exists() {
        for p in &leftovers {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            r.map_err(SnapshotError::io("cannot remove", p))?;
        }
    } else if let Some(p) = leftovers.first() {
        return Err(SnapshotError::NotEmpty {
            path: root.to_path_buf(),
            reason: format!(
                "is not empty (it holds {}): a snapshot is restored into an empty state directory only",
                p.display()
            ),
        });
    }
    crate::fsutil::write_atomic(&marker, snapshot.display().to_string().as_bytes())
        .map_err(SnapshotError::io("cannot write", &marker))?;

    // Directories first (one thread), then the files on a few.
    let mut jobs = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let rel = relative(&f.path).ok_or_else(|| SnapshotError::Manifest {
            path: snapshot.join(super::MANIFEST_FILE),
            reason: format!("file path {:?} is outside the snapshot", f.path),
        })?;
        let (src, dst) = (snapshot.join(&rel), root.join(&rel));
        if let Some(parent) = dst.parent() {
            files::mkdirs(parent)?;
        }
        jobs.push((src, dst, !opts.copy_all && f.path.ends_with(".sst")));
    }
    let linked = std::sync::atomic::AtomicU64::new(0);
    files::par_each(&jobs, |(src, dst, may_link)| {
        if *may_link && files::link(src, dst)? {
            linked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        } else {
            files::copy(src, dst)
        }
    })?;
    let linked_files = linked.into_inner();
    let copied_files = jobs.len() as u64 - linked_files;
    files::fsync_dirs(root)?;
    std::fs::remove_file(&marker).map_err(SnapshotError::io("cannot remove", &marker))?;
    crate::fsutil::fsync_dir(root).map_err(SnapshotError::io("cannot fsync", root))?;

    let stores = first_start(root, &manifest);
    Ok(RestoreReport {
        bytes: manifest.bytes(),
        manifest,
        linked_files,
        copied_files,
        stores,
    })
}

/// Entries of the state directory `root` other than its lock and the restore marker.
fn leftovers(root: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).map_err(SnapshotError::io("cannot list", root))? {
        let e = e.map_err(SnapshotError::io("cannot list", root))?;
        let name = e.file_name();
        if name != "LOCK" && name != RESTORE_MARKER {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// What the restore planner will do at the first start with each restored store.
fn first_start(root: &Path, manifest: &SnapshotManifest) -> Vec<RestoredStore> {
    let logs = crate::log::LogDir::open_read_only(root).ok();
    let mut out = Vec::new();
    for (task, t) in &manifest.tasks {
        for (store, s) in &t.stores {
            let offsets = s.changelog_topic.as_ref().and_then(|topic| {
                let info = logs.as_ref()?.topic(topic).ok()?.partition_infos().ok()?;
                info.into_iter()
                    .find(|i| i.partition == s.changelog_partition)
                    .map(|i| (i.start_offset, i.end_offset))
            });
            let mut r = RestoredStore {
                task: task.clone(),
                store: store.clone(),
                engine_offset: s.engine_offset,
                checkpoint_offset: s.checkpoint_offset,
                changelog_start: offsets.map(|o| o.0),
                kind: None,
                replay: 0,
                full_reason: None,
            };
            if let Some((start, end)) = offsets {
                let local = if s.engine == "memory" {
                    LocalStore::Unusable {
                        reason: "a memory engine keeps nothing on disk".into(),
                    }
                } else if s.engine_offset.is_none() {
                    LocalStore::Missing
                } else {
                    LocalStore::Present {
                        engine_end: s.engine_offset,
                        offset_file: None,
                        empty: false,
                    }
                };
                let inputs = RestoreInputs {
                    local,
                    checkpoint: s.checkpoint_offset,
                    changelog_start: start,
                    changelog_end: end,
                    truncatable: true,
                };
                if let Ok(p) = plan::plan(&inputs) {
                    r.kind = Some(p.kind);
                    for a in &p.actions {
                        match a {
                            crate::restore::Action::Replay { from, to } => r.replay += to - from,
                            crate::restore::Action::WipeLocal { reason } => {
                                r.full_reason = Some(reason.clone())
                            }
                            _ => {}
                        }
                    }
                    if p.kind == RestoreKind::Full && r.full_reason.is_none() {
                        r.full_reason = Some(match s.engine_offset {
                            Some(e) if start > e => format!(
                                "the changelog starts at offset {start}, past the engine's {e}"
                            ),
                            _ => "no engine copy in the snapshot".into(),
                        });
                    }
                }
            }
            out.push(r);
        }
    }
    out
}
