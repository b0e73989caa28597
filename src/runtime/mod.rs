//! The stream task runtime.
//!
//! - [`config`]: the job file; [`task`]: what a task implements and sees;
//!   [`builtin`]: tasks runnable by name.
//! - [`container`]: start-up, the run loop and commits; `input` (a task's position in an
//!   input partition) and `outputs` (output partitions: recovery, appends at commit) are its
//!   private helpers; [`committed`]: read-committed markers; [`error`]: [`RuntimeError`].

pub mod builtin;
pub mod committed;
pub mod config;
pub mod container;
pub mod error;
mod input;
mod outputs;
pub mod task;

pub use config::JobConfig;
pub use container::{RunOptions, RunStats, run_job, task_name};
pub use error::RuntimeError;
pub use task::{Envelope, StreamTask, TaskContext, TaskError, TaskFactory};
