//! The job's ZooKeeper itself goes down (SIGKILL) under a running job and comes back, while
//! the broker stays up: two `gregor run` processes of the count job (8 tasks) on Kafka 0.9.0.1,
//! coordinated through a ZooKeeper 3.4.6 of their own (gregor-testkit).
//!
//! Checked: with ZooKeeper gone, every process drops its tasks before its session could
//! expire (it cannot know whether the others still see it), keeps running (no exit, no
//! crash loop), and writes no checkpoint once its lease ran out, although new input keeps
//! arriving; when ZooKeeper is back the processes rejoin without help and the job settles;
//! at the end the counts restored from Kafka alone equal the input's, and the checkpoint
//! history has no task committed by two processes under one model version and no input
//! offset going back.

#[path = "support/zk_cluster.rs"]
mod zk_cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use zk_cluster::{Cluster, Proc, audit_checkpoints, produce, wait_settled};

/// ZooKeeper session timeout of the processes (their lease is half of it).
const SESSION_MS: u64 = 6_000;

/// Sleeps `d`, checking every 200 ms that no process exited.
fn sleep_alive(procs: &mut [Proc], d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        for p in procs.iter_mut() {
            p.assert_alive();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_job_pauses_while_zookeeper_is_down_and_resumes_when_it_is_back() {
    let mut c = Cluster::with_own_zookeeper(SESSION_MS);
    let backend = c.backend();
    let mut sink = gregor::backend::Backend::open_sink(&backend, "producer").unwrap();
    let mut expected = BTreeMap::new();
    produce(&mut *sink, 40_000, 1, &mut expected);
    let mut procs: Vec<Proc> = (0..2).map(|n| c.spawn(n)).collect();
    let took = wait_settled(&c, &mut procs, Duration::from_secs(180));
    eprintln!("settled on two processes in {took:?}");
    let logged_before: Vec<usize> = procs
        .iter()
        .map(|p| std::fs::read_to_string(&p.log).unwrap().len())
        .collect();

    c.job_zk.as_mut().expect("the job's own ZooKeeper").kill9();
    let killed = Instant::now();
    // Input the processes may still take while their leases last.
    produce(&mut *sink, 20_000, 2, &mut expected);
    sleep_alive(
        &mut procs,
        Duration::from_millis(SESSION_MS + 1_000).saturating_sub(killed.elapsed()),
    );
    // Past the session timeout: every process has dropped its tasks, and says so.
    for (p, &before) in procs.iter().zip(&logged_before) {
        let log = std::fs::read_to_string(&p.log).unwrap();
        assert!(
            log[before..].contains("fenced: dropping tasks"),
            "process {} did not drop its tasks within the session timeout of losing \
             ZooKeeper:\n{}",
            p.n,
            p.log_tail()
        );
    }
    // New input now finds nobody to process it: no checkpoint may be written.
    let frozen = c.all_checkpoints().len();
    produce(&mut *sink, 20_000, 3, &mut expected);
    sleep_alive(&mut procs, Duration::from_secs(5));
    let later = c.all_checkpoints().len();
    assert_eq!(
        later,
        frozen,
        "{} checkpoints written while ZooKeeper was down, after every lease ran out",
        later - frozen
    );
    let down_for = killed.elapsed();
    // What an operator reads meanwhile: a few lines that say what is wrong, not a flood.
    for (p, &before) in procs.iter().zip(&logged_before) {
        let log = std::fs::read_to_string(&p.log).unwrap();
        let outage = &log[before..];
        if std::env::var("GREGOR_ZK_DOWN_LOG").is_ok() {
            eprintln!("--- process {} while ZooKeeper was down:\n{outage}", p.n);
        }
        assert!(
            !outage.contains("PartitionEOF"),
            "process {}: the end of a partition logged as an error:\n{outage}",
            p.n
        );
        let lines = outage.lines().count();
        assert!(
            lines < 100,
            "process {} logged {lines} lines in {down_for:?} without ZooKeeper:\n{}",
            p.n,
            p.log_tail()
        );
    }

    c.job_zk.as_mut().unwrap().restart();
    let back = wait_settled(&c, &mut procs, Duration::from_secs(180));
    eprintln!(
        "ZooKeeper down for {down_for:?}; after its restart the job settled in {back:?} \
         ({frozen} checkpoints before, none while down)"
    );
    for p in procs {
        p.stop();
    }
    let got = c.restored_counts();
    assert_eq!(
        got.values().sum::<u64>(),
        expected.values().sum::<u64>(),
        "messages counted"
    );
    assert_eq!(got, expected, "counts restored from Kafka");
    let (n, versions) = audit_checkpoints(&c);
    eprintln!("{n} checkpoints under {versions} job model versions audited");
}
