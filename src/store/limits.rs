//! Size limits on keys and values, checked before anything is written.

use super::{Mutation, Result, StoreError};

/// Default largest key: 64 KiB.
pub const DEFAULT_MAX_KEY_BYTES: usize = 64 * 1024;
/// Default largest value: 1 MiB, like Samza's `changelog.max.message.size.bytes`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The size limits of one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl Limits {
    /// Checks one key.
    pub fn check_key(&self, store: &str, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(StoreError::EmptyKey {
                store: store.to_string(),
            });
        }
        if key.len() > self.max_key_bytes {
            return Err(StoreError::KeyTooLarge {
                store: store.to_string(),
                size: key.len(),
                limit: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks one mutation.
    pub fn check(&self, store: &str, m: &Mutation) -> Result<()> {
        self.check_ref(store, &m.key, m.value.as_deref())
    }

    /// Checks one write given by reference (`value: None` for a delete).
    pub fn check_ref(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        self.check_key(store, key)?;
        if let Some(v) = value
            && v.len() > self.max_value_bytes
        {
            return Err(StoreError::ValueTooLarge {
                store: store.to_string(),
                size: v.len(),
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Checks a whole batch; the first offending mutation is reported.
    pub fn check_batch(&self, store: &str, batch: &[Mutation]) -> Result<()> {
        batch.iter().try_for_each(|m| self.check(store, m))
    }

    /// [`check_batch`](Self::check_batch) for writes by reference.
    pub fn check_refs(&self, store: &str, batch: &[super::MutationRef<'_>]) -> Result<()> {
        batch
            .iter()
            .try_for_each(|m| self.check_ref(store, m.key, m.value))
    }
}
