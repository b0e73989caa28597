//! [`BackendError`]: what can go wrong below the backend seam, classified so that the layers
//! above can decide what to do without knowing which backend failed.

/// Any error a backend can return, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How the layers above should treat a [`BackendError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Temporary (a broker down, a timeout): the same call may succeed later.
    Retriable,
    /// Another process took over what this one was writing (a newer producer, a newer
    /// owner of the task): stop, never retry.
    Fenced,
    /// Anything else (I/O failure, corruption, bad configuration): stop with the error.
    Fatal,
}

/// An error from a backend (the embedded log, Kafka, the in-memory test backend). Its message
/// names the topic, partition or task it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The topic does not exist.
    #[error("topic `{topic}` does not exist")]
    TopicNotFound {
        /// The topic.
        topic: String,
    },
    /// The topic exists but cannot play the role asked of it (wrong partition count,
    /// cleanup policy, ...).
    #[error("topic `{topic}`: {reason}")]
    TopicMismatch {
        /// The topic.
        topic: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// The backend cannot do this (e.g. truncate a Kafka partition).
    #[error("{what} is not supported by the {backend} backend")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked.
        what: String,
    },
    /// A call failed; `class` says whether to retry.
    #[error("{context}: {source}")]
    Failed {
        /// Retriable, fenced or fatal.
        class: ErrorClass,
        /// What was being done, naming topic/partition/task.
        context: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

impl BackendError {
    /// How to treat this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            BackendError::Failed { class, .. } => *class,
            _ => ErrorClass::Fatal,
        }
    }

    /// A fatal failure of `context` caused by `source`.
    pub fn fatal(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        BackendError::Failed {
            class: ErrorClass::Fatal,
            context: context.into(),
            source: source.into(),
        }
    }

    /// A retriable failure of `context` caused by `source`.
    pub fn retriable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        BackendError::Failed {
            class: ErrorClass::Retriable,
            context: context.into(),
            source: source.into(),
        }
    }
}
