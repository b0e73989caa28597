//! The count job run by the container over the Kafka backend, on real brokers (Kafka 0.9.0.1
//! and tansu): inputs consumed from Kafka, counts in RocksDB stores with Kafka changelogs,
//! checkpoints in the checkpoint topic, output to a Kafka topic. Then the job runs again on a
//! fresh state directory (the task moved to another machine): every store is rebuilt from
//! Kafka and nothing is processed twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gregor::backend::kafka::{KafkaBackend, KafkaSettings};
use gregor::backend::{Backend, TopicPartition, TopicRole, TopicSpec};
use gregor::partitioner::partition_for_key;
use gregor::restore::NoProgress;
use gregor::runtime::{JobConfig, RunOptions, builtin, run_job_on, task_name};
use gregor::statedir::StateDir;
use gregor::store::typed::Store;
use gregor::task_storage::{TaskStorage, TaskStorageContext};
use gregor_testkit::{Kafka09, Tansu};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PARTITIONS: u32 = 4;
const KEYS: u64 = 50;

const JOB: &str = r#"
[job]
name = "counts"
task = "count"
inputs = ["in"]
outputs = ["counts-out"]
commit.ms = 200

[stores.counts]
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#;

fn settings(bootstrap: &str, client: &[(&str, &str)]) -> KafkaSettings {
    let mut s = KafkaSettings::new("counts", bootstrap);
    for (k, v) in client {
        s.client.insert(k.to_string(), v.to_string());
    }
    s
}

/// Produces `n` messages with keys `key-<i % KEYS>` to `in`, partitioned like the Java
/// producer (murmur2); returns the expected counts.
fn produce(s: &KafkaSettings, from: u64, n: u64) -> BTreeMap<String, u64> {
    let mut cc = ClientConfig::new();
    for (k, v) in &s.client {
        cc.set(k, v);
    }
    let p: BaseProducer = cc.create().unwrap();
    let mut expected = BTreeMap::new();
    for i in from..from + n {
        let key = format!("key-{:03}", i % KEYS);
        *expected.entry(key.clone()).or_insert(0) += 1;
        let part = partition_for_key(key.as_bytes(), PARTITIONS);
        let value = format!("v{i}");
        let mut rec = BaseRecord::<str, str>::to("in")
            .partition(part as i32)
            .key(&key)
            .payload(&value);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(50));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    expected
}

fn run(backend: &KafkaBackend, state: &StateDir, job: &JobConfig) -> gregor::runtime::RunStats {
    let factory = builtin::factory("count").unwrap();
    let opts = RunOptions {
        until_end: true,
        progress: Box::new(NoProgress),
        ..RunOptions::new()
    };
    run_job_on(Arc::new(backend.clone()), state, job, &factory, opts).unwrap()
}

/// The merged counts of every task, read through `TaskStorage::open` (restoring from Kafka).
fn counts(backend: &KafkaBackend, state: &StateDir, job: &JobConfig) -> BTreeMap<String, u64> {
    let backend: Arc<dyn Backend> = Arc::new(backend.clone());
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        let task = task_name(&job.name, p);
        let ctx = TaskStorageContext {
            backend: Arc::clone(&backend),
            state,
            task: &task,
            changelog_partition: p,
        };
        let (mut storage, _) = TaskStorage::open(&ctx, &job.stores, &mut NoProgress).unwrap();
        let cfg = &job.stores["counts"];
        let s = storage.store("counts").unwrap();
        let mut typed =
            Store::<String, u64, _>::new(s.stack(), cfg.key_serde, cfg.value_serde).unwrap();
        for e in typed.all().unwrap() {
            let (k, v) = e.unwrap();
            assert!(out.insert(k, v).is_none(), "a key in two tasks");
        }
    }
    out
}

/// Per key, the values of `counts-out` in order.
fn output(backend: &KafkaBackend) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut r = backend
            .open_reader(&TopicPartition::new("counts-out", p), 0)
            .unwrap();
        loop {
            let b = r.next_batch(1000).unwrap();
            if b.is_empty() {
                break;
            }
            for rec in b {
                let k = String::from_utf8(rec.key).unwrap();
                assert_eq!(
                    partition_for_key(k.as_bytes(), PARTITIONS),
                    p,
                    "{k} on partition {p}"
                );
                let v: u64 = String::from_utf8(rec.value.unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                out.entry(k).or_default().push(v);
            }
        }
    }
    out
}

fn count_job(backend: KafkaBackend) {
    let s = backend.settings().clone();
    let job = JobConfig::from_toml_str("<kafka count job>", JOB).unwrap();
    let mut expected = produce(&s, 0, 3000);

    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(&dir.path().join("a")).unwrap();
    let stats = run(&backend, &state, &job);
    assert_eq!(
        (stats.tasks, stats.processed),
        (PARTITIONS, 3000),
        "{stats:?}"
    );
    assert_eq!(counts(&backend, &state, &job), expected);

    // More input; the same state directory resumes from its checkpoints (delta restores).
    for (k, n) in produce(&s, 3000, 1000) {
        *expected.entry(k).or_default() += n;
    }
    let stats = run(&backend, &state, &job);
    assert_eq!(stats.processed, 1000, "{stats:?}");
    assert!(
        stats
            .restores
            .iter()
            .all(|r| r.kind != gregor::restore::RestoreKind::Full),
        "{:?}",
        stats.restores
    );
    assert_eq!(counts(&backend, &state, &job), expected);
    drop(state);

    // The tasks move to a fresh state directory: full restores from Kafka, nothing
    // reprocessed.
    let fresh = StateDir::open(&dir.path().join("b")).unwrap();
    let stats = run(&backend, &fresh, &job);
    assert_eq!(stats.processed, 0, "{stats:?}");
    assert!(
        stats
            .restores
            .iter()
            .all(|r| r.kind == gregor::restore::RestoreKind::Full),
        "{:?}",
        stats.restores
    );
    assert_eq!(counts(&backend, &fresh, &job), expected);

    // Output: per key exactly 1, 2, ..., count (no crash, so no duplicates), on the
    // partition the Java producer would pick.
    let out = output(&backend);
    assert_eq!(out.len(), expected.len());
    for (k, vals) in out {
        let n = expected[&k];
        assert_eq!(vals, (1..=n).collect::<Vec<_>>(), "output of {k}");
    }
}

#[test]
fn count_job_on_kafka09() {
    let mut kafka = Kafka09::start();
    let s = settings(&kafka.bootstrap(), &Kafka09::client_config());
    // Kafka 0.9 has no admin API: the topics are created the way its users do.
    kafka.create_topic(&s.checkpoint_topic, 1, true);
    kafka.create_topic("in", PARTITIONS, false);
    kafka.create_topic("counts-changelog", PARTITIONS, true);
    kafka.create_topic("counts-out", PARTITIONS, false);
    count_job(KafkaBackend::connect(s).unwrap());
}

#[test]
fn count_job_on_tansu() {
    let tansu = Tansu::start();
    let s = settings(&tansu.bootstrap(), &Tansu::client_config());
    // The admin API: gregor creates the checkpoint topic, changelog and output itself.
    let backend = KafkaBackend::connect(s).unwrap();
    backend
        .ensure_topic(&TopicSpec {
            name: "in".into(),
            partitions: PARTITIONS,
            role: TopicRole::Output,
        })
        .unwrap();
    count_job(backend);
}
