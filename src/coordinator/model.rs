//! The job model as a pure function: who runs each task and who keeps standby copies.
//!
//! [`plan`] takes the job's current members (process id, host, the tasks each holds local
//! state for), the number of tasks, the previous model and the number of standby replicas,
//! and returns the next model. No I/O: the ZooKeeper coordinator's leader calls it and
//! publishes the result. The rules, in order of precedence:
//!
//! 1. **Every task has one active process**, and **active counts differ by at most one**:
//!    with `T` tasks on `N` members, `T mod N` members run `ceil(T/N)` tasks, the others
//!    `floor(T/N)`.
//! 2. **A task stays where it is while its process stays**, unless balance needs the slot:
//!    each member keeps as many of its previous tasks as its share allows (the members that
//!    kept the most get the larger shares), the ones it ranks highest by rendezvous hash.
//!    So a join moves about `T/(N+1)` tasks and a leave moves only the leaver's tasks.
//! 3. **A moved task goes where its state already is**: to one of its previous standbys
//!    first, then to a member holding local state for it, then by rendezvous hash
//!    (highest-random-weight with a stable hash, so placements do not depend on member
//!    order and change little when membership does).
//! 4. **Standbys** (`min(replicas, N - 1)` per task) are never on the task's active process
//!    and never two on one process; they go to other hosts than the task's other replicas
//!    while such hosts remain, then prefer processes that already have the task's state
//!    (its previous standbys, its previous active), then the least loaded, then the hash.
//!
//! Tested exhaustively over small memberships and with properties over large ones
//! (`tests/job_model.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A live process of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The process's id (unique in the job).
    pub id: String,
    /// The machine it runs on (replicas of a task go to different hosts where possible).
    pub host: String,
    /// Tasks (by partition) it has local state for (a restart on its old state directory,
    /// or a standby it kept).
    pub holds: BTreeSet<u32>,
}

impl Member {
    /// A member with no local state.
    pub fn new(id: impl Into<String>, host: impl Into<String>) -> Self {
        Member {
            id: id.into(),
            host: host.into(),
            holds: BTreeSet::new(),
        }
    }
}

/// Who runs what: one version of the job model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobModel {
    /// Increases by one with every model the leader publishes.
    pub version: u64,
    /// Task (partition) -> the member running it.
    pub active: BTreeMap<u32, String>,
    /// Task -> the members keeping standby copies of its state, best first.
    pub standbys: BTreeMap<u32, Vec<String>>,
}

impl JobModel {
    /// The tasks `member` runs.
    pub fn active_of<'a>(&'a self, member: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.active
            .iter()
            .filter(move |(_, m)| m.as_str() == member)
            .map(|(&t, _)| t)
    }

    /// The tasks `member` keeps standby copies of.
    pub fn standbys_of<'a>(&'a self, member: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.standbys
            .iter()
            .filter(move |(_, ms)| ms.iter().any(|m| m == member))
            .map(|(&t, _)| t)
    }
}

/// A stable 64-bit hash (FNV-1a, then the SplitMix64 finalizer): the same on every machine
/// and Rust version, unlike `std`'s hashers.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The rendezvous weight of `task` on `member`: the highest weight is the task's first choice.
pub fn weight(member: &str, task: u32) -> u64 {
    stable_hash(&[member.as_bytes(), &task.to_be_bytes()])
}

/// The next model (see the module doc). With no members, nothing is assigned.
pub fn plan(
    members: &[Member],
    tasks: u32,
    previous: Option<&JobModel>,
    standby_replicas: usize,
) -> JobModel {
    let version = previous.map_or(1, |p| p.version + 1);
    let mut model = JobModel {
        version,
        ..JobModel::default()
    };
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    members.dedup_by(|a, b| a.id == b.id);
    if members.is_empty() || tasks == 0 {
        return model;
    }
    let n = members.len();
    let ids: BTreeSet<&str> = members.iter().map(|m| m.id.as_str()).collect();
    let empty = JobModel::default();
    let prev = previous.unwrap_or(&empty);
    let floor = tasks as usize / n;
    let rem = tasks as usize % n;

    // Each member's previous tasks (those of this job's task range), best-ranked first.
    let mut prev_tasks: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (&t, m) in &prev.active {
        if t < tasks && ids.contains(m.as_str()) {
            prev_tasks.entry(m.as_str()).or_default().push(t);
        }
    }
    for (m, ts) in prev_tasks.iter_mut() {
        ts.sort_by_key(|&t| (std::cmp::Reverse(weight(m, t)), t));
    }

    // Shares: `rem` members get `floor + 1`: first those that need it to keep all their
    // tasks, then those with state (a standby copy, local state) for the most orphaned tasks.
    let holds = |m: &Member, t: u32| {
        m.holds.contains(&t)
            || prev.active.get(&t).is_some_and(|a| *a == m.id)
            || prev.standbys.get(&t).is_some_and(|s| s.contains(&m.id))
    };
    let orphans: Vec<u32> = (0..tasks)
        .filter(|t| prev.active.get(t).is_none_or(|a| !ids.contains(a.as_str())))
        .collect();
    let keep = |m: &str| prev_tasks.get(m).map_or(0, Vec::len).min(floor + 1);
    let mut by_keep: Vec<&Member> = members.clone();
    by_keep.sort_by_key(|m| {
        let demand = orphans.iter().filter(|&&t| holds(m, t)).count();
        (
            // First those that need the larger share to keep all their tasks.
            std::cmp::Reverse(keep(&m.id) > floor),
            std::cmp::Reverse(demand),
            std::cmp::Reverse(keep(&m.id)),
            m.id.as_str(),
        )
    });
    let by_keep: Vec<&str> = by_keep.iter().map(|m| m.id.as_str()).collect();
    let share: BTreeMap<&str, usize> = by_keep
        .iter()
        .enumerate()
        .map(|(i, &m)| (m, floor + usize::from(i < rem)))
        .collect();

    // Keep phase.
    let mut load: BTreeMap<&str, usize> = members.iter().map(|m| (m.id.as_str(), 0)).collect();
    for (&m, ts) in &prev_tasks {
        for &t in ts.iter().take(share[m]) {
            model.active.insert(t, m.to_string());
        }
        load.insert(m, ts.len().min(share[m]));
    }

    // Fill phase, in two passes: first every other task that a member with room has state
    // for goes to the best such member (its previous standbys first); then the rest go to
    // the member with room they rank highest.
    for state_only in [true, false] {
        for t in 0..tasks {
            if model.active.contains_key(&t) {
                continue;
            }
            let prev_standbys = prev.standbys.get(&t);
            let best = members
                .iter()
                .filter(|m| load[m.id.as_str()] < share[m.id.as_str()])
                .filter(|m| !state_only || holds(m, t))
                .min_by_key(|m| {
                    let tier = if prev_standbys.is_some_and(|s| s.contains(&m.id)) {
                        0
                    } else if holds(m, t) {
                        1
                    } else {
                        2
                    };
                    (tier, std::cmp::Reverse(weight(&m.id, t)), m.id.as_str())
                });
            let Some(best) = best else {
                // Only when restricted to holders: the shares add up to the number of
                // tasks, so some member has room in the second pass.
                debug_assert!(state_only);
                continue;
            };
            *load.get_mut(best.id.as_str()).expect("a member") += 1;
            model.active.insert(t, best.id.clone());
        }
    }

    // Standbys.
    let replicas = standby_replicas.min(n - 1);
    if replicas > 0 {
        let mut standby_load: BTreeMap<&str, usize> =
            members.iter().map(|m| (m.id.as_str(), 0)).collect();
        let host_of: BTreeMap<&str, &str> = members
            .iter()
            .map(|m| (m.id.as_str(), m.host.as_str()))
            .collect();
        for t in 0..tasks {
            let active = model.active[&t].as_str();
            let mut chosen: Vec<&str> = Vec::with_capacity(replicas);
            let mut hosts: BTreeSet<&str> = BTreeSet::from([host_of[active]]);
            let prev_standbys = prev.standbys.get(&t);
            for _ in 0..replicas {
                let best = members
                    .iter()
                    .filter(|m| m.id != active && !chosen.contains(&m.id.as_str()))
                    .min_by_key(|m| {
                        let new_host = !hosts.contains(m.host.as_str());
                        let state = if prev_standbys.is_some_and(|s| s.contains(&m.id)) {
                            0
                        } else if holds(m, t) {
                            1
                        } else {
                            2
                        };
                        (
                            !new_host,
                            state,
                            standby_load[m.id.as_str()],
                            std::cmp::Reverse(weight(&m.id, t)),
                            m.id.as_str(),
                        )
                    })
                    .expect("fewer replicas than other members");
                chosen.push(best.id.as_str());
                hosts.insert(best.host.as_str());
                *standby_load.get_mut(best.id.as_str()).expect("a member") += 1;
            }
            model
                .standbys
                .insert(t, chosen.into_iter().map(str::to_string).collect());
        }
    }
    model
}
