//! The stream task runtime.
//!
//! - [`config`]: the job file; [`task`]: what a task implements and sees;
//!   [`builtin`]: tasks runnable by name.
//! - [`container`]: start-up, opening and closing tasks, the run loop; `input` (a task's
//!   position in an input partition) is its private helper; [`committed`]: the embedded
//!   log's read-committed markers; [`error`]: [`RuntimeError`]; [`side_input`]: stores
//!   every task reads, filled from whole topics.

pub mod builtin;
pub mod committed;
pub mod config;
pub mod container;
pub mod error;
mod input;
mod shared_storage;
pub mod side_input;
pub mod standby;
pub mod task;

pub use config::{JobConfig, RecordingLevel};
pub use container::{
    Container, ProcessErrorPolicy, RunOptions, RunStats, claim_job_roles, embedded_backend,
    run_job, run_job_on, run_job_on_with, run_job_serving, run_job_with, task_name,
};
pub use error::RuntimeError;
pub use task::{Envelope, StreamTask, TaskContext, TaskError, TaskFactory};
