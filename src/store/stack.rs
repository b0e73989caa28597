//! Opening a store on disk: its manifest, its engine, and the layers config asks for.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cached::{CacheBudget, CacheSettings, CachedStore};
use super::config::{EngineKind, StoreConfig};
use super::memory::MemoryEngine;
use super::metered::MeteredStore;
use super::rocks::RocksEngine;
use super::ttl::{TtlSettings, TtlStore};
use super::{Engine, KeyValueStore, Result, StoreError};
use crate::checked_file::{self, CheckedFileError};
use crate::telemetry::StoreLabels;

/// The manifest file in a store directory.
pub const MANIFEST_FILE: &str = "store.json";
/// The committed changelog offset file in a store directory.
pub const OFFSET_FILE: &str = "OFFSET";
/// The engine's data directory inside a store directory.
pub const DATA_DIR: &str = "data";

/// What a store directory says about itself, so tools can open it without the job config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The store's name.
    pub store: String,
    /// Its configuration when it was created or last opened by a job.
    pub config: StoreConfig,
    /// The changelog partition its task writes.
    #[serde(default)]
    pub changelog_partition: u32,
}

fn checked(store: &str, e: CheckedFileError) -> StoreError {
    match e {
        CheckedFileError::Io { path, source } => StoreError::Io {
            store: store.to_string(),
            context: "cannot access",
            path: PathBuf::from(path),
            source,
        },
        CheckedFileError::Corrupt { path, reason } => StoreError::Corrupt {
            store: store.to_string(),
            reason: format!("{path}: {reason}"),
        },
    }
}

/// Reads the manifest of the store in `dir`, if there is one.
pub fn read_manifest(store: &str, dir: &Path) -> Result<Option<Manifest>> {
    let Some(bytes) =
        checked_file::read(&dir.join(MANIFEST_FILE)).map_err(|e| checked(store, e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            store: store.to_string(),
            reason: format!("{MANIFEST_FILE}: {e}"),
        })
}

/// Writes the manifest of the store in `dir` (creating `dir`).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        store: manifest.store.clone(),
        context: "cannot create",
        path: dir.to_path_buf(),
        source,
    })?;
    let bytes = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    checked_file::write(&dir.join(MANIFEST_FILE), &bytes).map_err(|e| checked(&manifest.store, e))
}

/// Reads the committed changelog offset (`OFFSET` file) of the store in `dir`.
pub fn read_offset_file(store: &str, dir: &Path) -> Result<Option<u64>> {
    let Some(bytes) = checked_file::read(&dir.join(OFFSET_FILE)).map_err(|e| checked(store, e))?
    else {
        return Ok(None);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt {
            store: store.to_string(),
            reason: format!("{OFFSET_FILE} does not hold a number"),
        })
}

/// Atomically writes the committed changelog offset of the store in `dir`.
pub fn write_offset_file(store: &str, dir: &Path, offset: u64) -> Result<()> {
    checked_file::write(&dir.join(OFFSET_FILE), offset.to_string().as_bytes())
        .map_err(|e| checked(store, e))
}

/// Checks that an existing store's manifest is compatible with the config it is opened with:
/// the engine and serdes decide how the bytes on disk are read, so they must not change.
pub fn check_compatible(name: &str, on_disk: &StoreConfig, wanted: &StoreConfig) -> Result<()> {
    let mismatch = |what: &str, a: &str, b: &str| {
        Err(StoreError::Config {
            store: name.to_string(),
            reason: format!(
                "{what} is \"{a}\" on disk but \"{b}\" in the config; restore into a new store to change it"
            ),
        })
    };
    if on_disk.engine != wanted.engine {
        return mismatch("engine", on_disk.engine.as_str(), wanted.engine.as_str());
    }
    if on_disk.key_serde != wanted.key_serde {
        return mismatch(
            "key.serde",
            on_disk.key_serde.as_str(),
            wanted.key_serde.as_str(),
        );
    }
    if on_disk.value_serde != wanted.value_serde {
        return mismatch(
            "value.serde",
            on_disk.value_serde.as_str(),
            wanted.value_serde.as_str(),
        );
    }
    if on_disk.ttl_ms.is_some() != wanted.ttl_ms.is_some() {
        let (a, b) = match on_disk.ttl_ms {
            Some(_) => ("set", "not"),
            None => ("not set", "set"),
        };
        return Err(StoreError::Config {
            store: name.to_string(),
            reason: format!(
                "stores.{name}.ttl.ms was {a} when the store was created but is {b} in the config: values of a store with expiry times carry a header, so TTL can only be turned on or off in a new store (changing the ttl.ms value is fine)"
            ),
        });
    }
    Ok(())
}

/// Opens the engine of store `name` in `dir` as `config` says.
pub fn open_engine(name: &str, dir: &Path, config: &StoreConfig) -> Result<Box<dyn Engine>> {
    Ok(match config.engine {
        EngineKind::Memory => Box::new(MemoryEngine::new(name, config.stored_limits())),
        EngineKind::Rocksdb => {
            let data = dir.join(DATA_DIR);
            std::fs::create_dir_all(&data).map_err(|source| StoreError::Io {
                store: name.to_string(),
                context: "cannot create",
                path: data.clone(),
                source,
            })?;
            Box::new(RocksEngine::open(
                name,
                &data,
                config.stored_limits(),
                &config.rocksdb,
            )?)
        }
    })
}

/// Adds the cache (unless `cache.max.bytes` or `object.cache.size` is 0), the TTL layer
/// (with `ttl.ms`) and the metrics layer above `inner`, with metrics labelled with the store name only.
pub fn add_layers(inner: Box<dyn KeyValueStore>, config: &StoreConfig) -> Box<dyn KeyValueStore> {
    let labels = StoreLabels::store(inner.name());
    add_layers_labelled(inner, config, &labels)
}

/// [`add_layers`] with metrics labelled `labels` (a task's store: job, task, store).
///
/// The cache is bounded by `cache.max.bytes` and by an even share of the process's
/// `job.cache.max.bytes` ([`CacheBudget::process`]); Samza's `object.cache.size` and
/// `write.batch.size`, when set, bound its entries and dirty entries as well.
pub fn add_layers_labelled(
    inner: Box<dyn KeyValueStore>,
    config: &StoreConfig,
    labels: &StoreLabels,
) -> Box<dyn KeyValueStore> {
    let ttl = config.ttl_ms.map(|ttl_ms| TtlSettings {
        ttl_ms,
        cleanup_entries: config.ttl_cleanup_entries,
        limits: config.limits,
        clock: config.clock.clone(),
    });
    let inner: Box<dyn KeyValueStore> = if config.cached() {
        let settings = CacheSettings {
            max_bytes: config.cache_max_bytes,
            max_entries: config.object_cache_size,
            write_batch_size: config.write_batch_size,
        };
        let budget = CacheBudget::process(config.process_cache_max_bytes);
        let cache = CachedStore::sized(inner, config.stored_limits(), settings, budget)
            .with_metrics(labels);
        match ttl {
            Some(ttl) => Box::new(TtlStore::over_cache(cache, ttl).with_metrics(labels)),
            None => Box::new(cache),
        }
    } else {
        match ttl {
            Some(ttl) => Box::new(TtlStore::new(inner, ttl).with_metrics(labels)),
            None => inner,
        }
    };
    Box::new(MeteredStore::with_labels(
        inner,
        labels,
        config.latency_histograms,
    ))
}
