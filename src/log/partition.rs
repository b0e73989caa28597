//! One partition: a directory of segments, the active (last) one open for appends.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::compaction::{self, CompactionReport, RewriteError};
use super::error::{LogError, Result};
use super::hooks::{IoHooks, NoHooks};
use super::reader::PartitionReader;
use super::record::{
    FRAME_HEADER_LEN, MAX_PAYLOAD_LEN, Record, SYNC_MARKER_FRAME_LEN, SyncMarker, array_at,
    check_header, decode_frame_payload, encode_into, encode_sync_marker, payload_len,
};
use super::retention::{self, RetentionReport, SegmentStat};
use super::segment::{
    COMPACTING_SUFFIX, FrameReader, INDEX_INTERVAL, IndexCache, NextFrame, SegmentScan,
    SharedIndex, all_zero, list_segments, scan_segment, segment_path,
};
use super::topic::{CleanupPolicy, TopicConfig};

/// Appends are buffered in user space and written to the OS once this many bytes pile up
/// (or on `flush_to_os` / `sync` / a segment roll).
pub const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// With [`TopicConfig::preallocate`], the active segment is extended with zeros this far
/// beyond the appends that reach its end (never beyond `segment_bytes`).
pub const PREALLOCATE_BYTES: u64 = 1 << 20;

/// Name of the truncation intent file in a partition directory: present while a
/// [`Partition::truncate`] is under way; an open finishes the truncation it names.
pub const TRUNCATE_INTENT_FILE: &str = "truncate.intent";
const TRUNCATE_INTENT_MAGIC: &str = "gregor-truncate v1";

/// What `Partition::open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Number of segments.
    pub segments: usize,
    /// `start_offset()` after recovery.
    pub start_offset: u64,
    /// `end_offset()` after recovery.
    pub end_offset: u64,
    /// Torn tail cut off the last segment, if any. (A read-only open reports the torn tail
    /// it found and ignores, without cutting it.)
    pub torn_tail: Option<TornTailCut>,
    /// Leftover compaction temp files that were deleted.
    pub removed_temp_files: Vec<PathBuf>,
    /// A truncation interrupted by a crash, to this offset, that the open completed (or, for
    /// a read-only open, applied to its view only).
    pub completed_truncation: Option<u64>,
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

/// One partition of a topic, open for appends (or, from [`Partition::open_read_only`], for
/// reading only). Not shareable between threads for writing; readers
/// ([`PartitionReader`]) may run concurrently in other threads.
pub struct Partition {
    dir: PathBuf,
    name: String,
    config: TopicConfig,
    hooks: Arc<dyn IoHooks>,
    /// Ascending by base; the last one is active.
    segments: Vec<SegmentMeta>,
    /// Shared with the [`SyncTicket`]s in flight, which fsync it without the partition.
    active: Arc<File>,
    /// The path of `active`, replaced with it (every append and sync names it to the
    /// [`IoHooks`]; formatting a segment's name each time showed in profiles).
    active_path: PathBuf,
    /// Bumped whenever `active` is replaced (a roll, or a (re)load after a truncation): a
    /// [`SyncTicket`] of an earlier generation covers a segment that is no longer active.
    generation: u64,
    /// Bumped by every truncation that removes records: a [`SyncTicket`] taken before one
    /// may name records that are gone.
    truncations: u64,
    /// Serialises the fsyncs of the active segment (those of [`SyncTicket`]s, which run
    /// without the partition, and those of rolls and truncations) and remembers the first
    /// one that failed. Linux reports a failed writeback to only one fsync of a file
    /// description, so an fsync that started after a failed one may return success without
    /// the lost pages: every fsync after a failure must fail too.
    fsync_gate: Arc<Mutex<Option<String>>>,
    /// Bytes of the active segment written to the OS.
    active_len: u64,
    /// Length of the active segment's file: `active_len` plus the zeros preallocated after
    /// it (see [`TopicConfig::preallocate`]).
    file_len: u64,
    /// Position of the last sparse-index entry of the active segment.
    active_indexed: Option<u64>,
    buf: Vec<u8>,
    end_offset: u64,
    poisoned: Option<String>,
    index: SharedIndex,
    /// A segment was created or deleted without fsyncing the directory (fsync disabled).
    dir_dirty: bool,
    /// The end offset proven by the sync markers of the active segment (or its base):
    /// records from here on are not proven fsynced yet.
    marked_end: u64,
    /// The end offset as of the last successful [`Partition::sync`] (or open): what a
    /// reader in the same process may process without risking a record that a machine
    /// crash could still take away (see [`Partition::synced_end`]).
    synced_end: u64,
    /// Opened with `open_read_only`: every write is refused.
    read_only: bool,
    /// Read-only: readers stop at `(segment base, byte length)`, the valid end at open.
    read_bound: Option<(u64, u64)>,
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

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn fsync_dir_hooked(dir: &Path, hooks: &dyn IoHooks) -> Result<()> {
    hooks
        .before_sync(dir)
        .and_then(|_| crate::fsutil::fsync_dir(dir))
        .map_err(|e| LogError::io("fsync directory", dir, e))
}

/// Creates `dir` and any missing ancestors, fsyncing the parent of every directory it
/// creates, so the new entries survive a power loss.
pub(crate) fn create_dir_durable(dir: &Path, hooks: &dyn IoHooks) -> Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    for m in missing.into_iter().rev() {
        match hooks.before_write(m).and_then(|_| fs::create_dir(m)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(LogError::io("create directory", m, e)),
        }
        fsync_dir_hooked(parent_of(m), hooks)?;
    }
    Ok(())
}

/// The last segment as found on disk (nothing modified).
struct LastSegment {
    base: u64,
    path: PathBuf,
    file: File,
    scan: SegmentScan,
}

/// Opens and scans the last segment `bases.last()` of `dir` and checks it belongs to the
/// log (see [`check_last_segment_identity`]). Reads only.
fn analyze_last(dir: &Path, bases: &[u64], writable: bool) -> Result<LastSegment> {
    let base = *bases
        .last()
        .expect("a partition always keeps its active segment");
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    let len = file
        .metadata()
        .map_err(|e| LogError::io("stat", &path, e))?
        .len();
    let scan = scan_segment(&file, len, &path, base, true)?;
    check_last_segment_identity(dir, bases, &path, &file, len, &scan)?;
    Ok(LastSegment {
        base,
        path,
        file,
        scan,
    })
}

/// A last segment that is not the only one must be one this log created: either its first
/// frame is valid (a record or sync marker whose offset is at least the base in its name),
/// or it is empty / starts with a torn frame and its base is exactly where the previous
/// segment ends (a roll interrupted before its first record reached the disk). Anything
/// else — an empty or garbage file named like a newer segment, a copy of an older segment —
/// is `LogError::Corrupt` naming the file, never cut and never a jump in the offsets.
fn check_last_segment_identity(
    dir: &Path,
    bases: &[u64],
    path: &Path,
    file: &File,
    len: u64,
    scan: &SegmentScan,
) -> Result<()> {
    let [.., prev, base] = *bases else {
        return Ok(());
    };
    if scan.head_offset.is_some() {
        return Ok(());
    }
    let corrupt = |last_good_offset, reason| LogError::Corrupt {
        file: path.to_path_buf(),
        position: 0,
        last_good_offset,
        reason,
    };
    if let Some(offset) =
        valid_frame_at_start(file, len).map_err(|e| LogError::io("read", path, e))?
    {
        return Err(corrupt(
            None,
            format!(
                "the first frame carries offset {offset} but the file name says the segment \
                 starts at offset {base}: not a segment of this partition (a stray or \
                 misnamed file?)"
            ),
        ));
    }
    let prev_path = segment_path(dir, prev);
    let prev_file = File::open(&prev_path).map_err(|e| LogError::io("open", &prev_path, e))?;
    let prev_len = prev_file
        .metadata()
        .map_err(|e| LogError::io("stat", &prev_path, e))?
        .len();
    let prev_scan = scan_segment(&prev_file, prev_len, &prev_path, prev, false)?;
    if prev_scan.records == 0 && prev_scan.marker_end.is_none() {
        // An emptied (compacted) previous segment: where it ended is unknown.
        return Ok(());
    }
    let prev_end = prev_scan.end_offset(prev);
    if prev_end != base {
        let what = if len == scan.zero_tail {
            "is empty"
        } else {
            "starts with an invalid frame"
        };
        return Err(corrupt(
            prev_scan.last_offset,
            format!(
                "the segment {what} and its name says the log continues at offset {base}, but \
                 the previous segment {} ends at offset {prev_end}: a file this log did not \
                 create (a stray file?); remove it if it does not belong here",
                prev_path.display()
            ),
        ));
    }
    Ok(())
}

/// The offset carried by a complete, CRC-valid frame at byte 0, if there is one.
fn valid_frame_at_start(file: &File, len: u64) -> io::Result<Option<u64>> {
    if len < FRAME_HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut header = [0u8; FRAME_HEADER_LEN];
    file.read_exact_at(&mut header, 0)?;
    let Ok(plen) = check_header(&header, len) else {
        return Ok(None);
    };
    let mut payload = vec![0u8; plen];
    file.read_exact_at(&mut payload, FRAME_HEADER_LEN as u64)?;
    let crc = u32::from_le_bytes(array_at(&header, 4));
    let mut slot = Record::default();
    Ok(match decode_frame_payload(crc, &payload, &mut slot) {
        Ok(super::record::FrameKind::Record) => Some(slot.offset),
        Ok(super::record::FrameKind::SyncMarker(m)) => Some(m.end_offset),
        Err(_) => None,
    })
}

fn intent_bytes(to: u64) -> Vec<u8> {
    let line = format!("{TRUNCATE_INTENT_MAGIC} {to}");
    format!("{line} crc32c={:08x}\n", crc32c::crc32c(line.as_bytes())).into_bytes()
}

/// Reads the truncation intent of `dir`, if any.
fn read_intent(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(TRUNCATE_INTENT_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io("read", &path, e)),
    };
    let bad = |reason: &str| LogError::BadMetadata {
        path: path.clone(),
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8"))?;
    let (line, crc) = text
        .trim_end()
        .rsplit_once(" crc32c=")
        .ok_or_else(|| bad("no checksum"))?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| bad("bad checksum field"))?;
    if crc32c::crc32c(line.as_bytes()) != crc {
        return Err(bad("checksum mismatch"));
    }
    let to = line
        .strip_prefix(TRUNCATE_INTENT_MAGIC)
        .and_then(|r| r.trim().parse::<u64>().ok())
        .ok_or_else(|| bad("unknown format"))?;
    Ok(Some(to))
}

/// Where a truncation to `to` cuts segment `base` (the last one with a base below `to`):
/// the position of the first record with offset `>= to` (or of a sync marker naming an end
/// `>= to`, which a completed truncation leaves), and the last offset kept. `start` is a
/// frame boundary at or before the cut (from the sparse index). With `after_crash`, a bad
/// frame within the last [`SYNC_MARKER_FRAME_LEN`] bytes of the file is the cut too (a
/// marker whose write an earlier attempt did not finish); any other bad frame is corruption.
fn plan_cut(path: &Path, start: u64, to: u64, after_crash: bool) -> Result<(u64, Option<u64>)> {
    let file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| LogError::io("stat", path, e))?
        .len();
    let mut reader = FrameReader::new(&file, start.min(len), len);
    let mut slot = Record::default();
    let mut last_kept = None;
    loop {
        let pos = reader.position();
        match reader
            .next_frame(&mut slot)
            .map_err(|e| LogError::io("read", path, e))?
        {
            NextFrame::End => return Ok((len, last_kept)),
            NextFrame::Record if slot.offset >= to => return Ok((pos, last_kept)),
            NextFrame::Record => last_kept = Some(slot.offset),
            NextFrame::SyncMarker(m) if m.end_offset >= to => return Ok((pos, last_kept)),
            NextFrame::SyncMarker(_) => {}
            // Zeros preallocated after the last frame: the end.
            NextFrame::Bad { position, .. }
                if all_zero(&file, position, len).map_err(|e| LogError::io("read", path, e))? =>
            {
                return Ok((position, last_kept));
            }
            NextFrame::Bad { position, .. }
                if after_crash && len - position <= SYNC_MARKER_FRAME_LEN as u64 =>
            {
                return Ok((position, last_kept));
            }
            NextFrame::Bad {
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

/// Carries out (or finishes) a truncation of `dir` to `to`, given that every record below
/// `to` was durable before the intent file was written. Idempotent: every step can be
/// repeated after a crash at any point. Steps: cut the segment holding `to` (and, if its
/// kept records end below `to` because compaction left a gap, write a sync marker naming
/// end `to` after them), fsync it; delete every later segment; fsync the directory; remove
/// the intent; fsync the directory.
fn apply_truncation(
    dir: &Path,
    to: u64,
    hooks: &dyn IoHooks,
    index: &SharedIndex,
    start_hint: Option<u64>,
    after_crash: bool,
) -> Result<()> {
    let bases = list_segments(dir)?;
    if !bases.is_empty() {
        // Segment K keeps the records below `to`: the last with a base below `to`, or the
        // first (whose base is then `to`: everything goes).
        let k = bases.partition_point(|&b| b < to);
        let keep = k.saturating_sub(1);
        let kbase = bases[keep];
        let kpath = segment_path(dir, kbase);
        let (cut, last_kept) = if k == 0 {
            (0, None)
        } else {
            plan_cut(&kpath, start_hint.unwrap_or(0), to, after_crash)?
        };
        // A decoded offset is below u64::MAX.
        let kept_end = last_kept.map_or(kbase, |o| o + 1);
        let file = OpenOptions::new()
            .write(true)
            .open(&kpath)
            .map_err(|e| LogError::io("open", &kpath, e))?;
        hooks
            .before_write(&kpath)
            .and_then(|_| file.set_len(cut))
            .map_err(|e| LogError::io("truncate", &kpath, e))?;
        if kept_end != to && k > 0 {
            // The records kept end below `to`: say where the log ends. The bytes before
            // `cut` were fsynced before the intent was written, so the marker may claim them.
            let mut buf = Vec::with_capacity(SYNC_MARKER_FRAME_LEN);
            encode_sync_marker(
                &mut buf,
                SyncMarker {
                    end_offset: to,
                    synced_len: cut,
                },
            );
            hooks
                .before_write(&kpath)
                .and_then(|_| file.write_all_at(&buf, cut))
                .map_err(|e| LogError::io("write", &kpath, e))?;
        }
        hooks
            .before_sync(&kpath)
            .and_then(|_| file.sync_all())
            .map_err(|e| LogError::io("fsync", &kpath, e))?;
        let mut cache = crate::sync::lock(index);
        cache.invalidate(kbase);
        for &base in bases[keep + 1..].iter().rev() {
            let path = segment_path(dir, base);
            match hooks
                .before_write(&path)
                .and_then(|_| fs::remove_file(&path))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("delete", &path, e)),
            }
            cache.invalidate(base);
        }
        drop(cache);
        fsync_dir_hooked(dir, hooks)?;
    }
    let intent = dir.join(TRUNCATE_INTENT_FILE);
    hooks
        .before_write(&intent)
        .and_then(|_| fs::remove_file(&intent))
        .map_err(|e| LogError::io("remove", &intent, e))?;
    fsync_dir_hooked(dir, hooks)
}

impl Partition {
    /// Opens (creating if needed) the partition in `dir`: deletes compaction temp files,
    /// finishes a truncation a crash interrupted, scans only the last segment, and cuts a
    /// torn tail off it (ftruncate + fsync). Corruption anywhere else is an error, never
    /// skipped.
    pub fn open(
        dir: &Path,
        config: TopicConfig,
        hooks: Arc<dyn IoHooks>,
    ) -> Result<(Partition, RecoveryReport)> {
        create_dir_durable(dir, hooks.as_ref())?;
        let mut p = Partition::empty(dir, config, hooks, false)?;
        let report = p.load(true)?;
        Ok((p, report))
    }

    /// Opens the partition in `dir` for reading only: nothing is created, cut, deleted or
    /// written, ever. A torn tail is reported in the [`RecoveryReport`] and left in place;
    /// readers of this partition stop at the valid end found now (they do not follow later
    /// appends). An interrupted truncation is applied to this view only. Every write method
    /// returns [`LogError::ReadOnly`]. Corruption is the same error as for [`Partition::open`].
    pub fn open_read_only(dir: &Path, config: TopicConfig) -> Result<(Partition, RecoveryReport)> {
        if !dir.is_dir() {
            return Err(LogError::io(
                "open",
                dir,
                io::Error::new(io::ErrorKind::NotFound, "no such partition directory"),
            ));
        }
        let mut p = Partition::empty(dir, config, Arc::new(NoHooks), true)?;
        let report = p.load_read_only()?;
        Ok((p, report))
    }

    fn empty(
        dir: &Path,
        config: TopicConfig,
        hooks: Arc<dyn IoHooks>,
        read_only: bool,
    ) -> Result<Partition> {
        Ok(Partition {
            dir: dir.to_path_buf(),
            name: display_name(dir),
            config,
            hooks,
            segments: Vec::new(),
            active: Arc::new(File::open(dir).map_err(|e| LogError::io("open", dir, e))?),
            active_path: dir.to_path_buf(),
            generation: 0,
            truncations: 0,
            fsync_gate: Arc::new(Mutex::new(None)),
            active_len: 0,
            file_len: 0,
            active_indexed: None,
            buf: Vec::new(),
            end_offset: 0,
            poisoned: None,
            index: Arc::new(Mutex::new(IndexCache::default())),
            dir_dirty: false,
            marked_end: 0,
            synced_end: 0,
            read_only,
            read_bound: None,
        })
    }

    /// True if opened with [`Partition::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// (Re)loads the segment list and the active segment from disk.
    fn load(&mut self, recover: bool) -> Result<RecoveryReport> {
        let dir = self.dir.clone();
        let mut report = RecoveryReport::default();
        if recover {
            let rd = fs::read_dir(&dir).map_err(|e| LogError::io("list", &dir, e))?;
            let tmp_intent = format!("{TRUNCATE_INTENT_FILE}.tmp");
            for entry in rd {
                let entry = entry.map_err(|e| LogError::io("list", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(COMPACTING_SUFFIX) || name == tmp_intent {
                    let path = entry.path();
                    self.hooks
                        .before_write(&path)
                        .and_then(|_| fs::remove_file(&path))
                        .map_err(|e| LogError::io("remove", &path, e))?;
                    report.removed_temp_files.push(path);
                }
            }
            if let Some(to) = read_intent(&dir)? {
                tracing::warn!(partition = %self.name, to, "finishing an interrupted truncation");
                apply_truncation(&dir, to, self.hooks.as_ref(), &self.index, None, true)?;
                report.completed_truncation = Some(to);
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
        let mut segments = self.closed_metas(&bases)?;
        let last = analyze_last(&dir, &bases, true)?;
        let LastSegment {
            base,
            path,
            file,
            scan,
        } = last;
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
        let end_offset = scan.end_offset(base);
        segments.push(SegmentMeta {
            base,
            bytes: scan.valid_len,
            max_timestamp: Some(scan.max_timestamp),
        });
        self.active_indexed = scan.index.last().map(|&(_, p)| p);
        let mut index = crate::sync::lock(&self.index);
        index.set(base, scan.index);
        index.set_written(Some((base, scan.valid_len)));
        drop(index);
        self.segments = segments;
        self.active = Arc::new(file);
        self.active_path = segment_path(&self.dir, base);
        self.generation += 1;
        self.active_len = scan.valid_len;
        // A torn tail was cut just above; a zero tail (preallocated) is kept for appends.
        self.file_len = scan.valid_len + scan.zero_tail;
        self.end_offset = end_offset;
        self.synced_end = end_offset;
        self.marked_end = scan.proven_end.unwrap_or(base).max(base);
        self.buf.clear();
        report.segments = self.segments.len();
        report.start_offset = self.start_offset();
        report.end_offset = end_offset;
        Ok(report)
    }

    /// Metadata of the closed segments `bases[..len - 1]` (sizes from the file system).
    fn closed_metas(&self, bases: &[u64]) -> Result<Vec<SegmentMeta>> {
        let mut segments = Vec::with_capacity(bases.len());
        for &base in &bases[..bases.len().saturating_sub(1)] {
            let path = segment_path(&self.dir, base);
            let bytes = fs::metadata(&path)
                .map_err(|e| LogError::io("stat", &path, e))?
                .len();
            segments.push(SegmentMeta {
                base,
                bytes,
                max_timestamp: None,
            });
        }
        Ok(segments)
    }

    /// The read-only counterpart of `load`: computes the same view, modifies nothing.
    fn load_read_only(&mut self) -> Result<RecoveryReport> {
        let dir = self.dir.clone();
        let mut report = RecoveryReport::default();
        let mut bases = list_segments(&dir)?;
        if bases.is_empty() {
            // Nothing written yet (a writer creates segment 0 on its first open).
            self.segments = vec![SegmentMeta {
                base: 0,
                bytes: 0,
                max_timestamp: Some(None),
            }];
            self.read_bound = Some((0, 0));
            return Ok(report);
        }
        let pending = read_intent(&dir)?;
        let (base, file, valid_len, end_offset, scan) = if let Some(to) = pending {
            // The view a completed truncation will leave: segments up to K, K up to the cut.
            report.completed_truncation = Some(to);
            let k = bases.partition_point(|&b| b < to);
            bases.truncate(k.max(1));
            let base = *bases
                .last()
                .expect("a partition always keeps its active segment");
            let path = segment_path(&dir, base);
            let (cut, last_kept) = if k == 0 {
                (0, None)
            } else {
                plan_cut(&path, 0, to, true)?
            };
            let file = File::open(&path).map_err(|e| LogError::io("open", &path, e))?;
            let scan = scan_segment(&file, cut, &path, base, false)?;
            debug_assert_eq!(scan.last_offset, last_kept);
            (base, file, cut, to, scan)
        } else {
            let last = analyze_last(&dir, &bases, false)?;
            if let Some(torn) = &last.scan.torn {
                report.torn_tail = Some(TornTailCut {
                    file: last.path.clone(),
                    position: torn.position,
                    bytes_cut: torn.bytes,
                    last_good_offset: last.scan.last_offset,
                    reason: torn.reason.clone(),
                });
            }
            let end = last.scan.end_offset(last.base);
            (last.base, last.file, last.scan.valid_len, end, last.scan)
        };
        let mut segments = self.closed_metas(&bases)?;
        segments.push(SegmentMeta {
            base,
            bytes: valid_len,
            max_timestamp: Some(scan.max_timestamp),
        });
        crate::sync::lock(&self.index).set(base, scan.index);
        self.segments = segments;
        self.active = Arc::new(file);
        self.active_path = segment_path(&self.dir, base);
        self.generation += 1;
        self.active_len = valid_len;
        self.end_offset = end_offset;
        self.marked_end = end_offset;
        self.synced_end = end_offset;
        self.read_bound = Some((base, valid_len));
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
        self.segments
            .last()
            .expect("a partition always keeps its active segment")
            .base
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
        if self.read_only {
            return Err(LogError::ReadOnly {
                partition: self.name.clone(),
            });
        }
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
        self.poison_with(LogError::io(op, path, e))
    }

    fn active_path(&self) -> PathBuf {
        debug_assert_eq!(
            self.active_path,
            segment_path(&self.dir, self.active_segment_base())
        );
        self.active_path.clone()
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
        if self.end_offset == u64::MAX {
            return Err(LogError::InvalidArgument(format!(
                "partition {}: the offset space is exhausted (end offset {})",
                self.name,
                u64::MAX
            )));
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
            crate::sync::lock(&self.index).get(base).add(offset, pos);
        }
        let meta = self
            .segments
            .last_mut()
            .expect("a partition always keeps its active segment");
        meta.max_timestamp = Some(Some(
            meta.max_timestamp
                .flatten()
                .map_or(timestamp, |t| t.max(timestamp)),
        ));
        // Checked above: end_offset < u64::MAX.
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
        self.preallocate(self.active_len + self.buf.len() as u64)?;
        let path = &self.active_path;
        let written = self.hooks.before_write(path).and_then(|_| {
            match self.hooks.write_limit(path, self.buf.len()) {
                Some(n) if n < self.buf.len() => {
                    self.active.write_all_at(&self.buf[..n], self.active_len)?;
                    Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        format!("no space left after {n} of {} bytes", self.buf.len()),
                    ))
                }
                _ => self.active.write_all_at(&self.buf, self.active_len),
            }
        });
        if let Err(e) = written {
            let path = self.active_path();
            return Err(self.poison("write", &path, e));
        }
        self.active_len += self.buf.len() as u64;
        self.file_len = self.file_len.max(self.active_len);
        let meta = self
            .segments
            .last_mut()
            .expect("a partition always keeps its active segment");
        meta.bytes = self.active_len;
        let written = (meta.base, self.active_len);
        crate::sync::lock(&self.index).set_written(Some(written));
        self.buf.clear();
        if self.buf.capacity() > 4 * WRITE_BUFFER_BYTES {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// With [`TopicConfig::preallocate`] (and `fsync`): makes the active segment's file at
    /// least `end` bytes long before appends up to `end` are written, extending it with
    /// zeros up to [`PREALLOCATE_BYTES`] beyond `end` (not beyond `segment_bytes`). Appends
    /// then overwrite zeros instead of growing the file, so the fsync that makes them durable
    /// writes their data and no new file size (an `fdatasync` of a growing file also writes
    /// its inode). Only the fsync after an extension pays for it. A failed write poisons the
    /// partition like any failed append (nothing appended is lost: the zeros go first).
    fn preallocate(&mut self, end: u64) -> Result<()> {
        if !(self.config.fsync && self.config.preallocate) || end <= self.file_len {
            return Ok(());
        }
        let target = end
            .saturating_add(PREALLOCATE_BYTES)
            .min(self.config.segment_bytes)
            .max(end);
        let path = self.active_path();
        let from = self.file_len;
        let zeroed = self
            .hooks
            .before_write(&path)
            .and_then(|_| write_zeros(&self.active, from, target));
        if let Err(e) = zeroed {
            return Err(self.poison("preallocate", &path, e));
        }
        self.file_len = target;
        Ok(())
    }

    /// Cuts the zeros preallocated after the active segment's last written byte (no fsync).
    fn cut_zeros(&mut self) -> io::Result<()> {
        if self.file_len <= self.active_len {
            return Ok(());
        }
        let len = self.active_len;
        self.hooks
            .before_write(&self.active_path())
            .and_then(|_| self.active.set_len(len))?;
        self.file_len = len;
        Ok(())
    }

    /// `flush_to_os`, then fsync the active segment (and the directory if segments were
    /// created or deleted) when `config.fsync`. Returns the end offset, all of which is
    /// durable. A failed fsync poisons the partition: it is never retried.
    ///
    /// After a successful fsync that covered new records, a sync marker recording it is
    /// written to the OS (one small write(2), no second fsync): it is what lets recovery
    /// tell a torn never-synced tail from corruption of synced data (see [`crate::log`]).
    ///
    /// The three steps of [`start_sync`](Self::start_sync), [`SyncTicket::fsync`] and
    /// [`finish_sync`](Self::finish_sync) in one call. A partition shared between threads
    /// behind a lock should use them instead, releasing the lock for the fsync.
    pub fn sync(&mut self) -> Result<u64> {
        let ticket = self.start_sync()?;
        self.finish_sync(ticket.fsync())
    }

    /// The first step of a sync that does not hold the partition during its fsync:
    /// `flush_to_os`, then a [`SyncTicket`] for what was written so far (the end offset now
    /// and the bytes of the active segment). Fsync it with [`SyncTicket::fsync`] — without
    /// the partition, so appends, reads and syncs of it go on meanwhile — and hand the
    /// result to [`finish_sync`](Self::finish_sync). Records appended after this call are
    /// not covered: the sync returns the ticket's end offset.
    pub fn start_sync(&mut self) -> Result<SyncTicket> {
        self.flush_to_os()?;
        let job = self.config.fsync.then(|| FsyncJob {
            file: Arc::clone(&self.active),
            path: self.active_path(),
            dir: self.dir_dirty.then(|| self.dir.clone()),
            hooks: Arc::clone(&self.hooks),
        });
        Ok(SyncTicket {
            partition: self.name.clone(),
            gate: Arc::clone(&self.fsync_gate),
            job,
            end: self.end_offset,
            synced_len: self.active_len,
            generation: self.generation,
            truncations: self.truncations,
        })
    }

    /// The last step of a sync: records the outcome of [`SyncTicket::fsync`] and returns
    /// the ticket's end offset, every record below which is now durable.
    ///
    /// A failed fsync poisons the partition (it is never retried; nothing appended is
    /// reported durable by any later sync). On success [`synced_end`](Self::synced_end)
    /// moves up to the ticket's end (never down: syncs may finish out of order), and a sync
    /// marker is written naming the ticket's `synced_len` — the bytes the fsync covered, not
    /// those written since — if the fsync covered records no marker proves yet and the
    /// ticket's segment is still the active one. After a roll (which fsynced the old segment
    /// in full before closing it) no marker is needed: one would land in the new segment.
    /// If the partition was truncated after the ticket was taken, the records it covered
    /// may be gone: that is an error ([`LogError::InvalidArgument`]; the partition is not
    /// poisoned, the truncation made what it kept durable).
    pub fn finish_sync(&mut self, done: FsyncedTicket) -> Result<u64> {
        let FsyncedTicket { ticket, result } = done;
        if !Arc::ptr_eq(&ticket.gate, &self.fsync_gate) {
            return Err(LogError::InvalidArgument(format!(
                "a sync ticket of partition {} cannot finish a sync of partition {} (or of an \
                 earlier opening of it)",
                ticket.partition, self.name
            )));
        }
        if let Err(e) = result {
            if self.poisoned.is_none() {
                return Err(match e {
                    LogError::Poisoned { cause, .. } => {
                        self.set_poisoned(cause.clone());
                        LogError::Poisoned {
                            partition: self.name.clone(),
                            cause,
                        }
                    }
                    e => self.poison_with(e),
                });
            }
            return Err(e);
        }
        self.check_poisoned()?;
        if ticket.truncations != self.truncations {
            return Err(LogError::InvalidArgument(format!(
                "partition {} was truncated (now ending at {}) while a sync of the records below \
                 offset {} was in flight: they may be gone, the sync proves nothing",
                self.name, self.end_offset, ticket.end
            )));
        }
        if let Some(job) = &ticket.job
            && ticket.generation == self.generation
        {
            if job.dir.is_some() {
                self.dir_dirty = false;
            }
            if ticket.end > self.marked_end {
                self.write_sync_marker(ticket.end, ticket.synced_len)?;
            }
        }
        self.synced_end = self.synced_end.max(ticket.end);
        Ok(ticket.end)
    }

    /// The end offset as of the last successful [`sync`](Self::sync) (or of opening): every
    /// record below it is as durable as the topic's `fsync` setting makes it. Records
    /// appended since may already be visible to readers (after a `flush_to_os`) but not yet
    /// fsynced; a task of the same process must not process them, or its checkpoint could
    /// name input a machine crash then removes (the key-value service appends to a running
    /// job's input in the same process). A sync in flight ([`start_sync`](Self::start_sync))
    /// moves it only when it finishes.
    pub fn synced_end(&self) -> u64 {
        self.synced_end
    }

    /// After an fsync of the first `synced_len` bytes of the active segment, which held the
    /// records below `proven_end`: records it in a sync marker. Records appended since (and
    /// still buffered) are written first: the marker goes after every record written, and
    /// names the current end offset (a marker's end offset is a lower bound of the next
    /// record's offset, which recovery checks against the records before it); only its
    /// `synced_len` is a claim of durability.
    fn write_sync_marker(&mut self, proven_end: u64, synced_len: u64) -> Result<()> {
        debug_assert!(synced_len <= self.active_len);
        encode_sync_marker(
            &mut self.buf,
            SyncMarker {
                end_offset: self.end_offset,
                synced_len,
            },
        );
        self.flush_to_os()?;
        self.marked_end = self.marked_end.max(proven_end);
        Ok(())
    }

    /// fsyncs the active segment (`sync_all` with `all`, else `sync_data`) under the partition
    /// (a roll or a truncation), through the fsync gate: after any failed fsync of it this one
    /// fails too. Poisons on failure.
    fn fsync_active(&mut self, all: bool) -> Result<()> {
        let path = self.active_path();
        let gate = Arc::clone(&self.fsync_gate);
        let mut failed = crate::sync::lock(&gate);
        if let Some(cause) = failed.as_ref() {
            self.set_poisoned(cause.clone());
            return Err(LogError::Poisoned {
                partition: self.name.clone(),
                cause: cause.clone(),
            });
        }
        let synced = self.hooks.before_sync(&path).and_then(|_| {
            if all {
                self.active.sync_all()
            } else {
                self.active.sync_data()
            }
        });
        match synced {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = self.poison("fsync", &path, e);
                *failed = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Closes the active segment (cut to its data, without the zeros preallocated after it,
    /// and fsynced first when fsync is on, so a closed segment is never torn and ends at
    /// its last frame) and starts a new one at the end offset.
    fn roll(&mut self) -> Result<()> {
        self.flush_to_os()?;
        let trimmed = self.file_len > self.active_len;
        if let Err(e) = self.cut_zeros() {
            let path = self.active_path();
            return Err(self.poison("cut the preallocated tail of", &path, e));
        }
        if self.config.fsync {
            // A new file size (the cut) is metadata `fdatasync` may not write everywhere.
            self.fsync_active(trimmed)?;
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
        self.active = Arc::new(file);
        self.active_path = path;
        self.generation += 1;
        self.active_len = 0;
        self.file_len = 0;
        self.active_indexed = None;
        self.marked_end = base;
        crate::sync::lock(&self.index).set_written(Some((base, 0)));
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
    /// it sees them). `from_offset` must be within `[start_offset, end_offset]`. The reader of
    /// a read-only partition stops at the end found when it was opened.
    pub fn reader(&mut self, from_offset: u64) -> Result<PartitionReader> {
        self.check_offset(from_offset)?;
        if self.poisoned.is_none() && !self.read_only {
            self.flush_to_os()?;
        }
        PartitionReader::with_index_bounded(
            &self.dir,
            from_offset,
            self.index.clone(),
            self.read_bound,
        )
    }

    /// Up to `max_records` records from `from_offset`, in offset order (after compaction,
    /// with gaps).
    pub fn read(&mut self, from_offset: u64, max_records: usize) -> Result<Vec<Record>> {
        self.reader(from_offset)?.read(max_records)
    }

    /// Removes every record with offset `>= to_offset`, durably. Afterwards
    /// `end_offset() == to_offset`, also after a crash at any point inside (the next open
    /// finishes the truncation). With `to_offset == end_offset()` it does nothing (and
    /// fsyncs nothing: use `sync` for that).
    ///
    /// Crash safety: first everything below `to_offset` is made durable (fsync of the
    /// segment to cut and the directory), then an intent file naming `to_offset` is written
    /// atomically (temp file, fsync, rename, directory fsync). Only then is anything removed
    /// (see `apply_truncation`); the intent is deleted last. An open that finds the intent
    /// repeats the removal, which is idempotent, so no crash point can leave the log ending
    /// below `to_offset` or above it. Where compaction left a gap below `to_offset`, a sync
    /// marker naming end offset `to_offset` is written after the kept records, so the end
    /// survives a reopen without an extra empty segment.
    pub fn truncate(&mut self, to_offset: u64) -> Result<()> {
        self.check_poisoned()?;
        self.check_offset(to_offset)?;
        self.flush_to_os()?;
        if to_offset == self.end_offset {
            return Ok(());
        }
        let k = self.segments.partition_point(|s| s.base < to_offset);
        let keep = k.saturating_sub(1);
        let kbase = self.segments[keep].base;
        let kpath = segment_path(&self.dir, kbase);
        // A sync ticket taken before this point may cover records removed below.
        self.truncations += 1;
        // 1. Everything the truncation keeps must be durable before the intent: the segment
        //    to cut (closed segments are not fsynced at roll when fsync is off) and the
        //    directory (segments created without a directory fsync).
        self.fsync_active(true)?;
        if kpath != self.active_path()
            && let Err(e) = self
                .hooks
                .before_sync(&kpath)
                .and_then(|_| File::open(&kpath).and_then(|f| f.sync_all()))
        {
            return Err(self.poison("fsync", &kpath, e));
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
        // 2. The intent.
        if let Err(e) = self.write_intent(to_offset) {
            return Err(self.poison_with(e));
        }
        // 3. The removal.
        let start_hint = if k == 0 {
            None
        } else {
            Some(
                crate::sync::lock(&self.index)
                    .get(kbase)
                    .floor(to_offset.saturating_sub(1))
                    .1,
            )
        };
        if let Err(e) = apply_truncation(
            &self.dir,
            to_offset,
            self.hooks.as_ref(),
            &self.index,
            start_hint,
            false,
        ) {
            return Err(self.poison_with(e));
        }
        let closed: Vec<SegmentMeta> = self.segments[..keep].to_vec();
        self.load(false)?;
        // Keep what we knew about the untouched closed segments.
        for (meta, old) in self.segments.iter_mut().zip(closed) {
            if meta.base == old.base {
                meta.max_timestamp = old.max_timestamp;
            }
        }
        if self.end_offset != to_offset {
            return Err(LogError::Corrupt {
                file: kpath,
                position: 0,
                last_good_offset: None,
                reason: format!(
                    "after truncation to {to_offset} the log ends at {}",
                    self.end_offset
                ),
            });
        }
        Ok(())
    }

    /// Poisons the partition with an error that is already a `LogError`.
    fn poison_with(&mut self, err: LogError) -> LogError {
        tracing::error!(partition = %self.name, error = %err, "log partition poisoned");
        self.set_poisoned(err.to_string());
        err
    }

    /// Refuses every later write with `cause`.
    fn set_poisoned(&mut self, cause: String) {
        self.poisoned = Some(cause);
        // What it published as written may not hold for the partition opened in its place:
        // readers go by the file from now on.
        crate::sync::lock(&self.index).set_written(None);
    }

    /// Writes the truncation intent atomically: temp file, fsync, rename, directory fsync.
    fn write_intent(&self, to: u64) -> Result<()> {
        let path = self.dir.join(TRUNCATE_INTENT_FILE);
        let tmp = self.dir.join(format!("{TRUNCATE_INTENT_FILE}.tmp"));
        let file = self
            .hooks
            .before_write(&tmp)
            .and_then(|_| {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
            })
            .map_err(|e| LogError::io("create", &tmp, e))?;
        self.hooks
            .before_write(&tmp)
            .and_then(|_| file.write_all_at(&intent_bytes(to), 0))
            .map_err(|e| LogError::io("write", &tmp, e))?;
        self.hooks
            .before_sync(&tmp)
            .and_then(|_| file.sync_all())
            .map_err(|e| LogError::io("fsync", &tmp, e))?;
        self.hooks
            .before_write(&path)
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| LogError::io("rename to", &path, e))?;
        fsync_dir_hooked(&self.dir, self.hooks.as_ref())
    }

    /// Runs the topic's cleanup policy: compaction for `compact`, retention for `delete`.
    /// Every record counts as committed; see [`clean_committed`](Self::clean_committed).
    pub fn clean(&mut self, now_ms: i64) -> Result<CleanupReport> {
        self.clean_committed(now_ms, u64::MAX)
    }

    /// [`clean`](Self::clean) where only the records below `committed_end` are committed:
    /// compaction lets only committed records shadow older ones (see
    /// [`compact_committed`](Self::compact_committed)). Retention ignores it.
    pub fn clean_committed(&mut self, now_ms: i64, committed_end: u64) -> Result<CleanupReport> {
        match self.config.cleanup_policy {
            CleanupPolicy::Compact => self
                .compact_committed(now_ms, committed_end)
                .map(CleanupReport::Compacted),
            CleanupPolicy::Delete => self.apply_retention(now_ms).map(CleanupReport::Retention),
        }
    }

    /// Compacts the closed segments: keeps the newest record per key (newest over the
    /// whole log, active segment included), drops tombstones with timestamp older than
    /// `now_ms - delete_retention_ms`. Offsets of survivors never change; segments keep
    /// their names (an emptied segment stays as an empty file).
    pub fn compact(&mut self, now_ms: i64) -> Result<CompactionReport> {
        self.compact_committed(now_ms, u64::MAX)
    }

    /// [`compact`](Self::compact) where only the records below `committed_end` are
    /// committed: a record is removed only if a newer record of its key lies below
    /// `committed_end`, and every record at or past it is kept. Records past a crashed
    /// commit may still be truncated away; had they shadowed a committed record, that
    /// record would be gone with them (Kafka's cleaner stops at the first unstable offset
    /// for the same reason).
    pub fn compact_committed(
        &mut self,
        now_ms: i64,
        committed_end: u64,
    ) -> Result<CompactionReport> {
        self.check_poisoned()?;
        self.flush_to_os()?;
        let mut report = CompactionReport::default();
        if self.segments.len() < 2 {
            return Ok(report);
        }
        // Pass 1: the newest committed offset of every key. (Keys are held in memory.)
        let mut latest = std::collections::HashMap::<Vec<u8>, u64>::new();
        let mut reader =
            PartitionReader::with_index(&self.dir, self.start_offset(), self.index.clone())?;
        loop {
            let batch = reader.next_batch(4096)?;
            if batch.is_empty() {
                break;
            }
            let mut past = false;
            for r in batch {
                if r.offset >= committed_end {
                    past = true;
                    break;
                }
                match latest.get_mut(r.key.as_slice()) {
                    Some(o) => *o = r.offset,
                    None => {
                        latest.insert(r.key.clone(), r.offset);
                    }
                }
            }
            if past {
                break;
            }
        }
        let horizon = now_ms.saturating_sub(self.config.delete_retention_ms);
        let mut keep =
            |r: &Record| r.offset >= committed_end || compaction::survives(r, &latest, horizon);
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
            ) {
                Ok(None) => {}
                Ok(Some(done)) => {
                    report.segments_rewritten += 1;
                    report.records_removed += done.removed;
                    report.bytes_before += done.old_len;
                    report.bytes_after += done.new_len;
                    self.segments[i].bytes = done.new_len;
                    self.segments[i].max_timestamp = Some(done.max_timestamp);
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
                    crate::sync::lock(&self.index).set(base, scan.index);
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
            crate::sync::lock(&self.index).invalidate(s.base);
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

/// A sync in flight, from [`Partition::start_sync`]: what it covers (the records below
/// [`end_offset`](Self::end_offset), the first [`synced_len`](Self::synced_len) bytes of the
/// segment active then) and a handle to fsync them with [`fsync`](Self::fsync), which needs
/// no access to the partition. Hand the result to [`Partition::finish_sync`] of the same
/// partition; a ticket dropped instead proves nothing.
#[derive(Debug)]
pub struct SyncTicket {
    partition: String,
    gate: Arc<Mutex<Option<String>>>,
    /// `None` when the topic does not fsync.
    job: Option<FsyncJob>,
    end: u64,
    synced_len: u64,
    generation: u64,
    truncations: u64,
}

/// The fsyncs of a [`SyncTicket`].
#[derive(Debug)]
struct FsyncJob {
    /// The segment that was active at [`Partition::start_sync`].
    file: Arc<File>,
    path: PathBuf,
    /// The partition directory, if segments were created or deleted without an fsync of it.
    dir: Option<PathBuf>,
    hooks: Arc<dyn IoHooks>,
}

impl SyncTicket {
    /// The end offset the sync covers: [`Partition::finish_sync`] reports every record below
    /// it durable.
    pub fn end_offset(&self) -> u64 {
        self.end
    }

    /// The bytes of the (then) active segment the sync covers.
    pub fn synced_len(&self) -> u64 {
        self.synced_len
    }

    /// fsyncs the segment (through `IoHooks::before_sync`), and the directory if the ticket
    /// needs it, when the topic fsyncs. Call it without holding the partition: appends,
    /// reads and syncs of the partition go on meanwhile (fsyncs of the same segment are
    /// serialised). Fails without an fsync if an earlier fsync of the segment failed (the
    /// kernel may report a lost write to only one of them). Never retried.
    pub fn fsync(self) -> FsyncedTicket {
        let result = match &self.job {
            None => Ok(()),
            Some(job) => {
                let mut failed = crate::sync::lock(&self.gate);
                match failed.as_ref() {
                    Some(cause) => Err(LogError::Poisoned {
                        partition: self.partition.clone(),
                        cause: cause.clone(),
                    }),
                    None => {
                        let result = job
                            .hooks
                            .before_sync(&job.path)
                            .and_then(|_| job.file.sync_data())
                            .map_err(|e| LogError::io("fsync", &job.path, e))
                            .and_then(|()| match &job.dir {
                                Some(dir) => fsync_dir_hooked(dir, job.hooks.as_ref()),
                                None => Ok(()),
                            });
                        if let Err(e) = &result {
                            *failed = Some(e.to_string());
                        }
                        result
                    }
                }
            }
        };
        FsyncedTicket {
            ticket: self,
            result,
        }
    }
}

/// A [`SyncTicket`] after its fsync, with the outcome: hand it to
/// [`Partition::finish_sync`].
#[derive(Debug)]
pub struct FsyncedTicket {
    ticket: SyncTicket,
    result: Result<()>,
}

impl FsyncedTicket {
    /// The end offset the sync covers.
    pub fn end_offset(&self) -> u64 {
        self.ticket.end
    }

    /// The fsync's error, if it failed (`finish_sync` poisons the partition with it).
    pub fn error(&self) -> Option<&LogError> {
        self.result.as_ref().err()
    }
}

impl Drop for Partition {
    /// Best effort: hands buffered appends to the OS (no fsync) and cuts the zeros
    /// preallocated after them (a crash leaves them, which the next open accepts as the end).
    /// Readers still open read up to the file's length from then on.
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        if self.poisoned.is_none() {
            let _ = self.flush_to_os();
            if self.poisoned.is_none() {
                let _ = self.cut_zeros();
            }
        }
        crate::sync::lock(&self.index).set_written(None);
    }
}

/// Writes zeros to `[from, to)` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
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
    /// Total bytes of the segments' frames (zeros preallocated after the last frame, and a
    /// torn tail, not counted).
    pub bytes: u64,
    /// Number of segments.
    pub segments: usize,
}

/// Reads start/end offsets and size of the partition in `dir` without modifying anything
/// (scans only the last segment). The offsets are those [`Partition::open_read_only`] and
/// [`Partition::open`] see.
pub fn partition_info(dir: &Path, partition: u32) -> Result<PartitionInfo> {
    let (p, report) = Partition::open_read_only(dir, TopicConfig::default())?;
    Ok(PartitionInfo {
        partition,
        start_offset: report.start_offset,
        end_offset: p.end_offset(),
        bytes: p.size_bytes(),
        segments: p.segments.len(),
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
    /// An interrupted truncation (to this offset) that the next open finishes; only what
    /// it keeps was verified.
    pub pending_truncation: Option<u64>,
}

/// Reads every segment of the partition in `dir` in full, checking every frame's length and
/// CRC, that offsets increase within and across segments, and that the last segment belongs
/// to the log. Read-only. Judges exactly as [`Partition::open`] and the readers do.
pub fn verify_partition(dir: &Path) -> Result<VerifyReport> {
    let mut bases = list_segments(dir)?;
    let mut report = VerifyReport::default();
    // With a pending truncation, only what it keeps is the log (the rest is being removed).
    let mut cut_last: Option<u64> = None;
    if let Some(to) = read_intent(dir)? {
        report.pending_truncation = Some(to);
        if !bases.is_empty() {
            let k = bases.partition_point(|&b| b < to);
            bases.truncate(k.max(1));
            let base = *bases
                .last()
                .expect("a partition always keeps its active segment");
            cut_last = Some(if k == 0 {
                0
            } else {
                plan_cut(&segment_path(dir, base), 0, to, true)?.0
            });
        }
    }
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let file = File::open(&path).map_err(|e| LogError::io("open", &path, e))?;
        let mut len = file
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
        let scan = match cut_last {
            Some(cut) if is_last => {
                len = cut;
                scan_segment(&file, len, &path, base, false)?
            }
            _ => scan_segment(&file, len, &path, base, is_last)?,
        };
        if is_last && cut_last.is_none() {
            check_last_segment_identity(dir, &bases, &path, &file, len, &scan)?;
        }
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
