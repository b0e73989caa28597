//! Coordination of a job's processes: which process runs which task.
//!
//! The container runs under a [`Coordinator`]: each round it asks [`Coordinator::poll`] what
//! to do with the tasks it has open, and gets a [`Directive`]: release some tasks (commit and
//! close them, then [`Coordinator::released`]), run a set of tasks (open the missing ones),
//! or stop everything without committing ([`Directive::Fence`]: the process lost its claim
//! on its tasks). Before every checkpoint a task asks [`Coordinator::fence`] whether it may
//! still commit.
//!
//! - [`StaticCoordinator`]: a fixed set of tasks (all, or process I of N).
//! - [`zookeeper::ZooKeeperCoordinator`]: processes join and leave through Apache ZooKeeper;
//!   the leader computes the job model with [`model::plan`], and a barrier
//!   ([`barrier`]) makes sure a task is never active in two processes at once.
//!
//! The decisions (what to release, when a barrier is passed, when the leader publishes) are
//! pure functions in [`barrier`]; this module and [`zookeeper`] do the I/O.

pub mod barrier;
pub mod model;
pub mod zookeeper;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointOwner;
use crate::task_storage::CommitFence;

pub use model::{JobModel, Member};

/// What the container does next with its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Directive {
    /// Nothing changes: go on processing.
    Continue,
    /// A new job model moved tasks away: commit and close every open task not in `keep`,
    /// then call [`Coordinator::released`] with `version`. The tasks in `keep` go on.
    Release {
        /// The job model version.
        version: u64,
        /// The open tasks that stay.
        keep: BTreeSet<u32>,
    },
    /// Every process has released what it lost under `version`: run exactly `active`
    /// (open the ones not open yet).
    Run {
        /// The job model version.
        version: u64,
        /// The tasks this process runs.
        active: BTreeSet<u32>,
    },
    /// The process may no longer run its tasks (it lost its coordinator session, or could
    /// not hear from it for too long): drop every task *without committing*; another
    /// process may own them by now. The coordinator rejoins by itself.
    Fence {
        /// Why, for the log.
        reason: String,
    },
}

/// Coordination failed in a way the container cannot go on from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// ZooKeeper could not be reached or answered with an error.
    #[error("zookeeper {connect}: {message}")]
    ZooKeeper {
        /// `zookeeper.connect`.
        connect: String,
        /// What failed.
        message: String,
    },
    /// The coordinator's thread is gone.
    #[error("the coordinator stopped: {0}")]
    Stopped(String),
    /// The job cannot run this way under this coordinator.
    #[error("{0}")]
    Unsupported(String),
}

/// A process of the job as the coordinator shows it (`gregor job status`, `GET /v1/job`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member id (unique per session: a restarted process gets a new one).
    pub id: String,
    /// Its host name.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// Its HTTP address, when it serves the job's stores.
    #[serde(default)]
    pub http: Option<String>,
    /// Tasks it has local state for.
    #[serde(default)]
    pub holds: BTreeSet<u32>,
}

/// What a coordinator knows, for status displays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorStatus {
    /// This process's member id.
    pub member: String,
    /// The live members, by id.
    pub members: BTreeMap<String, MemberInfo>,
    /// The leader's member id.
    pub leader: Option<String>,
    /// The newest job model.
    pub model: Option<PublishedModel>,
}

/// A job model as the leader publishes it: the assignment and who it was computed for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedModel {
    /// The assignment (its `version` is the model version).
    pub model: JobModel,
    /// The members it was computed for: the barrier waits for each of them.
    pub members: BTreeSet<String>,
    /// The number of tasks it assigns.
    pub tasks: u32,
}

/// Tells a container which tasks to run (see the module doc).
pub trait Coordinator: Send {
    /// What to do next, given the tasks this process has open (active).
    fn poll(&mut self, open: &BTreeSet<u32>) -> Result<Directive, CoordinatorError>;

    /// The container closed what the last [`Directive::Release`] of `version` asked for.
    fn released(&mut self, version: u64) -> Result<(), CoordinatorError>;

    /// Asked before every checkpoint write: `Err(reason)` when this process may no longer
    /// commit (shared with every task's storage).
    fn fence(&self) -> CommitFence;

    /// Stamped on the checkpoints of a task run under model `generation`.
    fn owner(&self, generation: u64) -> Option<CheckpointOwner>;

    /// The tasks this process now holds local state for (reported to the leader, which
    /// prefers to give a task back to a process that has its state).
    fn holds(&mut self, _tasks: &BTreeSet<u32>) {}

    /// The tasks this process keeps standby copies of under the newest model (never ones it
    /// runs). Standbys only read, so they follow the model without a barrier.
    fn standbys(&self) -> BTreeSet<u32> {
        BTreeSet::new()
    }

    /// The tasks the newest model makes this process run, whether or not its barrier has
    /// passed yet (a standby of one of them is kept until the task opens on its state).
    fn assigned(&self) -> BTreeSet<u32> {
        BTreeSet::new()
    }

    /// Leaves the job after a clean stop, so others take its tasks at once.
    fn leave(&mut self) {}

    /// What the coordinator knows (members, model), if it coordinates with others.
    fn status(&self) -> Option<CoordinatorStatus> {
        None
    }
}

/// A fixed set of tasks, decided at start (all of them, or process I of N).
pub struct StaticCoordinator {
    tasks: BTreeSet<u32>,
}

impl StaticCoordinator {
    /// Runs exactly `tasks`.
    pub fn new(tasks: BTreeSet<u32>) -> Self {
        StaticCoordinator { tasks }
    }
}

impl Coordinator for StaticCoordinator {
    fn poll(&mut self, open: &BTreeSet<u32>) -> Result<Directive, CoordinatorError> {
        Ok(if open.is_superset(&self.tasks) {
            Directive::Continue
        } else {
            Directive::Run {
                version: 0,
                active: self.tasks.clone(),
            }
        })
    }

    fn released(&mut self, _version: u64) -> Result<(), CoordinatorError> {
        Ok(())
    }

    fn fence(&self) -> CommitFence {
        Arc::new(|| Ok(()))
    }

    fn owner(&self, _generation: u64) -> Option<CheckpointOwner> {
        None
    }
}
