//! Topics: configuration, the metadata file, and the `logs/` directory of a state dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::{LogError, Result};
use super::hooks::{IoHooks, NoHooks};
use super::partition::{
    Partition, PartitionInfo, RecoveryReport, create_dir_durable, partition_info,
};

/// Name of the metadata file in `logs/<topic>/`.
pub const TOPIC_META_FILE: &str = "topic.meta";
const META_MAGIC: &str = "gregor-topic v1 crc32c=";

/// What happens to old records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Delete whole segments by `retention_bytes` / `retention_ms` (inputs).
    #[default]
    Delete,
    /// Keep the newest record per key (changelogs).
    Compact,
}

/// Per-topic settings (Kafka's names in the docs). Persisted in the topic metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicConfig {
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `segment.bytes`: a segment is closed when the next record would exceed it
    /// (default 128 MiB).
    pub segment_bytes: u64,
    /// `retention.bytes` (delete policy; default unlimited).
    pub retention_bytes: Option<u64>,
    /// `retention.ms` (delete policy; default 7 days).
    pub retention_ms: Option<i64>,
    /// `delete.retention.ms`: how long compaction keeps tombstones (default 24 h).
    pub delete_retention_ms: i64,
    /// fsync on `sync()` and segment roll (default true). Without it nothing is durable
    /// against a machine crash: damage in the last segment is cut as a torn tail (records
    /// after it are lost) and a damaged non-last segment is reported as corruption (see the
    /// module doc of [`crate::log`]). Truncation and compaction fsync regardless.
    pub fsync: bool,
    /// `preallocate` (Kafka's name): with `fsync`, extend the active segment with zeros
    /// ahead of the appends ([`super::partition::PREALLOCATE_BYTES`] at a time), so that
    /// the fsync of an append writes no new file size (default true). The zeros after the
    /// last frame are the end of the log to every reader and to recovery; a roll cuts them
    /// off the segment it closes.
    pub preallocate: bool,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            cleanup_policy: CleanupPolicy::Delete,
            segment_bytes: 128 << 20,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            delete_retention_ms: 24 * 3600 * 1000,
            fsync: true,
            preallocate: true,
        }
    }
}

impl TopicConfig {
    /// Defaults with `cleanup.policy=compact` (changelogs).
    pub fn compacted() -> Self {
        TopicConfig {
            cleanup_policy: CleanupPolicy::Compact,
            ..Default::default()
        }
    }
}

/// Persisted topic metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
    config: TopicConfig,
}

/// Checks a topic name: non-empty, at most 249 bytes, only `[a-zA-Z0-9._-]`, not `.`/`..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(LogError::InvalidTopicName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// An existing topic.
#[derive(Debug, Clone)]
pub struct Topic {
    name: String,
    dir: PathBuf,
    partitions: u32,
    config: TopicConfig,
    hooks: Arc<dyn IoHooks>,
    read_only: bool,
}

impl Topic {
    /// Topic name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }
    /// Configuration.
    pub fn config(&self) -> &TopicConfig {
        &self.config
    }
    /// `logs/<topic>/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `logs/<topic>/<partition>/`.
    pub fn partition_dir(&self, partition: u32) -> Result<PathBuf> {
        if partition >= self.partitions {
            return Err(LogError::PartitionOutOfRange {
                topic: self.name.clone(),
                partition,
                partitions: self.partitions,
            });
        }
        Ok(self.dir.join(partition.to_string()))
    }
    /// Opens one partition for appends (recovering its tail); from a read-only
    /// [`LogDir`] (see [`LogDir::open_read_only`]), for reading only.
    pub fn open_partition(&self, partition: u32) -> Result<(Partition, RecoveryReport)> {
        if self.read_only {
            return self.open_partition_read_only(partition);
        }
        let dir = self.partition_dir(partition)?;
        Partition::open(&dir, self.config.clone(), self.hooks.clone())
    }
    /// Opens one partition for reading only ([`Partition::open_read_only`]): nothing on
    /// disk is modified, a torn tail is reported and left alone.
    pub fn open_partition_read_only(&self, partition: u32) -> Result<(Partition, RecoveryReport)> {
        let dir = self.partition_dir(partition)?;
        Partition::open_read_only(&dir, self.config.clone())
    }
    /// Read-only offsets and sizes of every partition.
    pub fn partition_infos(&self) -> Result<Vec<PartitionInfo>> {
        (0..self.partitions)
            .map(|p| partition_info(&self.partition_dir(p)?, p))
            .collect()
    }
}

/// A topic with its partitions' offsets, as listed by [`LogDir::list_topics`].
#[derive(Debug, Clone)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Configuration.
    pub config: TopicConfig,
    /// One entry per partition.
    pub partitions: Vec<PartitionInfo>,
}

/// The `logs/` directory of a state directory: the embedded topics.
#[derive(Debug, Clone)]
pub struct LogDir {
    root: PathBuf,
    hooks: Arc<dyn IoHooks>,
    read_only: bool,
}

impl LogDir {
    /// Opens (creating) `<state_dir>/logs`.
    pub fn open(state_dir: &Path) -> Result<LogDir> {
        Self::open_with_hooks(state_dir, Arc::new(NoHooks))
    }

    /// Like [`LogDir::open`], with I/O hooks for every partition opened through it.
    pub fn open_with_hooks(state_dir: &Path, hooks: Arc<dyn IoHooks>) -> Result<LogDir> {
        let root = state_dir.join("logs");
        create_dir_durable(&root, hooks.as_ref())?;
        Ok(LogDir {
            root,
            hooks,
            read_only: false,
        })
    }

    /// Opens `<state_dir>/logs` for inspection: creates nothing, and every partition opened
    /// through it (`open_partition`, `Topic::open_partition`) is read-only
    /// ([`Partition::open_read_only`]); `create_topic` fails with [`LogError::ReadOnly`].
    /// A missing `logs` directory is an empty log directory.
    pub fn open_read_only(state_dir: &Path) -> Result<LogDir> {
        Ok(LogDir {
            root: state_dir.join("logs"),
            hooks: Arc::new(NoHooks),
            read_only: true,
        })
    }

    /// True if opened with [`LogDir::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// `<state_dir>/logs`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a topic: partition directories, then the metadata file (atomic, with a
    /// checksum). The metadata file marks the topic as existing.
    pub fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Result<Topic> {
        validate_topic_name(name)?;
        if self.read_only {
            return Err(LogError::ReadOnly {
                partition: self.root.display().to_string(),
            });
        }
        if partitions == 0 {
            return Err(LogError::InvalidArgument(format!(
                "topic {name:?} needs at least one partition"
            )));
        }
        if config.segment_bytes == 0 {
            return Err(LogError::InvalidArgument(
                "segment_bytes must be positive".into(),
            ));
        }
        let dir = self.root.join(name);
        let meta_path = dir.join(TOPIC_META_FILE);
        if meta_path.exists() {
            return Err(LogError::TopicExists(name.to_string()));
        }
        // Each new directory's parent is fsynced (the topic directory in `logs/`, the
        // partition directories in the topic directory) before the metadata file, which
        // marks the topic as existing, is written.
        for p in 0..partitions {
            let pdir = dir.join(p.to_string());
            create_dir_durable(&pdir, self.hooks.as_ref())?;
        }
        let meta = TopicMeta { partitions, config };
        crate::fsutil::write_atomic(&meta_path, &encode_meta(&meta))
            .map_err(|e| LogError::io("write", &meta_path, e))?;
        Ok(Topic {
            name: name.to_string(),
            dir,
            partitions: meta.partitions,
            config: meta.config,
            hooks: self.hooks.clone(),
            read_only: self.read_only,
        })
    }

    /// An existing topic.
    pub fn topic(&self, name: &str) -> Result<Topic> {
        validate_topic_name(name)?;
        let dir = self.root.join(name);
        let meta_path = dir.join(TOPIC_META_FILE);
        let bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LogError::TopicNotFound(name.to_string()));
            }
            Err(e) => return Err(LogError::io("read", &meta_path, e)),
        };
        let meta = decode_meta(&bytes).map_err(|reason| LogError::BadMetadata {
            path: meta_path,
            reason,
        })?;
        Ok(Topic {
            name: name.to_string(),
            dir,
            partitions: meta.partitions,
            config: meta.config,
            hooks: self.hooks.clone(),
            read_only: self.read_only,
        })
    }

    /// The topic `name`, created with `partitions` partitions and `config` if it does not
    /// exist yet (an existing topic keeps its own partitions and config).
    pub fn topic_or_create(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<Topic> {
        match self.topic(name) {
            Err(LogError::TopicNotFound(_)) => self.create_topic(name, partitions, config),
            other => other,
        }
    }

    /// Replaces the configuration of existing topic `name` (its metadata file, atomically)
    /// and returns the topic with it. Partitions opened afterwards use the new settings:
    /// `segment_bytes` applies to the segments they roll from then on, `fsync` to their
    /// later syncs; records already written stay where they are.
    pub fn set_topic_config(&self, name: &str, config: TopicConfig) -> Result<Topic> {
        let topic = self.topic(name)?;
        if self.read_only {
            return Err(LogError::ReadOnly {
                partition: topic.dir.display().to_string(),
            });
        }
        if config.segment_bytes == 0 {
            return Err(LogError::InvalidArgument(
                "segment_bytes must be positive".into(),
            ));
        }
        let meta = TopicMeta {
            partitions: topic.partitions,
            config,
        };
        let meta_path = topic.dir.join(TOPIC_META_FILE);
        crate::fsutil::write_atomic(&meta_path, &encode_meta(&meta))
            .map_err(|e| LogError::io("write", &meta_path, e))?;
        Ok(Topic {
            config: meta.config,
            ..topic
        })
    }

    /// Opens one partition of a topic for appends.
    pub fn open_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<(Partition, RecoveryReport)> {
        self.topic(topic)?.open_partition(partition)
    }

    /// Names of all topics, sorted.
    pub fn topic_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if self.read_only && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(names);
            }
            Err(e) => return Err(LogError::io("list", &self.root, e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| LogError::io("list", &self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_topic_name(&name).is_ok() && entry.path().join(TOPIC_META_FILE).exists() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every topic with per-partition start/end offsets and bytes (read-only).
    pub fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.topic_names()?
            .into_iter()
            .map(|name| {
                let topic = self.topic(&name)?;
                Ok(TopicInfo {
                    partitions: topic.partition_infos()?,
                    config: topic.config,
                    name,
                })
            })
            .collect()
    }
}

/// `gregor-topic v1 crc32c=XXXXXXXX\n<json>`.
fn encode_meta(meta: &TopicMeta) -> Vec<u8> {
    let json = serde_json::to_vec_pretty(meta)
        .expect("serde_json cannot fail on plain structs with string keys");
    let mut out = format!("{META_MAGIC}{:08x}\n", crc32c::crc32c(&json)).into_bytes();
    out.extend_from_slice(&json);
    out
}

fn decode_meta(bytes: &[u8]) -> std::result::Result<TopicMeta, String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("missing header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not UTF-8")?;
    let hex = header
        .strip_prefix(META_MAGIC)
        .ok_or_else(|| format!("unknown header {header:?}"))?;
    let want = u32::from_str_radix(hex, 16).map_err(|_| format!("bad checksum {hex:?}"))?;
    let json = &bytes[nl + 1..];
    let got = crc32c::crc32c(json);
    if got != want {
        return Err(format!(
            "checksum mismatch: header says {want:08x}, content has {got:08x}"
        ));
    }
    let meta: TopicMeta = serde_json::from_slice(json).map_err(|e| format!("bad JSON: {e}"))?;
    if meta.partitions == 0 {
        return Err("zero partitions".into());
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "orders", "my.topic_v2-x", "..a"] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn meta_round_trip_and_corruption() {
        let meta = TopicMeta {
            partitions: 3,
            config: TopicConfig::compacted(),
        };
        let bytes = encode_meta(&meta);
        assert_eq!(decode_meta(&bytes).unwrap(), meta);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode_meta(&b).is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn create_list_open() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogDir::open(dir.path()).unwrap();
        let cfg = TopicConfig {
            segment_bytes: 1024,
            ..TopicConfig::default()
        };
        logs.create_topic("t", 2, cfg.clone()).unwrap();
        assert!(matches!(
            logs.create_topic("t", 2, cfg),
            Err(LogError::TopicExists(_))
        ));
        assert!(matches!(
            logs.topic("nope"),
            Err(LogError::TopicNotFound(_))
        ));
        assert!(matches!(
            logs.create_topic("../evil", 1, TopicConfig::default()),
            Err(LogError::InvalidTopicName { .. })
        ));
        let (mut p, _) = logs.open_partition("t", 1).unwrap();
        for i in 0..10 {
            p.append(i, b"k", Some(b"v")).unwrap();
        }
        p.sync().unwrap();
        assert!(matches!(
            logs.open_partition("t", 2),
            Err(LogError::PartitionOutOfRange {
                partition: 2,
                partitions: 2,
                ..
            })
        ));
        let topics = logs.list_topics().unwrap();
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].partitions[0].end_offset, 0);
        assert_eq!(topics[0].partitions[1].end_offset, 10);
        assert_eq!(topics[0].partitions[1].bytes, p.size_bytes());
        assert_eq!(logs.topic("t").unwrap().config().segment_bytes, 1024);
    }
}
