//! Measures the ZooKeeper coordinator's cost and speed (issue 9; figures in
//! docs/BENCHMARKS.md, "Coordination"): ZooKeeper requests per second per idle process, and
//! the time from a clean stop, a SIGKILL of a member and a SIGKILL of the leader to the
//! next job model and to its barrier being passed. Real servers (Kafka 0.9.0.1 and its
//! ZooKeeper 3.4.6) and `gregor run` processes of the count job, as in `zookeeper_job.rs`.
//!
//! A measurement, not a check: ignored by default.
//!
//! ```sh
//! cargo test --release --config .ci/checks.toml -p gregor-cli --test zookeeper_load -- --ignored --nocapture
//! ```
//!
//! `GREGOR_BIN=/path/to/gregor` runs another build of the binary (to compare versions).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gregor::coordinator::barrier::leader_of;
use gregor::coordinator::zookeeper::{JobCoordination, read_status};
use gregor::runtime::JobConfig;
use gregor::runtime::config::CoordinatorConfig;
use gregor_testkit::Kafka09;

const PARTITIONS: u32 = 8;
const SESSION_MS: u64 = 3_000;
const IDLE_WINDOW: Duration = Duration::from_secs(20);

fn bin() -> String {
    std::env::var("GREGOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gregor").to_string())
}

fn job_text(bootstrap: &str, zk: &str) -> String {
    let mut kafka = format!("bootstrap.servers = \"{bootstrap}\"\n");
    for (k, v) in Kafka09::client_config() {
        kafka.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    format!(
        r#"[job]
name = "counts"
task = "count"
system = "kafka"
inputs = ["in"]
commit.ms = 300
coordinator = "zookeeper"
debounce.time.ms = 500
container.thread.pool.size = 1

[zookeeper]
connect = "{zk}"
session.timeout.ms = {SESSION_MS}

[kafka]
{kafka}
[stores.counts]
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#
    )
}

/// Sends a ZooKeeper four-letter command and returns the answer.
fn four_letter(port: u16, cmd: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(cmd.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// `zk_packets_received` from `mntr`.
fn packets_received(port: u16) -> u64 {
    let mntr = four_letter(port, "mntr");
    mntr.lines()
        .find_map(|l| l.strip_prefix("zk_packets_received"))
        .unwrap_or_else(|| panic!("no zk_packets_received in mntr: {mntr}"))
        .trim()
        .parse()
        .unwrap()
}

/// ZooKeeper packets received per second over `window`.
fn rate(port: u16, window: Duration) -> f64 {
    let a = packets_received(port);
    std::thread::sleep(window);
    let b = packets_received(port);
    (b - a) as f64 / window.as_secs_f64()
}

struct Job {
    kafka: Kafka09,
    job: JobConfig,
    job_file: PathBuf,
    dir: tempfile::TempDir,
    procs: Vec<(usize, Child)>,
    spawned: usize,
}

impl Job {
    fn start() -> Job {
        let mut kafka = Kafka09::start();
        let zk = kafka.zookeeper().unwrap().connect_string();
        let dir = tempfile::tempdir().unwrap();
        let job_file = dir.path().join("counts.toml");
        std::fs::write(&job_file, job_text(&kafka.bootstrap(), &zk)).unwrap();
        let job = JobConfig::from_file(&job_file).unwrap();
        let settings = job.kafka_settings();
        kafka.create_topic(&settings.checkpoint_topic, 1, true);
        kafka.create_topic("in", PARTITIONS, false);
        kafka.create_topic("counts-changelog", PARTITIONS, true);
        Job {
            kafka,
            job,
            job_file,
            dir,
            procs: Vec::new(),
            spawned: 0,
        }
    }

    fn zk_port(&self) -> u16 {
        self.kafka.zookeeper().unwrap().port()
    }

    fn spawn(&mut self) {
        let n = self.spawned;
        self.spawned += 1;
        let state = self.dir.path().join(format!("state-{n}"));
        let log = self.dir.path().join(format!("process-{n}.log"));
        let child = Command::new(bin())
            .arg("--state-dir")
            .arg(&state)
            .arg("run")
            .arg(&self.job_file)
            .env(
                "GREGOR_LOG",
                std::env::var("GREGOR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.procs.push((n, child));
    }

    fn read(&self) -> JobCoordination {
        let CoordinatorConfig::ZooKeeper(zk) = &self.job.coordinator else {
            panic!("not a ZooKeeper job");
        };
        read_status(zk, &self.job.name).unwrap()
    }

    /// Waits until a model for exactly the live processes has its barrier passed.
    fn wait_settled(&self) -> JobCoordination {
        let t = Instant::now();
        loop {
            let s = self.read();
            let pids: BTreeSet<u32> = self.procs.iter().map(|(_, c)| c.id()).collect();
            let member_pids: BTreeSet<u32> = s.members.values().map(|m| m.pid).collect();
            if let Some(m) = &s.model
                && member_pids == pids
                && m.members.len() == pids.len()
                && m.members.iter().all(|id| s.acked.contains(id))
            {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "not settled: {s:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops (SIGTERM) or kills (SIGKILL) the process with member id `victim`; returns
    /// (stop to next model written, stop to its barrier passed).
    fn remove(&mut self, victim: &str, kill: bool) -> (Duration, Duration) {
        let before = self.wait_settled();
        let version = before.model.as_ref().unwrap().model.version;
        let pid = before.members[victim].pid;
        let i = self.procs.iter().position(|(_, c)| c.id() == pid).unwrap();
        let (_, mut child) = self.procs.remove(i);
        let t = Instant::now();
        Command::new("kill")
            .args([if kill { "-KILL" } else { "-TERM" }, &pid.to_string()])
            .status()
            .unwrap();
        let mut modeled = None;
        loop {
            let s = self.read();
            if let Some(m) = &s.model
                && m.model.version > version
                && !m.members.contains(victim)
            {
                let at = t.elapsed();
                modeled.get_or_insert(at);
                if m.members.iter().all(|id| s.acked.contains(id)) {
                    child.wait().unwrap();
                    return (modeled.unwrap(), at);
                }
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no new model: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
#[ignore = "a measurement (docs/BENCHMARKS.md), minutes long"]
fn zookeeper_requests_and_rebalance_times() {
    let mut job = Job::start();
    let port = job.zk_port();
    std::thread::sleep(Duration::from_secs(3));
    let base = rate(port, IDLE_WINDOW);
    for _ in 0..3 {
        job.spawn();
    }
    job.wait_settled();
    std::thread::sleep(Duration::from_secs(3));
    let with3 = rate(port, IDLE_WINDOW);
    let per_process = (with3 - base) / 3.0;
    eprintln!(
        "ZooKeeper packets/s: {base:.1} without gregor (Kafka's own), {with3:.1} with 3 idle \
         processes: {per_process:.1} per idle process"
    );
    let mut rows = Vec::new();
    for round in 0..3 {
        for (what, kill, leader) in [
            ("clean stop (SIGTERM) of a member", false, false),
            ("SIGKILL of a member", true, false),
            ("SIGKILL of the leader", true, true),
        ] {
            let s = job.wait_settled();
            let lead = leader_of(s.members.keys().map(String::as_str))
                .unwrap()
                .to_string();
            let victim = if leader {
                lead
            } else {
                s.members
                    .keys()
                    .rev()
                    .find(|m| **m != lead)
                    .unwrap()
                    .clone()
            };
            let (model, barrier) = job.remove(&victim, kill);
            eprintln!(
                "round {round}: {what}: new model after {} ms, barrier passed after {} ms",
                model.as_millis(),
                barrier.as_millis()
            );
            rows.push((what, model, barrier));
            job.spawn();
        }
    }
    for (what, _, _) in &rows[..3] {
        let times: Vec<_> = rows.iter().filter(|r| r.0 == *what).collect();
        let ms = |f: &dyn Fn(&(&str, Duration, Duration)) -> Duration| {
            times
                .iter()
                .map(|r| f(r).as_millis().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "{what}: new model after [{}] ms, barrier passed after [{}] ms",
            ms(&|r| r.1),
            ms(&|r| r.2)
        );
    }
}
