//! Restore: bring a store back to its last checkpoint from the local engine plus the
//! changelog. [`plan`] decides (pure), [`exec`] does.

pub mod plan;

pub use plan::{Action, LocalStore, PlanError, RestoreInputs, RestoreKind, RestorePlan};
