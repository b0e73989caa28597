//! A store's configuration: engine, serdes, limits, cache and RocksDB options, read from
//! `stores.<name>.*` keys and saved in the store's manifest.

use serde::{Deserialize, Serialize};

use super::cached::{DEFAULT_OBJECT_CACHE_SIZE, DEFAULT_WRITE_BATCH_SIZE};
use super::limits::Limits;
use super::rocks::{Compression, RocksOptions};
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
    /// Key and value size limits (`max.value.bytes`, default 1 MiB; keys are at most 64 KiB).
    pub limits: Limits,
    /// `object.cache.size`: entries in the write-back cache; 0 disables the cache.
    pub object_cache_size: usize,
    /// `write.batch.size`: dirty entries written below in one batch.
    pub write_batch_size: usize,
    /// `rocksdb.*` options.
    pub rocksdb: RocksOptions,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: EngineKind::Rocksdb,
            key_serde: SerdeName::Bytes,
            value_serde: SerdeName::Bytes,
            changelog: None,
            limits: Limits::default(),
            object_cache_size: DEFAULT_OBJECT_CACHE_SIZE,
            write_batch_size: DEFAULT_WRITE_BATCH_SIZE,
            rocksdb: RocksOptions::default(),
        }
    }
}

const SERDES: &str = "bytes, string, u64, i64, json, postcard";

impl StoreConfig {
    /// Takes every `stores.<name>.*` key from `config`.
    pub fn from_flat(name: &str, config: &mut FlatConfig) -> Result<Self, ConfigError> {
        let k = |key: &str| format!("stores.{name}.{key}");
        let d = StoreConfig::default();
        let r = RocksOptions::default();
        let limits = Limits {
            max_key_bytes: d.limits.max_key_bytes,
            max_value_bytes: config
                .take_u64(&k("max.value.bytes"))?
                .map_or(d.limits.max_value_bytes, |v| v as usize),
        };
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
            changelog: config.take_str(&k("changelog"))?,
            limits,
            object_cache_size: config
                .take_u64(&k("object.cache.size"))?
                .map_or(d.object_cache_size, |v| v as usize),
            write_batch_size: config
                .take_u64(&k("write.batch.size"))?
                .map_or(d.write_batch_size, |v| v as usize),
            rocksdb: RocksOptions {
                block_cache_size: config
                    .take_u64(&k("rocksdb.block.cache.size"))?
                    .map_or(r.block_cache_size, |v| v as usize),
                write_buffer_size: config
                    .take_u64(&k("rocksdb.write.buffer.size"))?
                    .map_or(r.write_buffer_size, |v| v as usize),
                max_write_buffer_number: config
                    .take_u64(&k("rocksdb.max.write.buffer.number"))?
                    .map_or(r.max_write_buffer_number, |v| v.min(i32::MAX as u64) as i32),
                compression: config
                    .take_parsed(
                        &k("rocksdb.compression"),
                        "none, snappy, lz4, zstd",
                        Compression::parse,
                    )?
                    .unwrap_or(r.compression),
                bloom_filter_bits: config
                    .take_f64(&k("rocksdb.bloom.filter.bits"))?
                    .unwrap_or(r.bloom_filter_bits),
                wal_enabled: config
                    .take_bool(&k("rocksdb.wal.enabled"))?
                    .unwrap_or(r.wal_enabled),
                max_open_files: config
                    .take_i64(&k("rocksdb.max.open.files"))?
                    .map_or(r.max_open_files, |v| v.clamp(-1, i32::MAX as i64) as i32),
            },
        };
        if cfg.write_batch_size == 0 {
            return Err(ConfigError::Invalid {
                file: config.source().to_string(),
                key: k("write.batch.size"),
                message: "must be at least 1".into(),
            });
        }
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
        assert_eq!(s.object_cache_size, 0);
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
}
