//! The task API with Rust tasks registered through a `TaskFactory`: lifecycle calls, output
//! partitioning and visibility, commit and shutdown requests, co-partitioned inputs, and task
//! errors (which stop the run without committing).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gregor::backend::Backend;
use gregor::checkpoint::Checkpoint;
use gregor::log::{LogDir, PartitionReader, Record, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::restore::NoProgress;
use gregor::runtime::{
    Envelope, JobConfig, RunOptions, RunStats, RuntimeError, StreamTask, TaskContext, TaskError,
    TaskFactory, committed, embedded_backend, run_job, task_name,
};
use gregor::statedir::StateDir;
use gregor::store::typed::Store;
use gregor::task_storage::{TaskStorage, TaskStorageContext};

fn create_topic(root: &Path, topic: &str, partitions: u32) {
    LogDir::open(root)
        .unwrap()
        .create_topic(topic, partitions, TopicConfig::default())
        .unwrap();
}

/// Appends `(key, value)` messages to `topic`, each to the partition murmur2 picks.
fn produce(root: &Path, topic: &str, messages: &[(String, String)]) {
    let logs = LogDir::open(root).unwrap();
    let t = logs.topic(topic).unwrap();
    let mut parts: Vec<_> = (0..t.partitions())
        .map(|p| t.open_partition(p).unwrap().0)
        .collect();
    for (k, v) in messages {
        let p = partition_for_key(k.as_bytes(), t.partitions());
        parts[p as usize]
            .append(0, k.as_bytes(), Some(v.as_bytes()))
            .unwrap();
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
}

/// Appends messages to one partition.
fn produce_to(root: &Path, topic: &str, partition: u32, messages: &[(&str, &str)]) {
    let (mut p, _) = LogDir::open(root)
        .unwrap()
        .open_partition(topic, partition)
        .unwrap();
    for (k, v) in messages {
        p.append(0, k.as_bytes(), Some(v.as_bytes())).unwrap();
    }
    p.sync().unwrap();
}

fn keyed(n: usize, prefix: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}{}", i % 37), format!("v{i}")))
        .collect()
}

/// Every record of `topic`/`partition` on disk (committed or not).
fn read_all(root: &Path, topic: &str, partition: u32) -> Vec<Record> {
    let dir = root.join("logs").join(topic).join(partition.to_string());
    PartitionReader::open(&dir, 0)
        .unwrap()
        .read(usize::MAX)
        .unwrap()
}

fn marker(root: &Path, topic: &str, partition: u32) -> Option<u64> {
    committed::read(&root.join("logs").join(topic).join(partition.to_string())).unwrap()
}

fn job(text: &str) -> JobConfig {
    JobConfig::from_toml_str("<test job>", text).unwrap()
}

fn opts(until_end: bool) -> RunOptions {
    RunOptions {
        until_end,
        progress: Box::new(NoProgress),
        ..RunOptions::new()
    }
}

fn run(
    state: &StateDir,
    job: &JobConfig,
    factory: TaskFactory,
    until_end: bool,
) -> Result<RunStats, RuntimeError> {
    run_job(state, job, &factory, opts(until_end))
}

/// Merged string -> u64 store `store` over `tasks` tasks, read through `TaskStorage::open` at
/// each task's checkpoint.
fn counts(state: &StateDir, job: &JobConfig, store: &str, tasks: u32) -> BTreeMap<String, u64> {
    let backend: Arc<dyn Backend> = Arc::new(embedded_backend(state, job).unwrap());
    let config = &job.stores[store];
    let mut out = BTreeMap::new();
    for p in 0..tasks {
        let task = task_name(&job.name, p);
        let ctx = TaskStorageContext {
            backend: Arc::clone(&backend),
            state,
            task: &task,
            changelog_partition: p,
        };
        let configs = BTreeMap::from([(store.to_string(), config.clone())]);
        let (mut storage, _) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
        let s = storage.store(store).unwrap();
        let mut typed =
            Store::<String, u64, _>::new(s.stack(), config.key_serde, config.value_serde).unwrap();
        for e in typed.all().unwrap() {
            let (k, v) = e.unwrap();
            *out.entry(k).or_insert(0) += v;
        }
    }
    out
}

fn expected_counts(messages: &[(String, String)]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (k, _) in messages {
        *m.entry(k.clone()).or_insert(0) += 1;
    }
    m
}

fn count_in(ctx: &mut TaskContext<'_>, key: &[u8]) -> Result<u64, TaskError> {
    let mut s = ctx.store::<String, u64>("counts")?;
    let k = String::from_utf8_lossy(key).into_owned();
    let n = s.get(&k)?.unwrap_or(0) + 1;
    s.put(&k, &n)?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Init(String),
    Process(String, String, u32, u64),
    Window(String, Instant),
    Close(String),
}

/// Records every call; asks for shutdown after `windows_before_shutdown` windows of task 0.
struct Recorder {
    calls: Arc<Mutex<Vec<Call>>>,
    windows: u32,
    windows_before_shutdown: u32,
}

impl StreamTask for Recorder {
    fn init(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Init(ctx.task_name().into()));
        Ok(())
    }

    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        count_in(ctx, msg.key)?;
        self.calls.lock().unwrap().push(Call::Process(
            ctx.task_name().into(),
            msg.topic.into(),
            msg.partition,
            msg.offset,
        ));
        Ok(())
    }

    fn window(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Window(ctx.task_name().into(), Instant::now()));
        self.windows += 1;
        if ctx.partition() == 0 && self.windows >= self.windows_before_shutdown {
            ctx.shutdown();
        }
        Ok(())
    }

    fn close(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Close(ctx.task_name().into()));
        Ok(())
    }
}

const COUNT_STORE: &str = r#"
[stores.counts]
engine = "rocksdb"
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#;

#[test]
fn init_process_window_close_are_called_and_window_runs_every_window_ms() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    create_topic(state.root(), "in", 2);
    let msgs = keyed(200, "k");
    produce(state.root(), "in", &msgs);
    let j = job(&format!(
        "[job]\nname = \"rec\"\ntask = \"rec\"\ninputs = [\"in\"]\ncommit.ms = 20\nwindow.ms = 40\n{COUNT_STORE}"
    ));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let factory: TaskFactory = Box::new(move |_| {
        Box::new(Recorder {
            calls: c.clone(),
            windows: 0,
            windows_before_shutdown: 4,
        })
    });
    let started = Instant::now();
    let stats = run(&state, &j, factory, false).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(stats.tasks, 2);
    assert_eq!(stats.processed, 200);
    let calls = calls.lock().unwrap().clone();
    for t in &[task_name(&j.name, 0), task_name(&j.name, 1)] {
        let t = t.as_str();
        let mine: Vec<&Call> = calls
            .iter()
            .filter(|c| match c {
                Call::Init(n) | Call::Close(n) | Call::Window(n, _) | Call::Process(n, ..) => {
                    n == t
                }
            })
            .collect();
        assert_eq!(
            mine.first(),
            Some(&&Call::Init(t.into())),
            "{t}: init first"
        );
        assert_eq!(
            mine.last(),
            Some(&&Call::Close(t.into())),
            "{t}: close last"
        );
        assert_eq!(
            mine.iter().filter(|c| matches!(c, Call::Init(_))).count(),
            1
        );
        assert_eq!(
            mine.iter().filter(|c| matches!(c, Call::Close(_))).count(),
            1
        );
        let processed: Vec<u64> = mine
            .iter()
            .filter_map(|c| match c {
                Call::Process(_, _, _, o) => Some(*o),
                _ => None,
            })
            .collect();
        assert!(!processed.is_empty());
        assert!(
            processed.windows(2).all(|w| w[1] == w[0] + 1),
            "{t}: offsets in order, none skipped"
        );
        let windows: Vec<Instant> = mine
            .iter()
            .filter_map(|c| match c {
                Call::Window(_, at) => Some(*at),
                _ => None,
            })
            .collect();
        assert_eq!(
            windows.len(),
            4,
            "{t}: window until task 0 asked to stop after its 4th"
        );
        for w in windows.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(35),
                "windows {gap:?} apart, window.ms = 40"
            );
        }
    }
    assert!(
        elapsed >= Duration::from_millis(150),
        "4 windows of 40 ms took {elapsed:?}"
    );
    // shutdown() committed on the way out: everything processed is in the checkpoints.
    let done: u64 = (0..2)
        .map(|p| {
            Checkpoint::read(&state.checkpoint_path(&task_name(&j.name, p)))
                .unwrap()
                .unwrap()
                .input("in", p)
                .unwrap()
        })
        .sum();
    assert_eq!(done, 200);
    assert_eq!(counts(&state, &j, "counts", 2), expected_counts(&msgs));
}

// ---------------------------------------------------------------------------------------

/// Sends every message to `out` keyed by its key; records what the output topic looked like
/// before and after asking for a commit.
struct Sender {
    root: std::path::PathBuf,
    seen: u64,
    checks: Arc<Mutex<Vec<String>>>,
    target: &'static str,
}

impl StreamTask for Sender {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        ctx.send(self.target, msg.key, msg.value)?;
        self.seen += 1;
        if ctx.partition() != 0 {
            return Ok(());
        }
        let on_disk: usize = (0..5).map(|p| read_all(&self.root, "out", p).len()).sum();
        let committed: u64 = (0..5)
            .map(|p| marker(&self.root, "out", p).unwrap_or(0))
            .sum();
        let mut checks = self.checks.lock().unwrap();
        if self.seen == 3 {
            // Sent 3, never committed: nothing visible.
            checks.push(format!(
                "before commit: {on_disk} on disk, {committed} committed"
            ));
            ctx.commit();
        } else if self.seen == 4 {
            // The commit after message 3 wrote messages 1..=3; message 4 is pending.
            checks.push(format!(
                "after commit: {on_disk} on disk, {committed} committed"
            ));
        }
        Ok(())
    }
}

#[test]
fn send_partitions_by_murmur2_and_output_is_invisible_until_commit() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    create_topic(state.root(), "in", 2);
    // An output with another partition count than the input: placement is by key.
    create_topic(state.root(), "out", 5);
    let msgs = keyed(300, "user-");
    produce(state.root(), "in", &msgs);
    let j = job(
        "[job]\nname = \"send\"\ntask = \"send\"\ninputs = [\"in\"]\noutputs = [\"out\"]\ncommit.ms = 3600000\n",
    );
    let checks = Arc::new(Mutex::new(Vec::new()));
    let (c, root) = (checks.clone(), state.root().to_path_buf());
    let factory: TaskFactory = Box::new(move |_| {
        Box::new(Sender {
            root: root.clone(),
            seen: 0,
            checks: c.clone(),
            target: "out",
        })
    });
    let stats = run(&state, &j, factory, true).unwrap();
    assert_eq!(stats.processed, 300);
    assert_eq!(
        *checks.lock().unwrap(),
        vec![
            "before commit: 0 on disk, 0 committed",
            "after commit: 3 on disk, 3 committed"
        ]
    );
    let mut got = Vec::new();
    for p in 0..5 {
        let records = read_all(state.root(), "out", p);
        assert_eq!(
            marker(state.root(), "out", p),
            Some(records.len() as u64),
            "out/{p} fully committed"
        );
        for r in records {
            assert_eq!(
                partition_for_key(&r.key, 5),
                p,
                "key {:?} in out/{p}",
                String::from_utf8_lossy(&r.key)
            );
            got.push((
                String::from_utf8(r.key).unwrap(),
                String::from_utf8(r.value.unwrap()).unwrap(),
            ));
        }
    }
    let (mut got, mut want) = (got, msgs.clone());
    got.sort();
    want.sort();
    assert_eq!(got, want, "every message sent once");
}

#[test]
fn sending_to_a_topic_not_in_outputs_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    create_topic(state.root(), "in", 1);
    produce(state.root(), "in", &keyed(5, "k"));
    let j = job(
        "[job]\nname = \"send\"\ntask = \"send\"\ninputs = [\"in\"]\noutputs = [\"out\"]\ncommit.ms = 1000\n",
    );
    let root = state.root().to_path_buf();
    let factory: TaskFactory = Box::new(move |_| {
        Box::new(Sender {
            root: root.clone(),
            seen: 0,
            checks: Arc::new(Mutex::new(Vec::new())),
            target: "elsewhere",
        })
    });
    let e = run(&state, &j, factory, true).unwrap_err().to_string();
    assert!(
        e.contains("elsewhere") && e.contains("not in job.outputs") && e.contains("out"),
        "{e}"
    );
    assert!(e.contains("partition-0") && e.contains("in/0@0"), "{e}");
    assert!(
        !state.root().join("logs/elsewhere").exists(),
        "no topic was created"
    );
}

// ---------------------------------------------------------------------------------------

/// (task, topic, partition, key) of a processed message.
type Seen = Arc<Mutex<Vec<(String, String, u32, String)>>>;

/// Records which task saw which input; stops the job once `stop_after` messages were seen
/// in total.
struct CoPartitioned {
    seen: Seen,
    stop_after: usize,
}

impl StreamTask for CoPartitioned {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let mut seen = self.seen.lock().unwrap();
        seen.push((
            ctx.task_name().into(),
            msg.topic.into(),
            msg.partition,
            String::from_utf8_lossy(msg.key).into_owned(),
        ));
        if seen.len() >= self.stop_after {
            ctx.shutdown();
        }
        Ok(())
    }
}

#[test]
fn co_partitioned_inputs_share_task_n() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    create_topic(state.root(), "orders", 3);
    create_topic(state.root(), "payments", 3);
    let orders = keyed(90, "cust-");
    let payments = keyed(60, "cust-");
    produce(state.root(), "orders", &orders);
    produce(state.root(), "payments", &payments);
    let j = job("[job]\nname = \"join\"\ntask = \"join\"\ninputs = [\"orders\", \"payments\"]\n");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let factory: TaskFactory = Box::new(move |_| {
        Box::new(CoPartitioned {
            seen: s.clone(),
            stop_after: usize::MAX,
        })
    });
    let stats = run(&state, &j, factory, true).unwrap();
    assert_eq!(stats.tasks, 3);
    assert_eq!(stats.processed, 150);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 150);
    let mut per_task: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (task, topic, partition, key) in seen.iter() {
        assert_eq!(
            *task,
            task_name(&j.name, *partition),
            "{topic}/{partition} went to {task}"
        );
        assert_eq!(partition_for_key(key.as_bytes(), 3), *partition);
        let e = per_task.entry(task).or_default();
        if topic == "orders" {
            e.0 += 1
        } else {
            e.1 += 1
        }
    }
    // Same key -> same task for both topics, so a task can join them locally.
    assert_eq!(per_task.len(), 3);
    assert!(
        per_task.values().all(|&(o, p)| o > 0 && p > 0),
        "{per_task:?}"
    );
}

#[test]
fn shutdown_commits_what_was_processed_and_a_restart_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    create_topic(state.root(), "in", 1);
    let msgs = keyed(50, "k");
    produce(state.root(), "in", &msgs);
    let j =
        job("[job]\nname = \"stop\"\ntask = \"stop\"\ninputs = [\"in\"]\ncommit.ms = 3600000\n");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let factory: TaskFactory = Box::new(move |_| {
        Box::new(CoPartitioned {
            seen: s.clone(),
            stop_after: 20,
        })
    });
    // Not until_end: only the shutdown request ends this run.
    let stats = run(&state, &j, factory, false).unwrap();
    assert_eq!(
        stats.processed, 20,
        "stopped right after the message that asked"
    );
    let cp = Checkpoint::read(&state.checkpoint_path(&task_name(&j.name, 0)))
        .unwrap()
        .unwrap();
    assert_eq!(cp.input("in", 0), Some(20));
    let s = seen.clone();
    let factory: TaskFactory = Box::new(move |_| {
        Box::new(CoPartitioned {
            seen: s.clone(),
            stop_after: usize::MAX,
        })
    });
    let stats = run(&state, &j, factory, true).unwrap();
    assert_eq!(stats.processed, 30);
    let keys: Vec<String> = seen.lock().unwrap().iter().map(|s| s.3.clone()).collect();
    let want: Vec<String> = msgs.iter().map(|m| m.0.clone()).collect();
    assert_eq!(keys, want, "each message once, in order");
}

// ---------------------------------------------------------------------------------------

/// Counts keys; fails on a value `poison` while `fail` is set.
struct Poisoned {
    fail: bool,
    offsets: Arc<Mutex<Vec<(u32, u64)>>>,
}

impl StreamTask for Poisoned {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        if self.fail && msg.value == Some(b"poison".as_slice()) {
            return Err("cannot digest poison".into());
        }
        count_in(ctx, msg.key)?;
        self.offsets
            .lock()
            .unwrap()
            .push((msg.partition, msg.offset));
        Ok(())
    }
}

#[test]
fn a_task_error_stops_the_run_without_committing_and_a_restart_reprocesses() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    create_topic(state.root(), "in", 2);
    let p0: Vec<(String, String)> = (0..40)
        .map(|i| (format!("a{}", i % 7), "ok".to_string()))
        .collect();
    let mut p1: Vec<(String, String)> = (0..40)
        .map(|i| (format!("b{}", i % 5), "ok".to_string()))
        .collect();
    p1[25].1 = "poison".into();
    for (p, msgs) in [(0, &p0), (1, &p1)] {
        let m: Vec<(&str, &str)> = msgs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        produce_to(state.root(), "in", p, &m);
    }
    let j = job(&format!(
        "[job]\nname = \"poison\"\ntask = \"poison\"\ninputs = [\"in\"]\ncommit.ms = 3600000\n{COUNT_STORE}"
    ));
    let offsets = Arc::new(Mutex::new(Vec::new()));
    let o = offsets.clone();
    let factory: TaskFactory = Box::new(move |_| {
        Box::new(Poisoned {
            fail: true,
            offsets: o.clone(),
        })
    });
    let e = run(&state, &j, factory, true).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RuntimeError::Task { .. }), "{msg}");
    assert!(
        msg.contains("partition-1")
            && msg.contains("in/1@25")
            && msg.contains("cannot digest poison"),
        "{msg}"
    );
    assert!(
        offsets
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == 1)
            .count()
            == 25,
        "offsets 0..25 of partition 1 were processed before the error"
    );
    // Nothing of that run was committed: both checkpoints are the ones written before any
    // processing.
    for p in 0..2 {
        let cp = Checkpoint::read(&state.checkpoint_path(&task_name(&j.name, p)))
            .unwrap()
            .unwrap();
        assert_eq!(
            cp.input("in", p),
            Some(0),
            "partition-{p} committed after the error"
        );
    }
    // A restart with the bug fixed processes everything once, the poison message included.
    offsets.lock().unwrap().clear();
    let o = offsets.clone();
    let factory: TaskFactory = Box::new(move |_| {
        Box::new(Poisoned {
            fail: false,
            offsets: o.clone(),
        })
    });
    let stats = run(&state, &j, factory, true).unwrap();
    assert_eq!(stats.processed, 80);
    assert!(
        offsets.lock().unwrap().contains(&(1, 25)),
        "the failed message was reprocessed"
    );
    let mut all = p0.clone();
    all.extend(p1.iter().cloned());
    assert_eq!(
        counts(&state, &j, "counts", 2),
        expected_counts(&all),
        "no message counted twice"
    );
}

// ---------------------------------------------------------------------------------------

/// Counts into `counts`, sends `key -> count` to `out` (all partitions of the output are
/// shared by every task, placed by key), and records the thread it ran on.
struct PoolCounter {
    threads: Arc<Mutex<std::collections::HashSet<std::thread::ThreadId>>>,
}

impl StreamTask for PoolCounter {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let n = count_in(ctx, msg.key)?;
        ctx.send("out", msg.key, Some(n.to_string().as_bytes()))?;
        self.threads
            .lock()
            .unwrap()
            .insert(std::thread::current().id());
        Ok(())
    }
}

/// `job.container.thread.pool.size`: tasks run on several threads, and the results are the
/// same as on one: exact counts, every output record once, per key in order, every output
/// partition fully committed (commits stay one task at a time).
#[test]
fn a_thread_pool_processes_tasks_in_parallel_with_the_same_results() {
    let msgs = keyed(6000, "k-");
    let want = expected_counts(&msgs);
    for pool in [1usize, 3, 8] {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        create_topic(state.root(), "in", 6);
        create_topic(state.root(), "out", 8);
        produce(state.root(), "in", &msgs);
        let j = job(&format!(
            "[job]\nname = \"pool\"\ntask = \"t\"\ninputs = [\"in\"]\noutputs = [\"out\"]\n\
             commit.ms = 5\ncontainer.thread.pool.size = {pool}\n\n[stores.counts]\n\
             key.serde = \"string\"\nvalue.serde = \"u64\"\nchangelog = \"counts-changelog\"\n"
        ));
        assert_eq!(j.thread_pool_size, pool);
        let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let t = threads.clone();
        let factory: TaskFactory = Box::new(move |_| Box::new(PoolCounter { threads: t.clone() }));
        let stats = run(&state, &j, factory, true).unwrap();
        assert_eq!(stats.processed, 6000, "pool {pool}");
        let used = threads.lock().unwrap().len();
        if pool == 1 {
            assert_eq!(used, 1, "one thread");
        } else {
            assert!(used > 1, "pool {pool}: tasks ran on {used} thread(s)");
        }
        assert_eq!(counts(&state, &j, "counts", 6), want, "pool {pool}");
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for p in 0..8 {
            let records = read_all(state.root(), "out", p);
            assert_eq!(marker(state.root(), "out", p), Some(records.len() as u64));
            for r in records {
                out.entry(String::from_utf8(r.key).unwrap())
                    .or_default()
                    .push(
                        String::from_utf8(r.value.unwrap())
                            .unwrap()
                            .parse()
                            .unwrap(),
                    );
            }
        }
        for (k, &n) in &want {
            assert_eq!(
                out[k],
                (1..=n).collect::<Vec<_>>(),
                "pool {pool}: output of {k}"
            );
        }
    }
}

#[test]
fn thread_pool_size_is_checked() {
    let e = JobConfig::from_toml_str(
        "<test job>",
        "[job]\nname = \"j\"\ntask = \"t\"\ninputs = [\"in\"]\ncontainer.thread.pool.size = 0\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("job.container.thread.pool.size"), "{e}");
}

/// Records the restore progress calls it gets, and the threads they came from.
#[derive(Default)]
struct ProgressLog {
    started: u64,
    grown: u64,
    advanced: u64,
    finished: usize,
    threads: std::collections::HashSet<std::thread::ThreadId>,
}

struct SharedLog(Arc<Mutex<ProgressLog>>);

impl gregor::restore::RestoreProgress for SharedLog {
    fn start(&mut self, _store: &str, records: u64) {
        let mut l = self.0.lock().unwrap();
        l.started += records;
        l.threads.insert(std::thread::current().id());
    }
    fn advance(&mut self, records: u64, _bytes: u64) {
        self.0.lock().unwrap().advanced += records;
    }
    fn finish(&mut self, _stats: &gregor::restore::RestoreStats) {
        self.0.lock().unwrap().finished += 1;
    }
    fn grow(&mut self, records: u64) {
        let mut l = self.0.lock().unwrap();
        l.grown += records;
        l.threads.insert(std::thread::current().id());
    }
}

/// Issue 12 part 4: the tasks' stores restore in parallel at start-up (up to
/// `job.container.thread.pool.size` at once), their progress summed on one display; the
/// restored state is exact.
#[test]
fn tasks_restore_in_parallel_with_their_progress_summed() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    create_topic(state.root(), "in", 4);
    let msgs = keyed(20_000, "key-");
    produce(state.root(), "in", &msgs);
    let text = "[job]\nname = \"par\"\ntask = \"t\"\ninputs = [\"in\"]\ncommit.ms = 3600000\n\
                container.thread.pool.size = 4\n\n[stores.counts]\nkey.serde = \"string\"\n\
                value.serde = \"u64\"\nchangelog = \"counts-changelog\"\n";
    let j = job(text);
    struct Count;
    impl StreamTask for Count {
        fn process(
            &mut self,
            msg: &Envelope<'_>,
            ctx: &mut TaskContext<'_>,
        ) -> Result<(), TaskError> {
            count_in(ctx, msg.key).map(|_| ())
        }
    }
    let count: TaskFactory = Box::new(|_| Box::new(Count));
    run(&state, &j, count, true).unwrap();
    // The local stores are lost: every task restores in full from its changelog.
    std::fs::remove_dir_all(state.root().join("tasks/par.partition-0/stores")).unwrap();
    std::fs::remove_dir_all(state.root().join("tasks/par.partition-1/stores")).unwrap();
    std::fs::remove_dir_all(state.root().join("tasks/par.partition-2/stores")).unwrap();
    std::fs::remove_dir_all(state.root().join("tasks/par.partition-3/stores")).unwrap();
    let log = Arc::new(Mutex::new(ProgressLog::default()));
    let opts = RunOptions {
        until_end: true,
        progress: Box::new(SharedLog(log.clone())),
        ..RunOptions::new()
    };
    let count: TaskFactory = Box::new(|_| Box::new(Count));
    let stats = run_job(&state, &j, &count, opts).unwrap();
    let restored: u64 = stats.restores.iter().map(|r| r.records).sum();
    assert_eq!(stats.restores.len(), 4);
    assert!(restored > 0);
    let l = log.lock().unwrap();
    assert_eq!(l.started + l.grown, restored, "totals summed");
    assert_eq!(l.advanced, restored, "progress summed");
    assert!(l.finished >= 1);
    assert!(
        l.threads.len() > 1,
        "restores ran on {} thread(s)",
        l.threads.len()
    );
    drop(l);
    assert_eq!(counts(&state, &j, "counts", 4), expected_counts(&msgs));
}
