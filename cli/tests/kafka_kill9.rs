//! Exactly-once state on Kafka with real processes (issue 8, part 7), on Apache Kafka 0.9.0.1
//! started by the test harness: `gregor run count.toml --until-end` (job.system = "kafka",
//! 4 partitions, 200k messages) is killed with SIGKILL at random moments, >= 20 times, and
//! restarted until a run finishes by itself. Checked afterwards:
//!
//! - the counts restored from Kafka alone (a fresh state directory, full restores) equal the
//!   counts computed from the input;
//! - an independent consumer (librdkafka, not gregor's reader) reading each changelog
//!   partition finds, per key, the final count as the newest value;
//! - the output (at-least-once on Kafka) holds every value 1..=count for every key.
//!
//! The same on tansu (the admin API and idempotent producer paths). Then the same on Kafka
//! 0.9 with the job split over two processes (each its own state directory), one
//! of them killed repeatedly and once moved to a fresh state directory; and a run during which
//! the broker itself is killed (-9) and restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gregor::backend::kafka::{KafkaBackend, KafkaSettings};
use gregor::backend::{Backend, TopicPartition};
use gregor::backend::{TopicRole, TopicSpec};
use gregor::partitioner::partition_for_key;
use gregor::runtime::JobConfig;
use gregor_testkit::{Kafka09, Tansu};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "support/kafka_counts.rs"]
mod kafka_counts;

const BIN: &str = env!("CARGO_BIN_EXE_gregor");
const PARTITIONS: u32 = 4;
const KEYS: u64 = 2_000;
const MESSAGES: u64 = 200_000;
const MIN_KILLS: u32 = 20;

fn job_text(bootstrap: &str, client: &[(&str, &str)]) -> String {
    let mut kafka = format!("bootstrap.servers = \"{bootstrap}\"\n");
    for (k, v) in client {
        kafka.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    format!(
        r#"[job]
name = "counts"
task = "count"
system = "kafka"
inputs = ["in"]
outputs = ["counts-out"]
commit.ms = 300

[kafka]
{kafka}
[stores.counts]
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#
    )
}

/// The broker under test.
enum Broker {
    Kafka09(Kafka09),
    Tansu(Tansu),
}

struct Cluster {
    broker: Broker,
    settings: KafkaSettings,
    job: JobConfig,
    job_file: PathBuf,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        Self::on(Broker::Kafka09(Kafka09::start()))
    }

    fn on(mut broker: Broker) -> Cluster {
        let (bootstrap, client) = match &broker {
            Broker::Kafka09(k) => (k.bootstrap(), Kafka09::client_config()),
            Broker::Tansu(t) => (t.bootstrap(), Tansu::client_config()),
        };
        let dir = tempfile::tempdir().unwrap();
        let job_file = dir.path().join("counts.toml");
        std::fs::write(&job_file, job_text(&bootstrap, &client)).unwrap();
        let job = JobConfig::from_file(&job_file).unwrap();
        let settings = job.kafka_settings();
        match &mut broker {
            Broker::Kafka09(kafka) => {
                // Kafka 0.9 has no admin API: topics are created the way its users do.
                kafka.create_topic(&settings.checkpoint_topic, 1, true);
                kafka.create_topic("in", PARTITIONS, false);
                kafka.create_topic("counts-changelog", PARTITIONS, true);
                kafka.create_topic("counts-out", PARTITIONS, false);
            }
            Broker::Tansu(_) => {
                // The admin API: gregor creates its own topics; the input is the user's.
                let backend = KafkaBackend::connect(settings.clone()).unwrap();
                backend
                    .ensure_topic(&TopicSpec {
                        name: "in".into(),
                        partitions: PARTITIONS,
                        role: TopicRole::Output,
                    })
                    .unwrap();
            }
        }
        let path = dir.path().to_path_buf();
        Cluster {
            broker,
            settings,
            job,
            job_file,
            _dir: dir,
            dir: path,
        }
    }

    fn backend(&self) -> KafkaBackend {
        KafkaBackend::connect(self.settings.clone()).unwrap()
    }

    /// Produces `n` messages over `KEYS` keys (half uniform, half skewed), placed with
    /// murmur2; returns the expected counts.
    fn produce(&self, n: u64, seed: u64) -> BTreeMap<String, u64> {
        let backend = self.backend();
        let mut sink = backend.open_sink("producer").unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut expected = BTreeMap::new();
        for i in 0..n {
            let k = if rng.gen_bool(0.5) {
                rng.gen_range(0..KEYS)
            } else {
                ((KEYS as f64).powf(rng.r#gen::<f64>()) as u64 - 1).min(KEYS - 1)
            };
            let key = format!("key-{k:05}");
            let tp = TopicPartition::new("in", partition_for_key(key.as_bytes(), PARTITIONS));
            sink.send(&tp, 0, key.as_bytes(), Some(format!("v{i}").as_bytes()))
                .unwrap();
            *expected.entry(key).or_insert(0) += 1;
        }
        sink.flush().unwrap();
        expected
    }

    fn spawn(&self, state: &Path, procs: Option<(u32, u32)>) -> Child {
        let mut cmd = Command::new(BIN);
        cmd.arg("--state-dir")
            .arg(state)
            .arg("run")
            .arg(&self.job_file)
            .arg("--until-end")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((id, n)) = procs {
            cmd.args([
                "--processor-id",
                &id.to_string(),
                "--processors",
                &n.to_string(),
            ]);
        }
        cmd.spawn().unwrap()
    }

    /// The merged counts restored from Kafka alone, into a fresh state directory.
    fn restored_counts(&self) -> BTreeMap<String, u64> {
        kafka_counts::restored_counts(Arc::new(self.backend()), &self.job, PARTITIONS)
    }
}

/// Every record of `topic` (all partitions) in offset order per partition, read with a plain
/// librdkafka consumer.
fn consume_all(c: &Cluster, topic: &str) -> Vec<(u32, Vec<u8>, Option<Vec<u8>>)> {
    kafka_counts::consume_all(&c.settings, topic, PARTITIONS)
}

fn check(c: &Cluster, expected: &BTreeMap<String, u64>) {
    let got = c.restored_counts();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty() && got.len() == expected.len(),
        "restored counts differ from the input: {} keys vs {}, e.g. {wrong:?}",
        got.len(),
        expected.len()
    );
    // The changelog, read independently: the newest value per key is the final count.
    let mut newest = BTreeMap::new();
    for (p, k, v) in consume_all(c, "counts-changelog") {
        let k = String::from_utf8(k).unwrap();
        assert_eq!(
            partition_for_key(k.as_bytes(), PARTITIONS),
            p,
            "{k} in changelog partition {p}"
        );
        newest.insert(k, v.map(|v| u64::from_be_bytes(v.try_into().unwrap())));
    }
    for (k, n) in expected {
        assert_eq!(
            newest.get(k),
            Some(&Some(*n)),
            "newest changelog value of {k}"
        );
    }
    // Output, at-least-once: every value 1..=count of every key is there.
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (_, k, v) in consume_all(c, "counts-out") {
        let v: u64 = String::from_utf8(v.unwrap()).unwrap().parse().unwrap();
        seen.entry(String::from_utf8(k).unwrap())
            .or_default()
            .insert(v);
    }
    for (k, n) in expected {
        let s = &seen[k];
        assert!(
            s.len() as u64 == *n && s.iter().next_back() == Some(n),
            "output of {k}: {} distinct values up to {:?}, want 1..={n}",
            s.len(),
            s.iter().next_back()
        );
    }
}

/// Runs `spawn()` until a run exits by itself, killing it with SIGKILL at random moments
/// (at least `min_kills` times). A run that gets to the end of its input before `min_kills`
/// kills calls `more_input`: if it produced more input (returns true) the loop goes on, so a
/// faster job cannot make the test pass with fewer kills. Returns the number of kills.
fn kill_loop(
    rng: &mut StdRng,
    min_kills: u32,
    mut spawn: impl FnMut(u32) -> Child,
    mut more_input: impl FnMut() -> bool,
) -> u32 {
    let mut kills = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the job never finished"
        );
        let mut child = spawn(kills);
        let wait = if kills < min_kills {
            // Short enough that the job (faster since the byte-sized cache and the thread pool)
            // is killed at least `min_kills` times before a run gets to the end.
            Duration::from_millis(rng.gen_range(150..1500))
        } else {
            Duration::from_secs(600)
        };
        let t = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(status.success(), "gregor run failed: {status}\n{err}");
                if kills < min_kills && more_input() {
                    eprintln!("a run finished after {kills} kills: more input produced");
                    break;
                }
                return kills;
            }
            if t.elapsed() >= wait {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Adds the counts of a later batch of input to `expected`.
fn merge_counts(expected: &mut BTreeMap<String, u64>, more: BTreeMap<String, u64>) {
    for (k, n) in more {
        *expected.entry(k).or_default() += n;
    }
}

/// One process of the count job over `messages` messages (from `seed`), SIGKILLed at
/// random moments (from `rng_seed`) at least `MIN_KILLS` times; a run that finishes before
/// that gets `more` messages again (seeds from `more_seed`). Checks the kills and the
/// state, changelog and output at the end.
fn single_process_under_kills(
    c: &Cluster,
    messages: u64,
    seed: u64,
    rng_seed: u64,
    more: u64,
    more_seed: u64,
    label: &str,
) {
    let mut expected = c.produce(messages, seed);
    let state = c.dir.join("state");
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut batch = 1;
    let kills = kill_loop(
        &mut rng,
        MIN_KILLS,
        |_| c.spawn(&state, None),
        || {
            batch += 1;
            merge_counts(&mut expected, c.produce(more, more_seed + batch));
            true
        },
    );
    eprintln!("{label}: {kills} SIGKILLs before a run finished");
    assert!(kills >= MIN_KILLS);
    check(c, &expected);
}

#[test]
fn count_job_on_kafka_survives_sigkills() {
    let c = Cluster::start();
    single_process_under_kills(&c, MESSAGES, 1, 7, MESSAGES / 4, 100, "single process");
}

/// The modern protocol paths (admin API topic creation, idempotent producer) under the same
/// SIGKILLs, on tansu (memory storage: the broker itself is not killed here, since tansu's
/// memory storage loses everything with it).
#[test]
fn count_job_on_tansu_survives_sigkills() {
    let c = Cluster::on(Broker::Tansu(Tansu::start()));
    single_process_under_kills(&c, MESSAGES / 2, 4, 9, MESSAGES / 8, 200, "tansu");
}

#[test]
fn two_processes_one_killed_and_moved() {
    let c = Cluster::start();
    let expected = c.produce(MESSAGES / 2, 2);
    let (s0, s1) = (c.dir.join("p0"), c.dir.join("p1"));
    // Process 0 runs undisturbed; process 1 is killed repeatedly, and after its 5th kill it
    // continues on a fresh state directory (its tasks moved to another machine).
    let mut p0 = c.spawn(&s0, Some((0, 2)));
    let mut rng = StdRng::seed_from_u64(8);
    let kills = kill_loop(
        &mut rng,
        10,
        |k| {
            let dir = if k >= 5 {
                c.dir.join("p1-moved")
            } else {
                s1.clone()
            };
            c.spawn(&dir, Some((1, 2)))
        },
        // Process 0 may have finished: more input would not be counted by anyone.
        || false,
    );
    let status = p0.wait().unwrap();
    assert!(status.success());
    eprintln!("two processes: process 1 killed {kills} times");
    check(&c, &expected);
}

#[test]
fn broker_killed_and_restarted_mid_run() {
    let mut c = Cluster::start();
    let expected = c.produce(MESSAGES, 3);
    let state = c.dir.join("state");
    let mut child = c.spawn(&state, None);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job finished before the broker could be killed"
    );
    let Broker::Kafka09(kafka) = &mut c.broker else {
        unreachable!("started on Kafka 0.9")
    };
    kafka.kill9();
    std::thread::sleep(Duration::from_secs(2));
    kafka.restart();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the job did not survive the broker restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&c, &expected);
}
