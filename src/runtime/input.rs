//! A task's position in one input partition: a reader, the next offset to process, and how
//! far it may read (the committed end of another job's output, else the end at start).

use crate::checkpoint::Checkpoint;
use crate::log::{LogDir, LogError, PartitionReader};

use super::committed;
use super::error::{RuntimeError, log_err};

/// Where a task stands in one input partition.
pub(crate) struct Cursor {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) reader: PartitionReader,
    /// Next offset to process.
    pub(crate) next: u64,
    /// Read below this (the committed end for job outputs, else the end).
    pub(crate) limit: u64,
    /// `until_end` target: the limit at start.
    pub(crate) target: u64,
    /// Partition directory (to refresh the committed marker).
    dir: std::path::PathBuf,
    marked: bool,
}

impl Cursor {
    /// Positions task `task` in partition `p` of input `topic` at its checkpointed offset
    /// (or the start of the partition without one).
    pub(crate) fn open(
        logs: &LogDir,
        task: &str,
        topic: &str,
        p: u32,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Cursor, RuntimeError> {
        let t = logs.topic(topic).map_err(log_err(topic))?;
        let (mut part, _) = t.open_partition(p).map_err(log_err(topic))?;
        let dir = part.dir().to_path_buf();
        let marker = committed::read(&dir)?;
        let end = part.end_offset();
        let limit = marker.map_or(end, |m| m.min(end));
        let start = part.start_offset();
        let next = match checkpoint.and_then(|c| c.input(topic, p)) {
            Some(o) if o > end => {
                return Err(RuntimeError::InputBehindCheckpoint {
                    task: task.to_string(),
                    topic: topic.to_string(),
                    partition: p,
                    offset: o,
                    end,
                });
            }
            Some(o) if o < start => {
                tracing::warn!(
                    topic,
                    partition = p,
                    "checkpointed offset {o} was deleted by retention; resuming at {start}"
                );
                start
            }
            Some(o) => o,
            None => start,
        };
        let reader = part.reader(next).map_err(log_err(topic))?;
        Ok(Cursor {
            topic: topic.to_string(),
            partition: p,
            reader,
            next,
            limit,
            target: limit,
            dir,
            marked: marker.is_some(),
        })
    }

    /// Reopens the reader at `next` (it read past records that were not processed).
    pub(crate) fn reposition(&mut self) -> Result<(), LogError> {
        self.reader = PartitionReader::open(&self.dir, self.next)?;
        Ok(())
    }

    /// For another job's output: moves the limit up to its committed marker.
    pub(crate) fn refresh_limit(&mut self) -> Result<(), RuntimeError> {
        if self.marked {
            self.limit = committed::read(&self.dir)?
                .unwrap_or(self.limit)
                .max(self.limit);
        }
        Ok(())
    }
}
