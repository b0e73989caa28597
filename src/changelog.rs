//! A store's changelog as its logged layer and its task's commit see it: a partition written
//! through the task's [`crate::backend::RecordSink`], and the offset the next
//! record is expected to get.
//!
//! Nothing here learns an offset from a send: the expected end is the end acknowledged at the
//! last commit (or restore) plus the records sent since, and each commit replaces it with the
//! acknowledged end ([`Changelog::acknowledged`]). With one writer per partition it is exact
//! on the embedded log; on Kafka a producer retry can duplicate a record, which only makes
//! the expectation run behind the truth until the next commit. The engine records this
//! expected end with every batch, so a crash can leave an engine marker that is *low*, never
//! high: restore then replays a few records twice (harmless, they are applied in order) or,
//! if the engine holds writes past the checkpoint, rebuilds it.

use std::sync::{Arc, Mutex};

use crate::backend::{BackendError, RecordSink, TopicPartition};
use crate::store::{Mutation, MutationRef};

/// A task's record sink, shared by its stores' logged layers and its commit.
pub type SharedSink = Arc<Mutex<Box<dyn RecordSink>>>;

/// One store's changelog partition.
pub struct Changelog {
    sink: SharedSink,
    tp: TopicPartition,
    next: u64,
    /// The end acknowledged at the last commit (or the end at restore).
    acked: u64,
    poisoned: Option<String>,
}

/// A changelog shared by a store's logged layer (which appends) and its task's commit (which
/// learns the acknowledged end).
pub type SharedChangelog = Arc<Mutex<Changelog>>;

impl Changelog {
    /// The changelog `tp`, written through `sink`, whose records end at `end` now.
    pub fn new(sink: SharedSink, tp: TopicPartition, end: u64) -> Self {
        Changelog {
            sink,
            tp,
            next: end,
            acked: end,
            poisoned: None,
        }
    }

    /// Marks the changelog unusable: a flush of the task's sink failed, so which of its
    /// records are durable is unknown until the task is restored. The store's logged layer
    /// refuses every later write.
    pub fn poison(&mut self, reason: String) {
        self.poisoned.get_or_insert(reason);
    }

    /// Why the changelog is unusable, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The changelog partition.
    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }

    /// Sends one record per mutation and hands them to the OS where the backend can; returns
    /// the expected end after them.
    pub fn append_batch(
        &mut self,
        timestamp: i64,
        batch: &[Mutation],
    ) -> Result<u64, BackendError> {
        self.append(timestamp, batch.iter().map(MutationRef::from))
    }

    /// [`append_batch`](Self::append_batch) from borrowed bytes.
    pub fn append_refs(
        &mut self,
        timestamp: i64,
        batch: &[MutationRef<'_>],
    ) -> Result<u64, BackendError> {
        self.append(timestamp, batch.iter().copied())
    }

    fn append<'a>(
        &mut self,
        timestamp: i64,
        batch: impl Iterator<Item = MutationRef<'a>>,
    ) -> Result<u64, BackendError> {
        let mut sink = crate::sync::lock(&self.sink);
        for m in batch {
            sink.send(&self.tp, timestamp, m.key, m.value)?;
            self.next += 1;
        }
        sink.flush_to_os()?;
        Ok(self.next)
    }

    /// The expected end: the offset after the last record sent.
    pub fn end(&self) -> u64 {
        self.next
    }

    /// The backend acknowledged every record sent so far, ending at `end`.
    pub fn acknowledged(&mut self, end: u64) {
        if end != self.next {
            tracing::debug!(changelog = %self.tp, expected = self.next, end, "changelog end differs from the expected one");
        }
        self.next = end;
        self.acked = end;
    }

    /// Where records this task did not send may lie, given the acknowledged `end` of what it
    /// sent since the last commit: `Some([from, end))` when `end` lies past the expected end,
    /// so more records than it sent landed since the last acknowledged end. They are another
    /// writer's (a former owner cut off by a network partition whose writes arrived late) or
    /// the duplicates of a producer retry; either way the keys they touch must be written
    /// again before a checkpoint covers them. `None`: every record in the range is this
    /// task's.
    pub fn unexpected_records(&self, end: u64) -> Option<(u64, u64)> {
        (end > self.next).then_some((self.acked, end))
    }
}

/// Milliseconds since the Unix epoch, the timestamp of changelog records.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The committed state a changelog partition holds: the newest value of every key among its
/// records below `end` (a task's checkpointed changelog end), tombstoned keys left out.
/// Records at or past `end` (an uncommitted tail, or trim records not sealed yet) are not
/// read. Held in memory: for inspection (`gregor store dump --job`), not for restore.
pub fn committed_entries(
    backend: &dyn crate::backend::Backend,
    tp: &TopicPartition,
    end: u64,
) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>, BackendError> {
    let mut state = std::collections::BTreeMap::new();
    let start = backend.offsets(tp)?.start;
    if start >= end {
        return Ok(state);
    }
    let mut reader = backend.open_reader(tp, start)?;
    while reader.position() < end {
        let batch = reader.next_batch(4096)?;
        if batch.is_empty() {
            // Compacted away, or a backend whose visible end is short of `end`: a reader
            // that stops making progress has read everything there is.
            break;
        }
        for r in batch {
            if r.offset >= end {
                return Ok(state);
            }
            match r.value {
                Some(v) => state.insert(r.key, v),
                None => state.remove(&r.key),
            };
        }
    }
    Ok(state)
}
