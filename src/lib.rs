//! # gregor
//!
//! Samza-style key-value state stores and a stateful stream-processing runtime.
//!
//! A stream job is split into **tasks**, one per input partition. Each task owns named
//! **stores** — RocksDB on disk or in memory — that are fast like local memory and survive
//! crashes like a database: every write is also appended to the store's **changelog**, state
//! is **restored** from it after a crash, and **checkpoints** tie input offsets to state so
//! each input message changes the state exactly once.
//!
//! Where things live:
//!
//! - [`store`]: the key-value contract ([`store::KeyValueStore`]), engines (RocksDB, memory)
//!   and layers (typed, metered, cached, logged).
//! - [`serde`]: key and value serdes named in config.
//! - [`log`]: the embedded partitioned log (segment files with CRC32C-framed records).
//! - [`changelog`]: the seam between stores and their changelog backend.
//! - [`restore`]: the pure restore planner and its executor.
//! - [`backend`]: the seam below the runtime: topics, readers, record sinks, checkpoints
//!   ([`backend::embedded`], [`backend::memory`]).
//! - [`task_storage`]: a task's stores, sink and checkpoint; the one owner of restore and
//!   commit.
//! - [`checkpoint`]: what a task had processed and stored at its last commit.
//! - [`runtime`]: job config, the task API, the container, built-in tasks.
//! - [`serve`]: the HTTP server: reads of any job's stores, the key-value service's writes,
//!   job status and metrics.
//! - [`snapshot`]: consistent snapshots (backups) of a stopped job's state, verified by
//!   checksums, incremental, and restored into a new state directory.
//! - [`partitioner`]: Kafka's murmur2 partitioner.
//! - [`statedir`]: the state directory layout and its lock.
//! - [`config`]: flat Samza-style config read from TOML.
//! - [`checked_file`], [`fsutil`]: atomic, checksummed small files.

#![warn(missing_docs)]
// Two `unsafe` blocks in the crate, documented where they are (`store::rocks`, a RocksDB
// snapshot that owns its database handle; `store::ttl::coarse_secs`, `time(NULL)`);
// everything else is safe Rust.
#![deny(unsafe_code)]
// Library code returns errors; an `expect` states the invariant that makes it unreachable.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backend;
pub mod changelog;
pub mod checked_file;
pub mod checkpoint;
pub mod config;
pub mod coordinator;
pub mod fsutil;
pub mod log;
pub mod partitioner;
pub mod restore;
pub mod runtime;
pub mod serde;
pub mod serve;
pub mod snapshot;
pub mod statedir;
pub mod store;
mod sync;
pub mod task_storage;
pub mod telemetry;
