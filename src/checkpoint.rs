//! Task checkpoints: the input offsets a task has processed and the changelog end of each
//! of its stores, written together at the end of every commit. After a crash the task's
//! stores are restored to exactly these changelog ends and its inputs resume at exactly
//! these offsets, so every input message changes the state once.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checked_file::{self, CheckedFileError};

/// What a task had done at its last commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Per input topic, per partition: the next offset to process.
    pub inputs: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Per store: the end of its changelog partition at the commit.
    pub changelogs: BTreeMap<String, u64>,
    /// Per output topic, per partition: the end of the output written by the job at this
    /// commit (used to drop uncommitted output after a crash).
    #[serde(default)]
    pub outputs: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Who wrote it, when a coordinator assigns the job's tasks to processes (absent
    /// otherwise): lets anyone check that no two processes committed a task under one job
    /// model version, and that a task's checkpoints never go back to an older version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<CheckpointOwner>,
}

/// The process that wrote a checkpoint and the job model version under which it ran the
/// task (see [`crate::coordinator`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointOwner {
    /// The process (its member id in the coordinator).
    pub member: String,
    /// The job model version that assigned the task to it.
    pub generation: u64,
}

/// A checkpoint file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed, or the file is corrupt.
    #[error("checkpoint: {0}")]
    File(#[from] CheckedFileError),
    /// The file's checksum is fine but its content is not a checkpoint.
    #[error("checkpoint {path}: not a valid checkpoint: {message}")]
    Format {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
}

impl Checkpoint {
    /// Reads the checkpoint at `path`; `Ok(None)` if there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, CheckpointError> {
        let Some(bytes) = checked_file::read(path)? else {
            return Ok(None);
        };
        Self::from_bytes(&bytes)
            .map(Some)
            .map_err(|message| CheckpointError::Format {
                path: path.display().to_string(),
                message,
            })
    }

    /// Decodes a checkpoint from a checked file's payload (JSON); the error says what is
    /// wrong with it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The payload [`from_bytes`](Self::from_bytes) decodes (pretty JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self)
            .expect("serde_json cannot fail on plain structs with string or integer keys")
    }

    /// Atomically writes the checkpoint to `path` (creating its directory).
    pub fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CheckedFileError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        checked_file::write(path, &self.to_bytes())?;
        Ok(())
    }

    /// The next offset to process of `topic` partition `partition`, if checkpointed.
    pub fn input(&self, topic: &str, partition: u32) -> Option<u64> {
        self.inputs
            .get(topic)
            .and_then(|p| p.get(&partition))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t/checkpoint");
        assert!(Checkpoint::read(&path).unwrap().is_none());
        let mut c = Checkpoint::default();
        c.inputs.entry("in".into()).or_default().insert(3, 42);
        c.changelogs.insert("counts".into(), 7);
        c.write(&path).unwrap();
        assert_eq!(Checkpoint::read(&path).unwrap().unwrap(), c);
        assert_eq!(c.input("in", 3), Some(42));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let e = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("checkpoint"), "{e}");
    }
}
