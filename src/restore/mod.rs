//! Restore: bring a store back to its last checkpoint from the local engine plus the
//! changelog. [`plan`] decides (a pure function, tested exhaustively), [`exec`] does.

pub mod exec;
pub mod plan;

pub use exec::{
    ChangelogAccess, LogProgress, NoProgress, ParallelHandle, ParallelProgress, RestoreError,
    RestoreProgress, RestoreStats, apply_range, execute,
};
pub use plan::{Action, LocalStore, PlanError, RestoreInputs, RestoreKind, RestorePlan};
