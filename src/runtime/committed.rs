//! Read-committed markers for topics written by jobs.
//!
//! A job appends a task's output only when the task commits, and records every output
//! partition's end in the task's checkpoint. The `COMMITTED` file in an output partition's
//! directory repeats the committed end for readers that do not know the job (other jobs,
//! `gregor topic consume`): they read only below it. It is written after the checkpoint, so it
//! never runs ahead of what is committed; after a crash the job truncates the partition to
//! the end its checkpoints record and rewrites the marker.

use std::path::Path;

use crate::checked_file::{self, CheckedFileError};

/// The marker's file name inside a partition directory.
pub const COMMITTED_FILE: &str = "COMMITTED";

/// The committed end recorded for the partition in `dir`, if any.
pub fn read(dir: &Path) -> Result<Option<u64>, CheckedFileError> {
    let Some(bytes) = checked_file::read(&dir.join(COMMITTED_FILE))? else {
        return Ok(None);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| CheckedFileError::Corrupt {
            path: dir.join(COMMITTED_FILE).display().to_string(),
            reason: "does not hold a number".into(),
        })
}

/// Records `end` as the committed end of the partition in `dir`.
pub fn write(dir: &Path, end: u64) -> Result<(), CheckedFileError> {
    checked_file::write(&dir.join(COMMITTED_FILE), end.to_string().as_bytes())
}
