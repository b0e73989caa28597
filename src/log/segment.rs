//! Segment files: naming, a buffered frame reader, the recovery scan that tells a torn tail
//! from corruption, and the sparse in-memory index.
//!
//! A segment is `<base offset:020>.log`: frames (see [`super::record`]) back to back. Every
//! record's offset is `>= base` and greater than the previous record's offset.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::{LogError, Result};
use super::record::{
    FRAME_HEADER_LEN, FrameKind, HeaderError, MAX_PAYLOAD_LEN, MIN_FRAME_LEN, Record, SyncMarker,
    array_at, check_header, decode_frame_payload,
};

/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".log";
/// Suffix of a segment being rewritten by compaction (deleted on open if left by a crash).
pub const COMPACTING_SUFFIX: &str = ".log.compacting";
/// Bytes read per chunk by sequential readers.
pub const READ_CHUNK: usize = 1 << 20;
/// One sparse-index entry per this many bytes of segment.
pub const INDEX_INTERVAL: u64 = 64 << 10;

/// File name of the segment whose first offset is `base`.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// Path of segment `base` in partition directory `dir`.
pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(segment_file_name(base))
}

/// Parses a segment file name back to its base offset.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Base offsets of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Positional reads from a file or a byte slice (the fuzz target and unit tests use slices).
pub trait ReadAt {
    /// Fills `buf` from byte `pos`; the range is within the length the caller was given.
    fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, pos)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(pos).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// What [`FrameReader::next`] found at the current position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A valid frame; decoded into the slot. Its position and length are in the reader.
    Record,
    /// Exactly at the limit.
    End,
    /// A frame that fails its checks at `position`; `past_end` if it merely runs past the
    /// limit (a torn write, or a damaged length field).
    Bad {
        /// Byte position of the frame.
        position: u64,
        /// Why it was rejected.
        reason: String,
        /// True if the frame (header or payload) extends beyond the limit.
        past_end: bool,
    },
}

/// What [`FrameReader::next_frame`] found: like [`Next`], plus sync markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextFrame {
    /// A valid record frame; decoded into the slot.
    Record,
    /// A valid sync-marker frame (the slot is unchanged).
    SyncMarker(SyncMarker),
    /// Exactly at the limit.
    End,
    /// A frame that fails its checks (see [`Next::Bad`]).
    Bad {
        /// Byte position of the frame.
        position: u64,
        /// Why it was rejected.
        reason: String,
        /// True if the frame extends beyond the limit.
        past_end: bool,
    },
}

/// Sequential frame reader over `[pos, limit)` of a source, reading big chunks into a reused
/// buffer (no per-record syscalls). Never allocates more than `max(READ_CHUNK, frame)` where
/// a frame's length was first checked against `MAX_PAYLOAD_LEN` and the remaining bytes.
pub struct FrameReader<S> {
    src: S,
    buf: Vec<u8>,
    /// File position of `buf[lo]`.
    pos: u64,
    lo: usize,
    hi: usize,
    limit: u64,
    last_frame_pos: u64,
    last_frame_len: u64,
}

impl<S: std::ops::Deref<Target = T>, T: ReadAt + ?Sized> FrameReader<S> {
    /// Reads frames of `src` from `pos` up to `limit` (normally the file length).
    pub fn new(src: S, pos: u64, limit: u64) -> Self {
        FrameReader {
            src,
            buf: Vec::new(),
            pos,
            lo: 0,
            hi: 0,
            limit,
            last_frame_pos: pos,
            last_frame_len: 0,
        }
    }

    /// Position of the next frame.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// What the frames are read from.
    pub fn source(&self) -> &T {
        &self.src
    }

    /// Position and length of the frame returned by the last `Next::Record`.
    pub fn last_frame(&self) -> (u64, u64) {
        (self.last_frame_pos, self.last_frame_len)
    }

    /// The current limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Moves back to the frame at file position `pos` (at most [`position`](Self::position)):
    /// free when the bytes are still in the buffer, else the next read starts there.
    pub fn rewind_to(&mut self, pos: u64) {
        debug_assert!(pos <= self.pos);
        // `buf[i]` holds the byte at file position `self.pos - lo + i` for every `i < hi`.
        let buf_start = self.pos - self.lo as u64;
        if (buf_start..=self.pos).contains(&pos) {
            self.lo = (pos - buf_start) as usize;
        } else {
            self.lo = 0;
            self.hi = 0;
        }
        self.pos = pos;
    }

    /// Extends the limit (the file grew).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit.max(self.pos + (self.hi - self.lo) as u64);
    }

    /// Moves back to frame position `pos` (at most [`position`](Self::position)) and ends
    /// the readable range there, forgetting every buffered byte: bytes read beyond it (the
    /// zeros of a preallocated tail) are read again from the source once the limit is
    /// extended.
    pub fn stop_at(&mut self, pos: u64) {
        debug_assert!(pos <= self.pos);
        self.pos = pos;
        self.lo = 0;
        self.hi = 0;
        self.limit = pos;
    }

    /// Makes at least `n` bytes available at `buf[lo..]`; `n` is within the limit.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.hi - self.lo >= n {
            return Ok(());
        }
        self.buf.copy_within(self.lo..self.hi, 0);
        self.hi -= self.lo;
        self.lo = 0;
        let want = n.max(READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let file_pos = self.pos + self.hi as u64;
        let space = (self.buf.len() - self.hi) as u64;
        let to_read = space.min(self.limit - file_pos) as usize;
        self.src
            .read_exact_at(file_pos, &mut self.buf[self.hi..self.hi + to_read])?;
        self.hi += to_read;
        debug_assert!(self.hi - self.lo >= n);
        Ok(())
    }

    /// Reads the next record into `slot`, skipping sync markers (which only the recovery
    /// scan interprets).
    pub fn next(&mut self, slot: &mut Record) -> io::Result<Next> {
        loop {
            return Ok(match self.next_frame(slot)? {
                NextFrame::Record => Next::Record,
                NextFrame::SyncMarker(_) => continue,
                NextFrame::End => Next::End,
                NextFrame::Bad {
                    position,
                    reason,
                    past_end,
                } => Next::Bad {
                    position,
                    reason,
                    past_end,
                },
            });
        }
    }

    /// Reads the next frame: a record (into `slot`) or a sync marker.
    pub fn next_frame(&mut self, slot: &mut Record) -> io::Result<NextFrame> {
        let avail = self.limit - self.pos;
        if avail == 0 {
            return Ok(NextFrame::End);
        }
        if avail < FRAME_HEADER_LEN as u64 {
            return Ok(NextFrame::Bad {
                position: self.pos,
                reason: format!("incomplete frame header: {avail} bytes before the end"),
                past_end: true,
            });
        }
        self.fill(FRAME_HEADER_LEN)?;
        let header: [u8; FRAME_HEADER_LEN] = array_at(&self.buf, self.lo);
        let plen = match check_header(&header, avail) {
            Ok(p) => p,
            Err(e) => {
                return Ok(NextFrame::Bad {
                    position: self.pos,
                    past_end: matches!(e, HeaderError::PastEnd(_)),
                    reason: e.reason().to_string(),
                });
            }
        };
        let frame_len = FRAME_HEADER_LEN + plen;
        self.fill(frame_len)?;
        let crc = u32::from_le_bytes(array_at(&header, 4));
        let payload = &self.buf[self.lo + FRAME_HEADER_LEN..self.lo + frame_len];
        let kind = match decode_frame_payload(crc, payload, slot) {
            Ok(k) => k,
            Err(reason) => {
                return Ok(NextFrame::Bad {
                    position: self.pos,
                    reason,
                    past_end: false,
                });
            }
        };
        if kind == FrameKind::Record {
            self.last_frame_pos = self.pos;
            self.last_frame_len = frame_len as u64;
        }
        self.lo += frame_len;
        self.pos += frame_len as u64;
        // Do not keep a huge buffer around after one huge record.
        if self.buf.len() > 4 * READ_CHUNK && self.lo == self.hi {
            self.buf = Vec::new();
            self.lo = 0;
            self.hi = 0;
        }
        Ok(match kind {
            FrameKind::Record => NextFrame::Record,
            FrameKind::SyncMarker(m) => NextFrame::SyncMarker(m),
        })
    }
}

/// A torn tail found (and, by `Partition::open`, cut off) at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Byte position of the first bad frame; the file is cut to this length.
    pub position: u64,
    /// Bytes after `position`.
    pub bytes: u64,
    /// Why the first bad frame was rejected.
    pub reason: String,
}

/// Result of scanning one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// Bytes of valid frames (the file length unless there is a torn tail or a zero tail).
    pub valid_len: u64,
    /// Bytes of zeros from `valid_len` to the end of the file: space the writer preallocated
    /// ahead of its appends ([`super::TopicConfig::preallocate`]), not a torn tail. Only in
    /// the last segment, and only at or above every proven fsync.
    pub zero_tail: u64,
    /// Number of valid records.
    pub records: u64,
    /// Offset of the first record.
    pub first_offset: Option<u64>,
    /// Offset of the last record.
    pub last_offset: Option<u64>,
    /// Largest record timestamp.
    pub max_timestamp: Option<i64>,
    /// Sparse index: `(offset, position)` about every `INDEX_INTERVAL` bytes, first record
    /// included.
    pub index: Vec<(u64, u64)>,
    /// Set if the segment ends with a torn tail (only allowed when scanning as last segment).
    pub torn: Option<TornTail>,
    /// Bytes at the start of the segment proven fsynced by the sync markers in the valid
    /// prefix (0 if none).
    pub synced_len: u64,
    /// Largest `end_offset` of a sync marker in the valid prefix.
    pub marker_end: Option<u64>,
    /// Largest `end_offset` of a sync marker in the valid prefix that proves every record
    /// before it fsynced (its `synced_len` reaches the end of the last record before it).
    /// A marker written after records appended while its fsync ran proves less than its
    /// end offset says, and does not count.
    pub proven_end: Option<u64>,
    /// The offset carried by the frame at byte 0 (a record's offset or a sync marker's end
    /// offset), if that frame is valid.
    pub head_offset: Option<u64>,
}

impl SegmentScan {
    /// The offset after the valid prefix of segment `base`: one past the last record, or
    /// the end offset a sync marker names (a truncation into a compaction gap leaves one),
    /// or `base` for an empty segment.
    pub fn end_offset(&self, base: u64) -> u64 {
        // A decoded record's offset is below u64::MAX, so `+ 1` cannot overflow.
        let after_last = self.last_offset.map_or(base, |o| o + 1);
        after_last.max(self.marker_end.unwrap_or(0)).max(base)
    }
}

/// Scans a whole segment of `len` bytes with base offset `base`, verifying every frame and
/// that offsets increase. In a closed segment (`!is_last`) any bad frame is
/// `LogError::Corrupt` naming `path`. In the last segment a bad frame is a torn tail unless
/// a sync marker proves that the bytes at its position were fsynced: one before it in the
/// valid prefix, or one found anywhere after it (see the module doc of [`crate::log`]).
pub fn scan_segment<T: ReadAt + ?Sized>(
    src: &T,
    len: u64,
    path: &Path,
    base: u64,
    is_last: bool,
) -> Result<SegmentScan> {
    let mut reader = FrameReader::new(src, 0, len);
    let mut slot = Record::default();
    let mut scan = SegmentScan::default();
    let mut last_indexed: Option<u64> = None;
    // The least offset the next record may carry.
    let mut min = base;
    // Where the last record's frame ends.
    let mut records_end = 0;
    loop {
        let pos = reader.position();
        let next = reader
            .next_frame(&mut slot)
            .map_err(|e| LogError::io("read", path, e))?;
        let bad = match next {
            NextFrame::End => break,
            NextFrame::Record => {
                if slot.offset < min {
                    Some((
                        pos,
                        format!(
                            "offset {} is below the expected minimum {min} (segment base {base})",
                            slot.offset
                        ),
                    ))
                } else {
                    if last_indexed.is_none_or(|p| pos - p >= INDEX_INTERVAL) {
                        scan.index.push((slot.offset, pos));
                        last_indexed = Some(pos);
                    }
                    if pos == 0 {
                        scan.head_offset = Some(slot.offset);
                    }
                    scan.records += 1;
                    scan.first_offset.get_or_insert(slot.offset);
                    scan.last_offset = Some(slot.offset);
                    scan.max_timestamp = Some(
                        scan.max_timestamp
                            .map_or(slot.timestamp, |t| t.max(slot.timestamp)),
                    );
                    scan.valid_len = reader.position();
                    records_end = scan.valid_len;
                    // Decoded offsets are below u64::MAX.
                    min = slot.offset + 1;
                    None
                }
            }
            NextFrame::SyncMarker(m) => {
                if m.end_offset < min {
                    Some((
                        pos,
                        format!(
                            "sync marker end offset {} is below the expected minimum {min}",
                            m.end_offset
                        ),
                    ))
                } else if m.synced_len > pos {
                    Some((
                        pos,
                        format!(
                            "sync marker claims {} synced bytes but sits at byte position {pos}",
                            m.synced_len
                        ),
                    ))
                } else {
                    if pos == 0 {
                        scan.head_offset = Some(m.end_offset);
                    }
                    scan.synced_len = scan.synced_len.max(m.synced_len);
                    scan.marker_end = Some(m.end_offset);
                    if m.synced_len >= records_end {
                        scan.proven_end = Some(m.end_offset);
                    }
                    scan.valid_len = reader.position();
                    min = m.end_offset;
                    None
                }
            }
            NextFrame::Bad {
                position, reason, ..
            } => Some((position, reason)),
        };
        if let Some((position, reason)) = bad {
            let corrupt = |reason: String| LogError::Corrupt {
                file: path.to_path_buf(),
                position,
                last_good_offset: scan.last_offset,
                reason,
            };
            if !is_last {
                return Err(corrupt(reason));
            }
            if position < scan.synced_len {
                return Err(corrupt(format!(
                    "{reason}; not a torn tail: a sync marker proves the first {} bytes of the \
                     segment were fsynced",
                    scan.synced_len
                )));
            }
            if all_zero(src, position, len).map_err(|e| LogError::io("read", path, e))? {
                // Preallocated space the appends have not reached (or, after a power loss,
                // unsynced appends that never reached the disk): the end of the log.
                scan.zero_tail = len - position;
                break;
            }
            let after = scan_after(src, position + 1, len, min)
                .map_err(|e| LogError::io("read", path, e))?;
            if let Some((at, m)) = after.proof
                && m.synced_len > position
            {
                return Err(corrupt(format!(
                    "{reason}; not a torn tail: a sync marker at byte position {at} proves the \
                     first {} bytes of the segment were fsynced",
                    m.synced_len
                )));
            }
            let reason = if after.frames > 0 {
                format!(
                    "{reason} ({} valid-looking frames follow, all after the last proven fsync \
                     at byte position {})",
                    after.frames, scan.synced_len
                )
            } else {
                reason
            };
            scan.torn = Some(TornTail {
                position,
                bytes: len - position,
                reason,
            });
            break;
        }
    }
    Ok(scan)
}

/// Whether every byte of `[from, to)` of `src` is zero (true for an empty range).
pub fn all_zero<T: ReadAt + ?Sized>(src: &T, from: u64, to: u64) -> io::Result<bool> {
    let mut chunk = vec![0u8; (to.saturating_sub(from)).min(64 << 10) as usize];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(chunk.len() as u64) as usize;
        src.read_exact_at(pos, &mut chunk[..n])?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// What [`scan_after`] found behind a bad frame.
#[derive(Debug, Default)]
struct AfterBad {
    /// The sync marker (and its position) proving the most synced bytes.
    proof: Option<(u64, SyncMarker)>,
    /// Valid frames found.
    frames: u64,
}

/// Looks for valid frames in `[from, len)` (resynchronising after every bad one) and returns
/// the strongest sync proof among them. Linear in the bytes searched.
fn scan_after<T: ReadAt + ?Sized>(
    src: &T,
    from: u64,
    len: u64,
    min_offset: u64,
) -> io::Result<AfterBad> {
    let mut out = AfterBad::default();
    let mut slot = Record::default();
    let mut pos = from;
    while let Some(q) = find_valid_frame_after(src, pos, len, min_offset)? {
        let mut reader = FrameReader::new(src, q, len);
        loop {
            let at = reader.position();
            match reader.next_frame(&mut slot)? {
                NextFrame::Record => out.frames += 1,
                NextFrame::SyncMarker(m) => {
                    out.frames += 1;
                    if m.synced_len <= at
                        && out.proof.is_none_or(|(_, b)| m.synced_len > b.synced_len)
                    {
                        out.proof = Some((at, m));
                    }
                }
                NextFrame::End => return Ok(out),
                NextFrame::Bad { position, .. } => {
                    pos = position + 1;
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Searches `[from, len)` for any position where a complete valid frame (a record, or a sync
/// marker by its end offset) starts whose offset
/// is plausible (`>= min_offset` and not more than one record per minimum frame size
/// beyond it). Cheap header checks come first, so garbage is skipped in linear time; a
/// candidate's frame is read only after its length was bounded by `MAX_PAYLOAD_LEN` and
/// the file size.
pub fn find_valid_frame_after<T: ReadAt + ?Sized>(
    src: &T,
    from: u64,
    len: u64,
    min_offset: u64,
) -> io::Result<Option<u64>> {
    const PROBE: usize = FRAME_HEADER_LEN + 8; // header + offset field
    if from >= len {
        return Ok(None);
    }
    let max_offset = min_offset.saturating_add((len - from) / MIN_FRAME_LEN as u64 + 1);
    // Chunks start small and grow: a resynchronisation usually finds a frame within a few
    // hundred bytes, and `scan_after` may resynchronise many times.
    let mut cap = 4096usize;
    let mut chunk = Vec::new();
    let mut frame = Vec::new();
    let mut slot = Record::default();
    let mut base = from;
    while base + MIN_FRAME_LEN as u64 <= len {
        let n = (cap + PROBE).min((len - base) as usize);
        chunk.resize(n, 0);
        src.read_exact_at(base, &mut chunk[..n])?;
        cap = (cap * 2).min(READ_CHUNK);
        // Positions whose probe lies fully inside this chunk.
        let positions = n + 1 - PROBE.min(n);
        for i in 0..positions {
            let q = base + i as u64;
            if q + MIN_FRAME_LEN as u64 > len {
                break;
            }
            let header: [u8; FRAME_HEADER_LEN] = array_at(&chunk, i);
            let Ok(plen) = check_header(&header, len - q) else {
                continue;
            };
            let offset = u64::from_le_bytes(array_at(&chunk, i + 8));
            if offset < min_offset || offset > max_offset {
                continue;
            }
            debug_assert!(plen <= MAX_PAYLOAD_LEN);
            frame.resize(plen, 0);
            src.read_exact_at(q + FRAME_HEADER_LEN as u64, &mut frame)?;
            let crc = u32::from_le_bytes(array_at(&header, 4));
            if decode_frame_payload(crc, &frame, &mut slot).is_ok() {
                return Ok(Some(q));
            }
        }
        if positions == 0 {
            break;
        }
        base += positions as u64;
    }
    Ok(None)
}

/// Scans an in-memory segment (base offset 0) as the last segment of a partition: the entry
/// point of the `segment_reader` fuzz target. Never panics; allocations are bounded by the
/// input size and `MAX_PAYLOAD_LEN`.
pub fn scan_bytes(bytes: &[u8]) -> Result<SegmentScan> {
    scan_segment(bytes, bytes.len() as u64, Path::new("<memory>"), 0, true)
}

/// Reads every record of an in-memory segment with base `base`; an error for any bad frame.
pub fn read_all_bytes(bytes: &[u8], base: u64) -> Result<Vec<Record>> {
    let mut reader = FrameReader::new(bytes, 0, bytes.len() as u64);
    let mut out = Vec::new();
    loop {
        let mut slot = Record::default();
        match reader
            .next(&mut slot)
            .map_err(|e| LogError::io("read", "<memory>", e))?
        {
            Next::End => return Ok(out),
            Next::Record => {
                let min = out.last().map_or(base, |r: &Record| r.offset + 1);
                if slot.offset < min {
                    return Err(LogError::Corrupt {
                        file: "<memory>".into(),
                        position: reader.last_frame().0,
                        last_good_offset: out.last().map(|r| r.offset),
                        reason: format!("offset {} below {min}", slot.offset),
                    });
                }
                out.push(slot)
            }
            Next::Bad {
                position, reason, ..
            } => {
                return Err(LogError::Corrupt {
                    file: "<memory>".into(),
                    position,
                    last_good_offset: out.last().map(|r| r.offset),
                    reason,
                });
            }
        }
    }
}

/// Sparse `(offset, position)` entries of one segment, valid for one version of its file.
#[derive(Debug, Default)]
pub(crate) struct SegmentIndex {
    /// Changes whenever the file is replaced; readers holding an older generation must not
    /// add entries.
    pub generation: u64,
    /// Ascending by offset and position; every position is a frame boundary.
    pub entries: Vec<(u64, u64)>,
}

impl SegmentIndex {
    /// The entry with the largest offset `<= offset`, or the start of the file.
    pub fn floor(&self, offset: u64) -> (u64, u64) {
        let i = self.entries.partition_point(|&(o, _)| o <= offset);
        if i == 0 { (0, 0) } else { self.entries[i - 1] }
    }

    /// Adds an entry if it lies at least `INDEX_INTERVAL` beyond the last one.
    pub fn add(&mut self, offset: u64, position: u64) {
        match self.entries.last() {
            Some(&(o, p)) if o >= offset || position < p + INDEX_INTERVAL => {}
            _ => self.entries.push((offset, position)),
        }
    }
}

/// Indexes of the segments of one partition, shared by the partition and its readers, and
/// how far the writer of the same process has written the active segment.
#[derive(Debug, Default)]
pub(crate) struct IndexCache {
    segments: HashMap<u64, SegmentIndex>,
    next_generation: u64,
    /// `(active segment base, bytes written to the OS)` while a writable partition of this
    /// process has it open: readers read the active segment up to there, never into the
    /// zeros preallocated after it. `None` without a writer: readers take the file length
    /// and stop at a zero tail.
    written: Option<(u64, u64)>,
}

/// Shared handle to an [`IndexCache`].
pub(crate) type SharedIndex = Arc<Mutex<IndexCache>>;

impl IndexCache {
    /// The index of segment `base`, created empty if absent.
    pub fn get(&mut self, base: u64) -> &mut SegmentIndex {
        let next = &mut self.next_generation;
        self.segments.entry(base).or_insert_with(|| {
            *next += 1;
            SegmentIndex {
                generation: *next,
                entries: Vec::new(),
            }
        })
    }

    /// Replaces the index of `base` (after a scan of the whole file).
    pub fn set(&mut self, base: u64, entries: Vec<(u64, u64)>) {
        self.invalidate(base);
        self.get(base).entries = entries;
    }

    /// Forgets segment `base` (its file was replaced, truncated or deleted).
    pub fn invalidate(&mut self, base: u64) {
        self.segments.remove(&base);
    }

    /// Publishes how far the writer has written the active segment `base` (`None`: no
    /// writer any more).
    pub fn set_written(&mut self, written: Option<(u64, u64)>) {
        self.written = written;
    }

    /// The bytes of segment `base` written, if it is the active segment of a writer of
    /// this process (else the file length is the data end).
    pub fn written(&self, base: u64) -> Option<u64> {
        self.written.and_then(|(b, len)| (b == base).then_some(len))
    }

    /// Adds an entry if `generation` is still current.
    pub fn add(&mut self, base: u64, generation: u64, offset: u64, position: u64) {
        if let Some(idx) = self.segments.get_mut(&base)
            && idx.generation == generation
        {
            idx.add(offset, position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{encode_into, encode_sync_marker};

    /// A segment like `sync` writes it: records, and a sync marker after every third.
    fn synced_segment(n: u64, base: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..n {
            encode_into(
                &mut buf,
                base + i,
                i as i64,
                format!("k{i}").as_bytes(),
                Some(b"v"),
            );
            if i % 3 == 2 {
                let synced_len = buf.len() as u64;
                encode_sync_marker(
                    &mut buf,
                    SyncMarker {
                        end_offset: base + i + 1,
                        synced_len,
                    },
                );
            }
        }
        buf
    }

    #[test]
    fn zeros_after_the_frames_are_the_end_not_a_torn_tail() {
        // Only zeros (a preallocated segment nothing was written to), of any length.
        for n in [1, 7, 8, 24, 4096] {
            let s = scan_bytes(&vec![0; n]).unwrap();
            assert_eq!(
                (s.valid_len, s.zero_tail, s.records, s.torn),
                (0, n as u64, 0, None)
            );
        }
        let bytes = synced_segment(9, 0);
        let mut b = bytes.clone();
        b.resize(bytes.len() + 5000, 0);
        let s = scan_bytes(&b).unwrap();
        assert_eq!((s.valid_len, s.zero_tail), (bytes.len() as u64, 5000));
        assert_eq!((s.records, s.torn), (9, None));
        // A non-zero byte anywhere in the zeros: a torn tail as before, cut from the frames' end.
        b[bytes.len() + 4000] = 1;
        let s = scan_bytes(&b).unwrap();
        assert_eq!(
            (s.zero_tail, s.torn.unwrap().position),
            (0, bytes.len() as u64)
        );
        // In a closed segment zeros are corruption (a roll cuts them).
        let e = scan_segment(
            &b[..bytes.len() + 10],
            bytes.len() as u64 + 10,
            Path::new("x"),
            0,
            false,
        );
        assert!(matches!(e, Err(LogError::Corrupt { .. })));
    }

    #[test]
    fn damage_before_a_sync_marker_is_corrupt_after_it_torn() {
        let bytes = synced_segment(9, 0);
        let s = scan_bytes(&bytes).unwrap();
        assert_eq!(s.records, 9);
        assert_eq!(s.marker_end, Some(9));
        assert_eq!(s.synced_len, bytes.len() as u64 - 32);
        // Zero 40 bytes in the middle: proven by the markers after it.
        let mut b = bytes.clone();
        b[100..140].fill(0);
        assert!(matches!(scan_bytes(&b), Err(LogError::Corrupt { .. })));
        // Damage in the final marker only: a torn tail (its proof is the damaged marker).
        let mut b = bytes.clone();
        let at = b.len() - 10;
        b[at] ^= 1;
        let s = scan_bytes(&b).unwrap();
        assert_eq!(s.torn.unwrap().position, bytes.len() as u64 - 32);
        assert_eq!(s.records, 9);
    }

    fn segment(n: u64, base: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..n {
            encode_into(
                &mut buf,
                base + i,
                i as i64,
                format!("k{i}").as_bytes(),
                Some(b"value"),
            );
        }
        buf
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(
            parse_segment_name("00000000000000000042.log.compacting"),
            None
        );
    }

    #[test]
    fn scan_counts_and_indexes() {
        let bytes = segment(1000, 7);
        let s = scan_segment(&bytes[..], bytes.len() as u64, Path::new("x"), 7, false).unwrap();
        assert_eq!(s.records, 1000);
        assert_eq!(s.first_offset, Some(7));
        assert_eq!(s.last_offset, Some(1006));
        assert_eq!(s.valid_len, bytes.len() as u64);
        assert_eq!(s.index[0], (7, 0));
        assert!(s.torn.is_none());
    }

    #[test]
    fn offsets_below_base_are_corrupt() {
        let bytes = segment(3, 0);
        let err =
            scan_segment(&bytes[..], bytes.len() as u64, Path::new("seg"), 1, false).unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn huge_length_at_tail_is_torn_not_allocated() {
        let mut bytes = segment(3, 0);
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0xAB; 100]);
        let s = scan_bytes(&bytes).unwrap();
        assert_eq!(s.records, 3);
        let torn = s.torn.unwrap();
        assert_eq!(torn.position, good);
        assert_eq!(torn.bytes, 104);
    }

    proptest::proptest! {
        /// The fuzz target's invariants, on mutated valid segments and on random bytes.
        #[test]
        fn scan_never_panics_and_keeps_a_valid_prefix(
            n in 0u64..20,
            edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 0..4),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut bytes = if n % 2 == 0 { segment(n, 0) } else { synced_segment(n, 0) };
            if !bytes.is_empty() {
                for (i, b) in &edits {
                    let i = i.index(bytes.len());
                    bytes[i] = *b;
                }
                let keep = cut.index(bytes.len() + 1);
                bytes.truncate(keep);
            }
            bytes.extend_from_slice(&noise);
            for data in [&bytes[..], &noise[..]] {
                if let Ok(scan) = scan_bytes(data) {
                    proptest::prop_assert!(scan.valid_len <= data.len() as u64);
                    let recs = read_all_bytes(&data[..scan.valid_len as usize], 0).unwrap();
                    proptest::prop_assert_eq!(recs.len() as u64, scan.records);
                }
                let _ = read_all_bytes(data, 0);
            }
        }
    }

    #[test]
    fn index_floor() {
        let idx = SegmentIndex {
            generation: 1,
            entries: vec![(10, 0), (20, 100), (30, 200)],
        };
        assert_eq!(idx.floor(5), (0, 0));
        assert_eq!(idx.floor(10), (10, 0));
        assert_eq!(idx.floor(25), (20, 100));
        assert_eq!(idx.floor(99), (30, 200));
    }
}
