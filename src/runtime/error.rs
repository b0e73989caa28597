//! Why a job could not start or stopped: [`RuntimeError`].

use crate::checkpoint::CheckpointError;
use crate::log::LogError;
use crate::task_stores::TaskStoreError;

use super::task::TaskError;

/// A job could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An input topic does not exist.
    #[error(
        "input topic `{topic}` does not exist (create it with `gregor topic create {topic} --partitions N`)"
    )]
    NoInput {
        /// The topic.
        topic: String,
    },
    /// A changelog topic has fewer partitions than the job has tasks.
    #[error("changelog topic `{topic}` has {has} partitions but the job has {needs} tasks")]
    ChangelogPartitions {
        /// The topic.
        topic: String,
        /// Partitions it has.
        has: u32,
        /// Tasks of the job.
        needs: u32,
    },
    /// Two stores share a changelog topic.
    #[error("stores `{a}` and `{b}` both use changelog topic `{topic}`; each store needs its own")]
    SharedChangelog {
        /// The topic.
        topic: String,
        /// One store.
        a: String,
        /// The other.
        b: String,
    },
    /// A checkpointed input offset lies past the end of the input.
    #[error(
        "task `{task}`: checkpoint says input {topic}/{partition} was read up to {offset}, but it ends at {end}: the input lost data"
    )]
    InputBehindCheckpoint {
        /// Task.
        task: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Checkpointed offset.
        offset: u64,
        /// Actual end.
        end: u64,
    },
    /// A log operation failed.
    #[error("topic `{topic}`: {source}")]
    Log {
        /// Topic.
        topic: String,
        /// The log error.
        #[source]
        source: LogError,
    },
    /// A store failed to open, restore or commit.
    #[error(transparent)]
    Store(#[from] TaskStoreError),
    /// A checkpoint could not be read or written.
    #[error("task `{task}`: {source}")]
    Checkpoint {
        /// Task.
        task: String,
        /// The error.
        #[source]
        source: CheckpointError,
    },
    /// A read-committed marker could not be read or written.
    #[error("{0}")]
    Marker(#[from] crate::checked_file::CheckedFileError),
    /// The task returned an error.
    #[error("task `{task}` failed in {during}: {source}")]
    Task {
        /// Task.
        task: String,
        /// Where (`process of in/0@42`, `window`, …).
        during: String,
        /// The task's error.
        #[source]
        source: TaskError,
    },
}

/// Wraps a log error with the topic it concerns.
pub(crate) fn log_err(topic: &str) -> impl FnOnce(LogError) -> RuntimeError + use<> {
    let topic = topic.to_string();
    move |source| RuntimeError::Log { topic, source }
}

/// Wraps a task's error with the task and what it was doing.
pub(crate) fn task_err(task: &str, during: String) -> impl FnOnce(TaskError) -> RuntimeError + '_ {
    move |source| RuntimeError::Task {
        task: task.to_string(),
        during,
        source,
    }
}
