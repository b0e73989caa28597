//! Embedded partitioned log: the topics (inputs and changelogs) of a state directory when no
//! Kafka is used.
//!
//! This module owns everything under `<state-dir>/logs/`:
//!
//! ```text
//! logs/<topic>/topic.meta                      partitions + TopicConfig (JSON, CRC32C header)
//! logs/<topic>/<partition>/<base:020>.log      segments, named by the offset of their first record
//! logs/<topic>/<partition>/<base:020>.log.compacting   compaction temp file (deleted on open)
//! logs/<topic>/<partition>/truncate.intent     a truncation in progress (finished on open)
//! ```
//!
//! # Record format
//! Each record is one frame (see [`record`]):
//! `[u32 LE payload_len][u32 LE crc32c(payload)][offset u64 LE | timestamp i64 LE |
//! key_len u32 LE | key | value_len i32 LE (-1 = tombstone) | value]`. The payload length
//! must match the key and value lengths exactly and be at most [`record::MAX_PAYLOAD_LEN`]
//! (64 MiB); readers check a length against that and against the bytes left in the file
//! before allocating or reading anything. A frame with `value_len == -2` is a sync marker
//! (below), not a record.
//!
//! # Durability
//! `append` buffers in user space; `flush_to_os` writes the buffer (write(2)); `sync`
//! also fsyncs (when `TopicConfig::fsync`). A partition shared behind a lock syncs in three
//! steps so that the fsync runs without the lock: `Partition::start_sync` (flush, and a
//! [`SyncTicket`] naming the end offset and the bytes written so far), [`SyncTicket::fsync`],
//! then `Partition::finish_sync`, which reports the ticket's end durable (never records
//! appended during the fsync). A segment is fsynced before the next one is
//! created, so only the last segment can have a torn tail. Any failed write or fsync
//! poisons the partition ([`LogError::Poisoned`]): fsync is never retried, the partition
//! must be reopened (which re-reads what actually reached the disk). All writes and fsyncs
//! go through [`IoHooks`] so tests can inject failures. Every file or directory the log
//! creates, renames or removes is followed by an fsync of its parent directory where
//! durability depends on it (new partition and topic directories, new segments, truncation,
//! compaction's rename — the latter also with fsync disabled, see [`compaction`]).
//!
//! # Preallocation
//! With `fsync` and [`TopicConfig::preallocate`] (both default), the active segment's file is
//! extended with zeros ahead of the appends ([`partition::PREALLOCATE_BYTES`] beyond the
//! bytes being written, at most up to `segment_bytes`), before the appends are written. An
//! append then overwrites zeros instead of growing the file, so the `fdatasync` that makes it
//! durable writes data only: an fdatasync of a file whose size changed must also write its
//! inode (on ext4, about a third of the cost of a small append's fsync). Only the fsync after
//! an extension pays for one. The zeros after the last frame are the end of the log:
//! - the writer knows where its data ends; readers of the same process read the active
//!   segment up to what the writer has written (published in the partition's shared index
//!   state), never into the zeros;
//! - a reader of no writer in its process (or opened after the writer closed) takes the file
//!   length and stops at a zero-filled tail of the last segment as at a partial frame ("not
//!   written yet"), and reads on when frames replace the zeros;
//! - the recovery scan accepts a tail of the last segment that is zero up to the end of the
//!   file, starting at a frame boundary at or above every proven fsync, as the end (no torn
//!   tail, nothing cut: a writable open appends over the zeros). A bad frame followed by
//!   anything non-zero is judged as before (torn tail or corruption);
//! - a roll cuts the zeros off the segment it closes (before its fsync), so closed segments
//!   end at their last frame; a clean close (`Drop`) cuts them too; truncation cuts at the
//!   last kept frame.
//!
//! # Sync markers: what a power loss can leave
//! After a power loss only what an fsync covered is certain. Bytes written after the last
//! completed fsync may be missing, zeroed, stale or torn in any pattern of pages: a zeroed
//! page followed by intact pages is normal there, and is *not* corruption. Damage to bytes a
//! completed fsync covered is corruption (or a disk that lies) and must be an error.
//!
//! To tell the two apart, `sync` writes a *sync marker* ([`record::SyncMarker`], a 32-byte
//! control frame that readers skip) right after each fsync that covered new records: "the
//! first `synced_len` bytes of this segment were fsynced; the next record's offset is at least
//! `end_offset`". When records were appended while the fsync ran (a [`SyncTicket`]), the
//! marker goes after them: its `synced_len` names only the bytes the fsync covered, its
//! `end_offset` the current end (recovery checks a marker's end offset against the records
//! before it, it is no claim of durability). No marker is written for a segment a roll closed
//! meanwhile (the roll fsynced it whole). The marker is written to the OS (one small write(2)) but not fsynced itself:
//! a second fsync per sync would double the commit cost. That is enough, because the marker
//! is only ever *evidence*: it was written after the fsync returned, so if a marker is found
//! intact (its CRC holds) the fsync it describes completed, and every byte below its
//! `synced_len` is durable. If the marker itself was lost, recovery falls back to an earlier
//! marker: the proven synced position can only be underestimated, never overestimated.
//!
//! With preallocation, bytes past the last fsync may also be the zeros written ahead of the
//! appends (the appends over them lost): a zero tail, accepted as the end as above.
//!
//! Recovery of the last segment: let `P` be the largest `synced_len` of any intact marker,
//! whether it lies before the first bad frame or anywhere after it (found by resynchronising
//! on valid frames past the damage). A bad frame at a position `>= P` is a torn tail: it and
//! everything after it — including valid-looking records — is cut (and reported). A bad frame
//! below `P` is [`LogError::Corrupt`] naming the file, the byte position and why it is not a
//! torn tail. Closed segments were fsynced in full before the next segment was created, so a
//! bad frame there is always corruption. What is lost to a power loss is therefore exactly
//! what was never fsynced; a checkpoint only ever names offsets a `sync` returned.
//!
//! The window where synced data has no proof is the time between an fsync and the write(2)
//! of its marker (microseconds, plus for a [`SyncTicket`] the wait for the partition's lock;
//! a process crash does not lose a marker already written to the OS). Damage there after a power loss is judged a torn tail; for a changelog, restore
//! then finds the log ending below its checkpoint and fails loudly rather than silently.
//! Segments written before sync markers existed have none: damage in their last segment is
//! a torn tail.
//!
//! **Topics with `fsync = false`** ([`TopicConfig::fsync`]) never fsync data on `sync` and
//! write no markers, so nothing in them is proven durable: after a power loss, damage
//! anywhere in the last segment is cut as a torn tail (records after it are lost), and
//! damage in a closed segment (not fsynced at the roll either) is reported as corruption
//! when read. What holds for them is only process-crash safety. Their truncations and
//! compactions still fsync (these are rare and would otherwise lose older, durable data).
//!
//! # Recovery
//! `Partition::open` scans only the last segment and cuts a torn tail (above) with
//! ftruncate + fsync. The last segment must also belong to the log: if it is not the only
//! one, its first frame must carry an offset `>=` the base in its file name, or — if it is
//! empty or starts with a bad frame — its base must be exactly where the previous segment
//! ends (a roll interrupted before its first record reached the disk). An empty or garbage
//! file named like a newer segment, or a copy of an older one, is [`LogError::Corrupt`]
//! naming it, never cut (which would make the offsets jump to its name). A frame carrying
//! offset `u64::MAX` is invalid for every reader (it leaves no room for a next offset).
//! Nothing is skipped silently.
//!
//! `Partition::open_read_only` (and [`LogDir::open_read_only`]) computes the same view and
//! modifies nothing: a torn tail is reported and left in place; readers stop at the valid
//! end. [`partition_info`] and [`verify_partition`] judge exactly as the opens do.
//!
//! # Truncation
//! [`Partition::truncate`] is crash-safe: it makes everything below the target durable,
//! writes an intent file (`truncate.intent`, atomically), then cuts the segment holding the
//! target, deletes later segments, and removes the intent. An open that finds the intent
//! finishes the truncation (each step is idempotent), so a crash at any point leaves the
//! log ending at the old end or exactly at the target, never below it. Where compaction
//! left a gap below the target, a sync marker naming the target as end offset is written
//! after the kept records.
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
    CleanupReport, FsyncedTicket, Partition, PartitionInfo, RecoveryReport, SyncTicket,
    TRUNCATE_INTENT_FILE, TornTailCut, VerifyReport, partition_info, verify_partition,
};
pub use reader::PartitionReader;
pub use record::{Record, SyncMarker};
pub use retention::RetentionReport;
pub use topic::{CleanupPolicy, LogDir, Topic, TopicConfig, TopicInfo, validate_topic_name};
