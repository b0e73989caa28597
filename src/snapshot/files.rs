//! File helpers of snapshots: checksums, copies, hard links, directory walks and fsyncs.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::SnapshotError;
use super::manifest::{FileEntry, relative};

/// Size and CRC32C of the file at `path`; with `sync`, the file is also fsynced.
pub(super) fn crc_of(path: &Path, sync: bool) -> Result<(u64, u32), SnapshotError> {
    let mut f = File::open(path).map_err(SnapshotError::io("cannot open", path))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut size, mut crc) = (0u64, 0u32);
    loop {
        let n = f
            .read(&mut buf)
            .map_err(SnapshotError::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        size += n as u64;
    }
    if sync {
        f.sync_all()
            .map_err(SnapshotError::io("cannot fsync", path))?;
    }
    Ok((size, crc))
}

/// Checks the file `entry` of the snapshot in `dir`: present, its size, its CRC32C.
pub(super) fn check(dir: &Path, entry: &FileEntry) -> Result<(), SnapshotError> {
    let Some(rel) = relative(&entry.path) else {
        return Err(bad(dir.join(&entry.path), "outside the snapshot".into()));
    };
    let path = dir.join(rel);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(path, "missing".into()));
        }
        Err(e) => return Err(SnapshotError::io("cannot read", path)(e)),
    };
    if meta.len() != entry.size {
        return Err(bad(
            path,
            format!(
                "damaged: {} bytes, the manifest says {}",
                meta.len(),
                entry.size
            ),
        ));
    }
    let (size, crc) = crc_of(&path, false)?;
    if size != entry.size || crc != entry.crc32c {
        return Err(bad(
            path,
            format!(
                "corrupt: CRC32C {crc:08x}, the manifest says {:08x}",
                entry.crc32c
            ),
        ));
    }
    Ok(())
}

fn bad(path: PathBuf, reason: String) -> SnapshotError {
    SnapshotError::BadFile { path, reason }
}

/// Copies `src` to the new file `dst` and fsyncs it.
pub(super) fn copy(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    std::fs::copy(src, dst).map_err(|source| SnapshotError::Io {
        context: "cannot copy to",
        path: dst.to_path_buf(),
        source: std::io::Error::new(source.kind(), format!("from {}: {source}", src.display())),
    })?;
    File::open(dst)
        .and_then(|f| f.sync_all())
        .map_err(SnapshotError::io("cannot fsync", dst))
}

/// Makes `dst` a hard link to `src`; `false` if the file system cannot (another file system,
/// or no hard links), so the caller copies instead.
pub(super) fn link(src: &Path, dst: &Path) -> Result<bool, SnapshotError> {
    match std::fs::hard_link(src, dst) {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::CrossesDevices
                    | std::io::ErrorKind::Unsupported
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::TooManyLinks
            ) || e.raw_os_error() == Some(1) =>
        {
            Ok(false)
        }
        Err(e) => Err(SnapshotError::Io {
            context: "cannot link",
            path: dst.to_path_buf(),
            source: std::io::Error::new(e.kind(), format!("to {}: {e}", src.display())),
        }),
    }
}

/// Replaces the file `dst` by a hard link to `src` (atomically: a link under a temporary
/// name renamed over `dst`); `false` if the file system cannot link.
pub(super) fn replace_with_link(src: &Path, dst: &Path) -> Result<bool, SnapshotError> {
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(".link");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    if !link(src, &tmp)? {
        return Ok(false);
    }
    std::fs::rename(&tmp, dst).map_err(SnapshotError::io("cannot replace", dst))?;
    Ok(true)
}

/// Every regular file under `root`, as (`/`-separated relative path, path), sorted.
pub(super) fn walk(root: &Path) -> Result<Vec<(String, PathBuf)>, SnapshotError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(SnapshotError::io("cannot list", &dir))?;
        for e in rd {
            let e = e.map_err(SnapshotError::io("cannot list", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ty = e
                .file_type()
                .map_err(SnapshotError::io("cannot stat", e.path()))?;
            if ty.is_dir() {
                stack.push((child_rel, e.path()));
            } else if ty.is_file() {
                out.push((child_rel, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Fsyncs `root` and every directory below it, so the files and links in them are durable.
pub(super) fn fsync_dirs(root: &Path) -> Result<(), SnapshotError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(SnapshotError::io("cannot list", &dir))?;
        for e in rd {
            let e = e.map_err(SnapshotError::io("cannot list", &dir))?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        crate::fsutil::fsync_dir(&dir).map_err(SnapshotError::io("cannot fsync", &dir))?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents.
pub(super) fn mkdirs(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(SnapshotError::io("cannot create", dir))
}

/// The (device, inode) of `path`, to recognise two names of one file.
#[cfg(unix)]
pub(super) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Without inode numbers, no two names are known to be one file.
#[cfg(not(unix))]
pub(super) fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// Runs `f` on every item on a few threads (file work is mostly waiting on the disk: reads,
/// copies, fsyncs). The error returned is the one of the lowest index, so "the first bad
/// file" is the same as in a sequential pass; after an error no new item is started.
pub(super) fn par_each<T: Sync>(
    items: &[T],
    f: impl Fn(&T) -> Result<(), SnapshotError> + Sync,
) -> Result<(), SnapshotError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let errors = std::sync::Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4)
        .min(items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !failed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = f(item) {
                        failed.store(true, Ordering::SeqCst);
                        crate::sync::lock(&errors).push((i, e));
                    }
                }
            });
        }
    });
    let mut errors = errors
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}
