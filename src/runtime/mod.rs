//! The stream task runtime: job config, the task API, the container that runs tasks and
//! commits them, and the built-in tasks.

pub mod builtin;
pub mod committed;
pub mod config;
pub mod container;
pub mod task;

pub use config::JobConfig;
pub use container::{RunOptions, RunStats, RuntimeError, run_job, task_name};
pub use task::{Envelope, StreamTask, TaskContext, TaskError, TaskFactory};
