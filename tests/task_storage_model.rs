//! The commit and restore protocol ([`TaskStorage`]) against a model, with crashes at every
//! step of a commit and between commits, on both kinds of changelog:
//!
//! - one that can be truncated (the embedded log's path: uncommitted records are cut off);
//! - one that cannot (Kafka's path: uncommitted records stay and restore TRIMs them, i.e.
//!   appends the restored value of every key they touched), with a log cleaner compacting
//!   the committed part of the changelog between runs.
//!
//! The changelog lives in the in-memory backend, whose sink loses everything not flushed when
//! it is dropped (a killed producer). The local engine is real (RocksDB in a temp directory)
//! or memory. After every crash the task is reopened and must hold exactly the state of the
//! committed operations; every few rounds the local store is deleted, and a full restore from
//! the changelog alone must give the same state (the trims sealed what they overwrote).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use gregor::backend::memory::MemoryBackend;
use gregor::backend::{Backend, TopicPartition};
use gregor::restore::{NoProgress, RestoreKind, RestoreStats};
use gregor::statedir::StateDir;
use gregor::store::config::{EngineKind, StoreConfig};
use gregor::task_storage::{CommitStep, TaskStorage, TaskStorageContext};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TASK: &str = "job.partition-0";
const STORE: &str = "s";
const CHANGELOG: &str = "s-changelog";
const INPUT: &str = "in";
const KEYS: u64 = 40;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Operation `i`: a put of key `i*7 % KEYS` (or, every 5th, a delete).
fn apply(model: &mut Model, i: u64) {
    let key = format!("k{:02}", (i * 7) % KEYS).into_bytes();
    if i % 5 == 4 {
        model.remove(&key);
    } else {
        model.insert(key, format!("v{i}").into_bytes());
    }
}

fn write(storage: &mut TaskStorage, i: u64) {
    let key = format!("k{:02}", (i * 7) % KEYS).into_bytes();
    let stack = storage.store(STORE).unwrap().stack();
    if i % 5 == 4 {
        stack.delete(&key).unwrap();
    } else {
        stack.put(&key, format!("v{i}").as_bytes()).unwrap();
    }
}

fn model_of(n: u64) -> Model {
    let mut m = Model::new();
    for i in 0..n {
        apply(&mut m, i);
    }
    m
}

struct World {
    backend: MemoryBackend,
    truncate: bool,
    _dir: tempfile::TempDir,
    state: StateDir,
    config: StoreConfig,
}

impl World {
    fn new(truncate: bool, engine: EngineKind) -> World {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let backend = MemoryBackend::new();
        backend.create_topic(CHANGELOG, 1, true);
        World {
            backend,
            truncate,
            _dir: dir,
            state,
            config: StoreConfig {
                engine,
                changelog: Some(CHANGELOG.into()),
                // A byte-sized cache of about 8 entries: evictions and early flushes of
                // dirty entries happen between commits.
                cache_max_bytes: 8 * (gregor::store::cached::ENTRY_OVERHEAD + 16),
                ..StoreConfig::default()
            },
        }
    }

    fn backend(&self) -> Arc<dyn Backend> {
        if self.truncate {
            Arc::new(self.backend.clone())
        } else {
            Arc::new(self.backend.without_truncation())
        }
    }

    fn open(&self) -> (TaskStorage, RestoreStats) {
        let ctx = TaskStorageContext {
            backend: self.backend(),
            state: &self.state,
            task: TASK,
            changelog_partition: 0,
        };
        let configs = BTreeMap::from([(STORE.to_string(), self.config.clone())]);
        let (storage, stats) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
        (storage, stats.into_iter().next().unwrap())
    }

    fn committed_ops(storage: &TaskStorage) -> u64 {
        storage
            .checkpoint()
            .and_then(|c| c.input(INPUT, 0))
            .unwrap_or(0)
    }

    fn contents(storage: &mut TaskStorage) -> Model {
        let stack = storage.store(STORE).unwrap().stack();
        stack.all().unwrap().map(|e| e.unwrap()).collect()
    }
}

fn commit(storage: &mut TaskStorage, ops: u64) {
    let inputs = BTreeMap::from([(TopicPartition::new(INPUT, 0), ops)]);
    storage.commit(&inputs, Vec::new()).unwrap();
}

/// How a round ends.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// Dropped between commits (unflushed sink records lost).
    BetweenCommits,
    /// Between commits, after the engine flushed past the checkpoint on its own.
    EngineAhead,
    /// Inside a commit, at a step.
    InCommit(CommitStep),
}

fn run(truncate: bool, engine: EngineKind, seed: u64, rounds: usize) -> BTreeMap<String, u64> {
    let w = World::new(truncate, engine);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = BTreeMap::<String, u64>::new();
    let mut committed = 0u64;
    for round in 0..rounds {
        if round % 7 == 6 {
            // The local store is lost: the changelog alone must rebuild the state.
            std::fs::remove_dir_all(w.state.task_dir(TASK).join("stores")).unwrap();
        }
        if !truncate && round % 3 == 2 {
            // A log cleaner compacts the committed part of the changelog.
            let cp_end = committed_changelog_end(&w);
            w.backend
                .compact(&TopicPartition::new(CHANGELOG, 0), cp_end);
        }
        let (mut storage, stats) = w.open();
        *tally.entry(format!("{:?}", stats.kind)).or_default() += 1;
        if stats.trimmed > 0 {
            *tally.entry("trims".into()).or_default() += 1;
        }
        if !storage.checkpoint_covers(&[TopicPartition::new(INPUT, 0)]) {
            // Like the container: a first checkpoint before any processing.
            commit(&mut storage, 0);
        }
        let n = World::committed_ops(&storage);
        assert!(n >= committed, "the checkpoint went backwards");
        committed = n;
        assert_eq!(
            World::contents(&mut storage),
            model_of(n),
            "round {round} (seed {seed}, truncate {truncate}, {engine:?}): state differs from {n} committed ops; restore {stats:?}"
        );
        if n > 0 && !truncate {
            // The changelog alone replays to the committed state (sealed trims) once the
            // open's first commit lands; checked after the next commit below.
        }
        // Work: a few commits, then a crash.
        let mut i = n;
        let commits = rng.gen_range(0..4);
        for _ in 0..commits {
            for _ in 0..rng.gen_range(1..30) {
                write(&mut storage, i);
                i += 1;
            }
            commit(&mut storage, i);
            committed = i;
            if !truncate {
                assert_eq!(
                    replay_changelog(&w),
                    model_of(i),
                    "the changelog does not replay to the committed state"
                );
            }
        }
        for _ in 0..rng.gen_range(0..30) {
            write(&mut storage, i);
            i += 1;
        }
        let crash = match rng.gen_range(0..4) {
            0 => Crash::BetweenCommits,
            1 => Crash::EngineAhead,
            2 => Crash::InCommit(CommitStep::SinkFlushed),
            _ => Crash::InCommit(CommitStep::CheckpointWritten),
        };
        *tally.entry(format!("{crash:?}")).or_default() += 1;
        match crash {
            Crash::BetweenCommits => drop(storage),
            Crash::EngineAhead => {
                storage.store(STORE).unwrap().stack().flush().unwrap();
                drop(storage);
            }
            Crash::InCommit(at) => {
                storage.set_failpoint(Box::new(move |step| {
                    if step == at {
                        panic!("crash at {step:?}");
                    }
                }));
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| commit(&mut storage, i)));
                assert!(r.is_err(), "the failpoint fired");
                if at == CommitStep::CheckpointWritten {
                    committed = i;
                }
                drop(storage);
            }
        }
    }
    tally
}

fn committed_changelog_end(w: &World) -> u64 {
    w.backend
        .read_checkpoint(TASK)
        .unwrap()
        .and_then(|c| c.changelogs.get(STORE).copied())
        .unwrap_or(0)
}

/// The state the committed part of the changelog replays to.
fn replay_changelog(w: &World) -> Model {
    let end = committed_changelog_end(w);
    let mut m = Model::new();
    for r in w.backend.records(&TopicPartition::new(CHANGELOG, 0)) {
        if r.offset >= end {
            break;
        }
        match r.value {
            Some(v) => m.insert(r.key, v),
            None => m.remove(&r.key),
        };
    }
    m
}

/// Silences the panics the failpoints raise on purpose (their message starts with "crash"),
/// and only those.
fn quiet_failpoints() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !msg.starts_with("crash") {
                default(info);
            }
        }));
    });
}

fn check(truncate: bool, engine: EngineKind) {
    quiet_failpoints();
    let mut total = BTreeMap::<String, u64>::new();
    for seed in 0..12 {
        for (k, v) in run(truncate, engine, seed, 40) {
            *total.entry(k).or_default() += v;
        }
    }
    eprintln!("truncate={truncate} {engine:?}: {total:?}");
    // The loop exercised what it claims to.
    for crash in [
        "BetweenCommits",
        "EngineAhead",
        "InCommit(SinkFlushed)",
        "InCommit(CheckpointWritten)",
    ] {
        assert!(
            total.get(crash).copied().unwrap_or(0) > 0,
            "{crash} never happened: {total:?}"
        );
    }
    assert!(total.get("Full").copied().unwrap_or(0) > 0, "{total:?}");
    if engine == EngineKind::Rocksdb {
        assert!(total.get("Delta").copied().unwrap_or(0) > 0, "{total:?}");
    }
    if !truncate {
        assert!(total.get("trims").copied().unwrap_or(0) > 0, "{total:?}");
    }
}

#[test]
fn truncatable_changelog_rocksdb() {
    check(true, EngineKind::Rocksdb);
}

#[test]
fn truncatable_changelog_memory_engine() {
    check(true, EngineKind::Memory);
}

#[test]
fn untruncatable_changelog_trims_rocksdb() {
    check(false, EngineKind::Rocksdb);
}

#[test]
fn untruncatable_changelog_trims_memory_engine() {
    check(false, EngineKind::Memory);
}

/// A restore of a changelog that cannot be truncated appends the restored values and leaves
/// the uncommitted records in place; the next commit seals them.
#[test]
fn trim_appends_restored_values_of_touched_keys() {
    let w = World::new(false, EngineKind::Rocksdb);
    let (mut s, _) = w.open();
    for i in 0..10 {
        write(&mut s, i);
    }
    commit(&mut s, 10);
    let committed_end = committed_changelog_end(&w);
    // Uncommitted writes reach the changelog (the sink is flushed by a commit that crashes
    // before its checkpoint).
    for i in 10..14 {
        write(&mut s, i);
    }
    s.set_failpoint(Box::new(|step| {
        if step == CommitStep::SinkFlushed {
            panic!("crash");
        }
    }));
    quiet_failpoints();
    assert!(std::panic::catch_unwind(AssertUnwindSafe(|| commit(&mut s, 14))).is_err());
    drop(s);
    let tp = TopicPartition::new(CHANGELOG, 0);
    let end = w.backend.offsets(&tp).unwrap().end;
    assert_eq!(
        end,
        committed_end + 4,
        "the uncommitted records are in the changelog"
    );

    let (mut s, stats) = w.open();
    assert_eq!(stats.kind, RestoreKind::UpToDate, "{stats:?}");
    assert_eq!((stats.truncated, stats.trimmed), (4, 4), "{stats:?}");
    assert_eq!(World::contents(&mut s), model_of(10));
    // The first commit after the restore seals the trim records.
    commit(&mut s, 10);
    assert_eq!(committed_changelog_end(&w), end + 4);
    assert_eq!(replay_changelog(&w), model_of(10));
}
