//! Retention of `delete` topics: which whole closed segments to delete (pure).

/// What retention needs to know about one closed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStat {
    /// Base offset.
    pub base: u64,
    /// File size.
    pub bytes: u64,
    /// Largest record timestamp; `None` if the segment is empty.
    pub max_timestamp: Option<i64>,
}

/// What one retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Their total size.
    pub bytes_deleted: u64,
    /// `start_offset()` afterwards.
    pub start_offset: u64,
}

/// How many of the oldest `closed` segments to delete (the active segment is never
/// deleted). Like Kafka: by size, delete while the log stays at or above
/// `retention_bytes` without the segment; by time, delete while the segment's newest record
/// is older than `now_ms - retention_ms` (empty segments count as expired). The larger of
/// the two prefixes wins.
pub fn segments_to_delete(
    closed: &[SegmentStat],
    total_bytes: u64,
    retention_bytes: Option<u64>,
    retention_ms: Option<i64>,
    now_ms: i64,
) -> usize {
    let by_size = retention_bytes.map_or(0, |limit| {
        let mut size = total_bytes;
        closed
            .iter()
            .take_while(|s| {
                let ok = size.saturating_sub(s.bytes) >= limit && size >= s.bytes;
                if ok {
                    size -= s.bytes;
                }
                ok
            })
            .count()
    });
    let by_time = retention_ms.map_or(0, |ms| {
        let horizon = now_ms.saturating_sub(ms);
        closed
            .iter()
            .take_while(|s| s.max_timestamp.is_none_or(|t| t < horizon))
            .count()
    });
    by_size.max(by_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u64, bytes: u64, ts: i64) -> SegmentStat {
        SegmentStat {
            base,
            bytes,
            max_timestamp: Some(ts),
        }
    }

    #[test]
    fn by_size_keeps_at_least_the_limit() {
        let closed = [seg(0, 100, 0), seg(10, 100, 0), seg(20, 100, 0)];
        // total 350 (50 active): deleting 3 leaves 50 < 120, deleting 2 leaves 150 >= 120.
        assert_eq!(segments_to_delete(&closed, 350, Some(120), None, 0), 2);
        assert_eq!(segments_to_delete(&closed, 350, Some(1000), None, 0), 0);
        assert_eq!(segments_to_delete(&closed, 350, Some(0), None, 0), 3);
        assert_eq!(segments_to_delete(&closed, 350, None, None, 0), 0);
    }

    #[test]
    fn by_time_deletes_expired_prefix_only() {
        let closed = [seg(0, 1, 10), seg(10, 1, 50), seg(20, 1, 20)];
        assert_eq!(segments_to_delete(&closed, 3, None, Some(100), 140), 1);
        assert_eq!(segments_to_delete(&closed, 3, None, Some(100), 151), 3);
        assert_eq!(segments_to_delete(&closed, 3, None, Some(100), 100), 0);
    }
}
