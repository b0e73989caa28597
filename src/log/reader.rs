//! Sequential reader across the segments of a partition: the restore hot path.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::{LogError, Result};
use super::record::Record;
use super::segment::{FrameReader, IndexCache, Next, SharedIndex, list_segments, segment_path};

/// Reads the records of one partition in offset order, from a starting offset, crossing
/// segments. Reads 1 MiB chunks into a reused buffer and decodes into reused `Record`s.
///
/// It sees what has been written to the OS (`Partition::flush_to_os`); when it reaches the
/// end it re-checks the file length and the segment list, so it can tail a live partition.
/// A partial frame at the very end of the last segment is treated as "not written yet".
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
}

impl PartitionReader {
    /// A reader of the partition in `dir` from `from_offset` (records below it are skipped;
    /// reading from before the first segment starts at the first record).
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
            drop(cache);
            let mut len = file
                .metadata()
                .map_err(|e| LogError::io("stat", &path, e))?
                .len();
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
            let len = cur.reader.limit().max(match std::fs::metadata(&cur.path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                Err(e) => return Err(LogError::io("stat", &cur.path, e)),
            });
            if len > cur.reader.limit() {
                cur.reader.set_limit(len);
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
        }
        self.cur = None;
        Ok(true)
    }

    /// Whether the current segment's file has grown past the reader's limit (which is then
    /// moved up to its length).
    fn grew(&mut self) -> Result<bool> {
        let cur = self
            .cur
            .as_mut()
            .expect("called only while a segment is open");
        let len = match std::fs::metadata(&cur.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(LogError::io("stat", &cur.path, e)),
        };
        if len > cur.reader.limit() {
            cur.reader.set_limit(len);
            return Ok(true);
        }
        Ok(false)
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
            let next = cur
                .reader
                .next(slot)
                .map_err(|e| LogError::io("read", &cur.path, e))?;
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
                    if past_end
                        && self.bases.is_empty()
                        && list_segments(&self.dir)?.last() == Some(&cur.base)
                    {
                        // Partial frame at the end of the last segment: not written yet (a
                        // reader can see an append half done). Read on if the file has grown
                        // since the limit was taken, else stop here and look again next call.
                        if self.bound.is_none() && self.grew()? {
                            continue;
                        }
                        break;
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
