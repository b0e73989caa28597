//! A network partition, not a crash (issue 9): one `gregor run` process of the count job runs
//! in its own network namespace, joined to the host by a veth pair (gregor-testkit's
//! `NetNs`); Apache Kafka 0.9.0.1 and its ZooKeeper 3.4.6 listen on the pair's host end.
//! Taking the link down cuts the process off from both while it keeps running. Checked, with
//! the leader cut off first and then a follower:
//!
//! - the cut-off process stops processing and committing (its log says it dropped its tasks)
//!   before its ZooKeeper session can expire, and keeps running;
//! - the others take its tasks (the job settles on them alone: a model without it, every task
//!   caught up and checkpointed by its new owner);
//! - when the link comes back it rejoins as a new member without help, and the job settles on
//!   all three again;
//! - at the end the counts restored from Kafka alone equal the counts computed from the input,
//!   and the whole checkpoint history shows no task committed by two processes under one job
//!   model version and no input offset going back. Writes the cut-off process had on the way
//!   may reach the broker when the link comes back, after its tasks moved: a late checkpoint
//!   (older model version than the one before it; readers ignore it) and changelog records
//!   (the new owner's next commit notices records it did not send and writes the keys they
//!   touch again). The exact counts show both defences hold; how many of each occurred is
//!   printed.
//!
//! `GREGOR_PARTITION_GDB=1` (local debugging): when the cut-off process does not stop, its
//! threads' stacks are written to /tmp/partition-gdb.txt (needs gdb).
//!
//! Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2's `ip`, as CI has: it fails,
//! never skips, without them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gregor::backend::Backend;
use gregor_testkit::NetNs;
use serde_json::Value;

#[path = "support/zk_cluster.rs"]
mod zk_cluster;
use zk_cluster::*;

const SESSION_MS: u64 = 6_000;

/// Seconds since midnight UTC, now (the clock of the processes' log lines).
fn now_of_day() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        .rem_euclid(86_400.0)
}

/// The member id and active tasks of the process with `pid` in a `job status`.
fn member_of(s: &Value, pid: u32) -> (String, Vec<String>) {
    let id = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["pid"].as_u64() == Some(u64::from(pid)))
        .and_then(|m| m["id"].as_str())
        .unwrap_or_else(|| panic!("pid {pid} is not a member: {s:#}"))
        .to_string();
    let tasks = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["active"].as_str() == Some(&id))
        .map(|t| t["task"].as_str().unwrap_or_default().to_string())
        .collect();
    (id, tasks)
}

/// Cuts the namespace off, checks that the process in it (the last of `procs`) stops in
/// time and the others take over, heals, and waits until it is back as a new member.
fn partition_round(
    c: &Cluster,
    ns: &NetNs,
    procs: &mut [Proc],
    seed: u64,
    expected: &mut BTreeMap<String, u64>,
    sink: &mut dyn gregor::backend::RecordSink,
) {
    let cut = procs.len() - 1;
    let before = c.status();
    let (old_id, tasks) = member_of(&before, procs[cut].pid());
    let was_leader = before["leader"].as_str() == Some(old_id.as_str());
    assert!(
        !tasks.is_empty(),
        "the process to cut off runs no task: {before:#}"
    );
    let log_len = std::fs::metadata(&procs[cut].log).unwrap().len() as usize;

    let cut_at = now_of_day();
    let t = Instant::now();
    ns.cut();
    eprintln!(
        "cut off {old_id} (leader: {was_leader}) running {tasks:?}; session timeout {SESSION_MS} ms"
    );
    produce(sink, 30_000, seed, expected);

    // The others take its tasks: the job settles on them alone (the cut-off process still
    // runs, but is no longer a member).
    wait_settled(c, &mut procs[..cut], Duration::from_secs(120));
    let moved_in = t.elapsed();
    procs[cut].assert_alive();
    let after = c.status();
    assert!(
        after["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"].as_str() != Some(old_id.as_str())),
        "{old_id} is still a member: {after:#}"
    );

    // It stopped on its own, before its session could expire.
    let log = std::fs::read_to_string(&procs[cut].log).unwrap();
    let since = &log[log_len.min(log.len())..];
    let fenced = since
        .lines()
        .find(|l| l.contains("fenced: dropping tasks"))
        .unwrap_or_else(|| {
            if std::env::var_os("GREGOR_PARTITION_GDB").is_some() {
                let out = std::process::Command::new("gdb")
                    .args([
                        "-p",
                        &procs[cut].pid().to_string(),
                        "-batch",
                        "-ex",
                        "thread apply all bt 30",
                    ])
                    .output()
                    .unwrap();
                std::fs::write("/tmp/partition-gdb.txt", &out.stdout).unwrap();
            }
            panic!("the cut-off process never dropped its tasks:\n{since}")
        });
    let stopped_after = (log_time(fenced).unwrap() - cut_at).rem_euclid(86_400.0);
    eprintln!(
        "it dropped its tasks {stopped_after:.2} s after the cut; the others ran them {:?} after it",
        moved_in
    );
    assert!(
        stopped_after < SESSION_MS as f64 / 1000.0,
        "it stopped {stopped_after:.2} s after the cut, not before its {SESSION_MS} ms session \
         could expire: {fenced}"
    );

    // The link comes back: it rejoins as a new member, and takes a share again.
    let t = Instant::now();
    ns.heal();
    produce(sink, 30_000, seed ^ 0xabcd, expected);
    wait_settled(c, procs, Duration::from_secs(120));
    let s = c.status();
    let (new_id, tasks) = member_of(&s, procs[cut].pid());
    assert_ne!(new_id, old_id, "it came back under its old member id");
    eprintln!(
        "healed: back as {new_id} running {tasks:?}; settled {:?} after the heal",
        t.elapsed()
    );
}

/// The leader cut off, then (once it is back, as the newest member) a follower.
#[test]
fn a_process_cut_off_from_zookeeper_and_the_broker_stops_and_rejoins() {
    let ns = NetNs::create();
    let c = Cluster::at(ns.host_addr(), SESSION_MS, 0);
    let mut expected = BTreeMap::new();
    let backend = c.backend();
    let mut sink = backend.open_sink("producer").unwrap();
    produce(&mut *sink, 100_000, 1, &mut expected);

    // The process in the namespace joins first, so it leads.
    let mut inside = c.spawn_in(2, Some(&ns));
    wait_settled(
        &c,
        std::slice::from_mut(&mut inside),
        Duration::from_secs(120),
    );
    let mut procs = vec![c.spawn(0), c.spawn(1), inside];
    wait_settled(&c, &mut procs, Duration::from_secs(120));
    let s = c.status();
    let leader = s["leader"].as_str().unwrap().to_string();
    assert_eq!(
        member_of(&s, procs[2].pid()).0,
        leader,
        "the process in the namespace should lead"
    );

    partition_round(&c, &ns, &mut procs, 2, &mut expected, &mut *sink);
    // Now it is the newest member, a follower.
    partition_round(&c, &ns, &mut procs, 3, &mut expected, &mut *sink);

    for p in procs {
        p.stop();
    }
    assert_eq!(c.restored_counts(), expected);
    let (n, versions, late) = audit_checkpoint_history(&c);
    let repairs: usize = (0..3)
        .map(|i| {
            std::fs::read_to_string(c.dir.path().join(format!("process-{i}.log")))
                .unwrap_or_default()
                .matches("records this task did not send")
                .count()
        })
        .sum();
    eprintln!(
        "{} messages; {n} checkpoints under {versions} job model versions audited, {late} late \
         ones of a cut-off process ignored; {repairs} changelog repairs of stray records",
        expected.values().sum::<u64>()
    );
}
