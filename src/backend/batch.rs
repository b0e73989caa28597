//! [`RecordBatch`]: records read from a partition with their keys and values in one buffer,
//! so that a bulk read (a full restore) costs one copy per record and no allocation per
//! key or value.

/// One record of a [`RecordBatch`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Position in the partition.
    pub offset: u64,
    /// Milliseconds since the epoch (0 where the backend has none).
    pub timestamp: i64,
    /// Key bytes (may be empty).
    pub key: &'a [u8],
    /// Value bytes, or `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

/// Where one record's bytes are in the buffer: the key at `start`, the value right after.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    timestamp: i64,
    start: usize,
    key_len: usize,
    value_len: Option<usize>,
}

/// Records in offset order, their keys and values appended to one growing buffer.
/// [`LogReader::read_into`](crate::backend::LogReader::read_into) appends to it; a reader
/// that keeps one batch and [`clear`](Self::clear)s it between reads allocates nothing per
/// record once the buffer has grown.
#[derive(Debug, Clone, Default)]
pub struct RecordBatch {
    data: Vec<u8>,
    slots: Vec<Slot>,
}

impl RecordBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `records` records of `bytes` key and value bytes.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        RecordBatch {
            data: Vec::with_capacity(bytes),
            slots: Vec::with_capacity(records),
        }
    }

    /// Appends a record (copying `key` and `value`). Offsets must increase; the caller
    /// (a reader) guarantees it.
    pub fn push(&mut self, offset: u64, timestamp: i64, key: &[u8], value: Option<&[u8]>) {
        debug_assert!(
            self.slots.last().is_none_or(|s| s.offset < offset),
            "records of a batch are in offset order"
        );
        let start = self.data.len();
        self.data.extend_from_slice(key);
        if let Some(v) = value {
            self.data.extend_from_slice(v);
        }
        self.slots.push(Slot {
            offset,
            timestamp,
            start,
            key_len: key.len(),
            value_len: value.map(<[u8]>::len),
        });
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Key and value bytes held (the buffer's length).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Record `i` (in offset order), if there are that many.
    pub fn get(&self, i: usize) -> Option<RecordRef<'_>> {
        self.slots.get(i).map(|s| self.record(s))
    }

    /// The last record, if any.
    pub fn last(&self) -> Option<RecordRef<'_>> {
        self.slots.last().map(|s| self.record(s))
    }

    /// The records in offset order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + '_ {
        self.slots.iter().map(|s| self.record(s))
    }

    /// Removes every record, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.data.clear();
        self.slots.clear();
    }

    /// Keeps the first `len` records (their bytes too); nothing happens if there are fewer.
    pub fn truncate(&mut self, len: usize) {
        if let Some(s) = self.slots.get(len) {
            self.data.truncate(s.start);
            self.slots.truncate(len);
        }
    }

    /// Removes the records at positions `from..` whose offset is below `offset` (their
    /// bytes stay in the buffer until [`clear`](Self::clear)). Records of a batch are in
    /// offset order, so these are the first ones of that range.
    pub fn drop_below(&mut self, from: usize, offset: u64) {
        let tail = self.slots.get(from..).unwrap_or_default();
        let n = tail.partition_point(|s| s.offset < offset);
        if n > 0 {
            self.slots.drain(from..from + n);
        }
    }

    /// Removes every record at or past `offset`, and its bytes.
    pub fn truncate_at_offset(&mut self, offset: u64) {
        let n = self.slots.partition_point(|s| s.offset < offset);
        self.truncate(n);
    }

    fn record(&self, s: &Slot) -> RecordRef<'_> {
        let key_end = s.start + s.key_len;
        RecordRef {
            offset: s.offset,
            timestamp: s.timestamp,
            key: &self.data[s.start..key_end],
            value: s.value_len.map(|n| &self.data[key_end..key_end + n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(offsets: &[u64]) -> RecordBatch {
        let mut b = RecordBatch::new();
        for &o in offsets {
            let key = format!("k{o}");
            let value = format!("value-{o}");
            let value = (o % 3 != 0).then_some(value.as_bytes());
            b.push(o, o as i64 * 10, key.as_bytes(), value);
        }
        b
    }

    fn offsets(b: &RecordBatch) -> Vec<u64> {
        b.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn records_come_back_as_pushed() {
        let b = batch(&[3, 4, 7, 9]);
        assert_eq!(b.len(), 4);
        let r = b.get(1).unwrap();
        assert_eq!(
            (r.offset, r.timestamp, r.key, r.value),
            (4, 40, &b"k4"[..], Some(&b"value-4"[..]))
        );
        let r = b.get(0).unwrap();
        assert_eq!((r.key, r.value), (&b"k3"[..], None), "a tombstone");
        assert_eq!(b.last().unwrap().offset, 9);
        assert!(b.get(4).is_none());
        assert_eq!(b.bytes(), 2 * 4 + 7 * 2, "two tombstones");
    }

    #[test]
    fn truncating_at_an_offset_drops_later_records_and_their_bytes() {
        let mut b = batch(&[1, 2, 5, 8]);
        b.truncate_at_offset(5);
        assert_eq!(offsets(&b), [1, 2]);
        assert_eq!(b.bytes(), 2 * 2 + 7 * 2);
        b.push(6, 0, b"k6", Some(b"v"));
        assert_eq!(b.last().unwrap().value, Some(&b"v"[..]));
        b.truncate_at_offset(100);
        assert_eq!(offsets(&b), [1, 2, 6]);
        b.truncate_at_offset(0);
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn dropping_records_below_an_offset_keeps_earlier_ones() {
        let mut b = batch(&[1, 2]);
        let appended = b.len();
        for o in [10, 11, 12, 14] {
            b.push(o, 0, format!("k{o}").as_bytes(), Some(b"v"));
        }
        b.drop_below(appended, 12);
        assert_eq!(offsets(&b), [1, 2, 12, 14]);
        assert_eq!(b.get(2).unwrap().key, b"k12");
        b.drop_below(10, 100);
        assert_eq!(offsets(&b), [1, 2, 12, 14], "nothing past the end");
        b.clear();
        assert!(b.is_empty() && b.bytes() == 0);
    }
}
