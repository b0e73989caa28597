//! The state directory: where a process keeps everything, and the lock that makes it the
//! only owner.
//!
//! ```text
//! <state-dir>/
//!   LOCK                                        held (flock) by the owning process; holds its pid
//!   logs/<topic>/<partition>/<base>.log         embedded topics (inputs, outputs, changelogs)
//!   tasks/<task>/checkpoint                     input + changelog offsets of the last commit
//!   tasks/<task>/stores/<store>/store.json      the store's manifest (engine, serdes, limits)
//!   tasks/<task>/stores/<store>/OFFSET          changelog offset of the last commit
//!   tasks/<task>/stores/<store>/data/           engine files (RocksDB)
//!   RESTORING-SNAPSHOT                          a snapshot restore into this directory is
//!                                               under way or was interrupted (see
//!                                               [`crate::snapshot::restore`])
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The file in a state directory saying a snapshot restore into it has not finished: every
/// open but [`StateDir::open_for_restore`] refuses the directory while it exists.
pub const RESTORE_MARKER: &str = "RESTORING-SNAPSHOT";

/// Extra attempts (20 ms apart) to take a lock that is held.
const LOCK_RETRIES: u32 = 5;

/// Errors opening a state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Another process holds the lock.
    #[error("state directory {path} is in use by another process{}; stop it or use another --state-dir", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse {
        /// The directory.
        path: String,
        /// The pid recorded by the holder, if readable.
        holder: Option<u32>,
    },
    /// The directory or lock file could not be created or locked.
    #[error("state directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A snapshot restore into the directory did not finish.
    #[error(
        "state directory {path} holds an unfinished snapshot restore ({RESTORE_MARKER}); run `gregor snapshot restore SNAPSHOT --state-dir {path}` again, or delete the directory"
    )]
    RestoreIncomplete {
        /// The directory.
        path: String,
    },
    /// A task or store name that cannot be a directory name.
    #[error(
        "invalid {what} name {name:?}: use letters, digits, '.', '_' and '-' (not '.' or '..')"
    )]
    InvalidName {
        /// `task` or `store`.
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// An open, locked state directory. The lock is released when this is dropped (or the
/// process dies: it is an OS file lock, never stale).
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: File,
}

/// Checks that `name` can be used as a task or store directory name.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), StateDirError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StateDirError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

/// The directory of store `store` of `task` in the state directory at `root` (for readers
/// that do not open, and lock, the state directory).
pub fn store_dir_in(root: &Path, task: &str, store: &str) -> PathBuf {
    root.join("tasks").join(task).join("stores").join(store)
}

/// Names of the tasks that have a directory in the state directory at `root`, sorted (for
/// readers that do not open, and lock, the state directory).
pub fn tasks_in(root: &Path) -> io::Result<Vec<String>> {
    list_dirs(&root.join("tasks"))
}

/// The checkpoint file of `task` in the state directory at `root`.
pub fn checkpoint_file(root: &Path, task: &str) -> PathBuf {
    root.join("tasks").join(task).join("checkpoint")
}

impl StateDir {
    /// Opens (creating if needed) and locks the state directory at `root`. A directory with
    /// an unfinished snapshot restore ([`RESTORE_MARKER`]) is refused.
    pub fn open(root: &Path) -> Result<Self, StateDirError> {
        let dir = Self::open_for_restore(root)?;
        if root.join(RESTORE_MARKER).exists() {
            return Err(StateDirError::RestoreIncomplete {
                path: root.display().to_string(),
            });
        }
        Ok(dir)
    }

    /// Opens and locks the state directory at `root` like [`StateDir::open`], even if a
    /// snapshot restore into it did not finish: for the restore itself.
    pub fn open_for_restore(root: &Path) -> Result<Self, StateDirError> {
        let io_err = |source| StateDirError::Io {
            path: root.display().to_string(),
            source,
        };
        std::fs::create_dir_all(root).map_err(io_err)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("LOCK"))
            .map_err(io_err)?;
        // A few short retries: a lock released a moment ago can still be held, for the
        // instant between fork and exec, by a child process some other thread is starting
        // (it inherits the descriptor). A real second owner still gets the error.
        let mut attempt = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if attempt < LOCK_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => {
                    let mut s = String::new();
                    let _ = lock.read_to_string(&mut s);
                    return Err(StateDirError::InUse {
                        path: root.display().to_string(),
                        holder: s.trim().parse().ok(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        lock.set_len(0).map_err(io_err)?;
        lock.rewind().map_err(io_err)?;
        write!(lock, "{}", std::process::id()).map_err(io_err)?;
        Ok(StateDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where embedded topics live.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The directory of `task`.
    pub fn task_dir(&self, task: &str) -> PathBuf {
        self.root.join("tasks").join(task)
    }

    /// The directory of `store` in `task`.
    pub fn store_dir(&self, task: &str, store: &str) -> PathBuf {
        self.task_dir(task).join("stores").join(store)
    }

    /// The checkpoint file of `task`.
    pub fn checkpoint_path(&self, task: &str) -> PathBuf {
        checkpoint_file(&self.root, task)
    }

    /// Names of the tasks that have a directory, sorted.
    pub fn tasks(&self) -> io::Result<Vec<String>> {
        list_dirs(&self.root.join("tasks"))
    }

    /// Names of the stores of `task`, sorted.
    pub fn stores(&self, task: &str) -> io::Result<Vec<String>> {
        list_dirs(&self.task_dir(task).join("stores"))
    }
}

fn list_dirs(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                if e.file_type()?.is_dir() {
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path()).unwrap();
        let e = StateDir::open(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("in use") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(first);
        StateDir::open(dir.path()).unwrap();
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("task", "partition-0").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(validate_name("store", bad).is_err(), "{bad:?}");
        }
    }
}
