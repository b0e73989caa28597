//! Sequential reader across the segments of a partition: the restore hot path.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::{LogError, Result};
use super::record::{FRAME_HEADER_LEN, Record};
use super::segment::{
    FrameReader, IndexCache, Next, NextFrame, SharedIndex, all_zero, list_segments, segment_path,
};

/// Whether segment `cur` has grown past the reader's limit: up to what the writer of this
/// process published, else the file length. Moves the limit up to it.
fn grew(index: &SharedIndex, cur: &mut Cursor) -> Result<bool> {
    let written = crate::sync::lock(index).written(cur.base);
    let len = match written {
        Some(len) => len,
        None => match std::fs::metadata(&cur.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(LogError::io("stat", &cur.path, e)),
        },
    };
    if len > cur.reader.limit() {
        cur.reader.set_limit(len);
        return Ok(true);
    }
    Ok(false)
}

/// The length of segment `cur`'s open file now (not of the file its path names now:
/// compaction may have replaced that one).
fn file_len(cur: &Cursor) -> Result<u64> {
    Ok(cur
        .reader
        .source()
        .metadata()
        .map_err(|e| LogError::io("stat", &cur.path, e))?
        .len())
}

/// Reads segment `cur` again from frame position `at`, up to the length of its open file now.
fn reread_from(cur: &mut Cursor, at: u64) -> Result<()> {
    let len = file_len(cur)?;
    cur.reader.stop_at(at);
    cur.reader.set_limit(len);
    Ok(())
}

/// Whether a valid frame is at `position` of `file` now: a reader's buffer may hold an
/// append caught half copied that the writer has finished since (and appended more after).
/// Reads only that frame. A file found shorter than its length just taken (a roll or a
/// close cut the zeros preallocated after its frames meanwhile) is looked at again up to
/// its new length: a file only shrinks, so this ends.
fn valid_frame_now(file: &File, position: u64) -> io::Result<bool> {
    loop {
        let len = file.metadata()?.len();
        if len < position + FRAME_HEADER_LEN as u64 {
            return Ok(false);
        }
        let read = (|| {
            let mut header = [0u8; 4];
            file.read_exact_at(&mut header, position)?;
            let end = position + FRAME_HEADER_LEN as u64 + u64::from(u32::from_le_bytes(header));
            let mut reader = FrameReader::new(file, position, end.min(len));
            reader.next_frame(&mut Record::default())
        })();
        match read {
            Ok(frame) => {
                return Ok(matches!(
                    frame,
                    NextFrame::Record | NextFrame::SyncMarker(_)
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && file.metadata()?.len() < len => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the bad frame at `position` of `file` (read up to `limit`) is zeros a writer
/// preallocated, or an append still being copied over them: from `position`, or from inside
/// the frame its header describes, every byte up to `limit` is zero. (A copy in progress
/// has written a prefix of its bytes; everything after it still reads as zeros, including
/// the last byte of the frame it is in.)
/// A file found shorter than `limit` (a roll cut its zeros meanwhile) counts as zeros too:
/// it is read again up to its new length.
fn ends_in_zeros(file: &File, position: u64, limit: u64) -> io::Result<bool> {
    let shrunk = |r: io::Result<bool>| match r {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(true),
        r => r,
    };
    if shrunk(all_zero(file, position, limit))? {
        return Ok(true);
    }
    if limit - position < FRAME_HEADER_LEN as u64 {
        return Ok(false);
    }
    let mut len = [0u8; 4];
    if shrunk(file.read_exact_at(&mut len, position).map(|()| false))? {
        return Ok(true);
    }
    let frame_end = position + FRAME_HEADER_LEN as u64 + u64::from(u32::from_le_bytes(len));
    Ok(frame_end <= limit && shrunk(all_zero(file, frame_end - 1, limit))?)
}

/// Reads the records of one partition in offset order, from a starting offset, crossing
/// segments. Reads 1 MiB chunks into a reused buffer and decodes into reused `Record`s.
///
/// It sees what has been written to the OS (`Partition::flush_to_os`); when it reaches the
/// end it re-checks how far the active segment was written (published by the writer of the
/// same process, else the file length) and the segment list, so it can tail a live
/// partition. A partial frame or a zero-filled (preallocated) tail at the very end of the
/// last segment is treated as "not written yet".
pub struct PartitionReader {
    dir: PathBuf,
    index: SharedIndex,
    /// Segment bases still to visit after the current one.
    bases: Vec<u64>,
    cur: Option<Cursor>,
    next_offset: u64,
    batch: Vec<Record>,
    /// `(offset, file position)` of each record the last `next_batch` that returned any
    /// returned from the current segment, in order: where [`rewind`](Self::rewind) can go
    /// back to.
    returned: Vec<(u64, u64)>,
    /// `(segment base, byte length)`: read nothing beyond it (a read-only view).
    bound: Option<(u64, u64)>,
}

struct Cursor {
    base: u64,
    generation: u64,
    path: PathBuf,
    reader: FrameReader<Box<File>>,
    prev_offset: Option<u64>,
    last_indexed: Option<u64>,
    /// Where zeros were last found in a segment that turned out closed: found there again,
    /// they are corruption.
    zeros_at: Option<u64>,
}

impl PartitionReader {
    /// A reader of the partition in `dir` from `from_offset` (records below it are skipped;
    /// reading from before the first segment starts at the first record).
    ///
    /// It shares nothing with a writer: it reads segments up to their file length and stops
    /// at zeros preallocated at the end of the last one. To tail a partition that a writer
    /// has open, use [`Partition::reader`](super::Partition::reader) (and
    /// [`reopen`](Self::reopen)): it reads up to what the writer has written. This one
    /// catches appends half copied over the zeros; before it judges a bad frame it reads
    /// the file again: zeros from inside the frame on are "not written yet", a frame valid
    /// in the file now is read on.
    pub fn open(dir: &Path, from_offset: u64) -> Result<Self> {
        Self::with_index(
            dir,
            from_offset,
            Arc::new(Mutex::new(IndexCache::default())),
        )
    }

    pub(crate) fn with_index(dir: &Path, from_offset: u64, index: SharedIndex) -> Result<Self> {
        Self::with_index_bounded(dir, from_offset, index, None)
    }

    /// Like `with_index`; with a `bound` of `(base, len)` the reader ends at byte `len` of
    /// segment `base` and never looks at later segments or later growth.
    pub(crate) fn with_index_bounded(
        dir: &Path,
        from_offset: u64,
        index: SharedIndex,
        bound: Option<(u64, u64)>,
    ) -> Result<Self> {
        let mut all = list_segments(dir)?;
        if let Some((last, _)) = bound {
            all.retain(|&b| b <= last);
        }
        // Start at the last segment whose base is <= from_offset.
        let first = all.partition_point(|&b| b <= from_offset).saturating_sub(1);
        Ok(PartitionReader {
            dir: dir.to_path_buf(),
            index,
            bases: all[first..].iter().rev().copied().collect(),
            cur: None,
            next_offset: from_offset,
            batch: Vec::new(),
            returned: Vec::new(),
            bound,
        })
    }

    /// The offset after the last record returned (or the starting offset).
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Goes back to `offset`, a record the last [`next_batch`](Self::next_batch) returned
    /// from the segment it reads now, without reopening anything (the frames are usually
    /// still in the buffer): what a consumer that read past its limit does before reading
    /// again. False (nothing changed) when `offset` is not such a record: seek by opening a
    /// new reader then.
    pub fn rewind(&mut self, offset: u64) -> bool {
        let Some(cur) = self.cur.as_mut() else {
            return false;
        };
        // The first record at or past `offset`; with one before it in the batch, nothing lies
        // between the two (a compaction gap at most), else it must be `offset` itself.
        let i = self.returned.partition_point(|&(o, _)| o < offset);
        let Some(&(found, pos)) = self.returned.get(i) else {
            return false;
        };
        if i == 0 && found != offset {
            return false;
        }
        cur.reader.rewind_to(pos);
        cur.prev_offset = match i {
            0 => offset.checked_sub(1),
            _ => Some(self.returned[i - 1].0),
        };
        self.returned.truncate(i);
        self.next_offset = offset;
        true
    }

    /// Opens the next segment to visit; false if there is none.
    fn open_next(&mut self) -> Result<bool> {
        self.returned.clear();
        while let Some(base) = self.bases.pop() {
            let path = segment_path(&self.dir, base);
            // Look up the index and open the file under the index lock, so a concurrent
            // compaction (rename + invalidate under the same lock) cannot pair old index
            // positions with a new file.
            let mut cache = crate::sync::lock(&self.index);
            let idx = cache.get(base);
            let generation = idx.generation;
            let (_, start) = idx.floor(self.next_offset);
            let indexed = !idx.entries.is_empty();
            let file = match File::open(&path) {
                Ok(f) => f,
                // Deleted by retention since we listed: go on with the next one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(LogError::io("open", &path, e)),
            };
            let written = cache.written(base);
            drop(cache);
            let mut len = match written {
                Some(len) => len,
                None => file
                    .metadata()
                    .map_err(|e| LogError::io("stat", &path, e))?
                    .len(),
            };
            if let Some((b, limit)) = self.bound
                && b == base
            {
                len = len.min(limit);
            }
            let start = if start > len { 0 } else { start };
            self.cur = Some(Cursor {
                base,
                generation,
                path,
                reader: FrameReader::new(Box::new(file), start, len),
                prev_offset: None,
                last_indexed: indexed.then_some(start),
                zeros_at: None,
            });
            return Ok(true);
        }
        Ok(false)
    }

    /// At the end of the current segment: true if reading can go on (the file grew or a
    /// newer segment exists), false if caught up.
    fn advance_at_end(&mut self) -> Result<bool> {
        let cur = self
            .cur
            .as_mut()
            .expect("called only while a segment is open");
        if self.bases.is_empty() && self.bound.is_some() {
            // A bounded view: nothing after its end.
            return Ok(false);
        }
        if self.bases.is_empty() {
            if grew(&self.index, cur)? {
                return Ok(true);
            }
            let base = cur.base;
            self.bases = list_segments(&self.dir)?
                .into_iter()
                .filter(|&b| b > base)
                .rev()
                .collect();
            if self.bases.is_empty() {
                return Ok(false);
            }
            // A newer segment exists, so this one is closed and its length final: the writer
            // may have appended to it (then rolled) after its length was looked at above.
            if grew(&self.index, cur)? {
                return Ok(true);
            }
        }
        self.cur = None;
        Ok(true)
    }

    /// Reads up to `max_records` records. An empty slice means caught up with the end of
    /// the log. The returned records are reused by the next call.
    pub fn next_batch(&mut self, max_records: usize) -> Result<&[Record]> {
        let mut n = 0;
        // What `rewind` can go back to: this call's records, once it returns one (an empty
        // call, as `read` makes at the end, keeps the last batch's).
        let mut fresh = false;
        while n < max_records {
            if self.cur.is_none() && !self.open_next()? {
                break;
            }
            if self.batch.len() <= n {
                self.batch.push(Record::default());
            }
            let cur = self.cur.as_mut().expect("the cursor was opened just above");
            let slot = &mut self.batch[n];
            let next = match cur.reader.next(slot) {
                Ok(next) => next,
                Err(e)
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        && crate::sync::lock(&self.index).written(cur.base).is_none() =>
                {
                    // Shorter than when its length was taken: a roll (or a close) cut the
                    // zeros preallocated after its frames. Read on up to its length now.
                    let at = cur.reader.position();
                    if cur.zeros_at == Some(at) {
                        return Err(LogError::io("read", &cur.path, e));
                    }
                    cur.zeros_at = Some(at);
                    reread_from(cur, at)?;
                    continue;
                }
                Err(e) => return Err(LogError::io("read", &cur.path, e)),
            };
            match next {
                Next::Record => {
                    let (pos, _) = cur.reader.last_frame();
                    if slot.offset < cur.base || cur.prev_offset.is_some_and(|p| slot.offset <= p) {
                        return Err(LogError::Corrupt {
                            file: cur.path.clone(),
                            position: pos,
                            last_good_offset: cur.prev_offset,
                            reason: format!(
                                "offset {} out of order (segment base {}, previous offset {:?})",
                                slot.offset, cur.base, cur.prev_offset
                            ),
                        });
                    }
                    cur.prev_offset = Some(slot.offset);
                    if cur
                        .last_indexed
                        .is_none_or(|p| pos >= p + super::segment::INDEX_INTERVAL)
                    {
                        cur.last_indexed = Some(pos);
                        crate::sync::lock(&self.index).add(
                            cur.base,
                            cur.generation,
                            slot.offset,
                            pos,
                        );
                    }
                    if slot.offset >= self.next_offset {
                        self.next_offset = slot.offset + 1;
                        if !fresh {
                            self.returned.clear();
                            fresh = true;
                        }
                        self.returned.push((slot.offset, pos));
                        n += 1;
                    }
                }
                Next::End => {
                    if !self.advance_at_end()? {
                        break;
                    }
                }
                Next::Bad {
                    position,
                    reason,
                    past_end,
                } => {
                    let last = |cur: &Cursor| -> Result<bool> {
                        Ok(self.bases.is_empty()
                            && list_segments(&self.dir)?.last() == Some(&cur.base))
                    };
                    let shares_nothing = crate::sync::lock(&self.index).written(cur.base).is_none();
                    if !past_end && shares_nothing {
                        let io = |e| LogError::io("read", &cur.path, e);
                        if cur.zeros_at != Some(position)
                            && ends_in_zeros(cur.reader.source(), position, cur.reader.limit())
                                .map_err(io)?
                        {
                            // Zeros a writer preallocated (a writer this reader does not
                            // share the partition with, or one that stopped without cutting
                            // them), or an append still being copied over them: not written
                            // yet. Read from here again, from the file.
                            cur.reader.stop_at(position);
                            if last(cur)? {
                                break;
                            }
                            // The segment was closed since: the roll wrote the frames over
                            // the zeros and cut the rest. Read it once more up to its length
                            // now.
                            cur.zeros_at = Some(position);
                            reread_from(cur, position)?;
                            continue;
                        }
                        if valid_frame_now(cur.reader.source(), position).map_err(io)? {
                            // Buffered while a writer was copying it over the zeros, complete
                            // in the file now (with more written after it, so it did not
                            // look like zeros just above). Read on from the file.
                            reread_from(cur, position)?;
                            continue;
                        }
                    }
                    if past_end && last(cur)? {
                        // Partial frame at the end of the last segment: not written yet (a
                        // reader can see an append half done). Read on if the file has grown
                        // since the limit was taken, else stop here and look again next call.
                        if self.bound.is_none() && grew(&self.index, cur)? {
                            continue;
                        }
                        break;
                    }
                    if past_end && self.bound.is_none() {
                        // A segment no longer last is closed: its length is final now. The
                        // limit may predate the writer finishing this frame and rolling
                        // (which also cuts preallocated zeros): read again up to the length
                        // now. A closed segment never changes again, so this ends.
                        let now = file_len(cur)?;
                        if now != cur.reader.limit() {
                            reread_from(cur, position)?;
                            continue;
                        }
                    }
                    return Err(LogError::Corrupt {
                        file: cur.path.clone(),
                        position,
                        last_good_offset: self.next_offset.checked_sub(1),
                        reason,
                    });
                }
            }
        }
        Ok(&self.batch[..n])
    }

    /// A new reader of the same partition from `from_offset`, sharing this one's index and
    /// view (what a seek that [`rewind`](Self::rewind) cannot serve opens).
    pub fn reopen(&self, from_offset: u64) -> Result<PartitionReader> {
        Self::with_index_bounded(&self.dir, from_offset, self.index.clone(), self.bound)
    }

    /// Reads up to `max_records` records into owned values.
    pub fn read(&mut self, max_records: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        while out.len() < max_records {
            let batch = self.next_batch((max_records - out.len()).min(4096))?;
            if batch.is_empty() {
                break;
            }
            out.extend_from_slice(batch);
        }
        Ok(out)
    }
}
