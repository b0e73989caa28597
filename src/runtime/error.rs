//! Why a job could not start or stopped: [`RuntimeError`].

use crate::backend::BackendError;
use crate::task_storage::TaskStoreError;

use super::task::TaskError;

/// A job could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// An input topic does not exist.
    #[error(
        "input topic `{topic}` does not exist (create it with `gregor topic create {topic} --partitions N`)"
    )]
    NoInput {
        /// The topic.
        topic: String,
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
    /// A topic role of the job conflicts with one another job recorded (see
    /// [`crate::backend::roles`]), or the roles could not be recorded.
    #[error("job `{job}` cannot start: {source}")]
    Roles {
        /// The job.
        job: String,
        /// The conflict (naming the topic, both jobs and roles, and the fix) or failure.
        #[source]
        source: BackendError,
    },
    /// A side-input store could not be built or updated.
    #[error("side-input store `{store}`: {source}")]
    SideInput {
        /// The store.
        store: String,
        /// What failed.
        #[source]
        source: Box<crate::store::StoreError>,
    },
    /// The dead-letter topic cannot be used.
    #[error("dead-letter topic `{topic}`: {reason}")]
    DeadLetter {
        /// The topic.
        topic: String,
        /// Why not.
        reason: String,
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
    /// A backend operation on a topic failed.
    #[error("topic `{topic}`: {source}")]
    Topic {
        /// Topic.
        topic: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// The backend failed for a task (its checkpoint, its sink).
    #[error("task `{task}`: {source}")]
    Backend {
        /// Task.
        task: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A store failed to open, restore or commit.
    #[error(transparent)]
    Store(#[from] TaskStoreError),
    /// The coordinator failed, or cannot run the job as asked.
    #[error(transparent)]
    Coordinator(#[from] crate::coordinator::CoordinatorError),
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

/// Wraps a backend error with the topic it concerns.
pub(crate) fn topic_err(topic: &str) -> impl FnOnce(BackendError) -> RuntimeError + use<> {
    let topic = topic.to_string();
    move |source| RuntimeError::Topic { topic, source }
}

/// Wraps a task's error with the task and what it was doing.
pub(crate) fn task_err(task: &str, during: String) -> impl FnOnce(TaskError) -> RuntimeError + '_ {
    move |source| RuntimeError::Task {
        task: task.to_string(),
        during,
        source,
    }
}
