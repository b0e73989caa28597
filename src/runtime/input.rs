//! A task's position in one input partition: a reader, the next offset to process, and how
//! far it may read (the backend's readable end: for another job's output on the embedded
//! log, what that job committed).

use crate::backend::{Backend, LogReader, TopicPartition};
use crate::checkpoint::Checkpoint;

use super::error::{RuntimeError, topic_err};

/// Where a task stands in one input partition.
pub(crate) struct Cursor {
    pub(crate) tp: TopicPartition,
    pub(crate) reader: Box<dyn LogReader>,
    /// Next offset to process.
    pub(crate) next: u64,
    /// Read below this.
    pub(crate) limit: u64,
    /// `until_end` target: the limit at start.
    pub(crate) target: u64,
}

impl Cursor {
    /// Positions task `task` in input partition `tp` at its checkpointed offset (or the
    /// start of the partition without one).
    pub(crate) fn open(
        backend: &dyn Backend,
        task: &str,
        tp: TopicPartition,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Cursor, RuntimeError> {
        let offsets = backend.offsets(&tp).map_err(topic_err(&tp.topic))?;
        let limit = backend.readable_end(&tp).map_err(topic_err(&tp.topic))?;
        let (start, end) = (offsets.start, offsets.end);
        let next = match checkpoint.and_then(|c| c.input(&tp.topic, tp.partition)) {
            Some(o) if o > end => {
                return Err(RuntimeError::InputBehindCheckpoint {
                    task: task.to_string(),
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: o,
                    end,
                });
            }
            Some(o) if o < start => {
                tracing::warn!(
                    topic = %tp.topic,
                    partition = tp.partition,
                    "checkpointed offset {o} was deleted by retention; resuming at {start}"
                );
                start
            }
            Some(o) => o,
            None => start,
        };
        let reader = backend
            .open_reader(&tp, next)
            .map_err(topic_err(&tp.topic))?;
        Ok(Cursor {
            tp,
            reader,
            next,
            limit,
            target: limit,
        })
    }

    /// Moves the reader back to `next` (it read past records that were not processed).
    pub(crate) fn reposition(&mut self) -> Result<(), RuntimeError> {
        self.reader
            .seek(self.next)
            .map_err(topic_err(&self.tp.topic))
    }

    /// Moves the limit up to what the backend now lets readers read. One quick try: when
    /// the backend does not answer the limit stays (the next refresh tries again), so a
    /// broker out of reach never holds up the loop that must hear the coordinator.
    pub(crate) fn refresh_limit(&mut self, backend: &dyn Backend) -> Result<(), RuntimeError> {
        match backend.readable_end_once(&self.tp) {
            Ok(end) => self.limit = self.limit.max(end),
            Err(e) => tracing::debug!(input = %self.tp, "input limit not refreshed: {e}"),
        }
        Ok(())
    }
}
