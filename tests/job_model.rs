//! The job model planner (`coordinator::model::plan`), exhaustively over small memberships
//! (every previous and current subset of five processes, 0 to 7 tasks, 0 to 2 standbys,
//! three host layouts) and with properties over large ones: every task has one active
//! process; active counts differ by at most one; standbys are distinct, never the active,
//! on as many hosts as exist; a task moves only when balance needs it (a leave moves only the
//! leaver's tasks, a join at most ceil(T/(N+1))); moved tasks go to their standbys; the
//! result does not depend on the order members are listed in.

use std::collections::{BTreeMap, BTreeSet};

use gregor::coordinator::model::{JobModel, Member, plan};
use proptest::prelude::*;

fn members(ids: &[usize], host_of: &dyn Fn(usize) -> String) -> Vec<Member> {
    ids.iter()
        .map(|&i| Member::new(format!("p{i}"), host_of(i)))
        .collect()
}

/// Checks every rule that holds whatever the previous model was; returns the number of
/// tasks that moved although their previous process is still a member.
fn check(ms: &[Member], tasks: u32, prev: Option<&JobModel>, r: usize, m: &JobModel) -> usize {
    let ctx = || {
        format!(
            "members {:?} tasks {tasks} r {r} prev {prev:?}\nmodel {m:?}",
            ms.iter().map(|m| (&m.id, &m.host)).collect::<Vec<_>>()
        )
    };
    let ids: BTreeSet<&str> = ms.iter().map(|m| m.id.as_str()).collect();
    if ms.is_empty() {
        assert!(m.active.is_empty() && m.standbys.is_empty(), "{}", ctx());
        return 0;
    }
    assert_eq!(m.version, prev.map_or(1, |p| p.version + 1));
    assert_eq!(
        m.active.keys().copied().collect::<Vec<_>>(),
        (0..tasks).collect::<Vec<_>>(),
        "{}",
        ctx()
    );
    let mut load: BTreeMap<&str, usize> = ids.iter().map(|&i| (i, 0)).collect();
    for a in m.active.values() {
        *load
            .get_mut(a.as_str())
            .unwrap_or_else(|| panic!("{a} not a member\n{}", ctx())) += 1;
    }
    let (lo, hi) = (load.values().min().unwrap(), load.values().max().unwrap());
    assert!(hi - lo <= 1, "unbalanced {load:?}\n{}", ctx());
    let host: BTreeMap<&str, &str> = ms
        .iter()
        .map(|m| (m.id.as_str(), m.host.as_str()))
        .collect();
    let n_hosts = host.values().collect::<BTreeSet<_>>().len();
    let replicas = r.min(ms.len() - 1);
    for t in 0..tasks {
        let s = m.standbys.get(&t).cloned().unwrap_or_default();
        assert_eq!(s.len(), replicas, "task {t}\n{}", ctx());
        let mut all: Vec<&str> = s.iter().map(String::as_str).collect();
        all.push(m.active[&t].as_str());
        let distinct: BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            all.len(),
            "task {t}: two replicas on one process\n{}",
            ctx()
        );
        assert!(distinct.iter().all(|i| ids.contains(i)), "{}", ctx());
        let hosts: BTreeSet<&str> = all.iter().map(|i| host[i]).collect();
        assert_eq!(
            hosts.len(),
            all.len().min(n_hosts),
            "task {t}: replicas share a host while another is free\n{}",
            ctx()
        );
    }
    // Stickiness: a task moves off a process that stays only as far as balance needs.
    let Some(prev) = prev else { return 0 };
    let floor = tasks as usize / ms.len();
    let mut prev_load: BTreeMap<&str, usize> = BTreeMap::new();
    let mut moved = 0;
    for (&t, a) in &prev.active {
        if t < tasks && ids.contains(a.as_str()) {
            *prev_load.entry(a.as_str()).or_default() += 1;
            if m.active[&t] != *a {
                moved += 1;
            }
        }
    }
    let excess: usize = prev_load.values().map(|&c| c.saturating_sub(floor)).sum();
    assert!(
        moved <= excess,
        "{moved} tasks moved, balance needs at most {excess}\n{}",
        ctx()
    );
    moved
}

#[test]
fn exhaustive_small_memberships() {
    let layouts: [(&str, &dyn Fn(usize) -> String); 3] = [
        ("a host each", &|i| format!("h{i}")),
        ("one host", &|_| "h".to_string()),
        ("two hosts", &|i| format!("h{}", i % 2)),
    ];
    let mut plans = 0u64;
    for (_, host_of) in layouts {
        for tasks in 0..=7u32 {
            for r in 0..=2usize {
                for before in 1u32..32 {
                    let prev_ids: Vec<usize> = (0..5).filter(|i| before & (1 << i) != 0).collect();
                    let prev_ms = members(&prev_ids, host_of);
                    let prev = plan(&prev_ms, tasks, None, r);
                    check(&prev_ms, tasks, None, r, &prev);
                    for now in 0u32..32 {
                        let ids: Vec<usize> = (0..5).filter(|i| now & (1 << i) != 0).collect();
                        let ms = members(&ids, host_of);
                        let next = plan(&ms, tasks, Some(&prev), r);
                        check(&ms, tasks, Some(&prev), r, &next);
                        // Order-independent.
                        let mut rev = ms.clone();
                        rev.reverse();
                        assert_eq!(plan(&rev, tasks, Some(&prev), r), next);
                        // A leave moves only the leaver's tasks; unchanged membership moves
                        // nothing.
                        if now & before == now && now != 0 {
                            for (t, a) in &prev.active {
                                if ids.iter().any(|&i| format!("p{i}") == *a) {
                                    assert_eq!(&next.active[t], a, "a leave moved task {t}");
                                }
                            }
                        }
                        plans += 2;
                    }
                }
            }
        }
    }
    assert!(plans > 60_000, "{plans}");
}

/// Large random cases, with local state held here and there.
fn arb_case() -> impl Strategy<Value = (usize, u32, usize, u64)> {
    (2usize..40, 1u32..400, 0usize..3, any::<u64>())
}

fn random_members(n: usize, seed: u64, tasks: u32) -> Vec<Member> {
    let mut by_id = BTreeMap::new();
    for i in 0..n {
        let id = format!("proc-{}", seed.wrapping_add(i as u64) % 1000);
        let mut m = Member::new(id.clone(), format!("host-{}", i % 7));
        for t in 0..tasks {
            if (seed ^ (t as u64 * 31 + i as u64)).is_multiple_of(17) {
                m.holds.insert(t);
            }
        }
        by_id.insert(id, m);
    }
    by_id.into_values().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn joins_and_leaves_move_little((n, tasks, r, seed) in arb_case()) {
        let ms = random_members(n, seed, tasks);
        let n = ms.len();
        let base = plan(&ms, tasks, None, r);
        check(&ms, tasks, None, r, &base);

        // A join moves at most ceil(T/(N+1)) tasks, all to the new member.
        let mut joined = ms.clone();
        joined.push(Member::new("newcomer", "host-new"));
        let after_join = plan(&joined, tasks, Some(&base), r);
        check(&joined, tasks, Some(&base), r, &after_join);
        let moved: Vec<u32> = (0..tasks).filter(|t| after_join.active[t] != base.active[t]).collect();
        prop_assert!(moved.len() <= (tasks as usize).div_ceil(n + 1), "{} moved", moved.len());
        prop_assert!(moved.iter().all(|t| after_join.active[t] == "newcomer"));

        // A leave moves only the leaver's tasks, mostly to their standbys.
        let leaver = ms[(seed % n as u64) as usize].id.clone();
        let left: Vec<Member> = ms.iter().filter(|m| m.id != leaver).cloned().collect();
        let after_leave = plan(&left, tasks, Some(&base), r);
        check(&left, tasks, Some(&base), r, &after_leave);
        for t in 0..tasks {
            if base.active[&t] != leaver {
                prop_assert_eq!(&after_leave.active[&t], &base.active[&t]);
            }
        }
    }
}

/// Where a leaver's tasks go, over every single leave of many balanced models with one
/// standby: most go to their standby (balance sends the rest to members with room).
#[test]
fn a_leavers_tasks_go_mostly_to_their_standbys() {
    let (mut orphans, mut to_standby) = (0u64, 0u64);
    for n in 3..16usize {
        for tasks in [n as u32, 2 * n as u32, 5 * n as u32, 7 * n as u32 + 3] {
            let ms = members(&(0..n).collect::<Vec<_>>(), &|i| format!("h{}", i % 4));
            let base = plan(&ms, tasks, None, 1);
            for leaver in &ms {
                let left: Vec<Member> = ms.iter().filter(|m| m.id != leaver.id).cloned().collect();
                let next = plan(&left, tasks, Some(&base), 1);
                for t in base.active_of(&leaver.id) {
                    orphans += 1;
                    if base.standbys[&t].contains(&next.active[&t]) {
                        to_standby += 1;
                    }
                }
            }
        }
    }
    let ratio = to_standby as f64 / orphans as f64;
    eprintln!("{to_standby} of {orphans} orphaned tasks went to their standby ({ratio:.2})");
    assert!(ratio >= 0.6, "{to_standby} of {orphans}");
}
