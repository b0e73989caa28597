//! gregor's on-disk decoders, compiled from gregor's own sources (the same files, not
//! copies), for the fuzz targets: the log (segment frames, recovery scan, strict reader),
//! checked small files (checkpoint, `OFFSET`, `COMMITTED`, store manifests, the topic role
//! registry all use this framing) and checkpoints. Including the files by path keeps
//! RocksDB and librdkafka out of the instrumented build; the modules only use each other
//! (`crate::log`, `crate::fsutil`, `crate::checked_file`, `crate::sync`).
#![allow(dead_code, unused_imports, missing_docs)]

#[path = "../../src/checked_file.rs"]
pub mod checked_file;
#[path = "../../src/checkpoint.rs"]
pub mod checkpoint;
#[path = "../../src/fsutil.rs"]
pub mod fsutil;
#[path = "../../src/log/mod.rs"]
pub mod log;
#[path = "../../src/sync.rs"]
mod sync;
