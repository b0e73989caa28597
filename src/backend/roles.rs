//! Topic roles across jobs: which job uses which topic as an input, an output or a store's
//! changelog ([`RoleRegistry`]), and the rules that keep jobs from destroying each other's
//! data ([`RoleRegistry::check`]).
//!
//! A job's config already refuses one topic in two roles *within* the job
//! ([`crate::runtime::config`]). Across jobs only the backend knows who uses what, so every
//! job records its roles there when it starts ([`crate::backend::Backend::claim_roles`]) and is
//! refused if a role conflicts with one another job recorded:
//!
//! - a **changelog** belongs to one store of one job and plays no other role: restore
//!   truncates (or TRIMs) it to the job's checkpoint, so another writer's records are
//!   deleted or overwritten, and another job's store restoring from it would read foreign
//!   state;
//! - an **output** has one writing job: at start-up a job drops output past its own
//!   checkpoints, which would delete a second writer's committed records. Other jobs may
//!   read it as an input (that is how jobs are chained);
//! - an **input** may be read by any number of jobs, but not be another job's changelog.
//!
//! A job's claims replace what the same job recorded before (a job whose config changed
//! releases the topics it no longer names). The embedded backend keeps the registry in
//! `<state-dir>/roles` (a checksummed JSON file, see [`crate::checked_file`]); the in-memory
//! backend in memory. The Kafka backend does not record roles yet (it could keep them in a
//! compacted topic, one record per job); there, only the per-job checks apply.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BackendError;

/// The role a job gives a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// The job reads it (`job.inputs`).
    Input,
    /// The job writes it (`job.outputs`, or its dead-letter topic).
    Output,
    /// The changelog of one of the job's stores.
    Changelog {
        /// The store.
        store: String,
    },
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Input => f.write_str("an input"),
            Role::Output => f.write_str("an output"),
            Role::Changelog { store } => write!(f, "the changelog of store `{store}`"),
        }
    }
}

/// One topic in one role, as a job claims it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoleClaim {
    /// The topic.
    pub topic: String,
    /// Its role.
    pub role: Role,
}

impl RoleClaim {
    /// `topic` in `role`.
    pub fn new(topic: impl Into<String>, role: Role) -> Self {
        RoleClaim {
            topic: topic.into(),
            role,
        }
    }
}

/// Whether two roles of one topic, held by two different jobs, can coexist.
fn compatible(a: &Role, b: &Role) -> bool {
    matches!(
        (a, b),
        (Role::Input, Role::Input) | (Role::Input, Role::Output) | (Role::Output, Role::Input)
    )
}

/// Which job uses which topic in which role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRegistry {
    /// Job name -> its claims.
    pub jobs: BTreeMap<String, Vec<RoleClaim>>,
}

/// Name of the embedded backend's registry file in the state directory.
pub const ROLES_FILE: &str = "roles";

/// The embedded registry file of the state directory `state_root`.
pub fn roles_path(state_root: &Path) -> PathBuf {
    state_root.join(ROLES_FILE)
}

impl RoleRegistry {
    /// Every job holding `topic`, with its role.
    pub fn holders<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = (&'a str, &'a Role)> {
        self.jobs.iter().flat_map(move |(job, claims)| {
            claims
                .iter()
                .filter(move |c| c.topic == topic)
                .map(move |c| (job.as_str(), &c.role))
        })
    }

    /// Checks `claims` of `job` against every other job's (the job's own earlier claims are
    /// replaced, so they do not count). The error names the topic, both jobs and roles, and
    /// how to fix it.
    pub fn check(&self, job: &str, claims: &[RoleClaim]) -> Result<(), BackendError> {
        for c in claims {
            for (other, role) in self.holders(&c.topic) {
                if other == job || compatible(&c.role, role) {
                    continue;
                }
                return Err(BackendError::TopicMismatch {
                    topic: c.topic.clone(),
                    reason: format!(
                        "job `{job}` wants it as {}, but it is {role} of job `{other}`; {}. \
                         Give job `{job}` a topic of its own (e.g. `{job}-{}`), or, if job \
                         `{other}` is gone for good, release its roles with \
                         `gregor topic roles --release {other}` (add `--kafka BOOTSTRAP` on Kafka)",
                        c.role,
                        why(&c.role, role),
                        c.topic
                    ),
                });
            }
        }
        Ok(())
    }

    /// Records `claims` as `job`'s, replacing what it held (after [`check`](Self::check)).
    pub fn set(&mut self, job: &str, claims: &[RoleClaim]) {
        let mut claims = claims.to_vec();
        claims.sort();
        claims.dedup();
        self.jobs.insert(job.to_string(), claims);
    }

    /// Reads the registry file at `path` (empty if it does not exist).
    pub fn load(path: &Path) -> Result<RoleRegistry, BackendError> {
        let context = || format!("topic role registry {}", path.display());
        match crate::checked_file::read(path).map_err(|e| BackendError::fatal(context(), e))? {
            None => Ok(RoleRegistry::default()),
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| BackendError::fatal(context(), e))
            }
        }
    }

    /// Durably writes the registry to `path` (atomically, with a checksum).
    pub fn save(&self, path: &Path) -> Result<(), BackendError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| BackendError::fatal(format!("{}", path.display()), e))?;
        crate::checked_file::write(path, &json)
            .map_err(|e| BackendError::fatal(format!("topic role registry {}", path.display()), e))
    }
}

/// Why roles `a` (wanted) and `b` (held) of one topic cannot coexist across jobs.
fn why(a: &Role, b: &Role) -> &'static str {
    match (a, b) {
        (Role::Changelog { .. }, Role::Changelog { .. }) => {
            "two stores on one changelog restore each other's records and each restore truncates the other's"
        }
        (Role::Changelog { .. }, _) | (_, Role::Changelog { .. }) => {
            "a changelog holds only its store's records: restore truncates it to the store's checkpoint, deleting anything else written to it"
        }
        (Role::Output, Role::Output) => {
            "an output has one writing job: at start-up a job drops output past its own checkpoints, which would delete the other job's committed records"
        }
        _ => "these roles cannot share a topic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(list: &[(&str, Role)]) -> Vec<RoleClaim> {
        list.iter()
            .map(|(t, r)| RoleClaim::new(*t, r.clone()))
            .collect()
    }

    fn cl(s: &str) -> Role {
        Role::Changelog { store: s.into() }
    }

    #[test]
    fn conflicting_roles_across_jobs_are_refused_naming_both() {
        let mut reg = RoleRegistry::default();
        let a = claims(&[
            ("in", Role::Input),
            ("out", Role::Output),
            ("a-cl", cl("counts")),
        ]);
        reg.check("a", &a).unwrap();
        reg.set("a", &a);
        // Allowed: reading A's input or output; A itself again with other topics.
        reg.check("b", &claims(&[("in", Role::Input), ("out", Role::Input)]))
            .unwrap();
        reg.check("a", &claims(&[("in", Role::Input), ("x", cl("counts"))]))
            .unwrap();
        for (topic, role, held) in [
            (
                "a-cl",
                cl("s"),
                "the changelog of store `counts` of job `a`",
            ),
            ("in", cl("s"), "an input of job `a`"),
            ("out", cl("s"), "an output of job `a`"),
            ("out", Role::Output, "an output of job `a`"),
            ("a-cl", Role::Output, "the changelog of store `counts`"),
            ("a-cl", Role::Input, "the changelog of store `counts`"),
        ] {
            let e = reg
                .check("b", &claims(&[(topic, role.clone())]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("`{topic}`"))
                    && e.contains("job `b`")
                    && e.contains(held)
                    && e.contains("--release a"),
                "{topic} as {role}: {e}"
            );
        }
    }

    #[test]
    fn the_registry_file_round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = roles_path(dir.path());
        assert_eq!(RoleRegistry::load(&path).unwrap(), RoleRegistry::default());
        let mut reg = RoleRegistry::default();
        reg.set("a", &claims(&[("out", Role::Output), ("c", cl("s"))]));
        reg.save(&path).unwrap();
        assert_eq!(RoleRegistry::load(&path).unwrap(), reg);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = RoleRegistry::load(&path).unwrap_err().to_string();
        assert!(e.contains("roles") && e.contains("corrupt"), "{e}");
    }
}
