//! Issue 13 part 1 with the release `gregor` binary: a key that expired never comes back,
//! whatever kills the process and when. The `kv` job applies 400 keys to a store with
//! `ttl.ms`; once they expired, the job is killed (SIGKILL) at random moments while its
//! commits' expiry passes write tombstones (20 entries examined per pass, a commit every
//! 20 ms, so passes are cut off mid-way and between expiry and checkpoint), and once stopped
//! exactly between the expiry pass and the checkpoint (`GREGOR_CRASH_AT=sink-flushed:1`).
//! After every crash no reader shows an expired key (`store get`, `store dump`, its
//! `--read-only` form, and `store dump --job`, the committed changelog); at the end the
//! committed changelog itself holds a tombstone for every key, so no restore, standby or
//! replay of it brings one back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::backend::{Backend, TopicPartition};
use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;

const BIN: &str = env!("CARGO_BIN_EXE_gregor");
const KEYS: u64 = 400;
const TTL_MS: u64 = 1_500;

const JOB: &str = r#"
[job]
name = "sessions"
task = "kv"
inputs = ["in"]
commit.ms = 20

[stores.kv]
key.serde = "string"
value.serde = "string"
changelog = "kv-changelog"
cache.max.bytes = 16384
ttl.ms = 1500
ttl.cleanup.entries = 20
"#;

fn cmd(state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn produce(state: &Path, prefix: &str) {
    let logs = LogDir::open(state).unwrap();
    let t = match logs.topic("in") {
        Ok(t) => t,
        Err(_) => logs.create_topic("in", 2, TopicConfig::default()).unwrap(),
    };
    let mut parts: Vec<_> = (0..2).map(|p| t.open_partition(p).unwrap().0).collect();
    for i in 0..KEYS {
        let key = format!("{prefix}{i}");
        let p = partition_for_key(key.as_bytes(), 2);
        parts[p as usize]
            .append(0, key.as_bytes(), Some(b"session"))
            .unwrap();
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
}

/// Every reader of the store: none may show a key.
fn assert_nothing_visible(state: &Path, job: &Path, when: &str) {
    let job = job.to_str().unwrap();
    for args in [
        vec!["store", "dump", "--store", "kv"],
        vec!["store", "dump", "--store", "kv", "--read-only"],
        vec!["store", "dump", "--store", "kv", "--job", job],
    ] {
        let out = ok(cmd(state, &args).output().unwrap());
        assert!(out.is_empty(), "{when}: `{}` shows\n{out}", args.join(" "));
    }
    for key in ["k0", "k1", "k399"] {
        let task = format!(
            "sessions.partition-{}",
            partition_for_key(key.as_bytes(), 2)
        );
        let o = cmd(
            state,
            &["store", "get", "--task", &task, "--store", "kv", key],
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(1), "{when}: {key}: {}", text(&o));
    }
}

/// The committed changelog records per task, as stored: key -> value (None: tombstone).
fn committed_records(state: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let backend = EmbeddedBackend::open(state, EmbeddedSettings::default()).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let mut out = BTreeMap::new();
    for p in 0..2u32 {
        let task = format!("sessions.partition-{p}");
        let end = backend
            .read_checkpoint(&task)
            .unwrap()
            .and_then(|cp| cp.changelogs.get("kv").copied())
            .unwrap_or(0);
        let tp = TopicPartition::new("kv-changelog", p);
        let mut reader = backend.open_reader(&tp, 0).unwrap();
        let mut seen = 0;
        while seen < end {
            let batch = reader.next_batch(1_000).unwrap();
            assert!(!batch.is_empty(), "changelog {tp} ends before {end}");
            for r in batch {
                if r.offset < end {
                    out.insert(String::from_utf8(r.key).unwrap(), r.value);
                }
                seen = r.offset + 1;
            }
        }
    }
    out
}

fn write_job(dir: &Path) -> PathBuf {
    let job = dir.join("sessions.toml");
    std::fs::write(&job, JOB).unwrap();
    job
}

#[test]
fn expired_keys_never_come_back_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let job = write_job(dir.path());
    produce(&state, "k");
    let now_ms = || gregor::store::ttl::Clock::System.now_ms();
    let started = now_ms();
    ok(cmd(&state, &["run", job.to_str().unwrap(), "--until-end"])
        .output()
        .unwrap());
    // Every key was applied and committed, with its deadline in the changelog: ttl.ms after
    // its write (the coarse clock may make it up to a few ms earlier).
    let committed = committed_records(&state);
    assert_eq!(committed.len() as u64, KEYS);
    let mut last_deadline = 0;
    for (k, v) in &committed {
        let v = v
            .as_ref()
            .unwrap_or_else(|| panic!("{k}: tombstone already"));
        let (at, value) = gregor::store::ttl::decode("kv", v).unwrap();
        assert_eq!(value, b"session");
        let now = now_ms();
        assert!(
            at + 20 >= started + TTL_MS && at <= now + TTL_MS,
            "{k}: deadline {at}, started {started}, now {now}"
        );
        last_deadline = last_deadline.max(at);
    }
    // Let every key expire.
    while now_ms() <= last_deadline + 50 {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_nothing_visible(&state, &job, "expired, before any removal");

    // Stopped exactly between the first commit's expiry pass (tombstones sent and durable
    // in the log) and its checkpoint: the restart truncates them; nothing is visible.
    let o = cmd(&state, &["run", job.to_str().unwrap()])
        .env("GREGOR_CRASH_AT", "sink-flushed:1")
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the crash point was reached: {}",
        text(&o)
    );
    assert_nothing_visible(&state, &job, "after the crash at sink-flushed");

    // kill -9 at random moments while passes remove the keys.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = cmd(&state, &["run", job.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + seed % 150));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_nothing_visible(&state, &job, &format!("after kill -9 #{round}"));
    }

    // Runs long enough to finish the sweeps (20 entries per pass, a pass per commit), each
    // stopped cleanly, until every key ends in a committed tombstone. (Compaction may have
    // dropped tombstones whose puts it removed: a key may be absent.)
    let mut puts = Vec::new();
    for attempt in 0..5 {
        let mut child = cmd(&state, &["run", job.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1_500));
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(child.wait().unwrap().success());
        assert_nothing_visible(&state, &job, &format!("after clean run #{attempt}"));
        puts = committed_records(&state)
            .into_iter()
            .filter_map(|(k, v)| v.is_some().then_some(k))
            .collect();
        if puts.is_empty() {
            break;
        }
    }
    assert!(
        puts.is_empty(),
        "every key ends in a committed tombstone; still put: {puts:?}"
    );
    // A full restore on another machine (the local stores lost) brings nothing back.
    std::fs::remove_dir_all(state.join("tasks/sessions.partition-0/stores")).unwrap();
    std::fs::remove_dir_all(state.join("tasks/sessions.partition-1/stores")).unwrap();
    ok(cmd(&state, &["run", job.to_str().unwrap(), "--until-end"])
        .output()
        .unwrap());
    assert_nothing_visible(&state, &job, "after a full restore");
}
