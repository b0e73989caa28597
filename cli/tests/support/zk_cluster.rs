//! A job of `gregor run` processes under the ZooKeeper coordinator, on a real Kafka 0.9.0.1
//! and its ZooKeeper 3.4.6 (gregor-testkit), as the ZooKeeper tests drive it: the count job
//! (8 partitions, `job.coordinator = "zookeeper"`; or another job, `Cluster::with_job`, such as
//! the `kv` job with a TTL store, `ttl_job_text`), processes spawned on their own state
//! directories (optionally inside a network namespace), `gregor job status`, waiting until the
//! job settles, and the audit of the whole checkpoint history.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gregor::backend::TopicPartition;
use gregor::backend::kafka::{KafkaBackend, KafkaSettings};
use gregor::checkpoint::Checkpoint;
use gregor::partitioner::partition_for_key;
use gregor::runtime::JobConfig;
use gregor_testkit::{Kafka09, NetNs, ZooKeeper};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

#[path = "kafka_counts.rs"]
mod kafka_counts;

pub const BIN: &str = env!("CARGO_BIN_EXE_gregor");
pub const PARTITIONS: u32 = 8;
pub const KEYS: u64 = 4_000;

/// A job file under the ZooKeeper coordinator (debounce 500 ms, one processing thread) on the
/// broker at `bootstrap`: the `[job]` keys common to the tests' jobs, `[zookeeper]`,
/// `[kafka]` (with [`Kafka09::client_config`]), then `stores` (the `[stores.*]` tables).
#[allow(clippy::too_many_arguments)]
fn zk_job_text(
    name: &str,
    task: &str,
    commit_ms: u64,
    standbys: u32,
    bootstrap: &str,
    zk: &str,
    session_ms: u64,
    stores: &str,
) -> String {
    let mut kafka = format!("bootstrap.servers = \"{bootstrap}\"\n");
    for (k, v) in Kafka09::client_config() {
        kafka.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    format!(
        r#"[job]
name = "{name}"
task = "{task}"
system = "kafka"
inputs = ["in"]
commit.ms = {commit_ms}
coordinator = "zookeeper"
debounce.time.ms = 500
container.thread.pool.size = 1
standby.replicas = {standbys}

[zookeeper]
connect = "{zk}"
session.timeout.ms = {session_ms}

[kafka]
{kafka}
{stores}"#
    )
}

pub fn job_text(bootstrap: &str, zk: &str, session_ms: u64, standbys: u32) -> String {
    zk_job_text(
        "counts",
        "count",
        300,
        standbys,
        bootstrap,
        zk,
        session_ms,
        r#"[stores.counts]
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#,
    )
}

/// The `kv` job `sessions` (input `in`, store `kv`: string keys and values, changelog
/// `kv-changelog`) under ZooKeeper, its store with `ttl.ms = ttl_ms` and
/// `ttl.cleanup.entries = cleanup_entries`, committing every `commit_ms`.
pub fn ttl_job_text(
    bootstrap: &str,
    zk: &str,
    session_ms: u64,
    standbys: u32,
    ttl_ms: u64,
    cleanup_entries: usize,
    commit_ms: u64,
) -> String {
    let stores = format!(
        r#"[stores.kv]
key.serde = "string"
value.serde = "string"
changelog = "kv-changelog"
ttl.ms = {ttl_ms}
ttl.cleanup.entries = {cleanup_entries}
"#
    );
    zk_job_text(
        "sessions", "kv", commit_ms, standbys, bootstrap, zk, session_ms, &stores,
    )
}

pub struct Cluster {
    pub kafka: Kafka09,
    pub settings: KafkaSettings,
    pub job: JobConfig,
    pub job_file: PathBuf,
    pub dir: tempfile::TempDir,
    /// The job's own ZooKeeper, when it is not the broker's ([`Cluster::with_own_zookeeper`]).
    pub job_zk: Option<ZooKeeper>,
}

impl Cluster {
    pub fn start(session_ms: u64) -> Cluster {
        Self::with_standbys(session_ms, 0)
    }

    pub fn with_standbys(session_ms: u64, standbys: u32) -> Cluster {
        Self::at(Ipv4Addr::LOCALHOST, session_ms, standbys)
    }

    /// A cluster whose broker and ZooKeeper listen on `host` (say a [`NetNs`]'s host end).
    pub fn at(host: Ipv4Addr, session_ms: u64, standbys: u32) -> Cluster {
        let kafka = Kafka09::start_at(host);
        let zk = kafka
            .zookeeper()
            .expect("its own ZooKeeper")
            .connect_string();
        let text = job_text(&kafka.bootstrap(), &zk, session_ms, standbys);
        Self::build(
            kafka,
            None,
            "counts.toml",
            &text,
            PARTITIONS,
            "counts-changelog",
        )
    }

    /// A cluster whose job coordinates through a ZooKeeper of its own, not the broker's, so a
    /// test can take the job's ZooKeeper down while the broker keeps running.
    pub fn with_own_zookeeper(session_ms: u64) -> Cluster {
        let kafka = Kafka09::start();
        let job_zk = ZooKeeper::start();
        let text = job_text(&kafka.bootstrap(), &job_zk.connect_string(), session_ms, 0);
        Self::build(
            kafka,
            Some(job_zk),
            "counts.toml",
            &text,
            PARTITIONS,
            "counts-changelog",
        )
    }

    /// A cluster on localhost running the job `text` makes from the broker's bootstrap
    /// address and the ZooKeeper connect string: its input `in` with `partitions`
    /// partitions and the compacted topic `changelog` are created.
    pub fn with_job(
        partitions: u32,
        changelog: &str,
        text: impl FnOnce(&str, &str) -> String,
    ) -> Cluster {
        let kafka = Kafka09::start_at(Ipv4Addr::LOCALHOST);
        let zk = kafka
            .zookeeper()
            .expect("its own ZooKeeper")
            .connect_string();
        let text = text(&kafka.bootstrap(), &zk);
        Self::build(kafka, None, "job.toml", &text, partitions, changelog)
    }

    /// Writes the job file `name` with `text`, creates the checkpoint topic, the input `in`
    /// with `partitions` partitions and the compacted topic `changelog`.
    fn build(
        mut kafka: Kafka09,
        job_zk: Option<ZooKeeper>,
        name: &str,
        text: &str,
        partitions: u32,
        changelog: &str,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let job_file = dir.path().join(name);
        std::fs::write(&job_file, text).unwrap();
        let job = JobConfig::from_file(&job_file).unwrap();
        let settings = job.kafka_settings();
        kafka.create_topic(&settings.checkpoint_topic, 1, true);
        kafka.create_topic("in", partitions, false);
        kafka.create_topic(changelog, partitions, true);
        Cluster {
            kafka,
            settings,
            job,
            job_file,
            dir,
            job_zk,
        }
    }

    pub fn backend(&self) -> KafkaBackend {
        KafkaBackend::connect(self.settings.clone()).unwrap()
    }

    /// Starts `gregor run` on a new state directory; its stderr goes to a file.
    pub fn spawn(&self, n: usize) -> Proc {
        self.spawn_in(n, None)
    }

    /// Starts `gregor run` on a new state directory, inside `ns` if given (its HTTP server
    /// then listens on the namespace's address); its stderr goes to a file.
    pub fn spawn_in(&self, n: usize, ns: Option<&NetNs>) -> Proc {
        let state = self.dir.path().join(format!("state-{n}"));
        let log = self.dir.path().join(format!("process-{n}.log"));
        let (mut cmd, http) = match ns {
            Some(ns) => (ns.command(BIN), format!("{}:0", ns.inner_addr())),
            None => (Command::new(BIN), "127.0.0.1:0".to_string()),
        };
        let child = cmd
            .arg("--state-dir")
            .arg(&state)
            .arg("run")
            .arg(&self.job_file)
            .args(["--http", &http])
            .env(
                "GREGOR_LOG",
                std::env::var("GREGOR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log, n }
    }

    pub fn status(&self) -> Value {
        let out = Command::new(BIN)
            .arg("--state-dir")
            .arg(self.dir.path().join("status-state"))
            .args(["job", "status", "--json"])
            .arg(&self.job_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "job status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The merged counts restored from Kafka alone, into a fresh state directory.
    pub fn restored_counts(&self) -> BTreeMap<String, u64> {
        kafka_counts::restored_counts(Arc::new(self.backend()), &self.job, PARTITIONS)
    }

    /// Every checkpoint ever written, in log order, read with a plain librdkafka consumer.
    pub fn all_checkpoints(&self) -> Vec<(String, Checkpoint)> {
        kafka_counts::consume_all(&self.settings, &self.settings.checkpoint_topic, 1)
            .into_iter()
            .filter_map(|(_, k, v)| {
                let v = v?; // a tombstone
                Some((
                    String::from_utf8(k).unwrap(),
                    serde_json::from_slice(&v).unwrap(),
                ))
            })
            .collect()
    }
}

pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub n: usize,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its HTTP server listens (from its `http: listening on ADDR` line).
    pub fn http(&self) -> String {
        let t = Instant::now();
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(rest) = log.split("http: listening on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no HTTP address:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit (commit, leave).
    pub fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "process {} exited with {status} after SIGTERM:\n{}",
                    self.n,
                    self.log_tail()
                );
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "process {} did not stop within 60 s of SIGTERM:\n{}",
                self.n,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with its log if it exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "process {} exited by itself with {status}:\n{}",
                self.n,
                self.log_tail()
            );
        }
    }
}

/// Produces `n` messages over `KEYS` keys (murmur2 placement) from `seed`, adding to
/// `expected`.
pub fn produce(
    sink: &mut dyn gregor::backend::RecordSink,
    n: u64,
    seed: u64,
    expected: &mut BTreeMap<String, u64>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..n {
        let k = rng.gen_range(0..KEYS);
        let key = format!("key-{k:05}");
        let tp = TopicPartition::new("in", partition_for_key(key.as_bytes(), PARTITIONS));
        sink.send(&tp, 0, key.as_bytes(), Some(format!("v{i}").as_bytes()))
            .unwrap();
        *expected.entry(key).or_insert(0) += 1;
    }
    sink.flush().unwrap();
}

/// Waits until `gregor job status` shows a settled job: a model for exactly the live
/// processes, its barrier passed, every task's lag 0 and its checkpoint written under the
/// current model by the task's active member. Returns how long it took.
pub fn wait_settled(c: &Cluster, procs: &mut [Proc], limit: Duration) -> Duration {
    let t = Instant::now();
    let mut last = Value::Null;
    while t.elapsed() < limit {
        for p in procs.iter_mut() {
            p.assert_alive();
        }
        let asked = Instant::now();
        let s = c.status();
        if asked.elapsed() > Duration::from_secs(3) {
            eprintln!("`gregor job status` took {:?}", asked.elapsed());
        }
        let pids: BTreeSet<u64> = procs.iter().map(|p| u64::from(p.pid())).collect();
        let member_pids: BTreeSet<u64> = s["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["pid"].as_u64().unwrap())
            .collect();
        let version = s["model_version"].as_u64();
        let settled = member_pids == pids
            && s["model_members"].as_array().map(Vec::len) == Some(pids.len())
            && s["barrier_waiting_for"].as_array().unwrap().is_empty()
            && s["tasks"].as_array().unwrap().iter().all(|t| {
                t["lag"].as_u64() == Some(0)
                    && t["checkpoint_owner"]["member"] == t["active"]
                    && t["checkpoint_owner"]["generation"].as_u64() <= version
            });
        if settled {
            return t.elapsed();
        }
        last = s;
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs: Vec<String> = procs
        .iter()
        .map(|p| format!("--- process {} (pid {}):\n{}", p.n, p.pid(), p.log_tail()))
        .collect();
    panic!(
        "the job did not settle within {limit:?}; last status: {last:#}\n{}",
        logs.join("\n")
    );
}

/// Checks the whole checkpoint history as a reader of the checkpoint topic sees it: per task,
/// input offsets never go back and no two processes committed under one job model version. A
/// checkpoint written under an older version than one before it (a former owner's write that
/// a network partition held up until after the task moved) is one readers ignore: it is
/// counted, not taken. Returns how many checkpoints and model versions it saw, and how many
/// such late ones.
pub fn audit_checkpoint_history(c: &Cluster) -> (usize, usize, usize) {
    let all = c.all_checkpoints();
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new(); // task -> (generation, next offset)
    let mut writers: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut versions = BTreeSet::new();
    let mut late = 0;
    for (i, (task, cp)) in all.iter().enumerate() {
        let owner = cp
            .owner
            .as_ref()
            .unwrap_or_else(|| panic!("checkpoint {i} of {task} has no owner"));
        versions.insert(owner.generation);
        let w = writers
            .entry((task.clone(), owner.generation))
            .or_insert_with(|| owner.member.clone());
        assert_eq!(
            w, &owner.member,
            "checkpoint {i}: task {task} committed by two processes under model version {}",
            owner.generation
        );
        let p: u32 = task.rsplit('-').next().unwrap().parse().unwrap();
        let next = cp.input("in", p).unwrap_or(0);
        if let Some(&(g, o)) = last.get(task) {
            if owner.generation < g {
                eprintln!(
                    "checkpoint {i} of {task}: a late one of {} under model version {} after version {g} (ignored by readers)",
                    owner.member, owner.generation
                );
                late += 1;
                continue;
            }
            assert!(
                next >= o,
                "checkpoint {i} of {task}: input offset went back from {o} to {next}"
            );
        }
        last.insert(task.clone(), (owner.generation, next));
    }
    (all.len(), versions.len(), late)
}

/// [`audit_checkpoint_history`] where no checkpoint may be late (no process was cut off:
/// every process that lost a task was stopped or killed, or released it); returns how many
/// checkpoints and model versions it saw.
pub fn audit_checkpoints(c: &Cluster) -> (usize, usize) {
    let (n, versions, late) = audit_checkpoint_history(c);
    assert_eq!(late, 0, "late checkpoints without a partition");
    (n, versions)
}

/// Seconds since midnight (UTC) of a log line's leading RFC 3339 timestamp.
pub fn log_time(line: &str) -> Option<f64> {
    let t = line.get(11..26)?; // HH:MM:SS.ffffff
    let h: f64 = t.get(0..2)?.parse().ok()?;
    let m: f64 = t.get(3..5)?.parse().ok()?;
    let s: f64 = t.get(6..)?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}
