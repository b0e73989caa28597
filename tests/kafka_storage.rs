//! The Kafka backend under the production restore and commit protocol ([`TaskStorage`]), on
//! real brokers started by the test harness: Apache Kafka 0.9.0.1 (no admin API, no
//! idempotence: the legacy paths) and tansu (admin API, idempotent producer).
//!
//! What is checked: commits write acknowledged changelog records and a checkpoint in the
//! checkpoint topic; a reopen is up to date; a lost local store is rebuilt from Kafka (full
//! restore); uncommitted changelog records (flushed by a commit that crashed before its
//! checkpoint) are TRIMmed on reopen and sealed by the next commit; the changelog is plain
//! Kafka records (key, value, null = tombstone) that a plain consumer reads; a changelog
//! topic with the wrong partition count or cleanup policy is refused. A store with `ttl.ms`
//! (issue 13) on tansu: expired entries stay hidden after a full restore from Kafka and the
//! commits' expiry passes append their tombstones to the changelog.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use gregor::backend::kafka::{KafkaBackend, KafkaSettings};
use gregor::backend::{Backend, TopicPartition, TopicRole, TopicSpec};
use gregor::restore::{NoProgress, RestoreKind, RestoreStats};
use gregor::statedir::StateDir;
use gregor::store::config::StoreConfig;
use gregor::task_storage::{CommitStep, TaskStorage, TaskStorageContext};
use gregor_testkit::{Kafka09, Tansu};

const STORE: &str = "counts";
const CHANGELOG: &str = "counts-changelog";
const TASK: &str = "job.partition-0";

fn settings(bootstrap: &str, client: &[(&str, &str)]) -> KafkaSettings {
    let mut s = KafkaSettings::new("job", bootstrap);
    for (k, v) in client {
        s.client.insert(k.to_string(), v.to_string());
    }
    s.request_timeout = std::time::Duration::from_secs(20);
    s
}

struct Env {
    backend: Arc<dyn Backend>,
    _dir: tempfile::TempDir,
    state: StateDir,
}

impl Env {
    fn new(backend: KafkaBackend) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        Env {
            backend: Arc::new(backend),
            _dir: dir,
            state,
        }
    }

    fn open(&self) -> (TaskStorage, RestoreStats) {
        self.open_with(StoreConfig {
            changelog: Some(CHANGELOG.into()),
            ..StoreConfig::default()
        })
    }

    fn open_with(&self, config: StoreConfig) -> (TaskStorage, RestoreStats) {
        let ctx = TaskStorageContext {
            backend: Arc::clone(&self.backend),
            state: &self.state,
            task: TASK,
            changelog_partition: 0,
        };
        let configs = BTreeMap::from([(STORE.to_string(), config)]);
        let (s, stats) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
        (s, stats.into_iter().next().unwrap())
    }
}

fn put(s: &mut TaskStorage, k: &str, v: &str) {
    s.store(STORE)
        .unwrap()
        .stack()
        .put(k.as_bytes(), v.as_bytes())
        .unwrap();
}

fn contents(s: &mut TaskStorage) -> BTreeMap<String, String> {
    s.store(STORE)
        .unwrap()
        .stack()
        .all()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
        })
        .collect()
}

fn commit(s: &mut TaskStorage, n: u64) {
    let inputs = BTreeMap::from([(TopicPartition::new("in", 0), n)]);
    s.commit(&inputs, Vec::new()).unwrap();
}

/// Every record of the changelog, read with a plain reader from offset 0.
fn changelog(backend: &dyn Backend) -> Vec<(String, Option<String>)> {
    let mut r = backend
        .open_reader(&TopicPartition::new(CHANGELOG, 0), 0)
        .unwrap();
    let mut out = Vec::new();
    loop {
        let b = r.next_batch(1000).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend(b.into_iter().map(|r| {
            (
                String::from_utf8(r.key).unwrap(),
                // Lossy: a TTL store's values start with their binary expiry header.
                r.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
            )
        }));
    }
}

fn quiet_failpoints() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.payload().downcast_ref::<&str>().copied().unwrap_or("");
            if msg != "crash" {
                default(info);
            }
        }));
    });
}

/// The protocol end to end on one broker.
fn storage_protocol(backend: KafkaBackend) {
    let env = Env::new(backend);
    let (mut s, stats) = env.open();
    assert_eq!(stats.kind, RestoreKind::Full);
    put(&mut s, "a", "1");
    put(&mut s, "b", "2");
    commit(&mut s, 2);
    put(&mut s, "a", "3");
    s.store(STORE).unwrap().stack().delete(b"b").unwrap();
    commit(&mut s, 4);
    let cp = s.checkpoint().unwrap().clone();
    assert_eq!(cp.changelogs[STORE], 4, "{cp:?}");
    drop(s);

    // Checkpoint read back from the checkpoint topic by a fresh backend connection.
    assert_eq!(
        env.backend
            .read_checkpoint(TASK)
            .unwrap()
            .unwrap()
            .changelogs[STORE],
        4
    );
    // The changelog is plain Kafka records, tombstone included.
    assert_eq!(
        changelog(&*env.backend),
        vec![
            ("a".into(), Some("1".into())),
            ("b".into(), Some("2".into())),
            ("a".into(), Some("3".into())),
            ("b".into(), None),
        ]
    );

    // Reopen: up to date.
    let (mut s, stats) = env.open();
    assert_eq!(stats.kind, RestoreKind::UpToDate, "{stats:?}");
    let expected = BTreeMap::from([("a".to_string(), "3".to_string())]);
    assert_eq!(contents(&mut s), expected);

    // Uncommitted writes reach Kafka (a commit crashes after the flush, before its
    // checkpoint): the reopen trims them, the next commit seals the trim.
    put(&mut s, "a", "uncommitted");
    put(&mut s, "c", "uncommitted");
    quiet_failpoints();
    s.set_failpoint(Box::new(|step| {
        if step == CommitStep::SinkFlushed {
            std::panic::panic_any("crash");
        }
    }));
    let crashed = std::panic::catch_unwind(AssertUnwindSafe(|| commit(&mut s, 6)));
    assert!(crashed.is_err());
    drop(s);
    let (mut s, stats) = env.open();
    assert_eq!((stats.truncated, stats.trimmed), (2, 2), "{stats:?}");
    assert_eq!(contents(&mut s), expected);
    commit(&mut s, 4);
    let sealed = s.checkpoint().unwrap().changelogs[STORE];
    assert_eq!(sealed, 8, "4 committed + 2 uncommitted + 2 trim records");
    drop(s);
    // Replaying the whole changelog gives the committed state.
    let mut replayed = BTreeMap::new();
    for (k, v) in changelog(&*env.backend) {
        match v {
            Some(v) => replayed.insert(k, v),
            None => replayed.remove(&k),
        };
    }
    assert_eq!(replayed, expected);

    // The local store is lost: a full restore from Kafka.
    std::fs::remove_dir_all(env.state.task_dir(TASK).join("stores")).unwrap();
    let (mut s, stats) = env.open();
    assert_eq!(stats.kind, RestoreKind::Full, "{stats:?}");
    assert_eq!(contents(&mut s), expected);

    // A former owner's late writes (a process cut off by a network partition whose produce
    // requests reach the broker after the task moved here) land between this task's records:
    // the next commit notices more records than it sent, writes the keys they touched again,
    // and a full restore from the changelog alone gives this task's state, not theirs.
    put(&mut s, "d", "4");
    commit(&mut s, 5);
    let mut zombie = env.backend.open_sink("zombie").unwrap();
    let tp = TopicPartition::new(CHANGELOG, 0);
    zombie.send(&tp, 0, b"a", Some(b"stale")).unwrap();
    zombie.send(&tp, 0, b"z", Some(b"stale")).unwrap();
    zombie.send(&tp, 0, b"d", None).unwrap();
    zombie.flush().unwrap();
    put(&mut s, "e", "5");
    commit(&mut s, 6);
    let expected: BTreeMap<String, String> = [("a", "3"), ("d", "4"), ("e", "5")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(contents(&mut s), expected);
    let end = s.checkpoint().unwrap().changelogs[STORE];
    let log = changelog(&*env.backend);
    assert_eq!(
        end as usize,
        log.len(),
        "the checkpoint covers the repair records"
    );
    assert_eq!(
        &log[log.len() - 4..],
        &[
            ("a".into(), Some("3".into())),
            ("d".into(), Some("4".into())),
            ("e".into(), Some("5".into())),
            ("z".into(), None),
        ],
        "every key of the range since the last commit (stray and own), written again in key \
         order: {log:?}"
    );
    drop(s);
    std::fs::remove_dir_all(env.state.task_dir(TASK).join("stores")).unwrap();
    let (mut s, stats) = env.open();
    assert_eq!(stats.kind, RestoreKind::Full, "{stats:?}");
    assert_eq!(contents(&mut s), expected);
    drop(s);

    // Topic checks: too few partitions, and (where the broker can tell) not compacted.
    let e = env
        .backend
        .ensure_topic(&TopicSpec {
            name: CHANGELOG.into(),
            partitions: 3,
            role: TopicRole::Changelog,
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("partitions") && e.contains(CHANGELOG), "{e}");
}

#[test]
fn kafka09_storage_protocol() {
    let mut kafka = Kafka09::start();
    // Kafka 0.9 has no admin API: gregor refuses to guess and prints the command.
    let s = settings(&kafka.bootstrap(), &Kafka09::client_config());
    let e = KafkaBackend::connect(s.clone())
        .err()
        .expect("no checkpoint topic yet");
    let msg = e.to_string();
    assert!(
        msg.contains("kafka-topics.sh")
            && msg.contains(&s.checkpoint_topic)
            && msg.contains("cleanup.policy=compact"),
        "{msg}"
    );
    kafka.create_topic(&s.checkpoint_topic, 1, true);
    let backend = KafkaBackend::connect(s.clone()).unwrap();
    let e = backend
        .ensure_topic(&TopicSpec {
            name: CHANGELOG.into(),
            partitions: 1,
            role: TopicRole::Changelog,
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kafka-topics.sh") && e.contains(CHANGELOG),
        "{e}"
    );
    kafka.create_topic(CHANGELOG, 1, true);
    storage_protocol(backend);
}

#[test]
fn tansu_storage_protocol() {
    let tansu = Tansu::start();
    let s = settings(&tansu.bootstrap(), &Tansu::client_config());
    // The admin API creates the checkpoint topic and the changelog.
    let backend = KafkaBackend::connect(s).unwrap();
    storage_protocol(backend);
}

#[test]
fn unreachable_broker_is_a_clear_error() {
    let port = gregor_testkit::free_port();
    let mut s = settings(&format!("127.0.0.1:{port}"), &Kafka09::client_config());
    s.request_timeout = std::time::Duration::from_secs(2);
    let e = KafkaBackend::connect(s)
        .err()
        .expect("nothing listens there");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("no Kafka broker answered"),
        "{msg}"
    );
}

/// Issue 13 on a Kafka-protocol broker: a store with `ttl.ms`, restored from Kafka after its
/// entries expired (the local store lost, nothing removed yet), shows none of them; the next
/// commit's expiry pass appends a tombstone per entry, so a later restore has none either.
#[test]
fn tansu_ttl_store_expires_through_the_changelog() {
    let tansu = Tansu::start();
    let s = settings(&tansu.bootstrap(), &Tansu::client_config());
    let env = Env::new(KafkaBackend::connect(s).unwrap());
    let clock = gregor::store::ttl::ManualClock::new(1_700_000_000_000);
    let config = StoreConfig {
        changelog: Some(CHANGELOG.into()),
        ttl_ms: Some(1_000),
        clock: clock.clock(),
        ..StoreConfig::default()
    };
    let (mut s, _) = env.open_with(config.clone());
    put(&mut s, "a", "1");
    put(&mut s, "b", "2");
    commit(&mut s, 2);
    assert_eq!(contents(&mut s).len(), 2);
    clock.advance(1_000);
    drop(s);
    let local = env.state.store_dir(TASK, STORE);
    std::fs::remove_dir_all(&local).unwrap();
    let (mut s, stats) = env.open_with(config.clone());
    assert_eq!(stats.kind, RestoreKind::Full);
    assert!(contents(&mut s).is_empty(), "restored, still expired");
    commit(&mut s, 2);
    let mut last = BTreeMap::new();
    for (k, v) in changelog(&*env.backend) {
        last.insert(k, v);
    }
    assert_eq!(
        last,
        BTreeMap::from([("a".to_string(), None), ("b".to_string(), None)]),
        "a committed tombstone per expired entry"
    );
    drop(s);
    std::fs::remove_dir_all(&local).unwrap();
    let (mut s, _) = env.open_with(config);
    assert!(contents(&mut s).is_empty());
}
