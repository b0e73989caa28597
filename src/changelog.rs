//! The changelog seam: what the logged layer and commit need from a changelog partition.
//! The embedded log's [`Partition`](crate::log::Partition) implements it; a Kafka producer
//! will implement it later, so nothing above this trait knows which backend is in use.

use std::sync::{Arc, Mutex};

use crate::log::LogError;

/// One changelog partition, written by one task.
pub trait ChangelogWriter: Send {
    /// Appends a record (`value: None` is a tombstone) and returns its offset. It may stay
    /// buffered in the process until [`flush_to_os`](Self::flush_to_os).
    fn append(&mut self, timestamp: i64, key: &[u8], value: Option<&[u8]>)
    -> Result<u64, LogError>;

    /// Hands buffered records to the OS (they survive the process being killed).
    fn flush_to_os(&mut self) -> Result<(), LogError>;

    /// Makes every appended record durable (fsync) and returns the end offset.
    fn sync(&mut self) -> Result<u64, LogError>;

    /// The offset the next append will get.
    fn end_offset(&self) -> u64;
}

/// A changelog partition shared by a store's logged layer (which appends) and its task's
/// commit (which syncs and reads the end offset).
pub type SharedChangelog = Arc<Mutex<dyn ChangelogWriter>>;

impl ChangelogWriter for crate::log::Partition {
    fn append(
        &mut self,
        timestamp: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<u64, LogError> {
        crate::log::Partition::append(self, timestamp, key, value)
    }

    fn flush_to_os(&mut self) -> Result<(), LogError> {
        crate::log::Partition::flush_to_os(self)
    }

    fn sync(&mut self) -> Result<u64, LogError> {
        crate::log::Partition::sync(self)
    }

    fn end_offset(&self) -> u64 {
        crate::log::Partition::end_offset(self)
    }
}

/// Milliseconds since the Unix epoch, the timestamp of changelog records.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
