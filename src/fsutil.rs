//! Small durable-filesystem helpers shared by the log, stores and checkpoints.
//!
//! `write_atomic` is the one way to replace a small file (checkpoint, `OFFSET`, topic
//! metadata) so that after a crash the file holds either the old or the new bytes, never a
//! mix: write a temp file in the same directory, fsync it, rename it over the target, fsync
//! the directory so the rename itself is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Atomically replaces `path` with `bytes`: temp file in the same directory, write, fsync,
/// rename over `path`, fsync the directory. Errors carry the path they concern.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| with_path(e, "create", &tmp))?;
        f.write_all(bytes)
            .map_err(|e| with_path(e, "write", &tmp))?;
        f.sync_all().map_err(|e| with_path(e, "fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| with_path(e, "rename to", path))?;
        fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory, making creations, renames and deletions inside it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    let d = File::open(dir).map_err(|e| with_path(e, "open directory", dir))?;
    d.sync_all()
        .map_err(|e| with_path(e, "fsync directory", dir))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `<name>.tmp` next to `path`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Adds the operation and path to an I/O error message, keeping its kind.
fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("OFFSET");
        write_atomic(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"two!").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two!");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("OFFSET")]);
    }

    #[test]
    fn write_atomic_error_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        let err = write_atomic(&p, b"x").unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
