//! Issue 13 part 1 under ZooKeeper, with real servers (Apache Kafka 0.9.0.1 and its
//! ZooKeeper 3.4.6): an expired key never comes back after a failover. Two `gregor run`
//! processes run the `kv` job `sessions` (4 tasks) whose store has `ttl.ms`; the input
//! records carry their deadlines (the store's 9-byte header, as `gregor serve` writes them),
//! so each key expires when the test says:
//!
//! - `live-*` (no header: `ttl.ms` = 10 min from when applied) and `far-*` (a deadline in 10
//!   min) stay;
//! - `gone-*` expire early; the test waits until every one is a tombstone in the committed
//!   changelog (the expiry passes deleted them and a checkpoint covers that);
//! - `late-*` expire 150 ms before the kill: the expiry passes (5 entries per commit) have
//!   deleted few of them by then, so most are, in the killed process's last checkpoint, a
//!   committed value with a past deadline (the test checks there are such keys);
//! - `edge-*` expire 1.5 s after the kill, before the failover completes (the session
//!   timeout is 4 s): committed with their values, expired when the new owner serves them.
//!
//! Then the process running half the tasks is SIGKILLed and its tasks fail over to the other
//! one: with `standby.replicas = 1` to its standby replicas, without to a restore from the
//! changelog. As soon as the survivor runs every task (before its expiry passes deleted much:
//! the test checks that expired entries were still committed with their values after the
//! reads): over HTTP every expired key is a 404 and absent from a range, every live key has
//! its value; a fresh restore from Kafka alone holds exactly the live keys; and soon the committed changelog holds a tombstone for every expired key (the
//! new owner's expiry passes), so no later restore, standby or replay brings one back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gregor::backend::{Backend, TopicPartition};
use gregor::partitioner::partition_for_key;
use gregor::restore::NoProgress;
use gregor::runtime::task_name;
use gregor::statedir::StateDir;
use gregor::store::ttl;
use gregor::task_storage::{TaskStorage, TaskStorageContext};
use serde_json::Value;

#[path = "support/zk_cluster.rs"]
mod zk_cluster;
use zk_cluster::*;

const TASKS: u32 = 4;
const SESSION_MS: u64 = 4_000;
const TTL_MS: u64 = 600_000;
const CLEANUP_ENTRIES: usize = 5;
const COMMIT_MS: u64 = 100;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn partition(key: &str) -> u32 {
    partition_for_key(key.as_bytes(), TASKS)
}

/// Appends `keys` to the input: with `deadline`, the value behind the store's header.
fn produce(backend: &dyn Backend, keys: &[String], deadline: Option<u64>) {
    let mut sink = backend.open_sink("producer").unwrap();
    for key in keys {
        let value = match deadline {
            Some(at) => ttl::encode(at, key.as_bytes()),
            None => key.as_bytes().to_vec(),
        };
        let tp = TopicPartition::new("in", partition(key));
        sink.send(&tp, 0, key.as_bytes(), Some(&value)).unwrap();
    }
    sink.flush().unwrap();
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// The newest checkpoint of every task: task partition -> (its writer's member id, the
/// changelog end of store `kv`).
fn last_checkpoints(backend: &dyn Backend) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    for p in 0..TASKS {
        let Some(cp) = backend.read_checkpoint(&task_name("sessions", p)).unwrap() else {
            continue;
        };
        let owner = cp.owner.as_ref().expect("a checkpoint with its owner");
        let end = cp.changelogs.get("kv").copied().unwrap_or(0);
        out.insert(p, (owner.member.clone(), end));
    }
    out
}

/// The changelog records of the tasks in `ends` below their end, as stored: key -> its last
/// value (None: a tombstone).
fn committed(
    backend: &dyn Backend,
    ends: &BTreeMap<u32, (String, u64)>,
) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for (&p, (_, end)) in ends {
        let tp = TopicPartition::new("kv-changelog", p);
        let mut reader = backend.open_reader(&tp, 0).unwrap();
        let (mut seen, t) = (0, Instant::now());
        while seen < *end {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "changelog {tp}: read {seen} of {end} records in 30 s"
            );
            for r in reader.next_batch(1_000).unwrap() {
                if r.offset < *end {
                    out.insert(String::from_utf8(r.key).unwrap(), r.value);
                }
                seen = r.offset + 1;
            }
        }
    }
    out
}

/// GET of `key` through `entry` (following one redirect): its value, or None for a 404;
/// retried while the task is unavailable (503).
fn get(agent: &ureq::Agent, entry: &str, key: &str) -> Option<String> {
    let t = Instant::now();
    loop {
        let mut r = agent
            .get(format!("http://{entry}/v1/stores/kv/keys/{key}"))
            .call()
            .unwrap();
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap();
        match status {
            200 => {
                let v: Value = serde_json::from_str(&body).unwrap();
                return Some(v["value"].as_str().unwrap().to_string());
            }
            404 => return None,
            503 if t.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            s => panic!("GET {key} through {entry}: {s} {body}"),
        }
    }
}

/// Waits until the process at `entry` runs every task (`GET /v1/job`); returns how long it
/// took.
fn wait_all_running(agent: &ureq::Agent, entry: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let mut r = agent.get(format!("http://{entry}/v1/job")).call().unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        if r.status().as_u16() == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            let running: BTreeSet<u64> = v["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["state"] == "running")
                .map(|t| t["partition"].as_u64().unwrap())
                .collect();
            if running.len() == TASKS as usize {
                return t.elapsed();
            }
        }
        assert!(
            t.elapsed() < limit,
            "{entry} does not run every task after {limit:?}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every key of a range over all tasks of the process at `entry` (one page).
fn range(agent: &ureq::Agent, entry: &str) -> BTreeMap<String, String> {
    let mut r = agent
        .get(format!("http://{entry}/v1/stores/kv/range?limit=1000"))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(status, 200, "range through {entry}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["cursor"].is_null(), "more than one page: {body}");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The store `kv` of every task restored from Kafka alone into a fresh state directory, as
/// the store stack reads it (expired entries hidden).
fn restored(c: &Cluster) -> BTreeMap<String, String> {
    let backend: Arc<dyn Backend> = Arc::new(c.backend());
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut out = BTreeMap::new();
    for p in 0..TASKS {
        let task = task_name(&c.job.name, p);
        let ctx = TaskStorageContext {
            backend: Arc::clone(&backend),
            state: &state,
            task: &task,
            changelog_partition: p,
        };
        let (mut storage, _) = TaskStorage::open(&ctx, &c.job.stores, &mut NoProgress).unwrap();
        let s = storage.store("kv").unwrap().stack();
        for e in s.all().unwrap() {
            let (k, v) = e.unwrap();
            out.insert(String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap());
        }
    }
    out
}

fn expired_keys_stay_gone_after_failover(standbys: u32) {
    let started = Instant::now();
    let c = Cluster::with_job(TASKS, "kv-changelog", |bootstrap, zk| {
        ttl_job_text(
            bootstrap,
            zk,
            SESSION_MS,
            standbys,
            TTL_MS,
            CLEANUP_ENTRIES,
            COMMIT_MS,
        )
    });
    let backend = c.backend();
    let mut procs: Vec<Proc> = (0..2).map(|n| c.spawn(n)).collect();
    let took = wait_settled(&c, &mut procs, Duration::from_secs(60));
    eprintln!("[standbys {standbys}] 2 processes settled in {took:?}");
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();

    // Live keys, and keys that expire in 1.5 s.
    let live = keys("live", 100);
    let far = keys("far", 100);
    let gone = keys("gone", 200);
    produce(&backend, &live, None);
    produce(&backend, &far, Some(now_ms() + 600_000));
    produce(&backend, &gone, Some(now_ms() + 1_500));
    // Until every gone key is a tombstone in the committed changelog.
    let t = Instant::now();
    loop {
        let state = committed(&backend, &last_checkpoints(&backend));
        let left: Vec<&String> = gone
            .iter()
            .filter(|k| !matches!(state.get(*k), Some(None)))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} gone keys not committed as tombstones within 20 s, e.g. {:?}",
            left.len(),
            left.first()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!(
        "[standbys {standbys}] the expired keys committed as tombstones after {:?}",
        t.elapsed()
    );

    // The process to kill, its member id and its tasks (the kill checks they did not move:
    // its checkpoints are the newest of these tasks).
    let status = c.status();
    let victim_pid = procs[0].pid();
    let member = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["pid"].as_u64() == Some(u64::from(victim_pid)))
        .map(|m| m["id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no member with pid {}: {status:#}", victim_pid));
    let victim_tasks: BTreeSet<u32> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["active"].as_str() == Some(member.as_str()))
        .map(|t| t["partition"].as_u64().unwrap() as u32)
        .collect();
    assert!(
        !victim_tasks.is_empty() && victim_tasks.len() < TASKS as usize,
        "process 0 runs tasks {victim_tasks:?}: {status:#}"
    );

    // Keys that expire just before the kill, and just after it.
    let late = keys("late", 1_000);
    let edge = keys("edge", 100);
    let late_at = now_ms() + 8_000;
    produce(&backend, &late, Some(late_at));
    produce(&backend, &edge, Some(late_at + 1_650));
    let took = wait_settled(&c, &mut procs, Duration::from_secs(30));
    let entry = procs[1].http();
    eprintln!(
        "[standbys {standbys}] settled with the late keys in {took:?}, {} ms before their deadline",
        late_at.saturating_sub(now_ms())
    );
    assert!(
        now_ms() + 500 < late_at,
        "settling took {took:?}: too late to read the late keys before their deadline"
    );
    // (A GET redirected to the other process takes ~0.2 s here: a few keys only.)
    for k in late.iter().step_by(100).chain(&live[..5]).chain(&far[..5]) {
        assert_eq!(get(&agent, &entry, k).as_deref(), Some(k.as_str()), "{k}");
    }
    for k in gone.iter().step_by(40) {
        assert_eq!(get(&agent, &entry, k), None, "{k}");
    }

    let victim = procs.remove(0);
    eprintln!(
        "[standbys {standbys}] ready to kill {} ms before the late deadline",
        late_at as i64 - now_ms() as i64
    );
    std::thread::sleep(Duration::from_millis(
        (late_at + 150).saturating_sub(now_ms()),
    ));
    victim.kill9();
    let killed_at = now_ms();
    eprintln!(
        "[standbys {standbys}] killed process 0 (tasks {victim_tasks:?}) {} ms after the late deadline",
        killed_at - late_at
    );
    assert!(killed_at < late_at + 1_000, "killed too late");

    // What the killed process committed for its tasks: every gone key a tombstone; late keys
    // expired but still committed with their values (the case reads must handle).
    // (Read before the survivor can take over: its session expires 4 s after the kill.)
    let ends: BTreeMap<u32, (String, u64)> = last_checkpoints(&backend)
        .into_iter()
        .filter(|(p, _)| victim_tasks.contains(p))
        .collect();
    assert_eq!(ends.len(), victim_tasks.len(), "{ends:?}");
    for (p, (writer, _)) in &ends {
        assert_eq!(writer, &member, "task {p}: a checkpoint by another process");
    }
    let at_kill = committed(&backend, &ends);
    for k in gone.iter().filter(|k| victim_tasks.contains(&partition(k))) {
        assert_eq!(at_kill.get(k), Some(&None), "{k}");
    }
    let (mut expired_uncommitted, mut expired_committed) = (0, 0);
    for k in late.iter().filter(|k| victim_tasks.contains(&partition(k))) {
        match at_kill.get(k) {
            Some(Some(v)) => {
                assert_eq!(ttl::decode("kv", v).unwrap(), (late_at, k.as_bytes()));
                expired_uncommitted += 1;
            }
            Some(None) => expired_committed += 1,
            None => panic!("{k}: not in the killed process's committed changelog"),
        }
    }
    eprintln!(
        "[standbys {standbys}] at the kill: {expired_uncommitted} late keys expired with their values committed, {expired_committed} as tombstones"
    );
    assert!(
        expired_uncommitted > 0,
        "no expired key without a committed tombstone at the kill"
    );

    // The failover: read as soon as the survivor runs every task, before its expiry passes
    // (5 entries per task per commit) deleted much.
    let entry = procs[0].http();
    let took = wait_all_running(&agent, &entry, Duration::from_secs(40));
    let failover_ms = now_ms() - killed_at;
    eprintln!(
        "[standbys {standbys}] the survivor runs every task {failover_ms} ms after the kill ({took:?} waiting)"
    );
    assert!(
        now_ms() > late_at + 1_650,
        "the edge keys are not expired yet"
    );
    let expected: BTreeMap<String, String> = live
        .iter()
        .chain(&far)
        .map(|k| (k.clone(), k.clone()))
        .collect();
    assert_eq!(range(&agent, &entry), expected);
    for k in live.iter().chain(&far) {
        assert_eq!(get(&agent, &entry, k).as_deref(), Some(k.as_str()), "{k}");
    }
    for k in gone.iter().chain(&late).chain(&edge) {
        assert_eq!(
            get(&agent, &entry, k),
            None,
            "{k}: expired, read after the failover"
        );
    }
    // A restore from Kafka alone.
    assert_eq!(restored(&c), expected);
    // The reads above met expired entries still in the store: keys the committed changelog
    // still holds with their values now (tombstones are only ever added).
    let state = committed(&backend, &last_checkpoints(&backend));
    let still = late
        .iter()
        .chain(&edge)
        .filter(|k| matches!(state.get(*k), Some(Some(_))))
        .count();
    eprintln!(
        "[standbys {standbys}] after the reads, {still} expired keys still committed with their values"
    );
    assert!(
        still > 0,
        "no expired entry left in the store by the time of the reads: they tested nothing"
    );
    let took = wait_settled(&c, &mut procs, Duration::from_secs(30));
    eprintln!("[standbys {standbys}] settled {took:?} later");

    // The new owner's expiry passes delete the rest: every expired key becomes a committed
    // tombstone; every live key keeps its committed value.
    let t = Instant::now();
    loop {
        let state = committed(&backend, &last_checkpoints(&backend));
        for k in live.iter().chain(&far) {
            let v = state.get(k).and_then(Option::as_ref);
            let (at, value) =
                ttl::decode("kv", v.unwrap_or_else(|| panic!("{k}: missing"))).unwrap();
            assert!(at > now_ms() && value == k.as_bytes(), "{k}");
        }
        let left = gone
            .iter()
            .chain(&late)
            .chain(&edge)
            .filter(|k| !matches!(state.get(*k), Some(None)))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{left} expired keys still without a committed tombstone after 20 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "[standbys {standbys}] every expired key a committed tombstone {:?} after the failover; test took {:?}",
        t.elapsed(),
        started.elapsed()
    );
    for p in procs {
        p.stop();
    }
}

#[test]
fn expired_keys_stay_gone_after_failover_to_a_standby() {
    expired_keys_stay_gone_after_failover(1);
}

#[test]
fn expired_keys_stay_gone_after_failover_with_a_restore() {
    expired_keys_stay_gone_after_failover(0);
}
