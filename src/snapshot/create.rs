//! `create`: a snapshot of a stopped job's state (see the module documentation of
//! [`crate::snapshot`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::SnapshotError;
use super::files::{self, crc_of, file_id};
use super::manifest::{
    FORMAT_VERSION, FileEntry, MANIFEST_FILE, SnapshotManifest, StoreSnapshot, TaskSnapshot,
    read_manifest, write_manifest,
};
use crate::checkpoint::Checkpoint;
use crate::runtime::config::System;
use crate::runtime::{JobConfig, ProcessErrorPolicy};
use crate::statedir::{StateDir, validate_name};
use crate::store::Engine;
use crate::store::config::EngineKind;
use crate::store::rocks::RocksEngine;
use crate::store::stack;

/// How to create a snapshot.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The snapshot to share unchanged files with. `None`: the newest complete snapshot of
    /// the same job in the new snapshot's parent directory, unless `no_base`.
    pub base: Option<PathBuf>,
    /// Share nothing with earlier snapshots (a full, independent copy of every file).
    pub no_base: bool,
}

/// What [`create`] made.
#[derive(Debug, Clone)]
pub struct CreateReport {
    /// The manifest written.
    pub manifest: SnapshotManifest,
    /// The snapshot files are shared with, if any.
    pub base: Option<PathBuf>,
    /// Files that are hard links to the base's files (stored once).
    pub shared_files: u64,
    /// Their bytes.
    pub shared_bytes: u64,
}

/// The embedded topics of `job`: inputs, outputs, changelogs, the dead-letter topic.
fn job_topics(job: &JobConfig) -> Vec<String> {
    let mut topics: Vec<String> = job.inputs.iter().chain(&job.outputs).cloned().collect();
    topics.extend(job.stores.values().filter_map(|s| s.changelog.clone()));
    if let ProcessErrorPolicy::DeadLetter(t) = &job.on_process_error {
        topics.push(t.clone());
    }
    topics.sort();
    topics.dedup();
    topics
}

/// Makes a snapshot of the state of `job`'s `tasks` in the locked state directory `state`
/// (so no job is running) in the new directory `dir` (which must not exist or be empty).
/// `progress` is called with each file's path in the snapshot as it is written.
///
/// Every file is fsynced, and the `MANIFEST` is written last, atomically: a snapshot whose
/// creation did not finish has no `MANIFEST` and is refused by [`super::verify`] and
/// [`super::restore`].
pub fn create(
    state: &StateDir,
    job: &JobConfig,
    tasks: &[String],
    dir: &Path,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<CreateReport, SnapshotError> {
    if job.system == System::Kafka {
        return Err(SnapshotError::Unsupported(format!(
            "job `{}` runs on Kafka: snapshots are built for embedded jobs only (a Kafka job's changelogs and checkpoints are in Kafka)",
            job.name
        )));
    }
    prepare_dir(dir)?;
    let base = match (&opts.base, opts.no_base) {
        (_, true) => None,
        (Some(b), false) => {
            let m = read_manifest(b)?;
            if m.job != job.name {
                return Err(SnapshotError::OtherJob {
                    path: b.clone(),
                    snapshot: m.job,
                    job: job.name.clone(),
                });
            }
            Some((b.clone(), m))
        }
        (None, false) => newest_sibling(dir, &job.name),
    };
    let base_files: HashMap<&str, &FileEntry> = base
        .iter()
        .flat_map(|(_, m)| m.files.iter().map(|f| (f.path.as_str(), f)))
        .collect();

    let mut snap_tasks = BTreeMap::new();
    for task in tasks {
        validate_name("task", task)?;
        let task_out = dir.join("tasks").join(task);
        let cp_path = state.checkpoint_path(task);
        let checkpoint =
            Checkpoint::read(&cp_path).map_err(|source| SnapshotError::Checkpoint {
                task: task.clone(),
                source,
            })?;
        if checkpoint.is_some() {
            files::mkdirs(&task_out)?;
            files::copy(&cp_path, &task_out.join("checkpoint"))?;
            progress(&format!("tasks/{task}/checkpoint"));
        }
        let mut stores = BTreeMap::new();
        for store in state.stores(task).map_err(SnapshotError::io(
            "cannot list the stores in",
            state.task_dir(task),
        ))? {
            let src = state.store_dir(task, &store);
            let Some(m) = stack::read_manifest(&store, &src)? else {
                continue;
            };
            let out = task_out.join("stores").join(&store);
            files::mkdirs(&out)?;
            for name in [
                stack::MANIFEST_FILE,
                stack::OFFSET_FILE,
                crate::task_storage::SEED_MARKER_FILE,
            ] {
                if src.join(name).exists() {
                    files::copy(&src.join(name), &out.join(name))?;
                }
            }
            let data = src.join(stack::DATA_DIR);
            let mut engine_offset = None;
            if m.config.engine == EngineKind::Rocksdb && data.exists() {
                let mut engine =
                    RocksEngine::open(&store, &data, m.config.stored_limits(), &m.config.rocksdb)?;
                engine_offset = engine.changelog_end()?;
                engine.checkpoint_to(&out.join(stack::DATA_DIR))?;
            }
            progress(&format!("tasks/{task}/stores/{store}"));
            stores.insert(
                store.clone(),
                StoreSnapshot {
                    engine: m.config.engine.as_str().to_string(),
                    changelog_topic: m.config.changelog.clone(),
                    changelog_partition: m.changelog_partition,
                    engine_offset,
                    checkpoint_offset: checkpoint
                        .as_ref()
                        .and_then(|c| c.changelogs.get(&store).copied()),
                },
            );
        }
        snap_tasks.insert(task.clone(), TaskSnapshot { checkpoint, stores });
    }

    // The embedded topics; a file equal to the base's (a closed segment) is linked to it.
    let topics = job_topics(job);
    let logs = state.logs_dir();
    for topic in &topics {
        let src_topic = logs.join(topic);
        if !src_topic.exists() {
            continue;
        }
        for (rel, src) in files::walk(&src_topic)? {
            if rel.ends_with(".compacting") || rel.ends_with(".tmp") {
                continue;
            }
            let rel = format!("logs/{topic}/{rel}");
            let dst = dir.join(&rel);
            if let Some(parent) = dst.parent() {
                files::mkdirs(parent)?;
            }
            let same_as_base = match (base_files.get(rel.as_str()), &base) {
                (Some(b), Some((base_dir, _)))
                    if std::fs::metadata(&src).is_ok_and(|m| m.len() == b.size) =>
                {
                    let (_, crc) = crc_of(&src, false)?;
                    (crc == b.crc32c).then(|| base_dir.join(&rel))
                }
                _ => None,
            };
            let linked = match same_as_base {
                Some(b) => files::link(&b, &dst)?,
                None => false,
            };
            if !linked {
                files::copy(&src, &dst)?;
            }
            progress(&rel);
        }
    }
    let roles = state.root().join(crate::backend::roles::ROLES_FILE);
    if roles.exists() {
        files::copy(&roles, &dir.join(crate::backend::roles::ROLES_FILE))?;
    }

    // Checksums. A file that is the base's file (the same inode: an SST both snapshots link
    // to, a segment linked above) has the base's checksum; an SST equal to the base's by
    // size and checksum becomes a link to it.
    let (mut shared_files, mut shared_bytes) = (0u64, 0u64);
    let mut entries = Vec::new();
    for (rel, path) in files::walk(dir)? {
        if rel == MANIFEST_FILE || rel.starts_with(&format!("{MANIFEST_FILE}.")) {
            continue;
        }
        let in_base = match (base_files.get(rel.as_str()), &base) {
            (Some(b), Some((base_dir, _))) => Some((*b, base_dir.join(&rel))),
            _ => None,
        };
        let entry = match in_base {
            Some((b, base_path))
                if file_id(&path).is_some() && file_id(&path) == file_id(&base_path) =>
            {
                shared_files += 1;
                shared_bytes += b.size;
                b.clone()
            }
            _ => {
                let (size, crc32c) = crc_of(&path, true)?;
                if let Some((b, base_path)) = in_base
                    && rel.ends_with(".sst")
                    && b.size == size
                    && b.crc32c == crc32c
                    && files::replace_with_link(&base_path, &path)?
                {
                    shared_files += 1;
                    shared_bytes += size;
                }
                FileEntry {
                    path: rel.clone(),
                    size,
                    crc32c,
                }
            }
        };
        entries.push(entry);
        progress(&rel);
    }
    files::fsync_dirs(dir)?;
    let manifest = SnapshotManifest {
        format: FORMAT_VERSION,
        job: job.name.clone(),
        system: "embedded".into(),
        created_at_ms: crate::changelog::now_ms().max(0) as u64,
        base: base.as_ref().map(|(b, _)| b.display().to_string()),
        topics,
        tasks: snap_tasks,
        files: entries,
    };
    write_manifest(dir, &manifest)?;
    Ok(CreateReport {
        manifest,
        base: base.map(|(b, _)| b),
        shared_files,
        shared_bytes,
    })
}

/// Creates `dir` (and fsyncs its parent), or checks that it is empty.
fn prepare_dir(dir: &Path) -> Result<(), SnapshotError> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                let reason = if dir.join(MANIFEST_FILE).exists() {
                    "already holds a snapshot; choose a new directory (a snapshot next to it shares its unchanged files)"
                } else {
                    "is not empty (a snapshot whose creation did not finish?); delete it or choose a new directory"
                };
                return Err(SnapshotError::NotEmpty {
                    path: dir.to_path_buf(),
                    reason: reason.into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            files::mkdirs(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                crate::fsutil::fsync_dir(parent)
                    .map_err(SnapshotError::io("cannot fsync", parent))?;
            }
            Ok(())
        }
        Err(e) => Err(SnapshotError::io("cannot read", dir)(e)),
    }
}

/// The newest complete snapshot of `job` next to `dir` (same parent), by creation time.
fn newest_sibling(dir: &Path, job: &str) -> Option<(PathBuf, SnapshotManifest)> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let me = dir.file_name()?;
    std::fs::read_dir(&parent)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != me && e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let m = read_manifest(&e.path()).ok()?;
            (m.job == job).then(|| (e.path(), m))
        })
        .max_by_key(|(_, m)| m.created_at_ms)
}
