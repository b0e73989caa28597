//! I/O failure seam: every write and fsync the log does asks the hooks first, so tests can
//! inject a failure exactly where a disk would fail.

use std::io;
use std::path::Path;

/// Called before every write (including `ftruncate`, file creation and rename) and every
/// fsync the log performs. Returning an error makes that call fail as if the OS had failed it.
pub trait IoHooks: Send + Sync {
    /// Before writing to, creating, truncating or renaming `path`.
    fn before_write(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }
    /// Before appending `len` bytes to segment `path` (after `before_write` allowed it):
    /// `Some(n)` with `n < len` makes only the first `n` bytes reach the file and the write
    /// then fail with `StorageFull`, as a disk that fills up part-way through does.
    fn write_limit(&self, path: &Path, len: usize) -> Option<usize> {
        let _ = (path, len);
        None
    }
    /// Before fsyncing `path` (a file or a directory). For a [`super::SyncTicket`] it is
    /// called by the thread that fsyncs the ticket, which does not hold the partition.
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }
}

/// The production hooks: never fail.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl IoHooks for NoHooks {}

impl std::fmt::Debug for dyn IoHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IoHooks")
    }
}
