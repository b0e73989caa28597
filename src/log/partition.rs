//! One partition: a directory of segments, the active (last) one open for appends.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::compaction::{self, CompactionReport, RewriteError};
use super::error::{LogError, Result};
use super::hooks::IoHooks;
use super::reader::PartitionReader;
use super::record::{FRAME_HEADER_LEN, MAX_PAYLOAD_LEN, Record, encode_into, payload_len};
use super::retention::{self, RetentionReport, SegmentStat};
use super::segment::{
    COMPACTING_SUFFIX, FrameReader, INDEX_INTERVAL, IndexCache, Next, SharedIndex, list_segments,
    scan_segment, segment_path,
};
use super::topic::{CleanupPolicy, TopicConfig};

/// Appends are buffered in user space and written to the OS once this many bytes pile up
/// (or on `flush_to_os` / `sync` / a segment roll).
pub const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// What `Partition::open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Number of segments.
    pub segments: usize,
    /// `start_offset()` after recovery.
    pub start_offset: u64,
    /// `end_offset()` after recovery.
    pub end_offset: u64,
    /// Torn tail cut off the last segment, if any.
    pub torn_tail: Option<TornTailCut>,
    /// Leftover compaction temp files that were deleted.
    pub removed_temp_files: Vec<PathBuf>,
}

/// A torn tail that was cut off (ftruncate + fsync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTailCut {
    /// The segment file.
    pub file: PathBuf,
    /// New length of the file (byte position of the first bad frame).
    pub position: u64,
    /// Bytes removed.
    pub bytes_cut: u64,
    /// Offset of the last record kept in that segment, if any.
    pub last_good_offset: Option<u64>,
    /// Why the first removed frame was bad.
    pub reason: String,
}

/// What a cleanup run did, per the topic's cleanup policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupReport {
    /// `compact` topic.
    Compacted(CompactionReport),
    /// `delete` topic.
    Retention(RetentionReport),
}

#[derive(Debug, Clone, Copy)]
struct SegmentMeta {
    base: u64,
    bytes: u64,
    /// `None` = not known yet (closed segment from an earlier run, never scanned).
    max_timestamp: Option<Option<i64>>,
}

/// One partition of a topic, open for appends. Not shareable between threads for writing;
/// readers ([`PartitionReader`]) may run concurrently in other threads.
pub struct Partition {
    dir: PathBuf,
    name: String,
    config: TopicConfig,
    hooks: Arc<dyn IoHooks>,
    /// Ascending by base; the last one is active.
    segments: Vec<SegmentMeta>,
    active: File,
    /// Bytes of the active segment written to the OS.
    active_len: u64,
    /// Position of the last sparse-index entry of the active segment.
    active_indexed: Option<u64>,
    buf: Vec<u8>,
    end_offset: u64,
    poisoned: Option<String>,
    index: SharedIndex,
    /// A segment was created or deleted without fsyncing the directory (fsync disabled).
    dir_dirty: bool,
}

/// `<topic>/<partition>` from a partition directory, for messages.
fn display_name(dir: &Path) -> String {
    let part = dir.file_name().map(|s| s.to_string_lossy().into_owned());
    let topic = dir
        .parent()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned());
    match (topic, part) {
        (Some(t), Some(p)) => format!("{t}/{p}"),
        _ => dir.display().to_string(),
    }
}

impl Partition {
    /// Opens (creating if needed) the partition in `dir`: deletes compaction temp files,
    /// scans only the last segment, and cuts a torn tail off it (ftruncate + fsync).
    /// Corruption anywhere else is an error, never skipped.
    pub fn open(
        dir: &Path,
        config: TopicConfig,
        hooks: Arc<dyn IoHooks>,
    ) -> Result<(Partition, RecoveryReport)> {
        if !dir.exists() {
            hooks
                .before_write(dir)
                .and_then(|_| fs::create_dir_all(dir))
                .map_err(|e| LogError::io("create directory", dir, e))?;
        }
        let mut p = Partition {
            dir: dir.to_path_buf(),
            name: display_name(dir),
            config,
            hooks,
            segments: Vec::new(),
            active: File::open(dir).map_err(|e| LogError::io("open", dir, e))?,
            active_len: 0,
            active_indexed: None,
            buf: Vec::new(),
            end_offset: 0,
            poisoned: None,
            index: Arc::new(Mutex::new(IndexCache::default())),
            dir_dirty: false,
        };
        let report = p.load(true)?;
        Ok((p, report))
    }

    /// (Re)loads the segment list and the active segment from disk.
    fn load(&mut self, recover: bool) -> Result<RecoveryReport> {
        let dir = self.dir.clone();
        let mut report = RecoveryReport::default();
        if recover {
            let rd = fs::read_dir(&dir).map_err(|e| LogError::io("list", &dir, e))?;
            for entry in rd {
                let entry = entry.map_err(|e| LogError::io("list", &dir, e))?;
                if entry
                    .file_name()
                    .to_string_lossy()
                    .ends_with(COMPACTING_SUFFIX)
                {
                    let path = entry.path();
                    self.hooks
                        .before_write(&path)
                        .and_then(|_| fs::remove_file(&path))
                        .map_err(|e| LogError::io("remove", &path, e))?;
                    report.removed_temp_files.push(path);
                }
            }
        }
        let mut bases = list_segments(&dir)?;
        if bases.is_empty() {
            let path = segment_path(&dir, 0);
            self.hooks
                .before_write(&path)
                .and_then(|_| OpenOptions::new().write(true).create_new(true).open(&path))
                .map_err(|e| LogError::io("create", &path, e))?;
            self.sync_dir_now()?;
            bases.push(0);
        } else if !report.removed_temp_files.is_empty() {
            self.sync_dir_now()?;
        }
        let mut segments = Vec::with_capacity(bases.len());
        for &base in &bases[..bases.len() - 1] {
            let path = segment_path(&dir, base);
            let bytes = fs::metadata(&path)
                .map_err(|e| LogError::io("stat", &path, e))?
                .len();
            segments.push(SegmentMeta {
                base,
                bytes,
                max_timestamp: None,
            });
        }
        let base = *bases.last().expect("one segment");
        let path = segment_path(&dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
        let scan = scan_segment(&file, len, &path, base, true)?;
        if let Some(torn) = &scan.torn {
            if !recover {
                return Err(LogError::Corrupt {
                    file: path,
                    position: torn.position,
                    last_good_offset: scan.last_offset,
                    reason: torn.reason.clone(),
                });
            }
            self.hooks
                .before_write(&path)
                .and_then(|_| file.set_len(torn.position))
                .map_err(|e| LogError::io("truncate torn tail of", &path, e))?;
            self.hooks
                .before_sync(&path)
                .and_then(|_| file.sync_all())
                .map_err(|e| LogError::io("fsync", &path, e))?;
            tracing::warn!(
                file = %path.display(),
                position = torn.position,
                bytes = torn.bytes,
                reason = %torn.reason,
                "cut torn tail off log segment"
            );
            report.torn_tail = Some(TornTailCut {
                file: path.clone(),
                position: torn.position,
                bytes_cut: torn.bytes,
                last_good_offset: scan.last_offset,
                reason: torn.reason.clone(),
            });
        }
        // If the last segment is empty, the previous one must end below its base.
        let end_offset = scan.last_offset.map_or(base, |o| o + 1);
        segments.push(SegmentMeta {
            base,
            bytes: scan.valid_len,
            max_timestamp: Some(scan.max_timestamp),
        });
        self.active_indexed = scan.index.last().map(|&(_, p)| p);
        self.index.lock().expect("index lock").set(base, scan.index);
        self.segments = segments;
        self.active = file;
        self.active_len = scan.valid_len;
        self.end_offset = end_offset;
        self.buf.clear();
        report.segments = self.segments.len();
        report.start_offset = self.start_offset();
        report.end_offset = end_offset;
        Ok(report)
    }

    /// `<topic>/<partition>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &TopicConfig {
        &self.config
    }

    /// Base offset of the first segment. Compaction never moves it; only retention
    /// (deleting whole segments) and `truncate` to it do.
    pub fn start_offset(&self) -> u64 {
        self.segments[0].base
    }

    /// The offset the next append gets.
    pub fn end_offset(&self) -> u64 {
        self.end_offset
    }

    /// Base offset of the active (last) segment; records below it are in closed segments.
    pub fn active_segment_base(&self) -> u64 {
        self.segments.last().expect("one segment").base
    }

    /// Base offsets of all segments, ascending.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.base).collect()
    }

    /// Total bytes of all segments, including buffered appends.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum::<u64>() + self.buf.len() as u64
    }

    /// The earlier failure that poisoned this partition, if any.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(LogError::Poisoned {
                partition: self.name.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records a write/fsync failure: the partition refuses all later writes.
    fn poison(&mut self, op: &'static str, path: &Path, e: io::Error) -> LogError {
        let err = LogError::io(op, path, e);
        tracing::error!(partition = %self.name, error = %err, "log partition poisoned");
        self.poisoned = Some(err.to_string());
        err
    }

    fn active_path(&self) -> PathBuf {
        segment_path(&self.dir, self.active_segment_base())
    }

    fn sync_dir_now(&self) -> Result<()> {
        self.hooks
            .before_sync(&self.dir)
            .and_then(|_| crate::fsutil::fsync_dir(&self.dir))
            .map_err(|e| LogError::io("fsync directory", &self.dir, e))
    }

    /// fsyncs the directory (when fsync is on), poisoning on failure.
    fn sync_dir(&mut self) -> Result<()> {
        if !self.config.fsync {
            self.dir_dirty = true;
            return Ok(());
        }
        let dir = self.dir.clone();
        if let Err(e) = self
            .hooks
            .before_sync(&dir)
            .and_then(|_| crate::fsutil::fsync_dir(&dir))
        {
            return Err(self.poison("fsync directory", &dir, e));
        }
        self.dir_dirty = false;
        Ok(())
    }

    /// Appends a record (buffered in user space) and returns its offset. `value == None`
    /// is a tombstone.
    pub fn append(&mut self, timestamp: i64, key: &[u8], value: Option<&[u8]>) -> Result<u64> {
        self.check_poisoned()?;
        let plen = payload_len(key.len(), value.map(<[u8]>::len));
        if plen > MAX_PAYLOAD_LEN {
            return Err(LogError::RecordTooLarge {
                partition: self.name.clone(),
                size: plen,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let frame = (FRAME_HEADER_LEN + plen) as u64;
        let size = self.active_len + self.buf.len() as u64;
        if size > 0 && size + frame > self.config.segment_bytes {
            self.roll()?;
        }
        let pos = self.active_len + self.buf.len() as u64;
        let offset = self.end_offset;
        encode_into(&mut self.buf, offset, timestamp, key, value);
        if self
            .active_indexed
            .is_none_or(|p| pos >= p + INDEX_INTERVAL)
        {
            self.active_indexed = Some(pos);
            let base = self.active_segment_base();
            self.index
                .lock()
                .expect("index lock")
                .get(base)
                .add(offset, pos);
        }
        let meta = self.segments.last_mut().expect("one segment");
        meta.max_timestamp = Some(Some(
            meta.max_timestamp
                .flatten()
                .map_or(timestamp, |t| t.max(timestamp)),
        ));
        self.end_offset += 1;
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush_to_os()?;
        }
        Ok(offset)
    }

    /// Writes buffered appends to the OS with write(2) (no fsync). After it returns, readers
    /// see them and a process crash cannot lose them (a machine crash can).
    pub fn flush_to_os(&mut self) -> Result<()> {
        self.check_poisoned()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.active_path();
        if let Err(e) = self
            .hooks
            .before_write(&path)
            .and_then(|_| self.active.write_all_at(&self.buf, self.active_len))
        {
            return Err(self.poison("write", &path, e));
        }
        self.active_len += self.buf.len() as u64;
        self.segments.last_mut().expect("one segment").bytes = self.active_len;
        self.buf.clear();
        if self.buf.capacity() > 4 * WRITE_BUFFER_BYTES {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// `flush_to_os`, then fsync the active segment (and the directory if segments were
    /// created or deleted) when `config.fsync`. Returns the end offset, all of which is
    /// durable. A failed fsync poisons the partition: it is never retried.
    pub fn sync(&mut self) -> Result<u64> {
        self.flush_to_os()?;
        if self.config.fsync {
            let path = self.active_path();
            if let Err(e) = self
                .hooks
                .before_sync(&path)
                .and_then(|_| self.active.sync_data())
            {
                return Err(self.poison("fsync", &path, e));
            }
            if self.dir_dirty {
                self.sync_dir()?;
            }
        }
        Ok(self.end_offset)
    }

    /// Closes the active segment (fsynced first when fsync is on, so a closed segment is
    /// never torn) and starts a new one at the end offset.
    fn roll(&mut self) -> Result<()> {
        self.flush_to_os()?;
        if self.config.fsync {
            let path = self.active_path();
            if let Err(e) = self
                .hooks
                .before_sync(&path)
                .and_then(|_| self.active.sync_data())
            {
                return Err(self.poison("fsync", &path, e));
            }
        }
        let base = self.end_offset;
        let path = segment_path(&self.dir, base);
        let file = match self.hooks.before_write(&path).and_then(|_| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
        }) {
            Ok(f) => f,
            Err(e) => return Err(self.poison("create", &path, e)),
        };
        self.segments.push(SegmentMeta {
            base,
            bytes: 0,
            max_timestamp: Some(None),
        });
        self.active = file;
        self.active_len = 0;
        self.active_indexed = None;
        self.sync_dir()
    }

    /// Checks `offset` is within `[start_offset, end_offset]`.
    fn check_offset(&self, offset: u64) -> Result<()> {
        if offset > self.end_offset || offset < self.start_offset() {
            return Err(LogError::OffsetOutOfRange {
                partition: self.name.clone(),
                offset,
                start: self.start_offset(),
                end: self.end_offset,
            });
        }
        Ok(())
    }

    /// A sequential reader from `from_offset` (flushes buffered appends to the OS first so
    /// it sees them). `from_offset` must be within `[start_offset, end_offset]`.
    pub fn reader(&mut self, from_offset: u64) -> Result<PartitionReader> {
        self.check_offset(from_offset)?;
        if self.poisoned.is_none() {
            self.flush_to_os()?;
        }
        PartitionReader::with_index(&self.dir, from_offset, self.index.clone())
    }

    /// Up to `max_records` records from `from_offset`, in offset order (after compaction,
    /// with gaps).
    pub fn read(&mut self, from_offset: u64, max_records: usize) -> Result<Vec<Record>> {
        self.reader(from_offset)?.read(max_records)
    }

    /// Removes every record with offset `>= to_offset`, durably (ftruncate + fsync, later
    /// segments deleted + directory fsync). Afterwards `end_offset() == to_offset`.
    pub fn truncate(&mut self, to_offset: u64) -> Result<()> {
        self.check_poisoned()?;
        self.check_offset(to_offset)?;
        self.flush_to_os()?;
        if to_offset == self.end_offset {
            return Ok(());
        }
        // segments[..k] have base < to_offset.
        let k = self.segments.partition_point(|s| s.base < to_offset);
        let first_deleted = k.max(1);
        for i in (first_deleted..self.segments.len()).rev() {
            let base = self.segments[i].base;
            let path = segment_path(&self.dir, base);
            if let Err(e) = self
                .hooks
                .before_write(&path)
                .and_then(|_| fs::remove_file(&path))
            {
                return Err(self.poison("delete", &path, e));
            }
            self.index.lock().expect("index lock").invalidate(base);
        }
        let cut_seg = first_deleted - 1;
        let base = self.segments[cut_seg].base;
        let path = segment_path(&self.dir, base);
        let (cut, last_kept) = if k == 0 {
            (0, None)
        } else {
            self.find_cut(base, &path, to_offset)?
        };
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) => return Err(self.poison("open", &path, e)),
        };
        if let Err(e) = self
            .hooks
            .before_write(&path)
            .and_then(|_| file.set_len(cut))
        {
            return Err(self.poison("truncate", &path, e));
        }
        if let Err(e) = self.hooks.before_sync(&path).and_then(|_| file.sync_all()) {
            return Err(self.poison("fsync", &path, e));
        }
        self.index.lock().expect("index lock").invalidate(base);
        // Keep `end_offset == to_offset` across reopen: if the kept prefix ends below it
        // (a gap left by compaction), start an empty segment at `to_offset`.
        if last_kept.map_or(base, |o| o + 1) != to_offset {
            let new_path = segment_path(&self.dir, to_offset);
            if let Err(e) = self.hooks.before_write(&new_path).and_then(|_| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&new_path)
                    .map(drop)
            }) {
                return Err(self.poison("create", &new_path, e));
            }
        }
        self.dir_dirty = true;
        if let Err(e) = self
            .hooks
            .before_sync(&self.dir)
            .and_then(|_| crate::fsutil::fsync_dir(&self.dir))
        {
            let dir = self.dir.clone();
            return Err(self.poison("fsync directory", &dir, e));
        }
        self.dir_dirty = false;
        let closed: Vec<SegmentMeta> = self.segments[..cut_seg].to_vec();
        self.load(false)?;
        // Keep what we knew about the untouched closed segments.
        for (meta, old) in self.segments.iter_mut().zip(closed) {
            if meta.base == old.base {
                meta.max_timestamp = old.max_timestamp;
            }
        }
        debug_assert_eq!(self.end_offset, to_offset);
        if self.end_offset != to_offset {
            return Err(LogError::Corrupt {
                file: path,
                position: cut,
                last_good_offset: last_kept,
                reason: format!(
                    "after truncation to {to_offset} the log ends at {}",
                    self.end_offset
                ),
            });
        }
        Ok(())
    }

    /// Position of the first record `>= to` in segment `base`, and the last offset before it.
    fn find_cut(&self, base: u64, path: &Path, to: u64) -> Result<(u64, Option<u64>)> {
        let file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat", path, e))?
            .len();
        let (_, start) = self
            .index
            .lock()
            .expect("index lock")
            .get(base)
            .floor(to.saturating_sub(1));
        let mut reader = FrameReader::new(&file, start.min(len), len);
        let mut slot = Record::default();
        let mut last_kept = None;
        loop {
            let pos = reader.position();
            match reader
                .next(&mut slot)
                .map_err(|e| LogError::io("read", path, e))?
            {
                Next::End => return Ok((len, last_kept)),
                Next::Record if slot.offset >= to => return Ok((pos, last_kept)),
                Next::Record => last_kept = Some(slot.offset),
                Next::Bad {
                    position, reason, ..
                } => {
                    return Err(LogError::Corrupt {
                        file: path.to_path_buf(),
                        position,
                        last_good_offset: last_kept,
                        reason,
                    });
                }
            }
        }
    }

    /// Runs the topic's cleanup policy: compaction for `compact`, retention for `delete`.
    pub fn clean(&mut self, now_ms: i64) -> Result<CleanupReport> {
        match self.config.cleanup_policy {
            CleanupPolicy::Compact => self.compact(now_ms).map(CleanupReport::Compacted),
            CleanupPolicy::Delete => self.apply_retention(now_ms).map(CleanupReport::Retention),
        }
    }

    /// Compacts the closed segments: keeps the newest record per key (newest over the
    /// whole log, active segment included), drops tombstones with timestamp older than
    /// `now_ms - delete_retention_ms`. Offsets of survivors never change; segments keep
    /// their names (an emptied segment stays as an empty file).
    pub fn compact(&mut self, now_ms: i64) -> Result<CompactionReport> {
        self.check_poisoned()?;
        self.flush_to_os()?;
        let mut report = CompactionReport::default();
        if self.segments.len() < 2 {
            return Ok(report);
        }
        // Pass 1: the newest offset of every key. (Keys are held in memory.)
        let mut latest = std::collections::HashMap::<Vec<u8>, u64>::new();
        let mut reader =
            PartitionReader::with_index(&self.dir, self.start_offset(), self.index.clone())?;
        loop {
            let batch = reader.next_batch(4096)?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                match latest.get_mut(r.key.as_slice()) {
                    Some(o) => *o = r.offset,
                    None => {
                        latest.insert(r.key.clone(), r.offset);
                    }
                }
            }
        }
        let horizon = now_ms.saturating_sub(self.config.delete_retention_ms);
        let mut keep = |r: &Record| compaction::survives(r, &latest, horizon);
        let closed = self.segments.len() - 1;
        for i in 0..closed {
            let base = self.segments[i].base;
            let path = segment_path(&self.dir, base);
            report.segments_examined += 1;
            match compaction::rewrite_segment(
                &path,
                base,
                &mut keep,
                self.hooks.as_ref(),
                &self.index,
                self.config.fsync,
            ) {
                Ok(None) => {}
                Ok(Some(done)) => {
                    report.segments_rewritten += 1;
                    report.records_removed += done.removed;
                    report.bytes_before += done.old_len;
                    report.bytes_after += done.new_len;
                    self.segments[i].bytes = done.new_len;
                    self.segments[i].max_timestamp = Some(done.max_timestamp);
                    if !self.config.fsync {
                        self.dir_dirty = true;
                    }
                }
                Err(RewriteError::Read(e)) => return Err(e),
                Err(RewriteError::Write(op, path, e)) => return Err(self.poison(op, &path, e)),
            }
        }
        Ok(report)
    }

    /// Deletes the oldest closed segments beyond `retention_bytes` / older than
    /// `retention_ms` (see [`retention::segments_to_delete`]). Never touches the active
    /// segment. Moves `start_offset` to the first remaining segment.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<RetentionReport> {
        self.check_poisoned()?;
        self.flush_to_os()?;
        let closed = self.segments.len() - 1;
        if self.config.retention_ms.is_some() {
            for i in 0..closed {
                if self.segments[i].max_timestamp.is_none() {
                    let base = self.segments[i].base;
                    let path = segment_path(&self.dir, base);
                    let file = File::open(&path).map_err(|e| LogError::io("open", &path, e))?;
                    let scan = scan_segment(&file, self.segments[i].bytes, &path, base, false)?;
                    self.index.lock().expect("index lock").set(base, scan.index);
                    self.segments[i].max_timestamp = Some(scan.max_timestamp);
                }
            }
        }
        let stats: Vec<SegmentStat> = self.segments[..closed]
            .iter()
            .map(|s| SegmentStat {
                base: s.base,
                bytes: s.bytes,
                max_timestamp: s.max_timestamp.flatten(),
            })
            .collect();
        let n = retention::segments_to_delete(
            &stats,
            self.size_bytes(),
            self.config.retention_bytes,
            self.config.retention_ms,
            now_ms,
        );
        let mut report = RetentionReport::default();
        for s in &stats[..n] {
            let path = segment_path(&self.dir, s.base);
            if let Err(e) = self
                .hooks
                .before_write(&path)
                .and_then(|_| fs::remove_file(&path))
            {
                return Err(self.poison("delete", &path, e));
            }
            self.index.lock().expect("index lock").invalidate(s.base);
            self.segments.remove(0);
            report.segments_deleted += 1;
            report.bytes_deleted += s.bytes;
        }
        if n > 0 {
            self.sync_dir()?;
        }
        report.start_offset = self.start_offset();
        Ok(report)
    }
}

impl Drop for Partition {
    /// Best effort: hands buffered appends to the OS (no fsync).
    fn drop(&mut self) {
        if self.poisoned.is_none() && !self.buf.is_empty() {
            let _ = self.flush_to_os();
        }
    }
}

/// Read-only summary of a partition directory (no repair; a torn tail is ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: u32,
    /// Base offset of the first segment.
    pub start_offset: u64,
    /// Next offset to be assigned.
    pub end_offset: u64,
    /// Total bytes of the segment files.
    pub bytes: u64,
    /// Number of segments.
    pub segments: usize,
}

/// Reads start/end offsets and size of the partition in `dir` without modifying anything
/// (scans only the last segment).
pub fn partition_info(dir: &Path, partition: u32) -> Result<PartitionInfo> {
    let bases = list_segments(dir)?;
    let mut bytes = 0;
    for &b in &bases {
        let path = segment_path(dir, b);
        bytes += fs::metadata(&path)
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
    }
    let (start_offset, end_offset) = match bases.last() {
        None => (0, 0),
        Some(&last) => {
            let path = segment_path(dir, last);
            let file = File::open(&path).map_err(|e| LogError::io("open", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| LogError::io("stat", &path, e))?
                .len();
            let scan = scan_segment(&file, len, &path, last, true)?;
            (bases[0], scan.last_offset.map_or(last, |o| o + 1))
        }
    };
    Ok(PartitionInfo {
        partition,
        start_offset,
        end_offset,
        bytes,
        segments: bases.len(),
    })
}

/// Result of [`verify_partition`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: usize,
    /// Valid records.
    pub records: u64,
    /// Bytes checked.
    pub bytes: u64,
    /// First and last offset present.
    pub first_offset: Option<u64>,
    /// Last offset present.
    pub last_offset: Option<u64>,
    /// A torn tail at the end of the last segment (cut on the next open), if any.
    pub torn_tail: Option<TornTailCut>,
}

/// Reads every segment of the partition in `dir` in full, checking every frame's length and
/// CRC and that offsets increase within and across segments. Read-only.
pub fn verify_partition(dir: &Path) -> Result<VerifyReport> {
    let bases = list_segments(dir)?;
    let mut report = VerifyReport::default();
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let file = File::open(&path).map_err(|e| LogError::io("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
        let is_last = i + 1 == bases.len();
        if let Some(prev) = report.last_offset
            && base <= prev
        {
            return Err(LogError::Corrupt {
                file: path,
                position: 0,
                last_good_offset: Some(prev),
                reason: format!("segment base {base} is not above the previous offset {prev}"),
            });
        }
        let scan = scan_segment(&file, len, &path, base, is_last)?;
        if let Some(next) = bases.get(i + 1)
            && let Some(last) = scan.last_offset
            && last >= *next
        {
            return Err(LogError::Corrupt {
                file: path,
                position: 0,
                last_good_offset: Some(last),
                reason: format!("offset {last} reaches into the next segment (base {next})"),
            });
        }
        report.segments += 1;
        report.records += scan.records;
        report.bytes += scan.valid_len;
        if report.first_offset.is_none() {
            report.first_offset = scan.first_offset;
        }
        if scan.last_offset.is_some() {
            report.last_offset = scan.last_offset;
        }
        if let Some(t) = scan.torn {
            report.torn_tail = Some(TornTailCut {
                file: path,
                position: t.position,
                bytes_cut: t.bytes,
                last_good_offset: scan.last_offset,
                reason: t.reason,
            });
        }
    }
    Ok(report)
}
