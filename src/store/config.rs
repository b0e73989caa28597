//! A store's configuration: engine, serdes, limits, cache and RocksDB options, read from
//! `stores.<name>.*` keys and saved in the store's manifest.

use serde::{Deserialize, Serialize};

use super::cached::{DEFAULT_CACHE_MAX_BYTES, DEFAULT_PROCESS_CACHE_MAX_BYTES};
use super::limits::Limits;
use super::rocks::{Compression, RocksOptions};
use super::ttl::{Clock, HEADER_BYTES};
use crate::config::{ConfigError, FlatConfig};
use crate::serde::SerdeName;

/// Where a store keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// RocksDB on disk (the default).
    #[default]
    Rocksdb,
    /// In memory, rebuilt from the changelog on every start.
    Memory,
}

impl EngineKind {
    /// Parses a config value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rocksdb" => Some(EngineKind::Rocksdb),
            "memory" => Some(EngineKind::Memory),
            _ => None,
        }
    }

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Rocksdb => "rocksdb",
            EngineKind::Memory => "memory",
        }
    }
}

/// `guarantee`: what a store promises about input applied to it across crashes. Only a
/// store without a changelog can be weaker than exactly-once, and only if the job says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Guarantee {
    /// Every input message changes the store once, also across crashes (the default; needs
    /// a changelog).
    #[default]
    ExactlyOnce,
    /// Every committed input message changes the store at least once: after a crash the
    /// input since the last checkpoint is processed again on top of whatever the engine kept,
    /// so counts can be too high. The opt-in for a RocksDB store without a changelog.
    AtLeastOnce,
}

impl Guarantee {
    /// Parses a config value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exactly-once" => Some(Guarantee::ExactlyOnce),
            "at-least-once" => Some(Guarantee::AtLeastOnce),
            _ => None,
        }
    }

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::AtLeastOnce => "at-least-once",
        }
    }
}

/// The configuration of one store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// `engine`: `rocksdb` (default) or `memory`.
    pub engine: EngineKind,
    /// `key.serde` (default `bytes`).
    pub key_serde: SerdeName,
    /// `value.serde` (default `bytes`).
    pub value_serde: SerdeName,
    /// `changelog`: the changelog topic, or none for a store without one.
    pub changelog: Option<String>,
    /// `guarantee`: `exactly-once` (default) or `at-least-once` (the opt-in a job needs for
    /// a store without a changelog; see [`Guarantee`]).
    #[serde(default)]
    pub guarantee: Guarantee,
    /// Key and value size limits (`max.value.bytes`, default 1 MiB; keys are at most 64 KiB).
    pub limits: Limits,
    /// `cache.max.bytes`: the most memory the store's write-back cache holds (default 32 MiB;
    /// 0 disables the cache). Dirty entries are written below at the commit, or earlier when
    /// they pass half of it.
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: usize,
    /// `object.cache.size` (Samza): if set, the most entries the cache holds as well; 0
    /// disables the cache.
    #[serde(default)]
    pub object_cache_size: Option<usize>,
    /// `write.batch.size` (Samza): if set, dirty entries are also written below as soon as
    /// this many are dirty.
    #[serde(default)]
    pub write_batch_size: Option<usize>,
    /// `job.cache.max.bytes`, copied from the job: the memory all the caches of the process
    /// share (each store's cache is limited to an even share of it).
    #[serde(default = "default_process_cache_max_bytes")]
    pub process_cache_max_bytes: usize,
    /// `metrics.recording.level = "debug"`, copied from the job: per-operation latency
    /// histograms (a clock read per operation). Off by default.
    #[serde(default)]
    pub latency_histograms: bool,
    /// `rocksdb.*` options.
    pub rocksdb: RocksOptions,
    /// `ttl.ms`: if set, every entry expires this long after its write (unless the write
    /// gives its own TTL), and values carry an expiry header (see [`crate::store::ttl`]).
    /// Set or unset only when the store is created; the value may change (new writes).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// `ttl.cleanup.entries`: the most entries one expiry pass (one per commit) examines
    /// (default 10000).
    #[serde(default = "default_ttl_cleanup_entries")]
    pub ttl_cleanup_entries: usize,
    /// The clock deadlines are read from (the system clock; tests set their own). Not
    /// configuration: not saved, and never makes two configs differ.
    #[serde(skip)]
    pub clock: Clock,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: EngineKind::Rocksdb,
            key_serde: SerdeName::Bytes,
            value_serde: SerdeName::Bytes,
            changelog: None,
            guarantee: Guarantee::ExactlyOnce,
            limits: Limits::default(),
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            object_cache_size: None,
            write_batch_size: None,
            process_cache_max_bytes: DEFAULT_PROCESS_CACHE_MAX_BYTES,
            latency_histograms: false,
            rocksdb: RocksOptions::default(),
            ttl_ms: None,
            ttl_cleanup_entries: DEFAULT_TTL_CLEANUP_ENTRIES,
            clock: Clock::System,
        }
    }
}

fn default_ttl_cleanup_entries() -> usize {
    DEFAULT_TTL_CLEANUP_ENTRIES
}

fn default_cache_max_bytes() -> usize {
    DEFAULT_CACHE_MAX_BYTES
}

fn default_process_cache_max_bytes() -> usize {
    DEFAULT_PROCESS_CACHE_MAX_BYTES
}

impl StoreConfig {
    /// Whether the store gets a write-back cache (`cache.max.bytes` and `object.cache.size`
    /// not 0).
    pub fn cached(&self) -> bool {
        self.cache_max_bytes > 0 && self.object_cache_size != Some(0)
    }

    /// The limits of the bytes the layers below the TTL layer hold: values
    /// [`HEADER_BYTES`] longer than users may write when the store has `ttl.ms`.
    pub fn stored_limits(&self) -> Limits {
        let mut l = self.limits;
        if self.ttl_ms.is_some() {
            l.max_value_bytes += HEADER_BYTES;
        }
        l
    }
}

const SERDES: &str = "bytes, string, u64, i64, json, postcard";

/// Largest `max.value.bytes`: a value this large with the largest key still fits one record of
/// the log (the changelog), so every value a store accepts can be logged.
pub const MAX_MAX_VALUE_BYTES: u64 = (crate::log::record::MAX_PAYLOAD_LEN
    - crate::log::record::MIN_PAYLOAD_LEN) as u64
    - super::limits::DEFAULT_MAX_KEY_BYTES as u64;
/// Largest `object.cache.size` and `write.batch.size` (entries): the cache allocates its
/// table up front, so a typo of a few zeros must not take the machine's memory.
pub const MAX_CACHE_ENTRIES: u64 = 10_000_000;
/// Largest `cache.max.bytes` and `job.cache.max.bytes`: 1 TiB.
pub const MAX_CACHE_BYTES: u64 = 1 << 40;
/// Default `ttl.cleanup.entries`.
pub const DEFAULT_TTL_CLEANUP_ENTRIES: usize = 10_000;
/// Largest `ttl.ms`: about 100 years.
pub const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// Largest `rocksdb.block.cache.size` (bytes): 1 TiB.
pub const MAX_BLOCK_CACHE_BYTES: u64 = 1 << 40;
/// Smallest and largest `rocksdb.write.buffer.size` (bytes): 64 KiB (RocksDB's own minimum)
/// to 4 GiB.
pub const WRITE_BUFFER_BYTES: std::ops::RangeInclusive<u64> = (64 << 10)..=(4 << 30);
/// Allowed `rocksdb.max.write.buffer.number`.
pub const MAX_WRITE_BUFFERS: std::ops::RangeInclusive<u64> = 1..=64;
/// Allowed `rocksdb.bloom.filter.bits` besides 0 (no filter): RocksDB's own bounds.
pub const BLOOM_FILTER_BITS: std::ops::RangeInclusive<f64> = 1.0..=100.0;
/// Allowed `rocksdb.max.open.files` besides -1 (no limit): RocksDB raises anything below 20
/// to 20.
pub const MAX_OPEN_FILES: std::ops::RangeInclusive<i64> = 20..=(i32::MAX as i64);

impl StoreConfig {
    /// Takes every `stores.<name>.*` key from `config`. A number out of its allowed range (see
    /// the constants of this module) is an error naming the key, the file and the range.
    pub fn from_flat(name: &str, config: &mut FlatConfig) -> Result<Self, ConfigError> {
        let k = |key: &str| format!("stores.{name}.{key}");
        let d = StoreConfig::default();
        let r = RocksOptions::default();
        let limits = Limits {
            max_key_bytes: d.limits.max_key_bytes,
            max_value_bytes: config
                .take_u64_in(&k("max.value.bytes"), 1..=MAX_MAX_VALUE_BYTES)?
                .map_or(d.limits.max_value_bytes, |v| v as usize),
        };
        let ttl_ms = config.take_u64_in(&k("ttl.ms"), 1..=MAX_TTL_MS)?;
        let ttl_cleanup_entries = config
            .take_u64_in(&k("ttl.cleanup.entries"), 1..=MAX_CACHE_ENTRIES)?
            .map(|v| v as usize);
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: config.source().to_string(),
            key: k(key),
            message,
        };
        if ttl_cleanup_entries.is_some() && ttl_ms.is_none() {
            return Err(invalid(
                "ttl.cleanup.entries",
                format!(
                    "only a store with expiry times has it: set {} too",
                    k("ttl.ms")
                ),
            ));
        }
        if ttl_ms.is_some()
            && limits.max_value_bytes as u64 > MAX_MAX_VALUE_BYTES - HEADER_BYTES as u64
        {
            return Err(invalid(
                "max.value.bytes",
                format!(
                    "with {} values carry a {HEADER_BYTES}-byte expiry header: at most {}",
                    k("ttl.ms"),
                    MAX_MAX_VALUE_BYTES - HEADER_BYTES as u64
                ),
            ));
        }
        let changelog = config.take_str(&k("changelog"))?;
        if let Some(topic) = &changelog {
            crate::log::validate_topic_name(topic).map_err(|e| ConfigError::Invalid {
                file: config.source().to_string(),
                key: k("changelog"),
                message: e.to_string(),
            })?;
        }
        let cfg = StoreConfig {
            engine: config
                .take_parsed(&k("engine"), "rocksdb, memory", EngineKind::parse)?
                .unwrap_or_default(),
            key_serde: config
                .take_parsed(&k("key.serde"), SERDES, SerdeName::parse)?
                .unwrap_or(d.key_serde),
            value_serde: config
                .take_parsed(&k("value.serde"), SERDES, SerdeName::parse)?
                .unwrap_or(d.value_serde),
            changelog,
            guarantee: config
                .take_parsed(
                    &k("guarantee"),
                    "exactly-once, at-least-once",
                    Guarantee::parse,
                )?
                .unwrap_or_default(),
            limits,
            cache_max_bytes: config
                .take_u64_in(&k("cache.max.bytes"), 0..=MAX_CACHE_BYTES)?
                .map_or(d.cache_max_bytes, |v| v as usize),
            object_cache_size: config
                .take_u64_in(&k("object.cache.size"), 0..=MAX_CACHE_ENTRIES)?
                .map(|v| v as usize),
            write_batch_size: config
                .take_u64_in(&k("write.batch.size"), 1..=MAX_CACHE_ENTRIES)?
                .map(|v| v as usize),
            process_cache_max_bytes: d.process_cache_max_bytes,
            latency_histograms: false,
            rocksdb: RocksOptions {
                block_cache_size: config
                    .take_u64_in(&k("rocksdb.block.cache.size"), 0..=MAX_BLOCK_CACHE_BYTES)?
                    .map_or(r.block_cache_size, |v| v as usize),
                write_buffer_size: config
                    .take_u64_in(&k("rocksdb.write.buffer.size"), WRITE_BUFFER_BYTES)?
                    .map_or(r.write_buffer_size, |v| v as usize),
                max_write_buffer_number: config
                    .take_u64_in(&k("rocksdb.max.write.buffer.number"), MAX_WRITE_BUFFERS)?
                    .map_or(r.max_write_buffer_number, |v| v as i32),
                compression: config
                    .take_parsed(
                        &k("rocksdb.compression"),
                        "none, snappy, lz4, zstd",
                        Compression::parse,
                    )?
                    .unwrap_or(r.compression),
                bloom_filter_bits: config
                    .take_f64_in(
                        &k("rocksdb.bloom.filter.bits"),
                        Some(0.0),
                        BLOOM_FILTER_BITS,
                    )?
                    .unwrap_or(r.bloom_filter_bits),
                wal_enabled: config
                    .take_bool(&k("rocksdb.wal.enabled"))?
                    .unwrap_or(r.wal_enabled),
                max_open_files: config
                    .take_i64_in(&k("rocksdb.max.open.files"), Some(-1), MAX_OPEN_FILES)?
                    .map_or(r.max_open_files, |v| v as i32),
            },
            ttl_ms,
            ttl_cleanup_entries: ttl_cleanup_entries.unwrap_or(DEFAULT_TTL_CLEANUP_ENTRIES),
            clock: Clock::System,
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samza_style_keys() {
        let text = r#"
            [stores.counts]
            engine = "memory"
            key.serde = "string"
            value.serde = "u64"
            changelog = "counts-changelog"
            object.cache.size = 0
            rocksdb.compression = "zstd"
            rocksdb.wal.enabled = true
        "#;
        let mut c = FlatConfig::from_toml_str("job.toml", text).unwrap();
        let s = StoreConfig::from_flat("counts", &mut c).unwrap();
        c.finish().unwrap();
        assert_eq!(s.engine, EngineKind::Memory);
        assert_eq!(
            (s.key_serde, s.value_serde),
            (SerdeName::String, SerdeName::U64)
        );
        assert_eq!(s.changelog.as_deref(), Some("counts-changelog"));
        assert_eq!(s.object_cache_size, Some(0));
        assert!(!s.cached());
        assert_eq!(s.rocksdb.compression, Compression::Zstd);
        assert!(s.rocksdb.wal_enabled);
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut c =
            FlatConfig::from_toml_str("job.toml", "[stores.s]\nkey.serde = \"yaml\"").unwrap();
        let e = StoreConfig::from_flat("s", &mut c).unwrap_err().to_string();
        assert!(
            e.contains("stores.s.key.serde") && e.contains("yaml") && e.contains("job.toml"),
            "{e}"
        );
    }

    /// Parses `stores.s.<key> = <value>` alone.
    fn store_with(key: &str, value: &str) -> Result<StoreConfig, String> {
        let mut c =
            FlatConfig::from_toml_str("job.toml", &format!("[stores.s]\n{key} = {value}")).unwrap();
        StoreConfig::from_flat("s", &mut c).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_out_of_range_are_refused_naming_key_and_range() {
        for (key, value, range) in [
            (
                "rocksdb.write.buffer.size",
                "0",
                "between 65536 and 4294967296",
            ),
            (
                "rocksdb.write.buffer.size",
                "-1",
                "between 65536 and 4294967296",
            ),
            (
                "rocksdb.write.buffer.size",
                "8589934592",
                "between 65536 and 4294967296",
            ),
            ("rocksdb.bloom.filter.bits", "-3", "0 or between 1 and 100"),
            ("rocksdb.bloom.filter.bits", "0.5", "0 or between 1 and 100"),
            (
                "rocksdb.bloom.filter.bits",
                "1000",
                "0 or between 1 and 100",
            ),
            ("rocksdb.bloom.filter.bits", "nan", "0 or between 1 and 100"),
            ("rocksdb.max.write.buffer.number", "0", "between 1 and 64"),
            (
                "rocksdb.max.write.buffer.number",
                "99999999999",
                "between 1 and 64",
            ),
            ("rocksdb.max.open.files", "-5", "-1 or between 20 and"),
            ("rocksdb.max.open.files", "5", "-1 or between 20 and"),
            (
                "rocksdb.max.open.files",
                "99999999999",
                "-1 or between 20 and",
            ),
            (
                "rocksdb.block.cache.size",
                "-1",
                "between 0 and 1099511627776",
            ),
            (
                "rocksdb.block.cache.size",
                "9999999999999999",
                "between 0 and",
            ),
            (
                "object.cache.size",
                "1000000000000",
                "between 0 and 10000000",
            ),
            ("write.batch.size", "0", "between 1 and 10000000"),
            (
                "write.batch.size",
                "1000000000000",
                "between 1 and 10000000",
            ),
            ("max.value.bytes", "0", "between 1 and"),
            ("cache.max.bytes", "-1", "between 0 and 1099511627776"),
            (
                "cache.max.bytes",
                "2000000000000",
                "between 0 and 1099511627776",
            ),
            ("max.value.bytes", "67108864", "between 1 and 67043304"),
        ] {
            let e = store_with(key, value).expect_err(&format!("{key} = {value} accepted"));
            assert!(
                e.contains("job.toml")
                    && e.contains(&format!("stores.s.{key}"))
                    && e.contains(range),
                "{key} = {value}: {e}"
            );
        }
    }

    #[test]
    fn numbers_in_range_are_accepted() {
        let s = store_with("rocksdb.bloom.filter.bits", "0").unwrap();
        assert_eq!(s.rocksdb.bloom_filter_bits, 0.0);
        let s = store_with("rocksdb.bloom.filter.bits", "12.5").unwrap();
        assert_eq!(s.rocksdb.bloom_filter_bits, 12.5);
        let s = store_with("rocksdb.write.buffer.size", "65536").unwrap();
        assert_eq!(s.rocksdb.write_buffer_size, 65536);
        let s = store_with("rocksdb.max.open.files", "-1").unwrap();
        assert_eq!(s.rocksdb.max_open_files, -1);
        let s = store_with("max.value.bytes", &MAX_MAX_VALUE_BYTES.to_string()).unwrap();
        assert_eq!(s.limits.max_value_bytes as u64, MAX_MAX_VALUE_BYTES);
        // The largest value with the largest key still fits one changelog record.
        assert!(
            crate::log::record::payload_len(s.limits.max_key_bytes, Some(s.limits.max_value_bytes))
                <= crate::log::record::MAX_PAYLOAD_LEN
        );
        let s = store_with("object.cache.size", "0").unwrap();
        assert_eq!(s.object_cache_size, Some(0));
        assert!(!s.cached());
        let s = store_with("cache.max.bytes", "0").unwrap();
        assert!(!s.cached());
        let s = store_with("cache.max.bytes", "1048576").unwrap();
        assert_eq!((s.cache_max_bytes, s.cached()), (1 << 20, true));
        let d = store_with("max.value.bytes", "10").unwrap();
        assert_eq!(
            (d.cache_max_bytes, d.object_cache_size, d.write_batch_size),
            (DEFAULT_CACHE_MAX_BYTES, None, None),
            "the default cache is sized in bytes, flushed at commit"
        );
    }

    #[test]
    fn a_changelog_with_a_bad_topic_name_is_refused() {
        let e = store_with("changelog", "\"a/b\"").unwrap_err();
        assert!(e.contains("stores.s.changelog") && e.contains("a/b"), "{e}");
    }
}
