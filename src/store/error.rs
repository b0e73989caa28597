//! The store error type: every failure names the store it happened in.

use std::io;
use std::path::PathBuf;

/// Errors from key-value stores and their layers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An empty key was given; Samza's stores refuse them too.
    #[error("store `{store}`: empty keys are not allowed")]
    EmptyKey {
        /// Store name.
        store: String,
    },
    /// A key larger than the store's key limit.
    #[error("store `{store}`: key of {size} bytes exceeds the limit of {limit} bytes")]
    KeyTooLarge {
        /// Store name.
        store: String,
        /// Size of the refused key.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A value larger than the store's value limit.
    #[error(
        "store `{store}`: value of {size} bytes exceeds the limit of {limit} bytes (stores.{store}.max.value.bytes)"
    )]
    ValueTooLarge {
        /// Store name.
        store: String,
        /// Size of the refused value.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A key or value could not be encoded or decoded by the store's serde.
    #[error("store `{store}`: cannot {action} {what} with serde `{serde}`: {message}")]
    Serde {
        /// Store name.
        store: String,
        /// `encode` or `decode`.
        action: &'static str,
        /// `key` or `value`.
        what: &'static str,
        /// The serde's config name.
        serde: &'static str,
        /// What went wrong.
        message: String,
    },
    /// An error from RocksDB. Its type stays inside the engine (`store::rocks`): nothing
    /// above the engine names `rocksdb::Error`.
    #[error("store `{store}`: RocksDB: {source}")]
    Rocks {
        /// Store name.
        store: String,
        /// The RocksDB error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file-system error.
    #[error("store `{store}`: {context} {}: {source}", path.display())]
    Io {
        /// Store name.
        store: String,
        /// What was being done.
        context: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Appending to or syncing the store's changelog failed.
    #[error("store `{store}`: changelog: {source}")]
    Changelog {
        /// Store name.
        store: String,
        /// The backend's error.
        #[source]
        source: crate::backend::BackendError,
    },
    /// A write failed earlier in a way that may have left the store ahead of its changelog;
    /// the store refuses every later write until it is reopened and restored.
    #[error("store `{store}` refuses writes after an earlier failure: {reason}")]
    Poisoned {
        /// Store name.
        store: String,
        /// The failure that poisoned it.
        reason: String,
    },
    /// A store's files or manifest are unreadable or inconsistent.
    #[error("store `{store}` is corrupt: {reason}")]
    Corrupt {
        /// Store name.
        store: String,
        /// What is wrong.
        reason: String,
    },
    /// The configuration of a store is invalid.
    #[error("store `{store}`: invalid config: {reason}")]
    Config {
        /// Store name.
        store: String,
        /// What is wrong.
        reason: String,
    },
    /// A write to a store its user may only read (a side-input store, filled from its topics).
    #[error("store `{store}` is read-only: {why}")]
    ReadOnly {
        /// Store name.
        store: String,
        /// Why, and where its contents come from.
        why: String,
    },
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
