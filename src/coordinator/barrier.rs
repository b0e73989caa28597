//! The coordination protocol's decisions as pure functions: what a member does with a new
//! job model ([`member_step`]), when the leader publishes one ([`leader_step`]), who leads
//! ([`leader_of`]). No I/O: [`super::zookeeper`] feeds them what it read from ZooKeeper.
//!
//! The barrier, and why a task is never active in two processes at once:
//!
//! 1. A member that sees model `v` first commits and closes every open task `v` does not
//!    give it, then acknowledges `v` (an ack node).
//! 2. A member opens a task only under the newest model it knows, and only once *every*
//!    member `v` was computed for has acknowledged `v`.
//!
//! A task `t` that `v` gives to `B` was open, if anywhere, at a member of an earlier model.
//! If that member is in `v`, it closed `t` before acknowledging (1), and `B` waits for that
//! acknowledgement (2). If it is not in `v`, its ZooKeeper session had ended when the leader
//! computed `v` (models are computed for the live members), and a process stops processing
//! and committing before its session can expire (its lease, half the session timeout, see
//! [`super::zookeeper`]). Members that see a newer model before `v`'s barrier is passed go
//! straight to the newer one: steps 1 and 2 only ever look at the newest model.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::model::{JobModel, Member, plan};
use super::{MemberInfo, PublishedModel};

/// What a member does next (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now (go on processing what is open; maybe waiting for others).
    Continue,
    /// Commit and close the open tasks not in `keep`, then acknowledge `version`.
    Release {
        /// The model version.
        version: u64,
        /// The open tasks that stay.
        keep: BTreeSet<u32>,
    },
    /// Nothing to release: acknowledge `version` now.
    Acknowledge {
        /// The model version.
        version: u64,
    },
    /// The barrier of `version` is passed: run exactly `active`.
    Run {
        /// The model version.
        version: u64,
        /// This member's tasks under it.
        active: BTreeSet<u32>,
    },
}

/// What member `me`, with `open` tasks, does next under the newest model `model`, given the
/// members that have acknowledged it (`acked`).
pub fn member_step(
    me: &str,
    model: Option<&PublishedModel>,
    open: &BTreeSet<u32>,
    acked: &BTreeSet<String>,
) -> Step {
    let Some(model) = model else {
        return Step::Continue;
    };
    let version = model.model.version;
    let mine: BTreeSet<u32> = model.model.active_of(me).collect();
    if !open.is_subset(&mine) {
        return Step::Release {
            version,
            keep: open.intersection(&mine).copied().collect(),
        };
    }
    if !acked.contains(me) {
        return Step::Acknowledge { version };
    }
    if open != &mine && model.members.iter().all(|m| acked.contains(m)) {
        return Step::Run {
            version,
            active: mine,
        };
    }
    Step::Continue
}

/// The leader among member ids: the lowest ZooKeeper sequence number (the digits ending the
/// id), ids without one last.
pub fn leader_of<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    ids.into_iter()
        .min_by_key(|id| (sequence_of(id).unwrap_or(u64::MAX), *id))
}

/// The sequence number ending a member id (`p-0000000042` -> 42).
pub fn sequence_of(id: &str) -> Option<u64> {
    let digits = id.rsplit('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The member whose node member `me` watches: the live member with the next lower sequence
/// number (`None`: `me` is the lowest, the leader). Each member watches only its
/// predecessor, so a member's death wakes one process, not all (no herd effect); when the
/// leader dies, its successor finds itself lowest and leads.
pub fn predecessor_of<'a>(me: &str, ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mine = (sequence_of(me).unwrap_or(u64::MAX), me);
    ids.into_iter()
        .filter(|id| (sequence_of(id).unwrap_or(u64::MAX), *id) < mine)
        .max_by_key(|id| (sequence_of(id).unwrap_or(u64::MAX), *id))
}

/// What a new job model changes for one member (for its log line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelChange {
    /// The tasks it runs under the new model.
    pub active: BTreeSet<u32>,
    /// Of those, the ones it did not run under the previous model.
    pub gained: BTreeSet<u32>,
    /// The tasks it ran under the previous model and does not run now.
    pub released: BTreeSet<u32>,
    /// The tasks it keeps standby copies of under the new model.
    pub standby: BTreeSet<u32>,
    /// Of those, the new ones.
    pub standby_gained: BTreeSet<u32>,
    /// Standby copies it no longer keeps.
    pub standby_dropped: BTreeSet<u32>,
}

impl ModelChange {
    /// What `next` changes for `me` against `previous` (none: nothing before).
    pub fn of(me: &str, previous: Option<&JobModel>, next: &JobModel) -> Self {
        let of = |m: Option<&JobModel>, standby: bool| -> BTreeSet<u32> {
            match m {
                None => BTreeSet::new(),
                Some(m) if standby => m.standbys_of(me).collect(),
                Some(m) => m.active_of(me).collect(),
            }
        };
        let (was, now) = (of(previous, false), of(Some(next), false));
        let (was_sb, now_sb) = (of(previous, true), of(Some(next), true));
        ModelChange {
            gained: &now - &was,
            released: &was - &now,
            standby_gained: &now_sb - &was_sb,
            standby_dropped: &was_sb - &now_sb,
            active: now,
            standby: now_sb,
        }
    }
}

/// How many tasks `next` gives another active member than `previous` did (all of them when
/// there is no previous model), and how many standby placements it adds.
pub fn moved_tasks(previous: Option<&JobModel>, next: &JobModel) -> (usize, usize) {
    let Some(previous) = previous else {
        let standbys = next.standbys.values().map(Vec::len).sum();
        return (next.active.len(), standbys);
    };
    let active = next
        .active
        .iter()
        .filter(|(t, m)| previous.active.get(t) != Some(m))
        .count();
    let standbys = next
        .standbys
        .iter()
        .map(|(t, ms)| {
            let before = previous.standbys.get(t);
            ms.iter()
                .filter(|m| before.is_none_or(|b| !b.contains(m)))
                .count()
        })
        .sum();
    (active, standbys)
}

/// The model the leader publishes next, if any: when there is none yet, or the live members
/// or the task count differ from the newest model's, once membership has been stable for
/// `debounce` (`stable_for`: how long the live set has been what it is now).
pub fn leader_step(
    live: &BTreeMap<String, MemberInfo>,
    tasks: u32,
    current: Option<&PublishedModel>,
    standby_replicas: usize,
    stable_for: Duration,
    debounce: Duration,
) -> Option<PublishedModel> {
    let ids: BTreeSet<String> = live.keys().cloned().collect();
    let up_to_date = current.is_some_and(|c| c.members == ids && c.tasks == tasks);
    if up_to_date || ids.is_empty() || stable_for < debounce {
        return None;
    }
    let members: Vec<Member> = live
        .values()
        .map(|m| Member {
            id: m.id.clone(),
            host: m.host.clone(),
            holds: m.holds.clone(),
        })
        .collect();
    let model = plan(&members, tasks, current.map(|c| &c.model), standby_replicas);
    Some(PublishedModel {
        model,
        members: ids,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> MemberInfo {
        MemberInfo {
            id: id.into(),
            host: "h".into(),
            pid: 1,
            http: None,
            holds: BTreeSet::new(),
        }
    }

    fn set<T: Ord + Clone>(xs: &[T]) -> BTreeSet<T> {
        xs.iter().cloned().collect()
    }

    #[test]
    fn leader_is_the_lowest_sequence() {
        assert_eq!(
            leader_of(["p-0000000010", "p-0000000002", "p-0000000100"]),
            Some("p-0000000002")
        );
        assert_eq!(leader_of(["x", "p-0000000003"]), Some("p-0000000003"));
        assert_eq!(leader_of(Vec::<&str>::new()), None);
        assert_eq!(sequence_of("p-0000000042"), Some(42));
        assert_eq!(sequence_of("p-"), None);
    }

    #[test]
    fn leader_waits_for_the_debounce_and_only_publishes_changes() {
        let live: BTreeMap<String, MemberInfo> = ["p-1", "p-2"]
            .iter()
            .map(|i| (i.to_string(), info(i)))
            .collect();
        let d = Duration::from_secs(2);
        assert!(leader_step(&live, 4, None, 0, Duration::from_secs(1), d).is_none());
        let m = leader_step(&live, 4, None, 0, d, d).expect("first model");
        assert_eq!(m.model.version, 1);
        assert_eq!(m.model.active.len(), 4);
        assert_eq!(m.members, set(&["p-1".to_string(), "p-2".to_string()]));
        assert!(leader_step(&live, 4, Some(&m), 0, d * 10, d).is_none());
        // A task count change is a change too.
        let m2 = leader_step(&live, 6, Some(&m), 0, d, d).expect("more tasks");
        assert_eq!((m2.model.version, m2.model.active.len()), (2, 6));
    }

    /// Every combination of open tasks and acknowledgements for a small model: the step
    /// never runs a task of another member, never runs before every member acknowledged,
    /// and releases exactly what is open and not its own.
    #[test]
    fn member_step_is_safe_for_every_small_case() {
        let members = ["a", "b", "c"];
        let model = PublishedModel {
            model: crate::coordinator::JobModel {
                version: 7,
                active: [(0, "a"), (1, "b"), (2, "c"), (3, "a")]
                    .iter()
                    .map(|&(t, m)| (t, m.to_string()))
                    .collect(),
                standbys: BTreeMap::new(),
            },
            members: members.iter().map(|m| m.to_string()).collect(),
            tasks: 4,
        };
        for me in members {
            let mine: BTreeSet<u32> = model.model.active_of(me).collect();
            for open_bits in 0u32..16 {
                let open: BTreeSet<u32> = (0..4).filter(|t| open_bits & (1 << t) != 0).collect();
                for ack_bits in 0u32..8 {
                    let acked: BTreeSet<String> = (0..3)
                        .filter(|i| ack_bits & (1 << i) != 0)
                        .map(|i| members[i].to_string())
                        .collect();
                    match member_step(me, Some(&model), &open, &acked) {
                        Step::Release { version, keep } => {
                            assert_eq!(version, 7);
                            assert!(!open.is_subset(&mine));
                            assert_eq!(keep, &open & &mine);
                        }
                        Step::Acknowledge { version } => {
                            assert_eq!(version, 7);
                            assert!(open.is_subset(&mine) && !acked.contains(me));
                        }
                        Step::Run { version, active } => {
                            assert_eq!((version, &active), (7, &mine));
                            assert_eq!(ack_bits, 7, "ran before every member acknowledged");
                            assert!(open.is_subset(&mine));
                        }
                        Step::Continue => {
                            assert!(open.is_subset(&mine) && acked.contains(me));
                            assert!(open == mine || ack_bits != 7);
                        }
                    }
                }
            }
        }
        assert_eq!(
            member_step("a", None, &set(&[1]), &BTreeSet::new()),
            Step::Continue
        );
    }

    #[test]
    fn each_member_watches_the_next_lower_sequence() {
        let ids = ["p-0000000007", "p-0000000002", "p-0000000011", "x"];
        assert_eq!(predecessor_of("p-0000000002", ids), None);
        assert_eq!(predecessor_of("p-0000000007", ids), Some("p-0000000002"));
        assert_eq!(predecessor_of("p-0000000011", ids), Some("p-0000000007"));
        // Ids without a sequence sort last, as in `leader_of`.
        assert_eq!(predecessor_of("x", ids), Some("p-0000000011"));
        // The predecessor's death: the next lower one; the leader's: the successor leads.
        let left = ["p-0000000002", "p-0000000011"];
        assert_eq!(predecessor_of("p-0000000011", left), Some("p-0000000002"));
        let left = ["p-0000000007", "p-0000000011"];
        assert_eq!(predecessor_of("p-0000000007", left), None);
        assert_eq!(leader_of(left), Some("p-0000000007"));
        // Exactly one member of any set has no predecessor, and it is the leader.
        let all = [
            "p-0000000003",
            "p-0000000001",
            "p-0000000009",
            "p-0000000004",
        ];
        let roots: Vec<_> = all
            .iter()
            .filter(|m| predecessor_of(m, all).is_none())
            .collect();
        assert_eq!(roots, [&"p-0000000001"]);
    }

    fn model(version: u64, active: &[(u32, &str)], standbys: &[(u32, &[&str])]) -> JobModel {
        JobModel {
            version,
            active: active.iter().map(|&(t, m)| (t, m.to_string())).collect(),
            standbys: standbys
                .iter()
                .map(|&(t, ms)| (t, ms.iter().map(|m| m.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn a_model_change_lists_what_moved_for_a_member() {
        let v1 = model(
            1,
            &[(0, "a"), (1, "a"), (2, "b")],
            &[(0, &["b"]), (2, &["a"])],
        );
        let v2 = model(
            2,
            &[(0, "a"), (1, "b"), (2, "a")],
            &[(0, &["b"]), (1, &["a"])],
        );
        let a = ModelChange::of("a", Some(&v1), &v2);
        assert_eq!(a.active, set(&[0, 2]));
        assert_eq!(a.gained, set(&[2]));
        assert_eq!(a.released, set(&[1]));
        assert_eq!(a.standby, set(&[1]));
        assert_eq!(a.standby_gained, set(&[1]));
        assert_eq!(a.standby_dropped, set(&[2]));
        let first = ModelChange::of("b", None, &v1);
        assert_eq!((first.gained, first.released), (set(&[2]), BTreeSet::new()));
        assert_eq!(ModelChange::of("c", Some(&v1), &v2), ModelChange::default());
        assert_eq!(moved_tasks(Some(&v1), &v2), (2, 1));
        assert_eq!(moved_tasks(None, &v1), (3, 2));
        assert_eq!(moved_tasks(Some(&v2), &v2), (0, 0));
    }
}
