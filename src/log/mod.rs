//! Embedded partitioned log: the topics (inputs and changelogs) of a state directory when no
//! Kafka is used.
//!
//! This module owns everything under `<state-dir>/logs/`:
//!
//! ```text
//! logs/<topic>/topic.meta                      partitions + TopicConfig (JSON, CRC32C header)
//! logs/<topic>/<partition>/<base:020>.log      segments, named by the offset of their first record
//! logs/<topic>/<partition>/<base:020>.log.compacting   compaction temp file (deleted on open)
//! ```
//!
//! # Record format
//! Each record is one frame (see [`record`]):
//! `[u32 LE payload_len][u32 LE crc32c(payload)][offset u64 LE | timestamp i64 LE |
//! key_len u32 LE | key | value_len i32 LE (-1 = tombstone) | value]`. The payload length
//! must match the key and value lengths exactly and be at most [`record::MAX_PAYLOAD_LEN`]
//! (64 MiB); readers check a length against that and against the bytes left in the file
//! before allocating or reading anything.
//!
//! # Durability
//! `append` buffers in user space; `flush_to_os` writes the buffer (write(2)); `sync`
//! also fsyncs (when `TopicConfig::fsync`). A segment is fsynced before the next one is
//! created, so only the last segment can have a torn tail. Any failed write or fsync
//! poisons the partition ([`LogError::Poisoned`]): fsync is never retried, the partition
//! must be reopened (which re-reads what actually reached the disk). All writes and fsyncs
//! go through [`IoHooks`] so tests can inject failures.
//!
//! # Recovery
//! `Partition::open` scans only the last segment. A bad frame there (partial, CRC
//! mismatch, bad lengths, offset not increasing) is a torn tail — cut off with ftruncate +
//! fsync and reported in [`RecoveryReport`] — only if no valid frame with a plausible
//! offset starts at any later byte position. Otherwise, and for any bad frame in a closed
//! segment (found when it is read), the result is [`LogError::Corrupt`] naming the file,
//! byte position and last good offset. Nothing is skipped silently.
//!
//! # Finding an offset
//! Segment file names give the segment of an offset (binary search, no I/O). Inside a
//! segment a sparse in-memory index (`(offset, position)` about every 64 KiB) gives a
//! starting position. It is built from the open-time scan for the active segment and
//! maintained on append; for closed segments it is built lazily by readers as they scan
//! (the first read into a closed segment scans it from the start, in 1 MiB chunks; later
//! reads seek). No index files, so nothing to keep consistent after a crash; opening a
//! 10 GB log reads one segment.
//!
//! # Cleanup
//! `delete` topics: [`Partition::apply_retention`] deletes whole closed segments by size
//! and time. `compact` topics: [`Partition::compact`] rewrites closed segments keeping the
//! newest record per key (judged over the whole log) and dropping tombstones older than
//! `delete_retention_ms`; offsets never change (readers see gaps), `start_offset` never
//! moves, emptied segments stay as empty files. Both are run by the caller (e.g.
//! `Partition::clean`, the `gregor topic compact` command).

pub mod compaction;
pub mod error;
pub mod hooks;
pub mod partition;
pub mod reader;
pub mod record;
pub mod retention;
pub mod segment;
pub mod topic;

pub use compaction::CompactionReport;
pub use error::LogError;
pub use hooks::{IoHooks, NoHooks};
pub use partition::{
    CleanupReport, Partition, PartitionInfo, RecoveryReport, TornTailCut, VerifyReport,
    partition_info, verify_partition,
};
pub use reader::PartitionReader;
pub use record::Record;
pub use retention::RetentionReport;
pub use topic::{CleanupPolicy, LogDir, Topic, TopicConfig, TopicInfo, validate_topic_name};
