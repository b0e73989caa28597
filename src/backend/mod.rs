//! The backend seam: everything the runtime and the stores touch outside the stores
//! themselves — topics, reading records, writing changelog and output records, checkpoints —
//! goes through the traits here. Nothing above this module names a file or a broker.
//!
//! After Samza's `SystemAdmin` / `SystemConsumer` / `SystemProducer` split and raft-engine's
//! `PipeLog`, a backend offers:
//!
//! - **admin** ([`Backend::partitions`], [`Backend::ensure_topic`], [`Backend::offsets`],
//!   [`Backend::readable_end`]): topics, partition counts, start and end offsets;
//! - **readers** ([`Backend::open_reader`] → [`LogReader`]): batched reads from an offset,
//!   for restore and for input;
//! - **a record sink per task** ([`Backend::open_sink`] → [`RecordSink`]): one producer for
//!   the task's changelog *and* output records; [`RecordSink::flush`] returns the
//!   acknowledged ends. Nothing may depend on a send returning its offset: on Kafka offsets
//!   are known only once the broker acknowledges;
//! - **checkpoints** ([`Backend::read_checkpoint`], [`Backend::write_checkpoint`]);
//! - **what happens to records past a checkpoint**: a backend that can remove them
//!   ([`Backend::can_truncate`], the embedded log) truncates; one that cannot (Kafka) gets
//!   them overwritten by restore (see `docs/design.md`, "TRIM").
//!
//! Implementations: [`embedded`] (segment files under the state directory, the default),
//! [`kafka`] (librdkafka) and [`memory`] (in-process, for tests). Errors are [`BackendError`], classified retriable /
//! fenced / fatal.

use std::collections::BTreeMap;
use std::fmt;

mod batch;
pub mod embedded;
mod error;
pub mod kafka;
pub mod memory;
pub mod roles;

pub use batch::{RecordBatch, RecordRef};
pub use error::{BackendError, BoxError, ErrorClass};

use crate::checkpoint::Checkpoint;
pub use crate::log::Record;

/// A backend result.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// The role a topic plays for a job; it decides how the topic is created and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicRole {
    /// A store's changelog: compacted, one partition per task.
    Changelog,
    /// A job's output: kept by retention.
    Output,
}

/// A topic a job needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// The partitions it must have at least.
    pub partitions: u32,
    /// What it is for.
    pub role: TopicRole,
}

/// A partition's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// The first offset still held (earlier ones were deleted by retention).
    pub start: u64,
    /// The offset the next record will get.
    pub end: u64,
}

/// Reads one partition in offset order, in batches.
pub trait LogReader: Send {
    /// Up to `max` records from the current position, in offset order (offsets may have
    /// gaps after compaction). Empty when the reader is at the end.
    fn next_batch(&mut self, max: usize) -> Result<Vec<Record>>;

    /// Like [`next_batch`](Self::next_batch) (the same records), but appends them to
    /// `batch`, their keys and values copied once into its buffer: no allocation per record.
    /// Returns how many were appended; 0 when the reader is at the end. The default copies
    /// from [`next_batch`](Self::next_batch).
    fn read_into(&mut self, batch: &mut RecordBatch, max: usize) -> Result<usize> {
        let records = self.next_batch(max)?;
        for r in &records {
            batch.push(r.offset, r.timestamp, &r.key, r.value.as_deref());
        }
        Ok(records.len())
    }

    /// The offset the next record read will have at least (after the last record returned).
    fn position(&self) -> u64;

    /// Moves the reader to `offset`.
    fn seek(&mut self, offset: u64) -> Result<()>;
}

/// The writer of one task: its changelog records and its output records go through one
/// sink (one producer per task, so records of one partition keep their order).
pub trait RecordSink: Send {
    /// Queues a record (`value: None` is a tombstone) for `tp`. It is durable only after
    /// [`flush`](Self::flush).
    fn send(
        &mut self,
        tp: &TopicPartition,
        timestamp: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()>;

    /// Hands queued records to the operating system or the network, so that they survive
    /// the process being killed where the backend can promise that (embedded: write(2)).
    /// Optional; the default does nothing.
    fn flush_to_os(&mut self) -> Result<()> {
        Ok(())
    }

    /// Waits until every record sent so far is durable (fsynced / acknowledged) and
    /// returns the end offset of every partition written since the previous flush.
    fn flush(&mut self) -> Result<BTreeMap<TopicPartition, u64>>;

    /// A check the sink asks while it waits for a broker (a flush, a full queue): once it
    /// says `Err(reason)`, the wait ends with an error at once instead of lasting up to the
    /// backend's own timeout, and what is still queued is never sent. The task's commit fence
    /// (the process may no longer own the task). Default: ignored (nothing to wait for).
    fn set_abort(&mut self, abort: Option<AbortCheck>) {
        let _ = abort;
    }
}

/// See [`RecordSink::set_abort`]: `Err(reason)` when waiting no longer makes sense.
pub type AbortCheck = std::sync::Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// A place where topics, records and checkpoints live. Shared by every task of a process.
pub trait Backend: Send + Sync {
    /// A short name for messages ("embedded", "kafka", "memory").
    fn name(&self) -> &'static str;

    /// Whether a sink's [`flush`](RecordSink::flush) completes on this machine (an fsync,
    /// or nothing to do), so an async caller may run it on its own thread as Redis runs its
    /// fsync; `false` (the default) when it waits for a network round trip, which may last
    /// up to the backend's timeout and so belongs on a thread that may block.
    fn flushes_locally(&self) -> bool {
        false
    }

    /// The partition count of `topic`, `None` if it does not exist.
    fn partitions(&self, topic: &str) -> Result<Option<u32>>;

    /// Makes sure `spec.name` exists and can play its role: creates it if missing; checks it
    /// otherwise (a changelog must be compacted and have enough partitions). Returns its
    /// partition count.
    fn ensure_topic(&self, spec: &TopicSpec) -> Result<u32>;

    /// The start and end offsets of `tp`.
    fn offsets(&self, tp: &TopicPartition) -> Result<Offsets>;

    /// The end offset of `tp` for a metric: one quick try, no retries (a broker that does not
    /// answer within a second is an error), so that a commit never waits on it. Default:
    /// [`offsets`](Self::offsets).
    fn end_for_metrics(&self, tp: &TopicPartition) -> Result<u64> {
        self.offsets(tp).map(|o| o.end)
    }

    /// How far a reader that does not own `tp` may read: the end of what the writer
    /// committed where the backend knows it (embedded: the read-committed marker, and never
    /// past what is synced), else the end.
    fn readable_end(&self, tp: &TopicPartition) -> Result<u64> {
        Ok(self.offsets(tp)?.end)
    }

    /// [`readable_end`](Self::readable_end) in one quick try, no retries, for a loop that
    /// must not wait on a broker (a task's idle loop refreshing its input limit: it must
    /// stay free to hear its coordinator's fence). Default: `readable_end`.
    fn readable_end_once(&self, tp: &TopicPartition) -> Result<u64> {
        self.readable_end(tp)
    }

    /// A reader of `tp` positioned at `from`.
    fn open_reader(&self, tp: &TopicPartition, from: u64) -> Result<Box<dyn LogReader>>;

    /// A reader of `tp` positioned at `from` for reading a large range once, to its end or
    /// close to it (a full restore): the backend may tune it for throughput over latency
    /// (Kafka: larger fetches, a deeper prefetch queue). The default is
    /// [`open_reader`](Self::open_reader).
    fn open_bulk_reader(&self, tp: &TopicPartition, from: u64) -> Result<Box<dyn LogReader>> {
        self.open_reader(tp, from)
    }

    /// The record sink of task `task`.
    fn open_sink(&self, task: &str) -> Result<Box<dyn RecordSink>>;

    /// Task `task`'s last checkpoint, if any.
    fn read_checkpoint(&self, task: &str) -> Result<Option<Checkpoint>>;

    /// Durably replaces task `task`'s checkpoint.
    fn write_checkpoint(&self, task: &str, checkpoint: &Checkpoint) -> Result<()>;

    /// [`write_checkpoint`](Self::write_checkpoint) that stops waiting for the broker once
    /// `abort` says `Err` (see [`RecordSink::set_abort`]): the checkpoint is then dropped
    /// unsent where the backend can, and the write fails. Default: `abort` is not asked.
    fn write_checkpoint_unless(
        &self,
        task: &str,
        checkpoint: &Checkpoint,
        abort: &AbortCheck,
    ) -> Result<()> {
        let _ = abort;
        self.write_checkpoint(task, checkpoint)
    }

    /// Whether [`truncate`](Self::truncate) works. Restore truncates uncommitted changelog
    /// records where it does, and overwrites them (TRIM) where it does not.
    fn can_truncate(&self) -> bool;

    /// Removes every record of `tp` at offsets `>= to`.
    fn truncate(&self, tp: &TopicPartition, to: u64) -> Result<()>;

    /// Start-up of a job's outputs: `committed` holds, per output partition, the newest end
    /// any of the job's checkpoints records. A backend that can drops records past it and
    /// tells readers where committed output ends; others do nothing (at-least-once output).
    fn recover_outputs(&self, committed: &BTreeMap<TopicPartition, u64>) -> Result<()> {
        let _ = committed;
        Ok(())
    }

    /// After a checkpoint recording them is written: the output partitions in `ends` are
    /// committed up to those offsets (embedded: moves the read-committed markers).
    fn outputs_committed(&self, ends: &BTreeMap<TopicPartition, u64>) -> Result<()> {
        let _ = ends;
        Ok(())
    }

    /// Records that job `job` uses the topics in `claims` in those roles, replacing what the
    /// job recorded before, after checking them against every other job's roles (see
    /// [`roles`]): a conflict is a [`BackendError::TopicMismatch`] naming the topic, both jobs,
    /// their roles and how to fix it. The default records nothing (the Kafka backend has no
    /// role registry yet).
    fn claim_roles(&self, job: &str, claims: &[roles::RoleClaim]) -> Result<()> {
        let _ = (job, claims);
        Ok(())
    }

    /// Runs the topic's cleanup (compaction) where the backend does it in-process; call it
    /// only right after a commit of the partition's writer. The default does nothing
    /// (Kafka's brokers clean on their own).
    fn clean(&self, tp: &TopicPartition, now_ms: i64) -> Result<()> {
        let _ = (tp, now_ms);
        Ok(())
    }
}
