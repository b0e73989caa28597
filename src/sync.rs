//! The one policy for poisoned locks.
//!
//! A `Mutex` is poisoned when a thread panics while holding it. gregor recovers the guard
//! and goes on, everywhere, because what its locks guard stays truthful after a panic:
//! - partitions, changelogs and sinks poison *themselves* on any failed write or fsync (see
//!   [`crate::log::LogError::Poisoned`], [`crate::store::StoreError::Poisoned`]) before the
//!   error leaves them, so a panic cannot leave a half-applied write acknowledged;
//! - every other guarded value (index caches, delivery reports, checkpoint caches, the
//!   failpoint tables of tests) is replaced whole or appended to by operations that cannot
//!   panic half-way in a way that breaks it (a `Vec` or map push is panic-safe).
//!
//! Refusing every later call instead would turn one panicked task into a process that cannot
//! even commit its other tasks or report what happened. Every lock in the crate is taken
//! through [`lock`].

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the guard if an earlier holder panicked (see the module doc).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `m`, recovering the guard if an earlier holder panicked (see the module doc).
pub(crate) fn read<T: ?Sized>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `m`, recovering the guard if an earlier holder panicked (see the module doc).
pub(crate) fn write<T: ?Sized>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
