//! Errors of the embedded log. Every message names the file, topic, partition or offset it
//! concerns.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in `gregor::log`.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O call failed; `op` says what was being done to `path`.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "fsync", "open", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record that is not a torn tail failed its checks (length, CRC, offsets).
    #[error(
        "corrupt log segment {}: bad record at byte position {position} (last good offset {}): {reason}",
        file.display(),
        last_good_offset.map_or_else(|| "none".to_string(), |o| o.to_string())
    )]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte position of the bad frame in `file`.
        position: u64,
        /// Offset of the last valid record before it, if any.
        last_good_offset: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// A write or fsync failed earlier; the partition refuses all further writes.
    #[error(
        "log partition {partition} is poisoned by an earlier failure and must be reopened: {cause}"
    )]
    Poisoned {
        /// `<topic>/<partition>` (or the directory).
        partition: String,
        /// The original failure.
        cause: String,
    },
    /// No such topic in the state directory.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// `create_topic` on an existing topic.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The name is empty, too long, or has characters outside `[a-zA-Z0-9._-]`.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A record exceeds the maximum frame payload.
    #[error(
        "record of {size} bytes exceeds the maximum record size of {max} bytes (partition {partition})"
    )]
    RecordTooLarge {
        /// `<topic>/<partition>`.
        partition: String,
        /// Encoded payload size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The topic has fewer partitions.
    #[error("partition {partition} out of range: topic {topic:?} has {partitions} partitions")]
    PartitionOutOfRange {
        /// Topic name.
        topic: String,
        /// Requested partition.
        partition: u32,
        /// Number of partitions of the topic.
        partitions: u32,
    },
    /// An offset outside `[start_offset, end_offset]`.
    #[error(
        "offset {offset} out of range for partition {partition}: valid range is [{start}, {end}]"
    )]
    OffsetOutOfRange {
        /// `<topic>/<partition>`.
        partition: String,
        /// Requested offset.
        offset: u64,
        /// `start_offset()`.
        start: u64,
        /// `end_offset()`.
        end: u64,
    },
    /// The topic metadata file is unreadable or fails its checksum.
    #[error("bad topic metadata {}: {reason}", path.display())]
    BadMetadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A write to a partition or log directory opened read-only.
    #[error("log partition {partition} is open read-only")]
    ReadOnly {
        /// `<topic>/<partition>` (or the directory).
        partition: String,
    },
    /// An argument was invalid (e.g. zero partitions).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl LogError {
    /// Wraps an `io::Error` with the operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
