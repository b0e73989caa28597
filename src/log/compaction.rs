//! Compaction of `compact` topics (changelogs): keep the newest record per key, drop
//! tombstones older than `delete.retention.ms`, never change a surviving record's offset.
//!
//! The decision is pure ([`latest_offsets`], [`survives`]); `rewrite_segment` applies it to
//! one closed segment: survivors are written to `<segment>.compacting`, fsynced, renamed over
//! the segment, and the directory is fsynced. A crash leaves either the old or the new
//! segment (plus maybe a temp file, deleted on the next open).
//!
//! The temp file is fsynced before the rename and the directory after it even when the
//! topic has fsync disabled: without that order a power loss could leave the segment's name
//! pointing at a file whose data never reached the disk, losing old records that were
//! durable — far worse than the recent-writes loss `fsync = false` accepts.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::error::LogError;
use super::hooks::IoHooks;
use super::record::{Record, encode_into};
use super::segment::{COMPACTING_SUFFIX, FrameReader, Next, SharedIndex};

/// What one compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Closed segments considered.
    pub segments_examined: usize,
    /// Segments rewritten (those with at least one record to drop).
    pub segments_rewritten: usize,
    /// Records dropped.
    pub records_removed: u64,
    /// Size of the rewritten segments before.
    pub bytes_before: u64,
    /// Size of the rewritten segments after.
    pub bytes_after: u64,
}

/// The newest offset of each key, from records in offset order.
pub fn latest_offsets<'a>(
    records: impl IntoIterator<Item = (&'a [u8], u64)>,
) -> HashMap<Vec<u8>, u64> {
    let mut latest = HashMap::new();
    for (key, offset) in records {
        latest.insert(key.to_vec(), offset);
    }
    latest
}

/// Does `record` (in a closed segment) survive compaction? Only the newest record of its
/// key does, and a tombstone only while its timestamp is `>= tombstone_horizon`
/// (`now - delete.retention.ms`). Keys missing from `latest` (not seen) are kept.
pub fn survives(record: &Record, latest: &HashMap<Vec<u8>, u64>, tombstone_horizon: i64) -> bool {
    let newest = latest.get(&record.key).is_none_or(|&o| o == record.offset);
    newest && (record.value.is_some() || record.timestamp >= tombstone_horizon)
}

/// A rewrite failure: reading (corruption, I/O) or writing (which poisons the partition).
#[derive(Debug)]
pub(crate) enum RewriteError {
    /// Reading the segment failed; nothing was changed.
    Read(LogError),
    /// A write, rename or fsync failed.
    Write(&'static str, PathBuf, io::Error),
}

/// Result of rewriting one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewritten {
    pub removed: u64,
    pub old_len: u64,
    pub new_len: u64,
    pub max_timestamp: Option<i64>,
}

/// Rewrites segment `base` at `path` keeping the records for which `keep` is true; returns
/// `None` (and writes nothing) if every record is kept.
pub(crate) fn rewrite_segment(
    path: &Path,
    base: u64,
    keep: &mut dyn FnMut(&Record) -> bool,
    hooks: &dyn IoHooks,
    index: &SharedIndex,
) -> Result<Option<Rewritten>, RewriteError> {
    let read_err = |e: io::Error| RewriteError::Read(LogError::io("read", path, e));
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    // Pass 1: does anything go? (Also verifies every frame before we touch anything.)
    let mut removed = 0u64;
    let mut slot = Record::default();
    let mut reader = FrameReader::new(&file, 0, len);
    loop {
        match reader.next(&mut slot).map_err(read_err)? {
            Next::End => break,
            Next::Record => {
                if !keep(&slot) {
                    removed += 1;
                }
            }
            Next::Bad {
                position, reason, ..
            } => {
                return Err(RewriteError::Read(LogError::Corrupt {
                    file: path.to_path_buf(),
                    position,
                    last_good_offset: None,
                    reason,
                }));
            }
        }
    }
    if removed == 0 {
        return Ok(None);
    }
    // Pass 2: write the survivors.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(COMPACTING_SUFFIX.trim_start_matches(".log"));
    let tmp = path.with_file_name(tmp_name);
    fn w<'a>(op: &'static str, p: &'a Path) -> impl Fn(io::Error) -> RewriteError + 'a {
        move |e| RewriteError::Write(op, p.to_path_buf(), e)
    }
    let result = (|| {
        hooks.before_write(&tmp).map_err(w("create", &tmp))?;
        let mut out: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(w("create", &tmp))?;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut new_len = 0u64;
        let mut max_timestamp: Option<i64> = None;
        let mut reader = FrameReader::new(&file, 0, len);
        let flush = |buf: &mut Vec<u8>, out: &mut File| -> Result<(), RewriteError> {
            hooks.before_write(&tmp).map_err(w("write", &tmp))?;
            out.write_all(buf).map_err(w("write", &tmp))?;
            buf.clear();
            Ok(())
        };
        loop {
            match reader.next(&mut slot).map_err(read_err)? {
                Next::End => break,
                Next::Record => {
                    if keep(&slot) {
                        new_len += encode_into(
                            &mut buf,
                            slot.offset,
                            slot.timestamp,
                            &slot.key,
                            slot.value.as_deref(),
                        ) as u64;
                        max_timestamp =
                            Some(max_timestamp.map_or(slot.timestamp, |t| t.max(slot.timestamp)));
                        if buf.len() >= 1 << 20 {
                            flush(&mut buf, &mut out)?;
                        }
                    }
                }
                Next::Bad {
                    position, reason, ..
                } => {
                    // The file changed under us between the passes.
                    return Err(RewriteError::Read(LogError::Corrupt {
                        file: path.to_path_buf(),
                        position,
                        last_good_offset: None,
                        reason,
                    }));
                }
            }
        }
        if !buf.is_empty() {
            flush(&mut buf, &mut out)?;
        }
        // Always (see the module doc): the data must be durable before the rename.
        hooks.before_sync(&tmp).map_err(w("fsync", &tmp))?;
        out.sync_all().map_err(w("fsync", &tmp))?;
        {
            // Rename and forget the old index under the index lock (see PartitionReader).
            let mut cache = crate::sync::lock(index);
            hooks.before_write(path).map_err(w("rename over", path))?;
            fs::rename(&tmp, path).map_err(w("rename over", path))?;
            cache.invalidate(base);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        hooks.before_sync(dir).map_err(w("fsync directory", dir))?;
        crate::fsutil::fsync_dir(dir).map_err(w("fsync directory", dir))?;
        Ok(Rewritten {
            removed,
            old_len: len,
            new_len,
            max_timestamp,
        })
    })();
    if result.is_err() && tmp.exists() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: u64, ts: i64, key: &str, value: Option<&str>) -> Record {
        Record {
            offset,
            timestamp: ts,
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn newest_per_key_and_tombstone_horizon() {
        let log = [
            rec(0, 0, "a", Some("1")),
            rec(1, 0, "b", Some("1")),
            rec(2, 5, "a", Some("2")),
            rec(3, 10, "b", None),
            rec(4, 100, "c", None),
        ];
        let latest = latest_offsets(log.iter().map(|r| (r.key.as_slice(), r.offset)));
        let kept: Vec<u64> = log
            .iter()
            .filter(|r| survives(r, &latest, 50))
            .map(|r| r.offset)
            .collect();
        // a@0 superseded; b@1 superseded; b's tombstone at ts 10 < horizon 50 dropped.
        assert_eq!(kept, vec![2, 4]);
        let kept: Vec<u64> = log
            .iter()
            .filter(|r| survives(r, &latest, 10))
            .map(|r| r.offset)
            .collect();
        assert_eq!(kept, vec![2, 3, 4]);
    }
}
