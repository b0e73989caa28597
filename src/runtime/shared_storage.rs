//! A task's storage shared between the run loop, which processes and commits the task, and
//! the HTTP workers, which read its stores between two of its batches without a hop
//! through the run loop ([`crate::serve::Serving::try_read`]).
//!
//! The run loop holds the lock for a whole batch (and a whole commit), so a direct read
//! sees the task's stores between batches, as a read answered by the run loop does: never
//! half a batch. A reader only ever *tries* the lock: when the run loop holds it, the read
//! goes through the run loop's channel instead, so an HTTP worker never waits for a batch.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::serve::DirectRead;
use crate::serve::query::{self, QueryError, ReadAnswer, ReadOp};
use crate::task_storage::{TaskStorage, TaskStoreError};

/// One open task's [`TaskStorage`], shared with the HTTP workers that read it.
pub(crate) struct SharedStorage {
    storage: Mutex<Option<TaskStorage>>,
    /// A message failed mid-batch: the stores may hold part of what it wrote until the task
    /// is rolled back, so nobody reads them directly any more.
    poisoned: AtomicBool,
}

impl SharedStorage {
    /// Shares `storage`.
    pub(crate) fn new(storage: TaskStorage) -> Self {
        SharedStorage {
            storage: Mutex::new(Some(storage)),
            poisoned: AtomicBool::new(false),
        }
    }

    /// The storage, for the run loop (held for a batch, a commit, a close).
    ///
    /// # Panics
    /// After [`close`](Self::close): the run loop drops a task when it closes it.
    pub(crate) fn lock(&self) -> StorageGuard<'_> {
        StorageGuard(crate::sync::lock(&self.storage))
    }

    /// No direct read from now on (a message failed mid-batch; call it with the lock held).
    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Closes the storage (see [`TaskStorage::close`]); direct reads are refused from now.
    pub(crate) fn close(&self) -> Result<(), TaskStoreError> {
        match crate::sync::lock(&self.storage).take() {
            Some(s) => s.close(),
            None => Ok(()),
        }
    }
}

impl DirectRead for SharedStorage {
    fn try_read(&self, store: &str, op: &ReadOp) -> Option<Result<ReadAnswer, QueryError>> {
        let mut guard = match self.storage.try_lock() {
            Ok(g) => g,
            // Busy, or a holder panicked (the run loop reports that): ask the run loop.
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => return None,
        };
        if self.poisoned.load(Ordering::SeqCst) {
            return None;
        }
        Some(read(guard.as_mut()?, store, op))
    }
}

/// `op` on the store stack of `store` in `storage` (write-back cache included): how both a
/// direct read and one the run loop answers are answered.
pub(crate) fn read(
    storage: &mut TaskStorage,
    store: &str,
    op: &ReadOp,
) -> Result<ReadAnswer, QueryError> {
    let s = storage
        .store(store)
        .ok_or_else(|| QueryError::NoStore(store.to_string()))?;
    query::run(op, s.stack()).map_err(QueryError::from)
}

/// The run loop's hold on a task's storage.
pub(crate) struct StorageGuard<'a>(MutexGuard<'a, Option<TaskStorage>>);

impl Deref for StorageGuard<'_> {
    type Target = TaskStorage;

    fn deref(&self) -> &TaskStorage {
        self.0
            .as_ref()
            .expect("a task's storage is used only until it is closed")
    }
}

impl DerefMut for StorageGuard<'_> {
    fn deref_mut(&mut self) -> &mut TaskStorage {
        self.0
            .as_mut()
            .expect("a task's storage is used only until it is closed")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::restore::NoProgress;
    use crate::statedir::StateDir;
    use crate::store::config::{EngineKind, StoreConfig};
    use crate::task_storage::TaskStorageContext;

    fn get(s: &SharedStorage, key: &[u8]) -> Option<Result<ReadAnswer, QueryError>> {
        s.try_read("s", &ReadOp::Get(key.to_vec()))
    }

    fn value(answer: Option<Result<ReadAnswer, QueryError>>) -> Option<Vec<u8>> {
        match answer {
            Some(Ok(ReadAnswer::Value(v))) => v,
            other => panic!("expected a value, got {other:?}"),
        }
    }

    #[test]
    fn direct_reads_see_writes_between_batches_and_nothing_while_held_poisoned_or_closed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let ctx = TaskStorageContext {
            backend: Arc::new(MemoryBackend::new()),
            state: &state,
            task: "t",
            changelog_partition: 0,
        };
        let config = StoreConfig {
            engine: EngineKind::Memory,
            changelog: Some("s-changelog".into()),
            ..StoreConfig::default()
        };
        let configs = BTreeMap::from([("s".to_string(), config)]);
        let (storage, _) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
        let shared = SharedStorage::new(storage);
        assert_eq!(value(get(&shared, b"k")), None);
        {
            // A batch holds the stores: a direct read steps aside, even after its write.
            let mut batch = shared.lock();
            batch.store("s").unwrap().stack().put(b"k", b"v1").unwrap();
            assert!(get(&shared, b"k").is_none(), "a direct read during a batch");
        }
        // Between batches it sees the write, from the write-back cache (not committed).
        assert_eq!(value(get(&shared, b"k")), Some(b"v1".to_vec()));
        assert!(matches!(
            shared.try_read("nope", &ReadOp::Get(b"k".to_vec())),
            Some(Err(QueryError::NoStore(s))) if s == "nope"
        ));
        {
            let mut batch = shared.lock();
            batch
                .store("s")
                .unwrap()
                .stack()
                .put(b"k", b"half")
                .unwrap();
            shared.poison();
        }
        assert!(
            get(&shared, b"k").is_none(),
            "a poisoned task is read directly"
        );
        shared.close().unwrap();
        assert!(
            get(&shared, b"k").is_none(),
            "a closed task is read directly"
        );
        shared.close().unwrap();
    }
}
