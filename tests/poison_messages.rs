//! Poison messages (issue 11): a message whose `process` fails, under each
//! [`ProcessErrorPolicy`]. `Fail` stops at the same offset on every start; `Skip` and
//! `DeadLetter` go past it without committing anything the failed call did (store writes,
//! output), because the task is rolled back to its checkpoint and the message skipped on the
//! replay; `DeadLetter` also sends it, exactly once, to the dead-letter topic.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use gregor::backend::Backend;
use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::restore::NoProgress;
use gregor::runtime::{
    Envelope, JobConfig, ProcessErrorPolicy, RunOptions, RunStats, RuntimeError, StreamTask,
    TaskContext, TaskError, TaskFactory, committed, embedded_backend, run_job_with, task_name,
};
use gregor::statedir::StateDir;
use gregor::store::typed::Store;
use gregor::task_storage::{TaskStorage, TaskStorageContext};

const JOB: &str = r#"
[job]
name = "poison"
task = "poisonous"
inputs = ["in"]
outputs = ["out"]
commit.ms = 1

[stores.counts]
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#;

/// Counts keys; sends `key -> count` to `out`; a message with value `bad` first writes
/// `partial-<offset>` to the store and sends output, then fails. A key over the store's key
/// limit fails inside the store's `put`.
struct Poisonous;

impl StreamTask for Poisonous {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let key = String::from_utf8_lossy(msg.key).into_owned();
        let mut s = ctx.store::<String, u64>("counts")?;
        if msg.value == Some(b"bad") {
            s.put(&format!("partial-{}", msg.offset), &1)?;
            drop(s);
            ctx.send("out", msg.key, Some(b"from a failed call"))?;
            return Err(format!("bad message at offset {}", msg.offset).into());
        }
        let n = s.get(&key)?.unwrap_or(0) + 1;
        s.put(&key, &n)?;
        drop(s);
        ctx.send("out", msg.key, Some(n.to_string().as_bytes()))?;
        Ok(())
    }
}

fn factory() -> TaskFactory {
    Box::new(|_| Box::new(Poisonous))
}

/// A record's key and value.
type KeyValue = (Vec<u8>, Vec<u8>);

/// 2 partitions; every 50th message is `bad`, message 77 has a key over 64 KiB. Returns the
/// counts of the good messages and the bad messages (key, value).
fn produce(root: &Path, n: usize) -> (BTreeMap<String, u64>, Vec<KeyValue>) {
    let logs = LogDir::open(root).unwrap();
    let t = logs.create_topic("in", 2, TopicConfig::default()).unwrap();
    let mut parts: Vec<_> = (0..2).map(|p| t.open_partition(p).unwrap().0).collect();
    let mut good = BTreeMap::new();
    let mut bad = Vec::new();
    for i in 0..n {
        let (key, value) = if i == 77 {
            ("x".repeat(70 * 1024), "big".to_string())
        } else if i % 50 == 49 {
            (format!("k{}", i % 13), "bad".to_string())
        } else {
            (format!("k{}", i % 13), format!("v{i}"))
        };
        if i == 77 || i % 50 == 49 {
            bad.push((key.clone().into_bytes(), value.clone().into_bytes()));
        } else {
            *good.entry(key.clone()).or_insert(0) += 1;
        }
        let p = partition_for_key(key.as_bytes(), 2);
        parts[p as usize]
            .append(0, key.as_bytes(), Some(value.as_bytes()))
            .unwrap();
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
    (good, bad)
}

fn run(
    state: &StateDir,
    job: &JobConfig,
    policy: ProcessErrorPolicy,
) -> Result<RunStats, RuntimeError> {
    let opts = RunOptions {
        until_end: true,
        progress: Box::new(NoProgress),
        ..RunOptions::new()
    };
    run_job_with(state, job, &factory(), opts, policy)
}

/// Store `counts` of both tasks at their checkpoints, merged.
fn store(state: &StateDir, job: &JobConfig) -> BTreeMap<String, u64> {
    let backend: Arc<dyn Backend> = Arc::new(embedded_backend(state, job).unwrap());
    let config = &job.stores["counts"];
    let mut out = BTreeMap::new();
    for p in 0..2 {
        let task = task_name(&job.name, p);
        let ctx = TaskStorageContext {
            backend: Arc::clone(&backend),
            state,
            task: &task,
            changelog_partition: p,
        };
        let configs = BTreeMap::from([("counts".to_string(), config.clone())]);
        let (mut storage, _) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
        let s = storage.store("counts").unwrap();
        let mut typed =
            Store::<String, u64, _>::new(s.stack(), config.key_serde, config.value_serde).unwrap();
        for e in typed.all().unwrap() {
            let (k, v) = e.unwrap();
            *out.entry(k).or_insert(0) += v;
        }
    }
    out
}

/// Committed records of `topic` (up to its read-committed marker): (key, value).
fn committed_records(root: &Path, topic: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let logs = LogDir::open(root).unwrap();
    let t = logs.topic(topic).unwrap();
    let mut out = Vec::new();
    for p in 0..t.partitions() {
        let (mut part, _) = t.open_partition(p).unwrap();
        let limit = committed::read(part.dir()).unwrap().unwrap_or(u64::MAX);
        for r in part.read(0, usize::MAX).unwrap() {
            if r.offset < limit {
                out.push((r.key, r.value.unwrap_or_default()));
            }
        }
    }
    out
}

#[test]
fn fail_stops_at_the_same_offset_on_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let job = JobConfig::from_toml_str("poison.toml", JOB).unwrap();
    produce(dir.path(), 300);
    let mut errors = Vec::new();
    for _ in 0..2 {
        let e = run(&state, &job, ProcessErrorPolicy::Fail)
            .unwrap_err()
            .to_string();
        assert!(e.contains("process of in/"), "{e}");
        errors.push(e);
    }
    assert_eq!(errors[0], errors[1]);
}

/// Skip: every good message counted and output exactly once; nothing the failed calls wrote
/// (the `partial-*` keys, their output) is committed, though they wrote it after other
/// uncommitted work (commit.ms = 1 still leaves work between commits).
#[test]
fn skip_commits_nothing_of_the_failed_message() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let job = JobConfig::from_toml_str("poison.toml", JOB).unwrap();
    let (good, bad) = produce(dir.path(), 400);
    let stats = run(&state, &job, ProcessErrorPolicy::Skip).unwrap();
    assert_eq!(stats.skipped, bad.len() as u64);
    let counts = store(&state, &job);
    assert_eq!(counts, good, "store after skipping");
    let out = committed_records(dir.path(), "out");
    assert_eq!(out.len() as u64, good.values().sum::<u64>());
    assert!(out.iter().all(|(_, v)| v != b"from a failed call"));
    // A restart processes nothing again and changes nothing.
    let again = run(&state, &job, ProcessErrorPolicy::Skip).unwrap();
    assert_eq!((again.processed, again.skipped), (0, 0));
    assert_eq!(store(&state, &job), good);
    assert_eq!(committed_records(dir.path(), "out").len(), out.len());
}

/// DeadLetter: as Skip, and each failed message reaches the dead-letter topic exactly once,
/// with its key, value, position and error.
#[test]
fn dead_letter_sends_each_failed_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let job = JobConfig::from_toml_str("poison.toml", JOB).unwrap();
    let (good, bad) = produce(dir.path(), 400);
    let policy = ProcessErrorPolicy::DeadLetter("poison-dlq".into());
    let stats = run(&state, &job, policy.clone()).unwrap();
    assert_eq!(stats.skipped, bad.len() as u64);
    assert_eq!(store(&state, &job), good);
    let dlq = committed_records(dir.path(), "poison-dlq");
    let mut got: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (k, v) in &dlq {
        let j: serde_json::Value = serde_json::from_slice(v).unwrap();
        assert_eq!(j["topic"], "in");
        assert!(j["offset"].is_u64() && j["partition"].is_u64(), "{j}");
        let value = j["value"].as_str().unwrap().as_bytes().to_vec();
        let error = j["error"].as_str().unwrap();
        if value == b"bad" {
            assert!(error.contains("bad message at offset"), "{error}");
        } else {
            assert!(error.contains("key") && error.contains("counts"), "{error}");
        }
        got.push((k.clone(), value));
    }
    got.sort();
    let mut want = bad.clone();
    want.sort();
    assert_eq!(got, want);
    run(&state, &job, policy).unwrap();
    assert_eq!(committed_records(dir.path(), "poison-dlq").len(), dlq.len());
    // The dead-letter topic is recorded as the job's output: no other job may write it.
    let other = JobConfig::from_toml_str(
        "other.toml",
        &JOB.replace("name = \"poison\"", "name = \"other\"")
            .replace("counts-changelog", "other-changelog")
            .replace("outputs = [\"out\"]", "outputs = [\"poison-dlq\"]"),
    )
    .unwrap();
    let e = run(&state, &other, ProcessErrorPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("poison-dlq") && e.contains("job `poison`"),
        "{e}"
    );
}
