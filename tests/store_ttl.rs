//! Issue 13 part 1, TTL, through [`TaskStorage`] with real engines (RocksDB on disk, memory)
//! and both kinds of changelog (the embedded log, which truncates; the in-memory backend
//! without truncation, like Kafka), on a clock the test sets:
//!
//! - an expired entry is invisible to get, get_all, range, prefix, all and snapshots at once,
//!   and the commits' expiry passes remove it with a tombstone in the changelog;
//! - a restore (delta or full) after expiry brings nothing back, and an entry restored before
//!   its deadline expires at the same moment as before;
//! - a crash between the expiry pass and the checkpoint (tombstones sent, not committed)
//!   leaves the entry invisible, and the next commit removes it again;
//! - a changed `ttl.ms` applies to new writes; turning TTL on or off for an existing store is
//!   refused naming the key; per-write TTLs and the value limit.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::backend::memory::MemoryBackend;
use gregor::backend::{Backend, TopicPartition};
use gregor::restore::NoProgress;
use gregor::serde::SerdeName;
use gregor::statedir::StateDir;
use gregor::store::KeyValueStore;
use gregor::store::config::{EngineKind, StoreConfig};
use gregor::store::ttl::{self, ManualClock, NEVER};
use gregor::store::typed::Store;
use gregor::task_storage::{CommitStep, TaskStorage, TaskStorageContext, TaskStoreError};

const STORE: &str = "sessions";
const CHANGELOG: &str = "sessions-changelog";
const TASK: &str = "ttl.partition-0";
const T0: u64 = 1_700_000_000_000;

struct World {
    _dir: tempfile::TempDir,
    state: StateDir,
    backend: Arc<dyn Backend>,
    clock: ManualClock,
}

impl World {
    fn new(embedded: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let backend: Arc<dyn Backend> = if embedded {
            Arc::new(EmbeddedBackend::open(state.root(), EmbeddedSettings::default()).unwrap())
        } else {
            Arc::new(MemoryBackend::new().without_truncation())
        };
        World {
            _dir: dir,
            state,
            backend,
            clock: ManualClock::new(T0),
        }
    }

    fn config(&self, engine: EngineKind, ttl_ms: Option<u64>) -> StoreConfig {
        StoreConfig {
            engine,
            changelog: Some(CHANGELOG.to_string()),
            ttl_ms,
            ttl_cleanup_entries: 3,
            clock: self.clock.clock(),
            ..StoreConfig::default()
        }
    }

    fn try_open(&self, config: &StoreConfig) -> Result<TaskStorage, TaskStoreError> {
        let ctx = TaskStorageContext {
            backend: Arc::clone(&self.backend),
            state: &self.state,
            task: TASK,
            changelog_partition: 0,
        };
        let configs = BTreeMap::from([(STORE.to_string(), config.clone())]);
        TaskStorage::open(&ctx, &configs, &mut NoProgress).map(|(s, _)| s)
    }

    fn open(&self, config: &StoreConfig) -> TaskStorage {
        self.try_open(config)
            .unwrap_or_else(|e| panic!("open: {e}"))
    }

    fn remove_local(&self) {
        std::fs::remove_dir_all(self.state.store_dir(TASK, STORE)).unwrap();
    }

    /// The committed state of the changelog (what any restore, standby or replay of it
    /// gives), values as stored (with their expiry headers).
    fn committed(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let tp = TopicPartition::new(CHANGELOG, 0);
        let end = self
            .backend
            .read_checkpoint(TASK)
            .unwrap()
            .and_then(|cp| cp.changelogs.get(STORE).copied())
            .unwrap_or(0);
        gregor::changelog::committed_entries(&*self.backend, &tp, end).unwrap()
    }
}

fn commit(s: &mut TaskStorage) {
    s.commit(
        &BTreeMap::from([(TopicPartition::new("in", 0), 0)]),
        Vec::new(),
    )
    .unwrap();
}

fn stack(s: &mut TaskStorage) -> &mut dyn KeyValueStore {
    s.store(STORE).unwrap().stack()
}

fn keys(it: gregor::store::KvIter<'_>) -> Vec<String> {
    it.map(|e| String::from_utf8(e.unwrap().0).unwrap())
        .collect()
}

fn get(s: &mut TaskStorage, k: &str) -> Option<String> {
    stack(s)
        .get(k.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// Every combination of engine and changelog kind.
fn worlds() -> Vec<(String, World, EngineKind)> {
    let mut out = Vec::new();
    for embedded in [true, false] {
        for engine in [EngineKind::Rocksdb, EngineKind::Memory] {
            let name = format!(
                "{} on {}",
                engine.as_str(),
                if embedded {
                    "embedded"
                } else {
                    "memory (TRIM)"
                }
            );
            out.push((name, World::new(embedded), engine));
        }
    }
    out
}

#[test]
fn expired_entries_vanish_from_every_read_at_once_and_commits_remove_them() {
    for (name, w, engine) in worlds() {
        let config = w.config(engine, Some(1_000));
        let mut s = w.open(&config);
        for k in ["a1", "a2", "a3", "a4"] {
            stack(&mut s).put(k.as_bytes(), b"short").unwrap();
        }
        stack(&mut s)
            .put_with_ttl(b"b-long", b"long", 10_000)
            .unwrap();
        stack(&mut s)
            .put_expiring(b"c-never", b"never", NEVER)
            .unwrap();
        commit(&mut s);
        assert_eq!(get(&mut s, "a1").as_deref(), Some("short"), "{name}");
        assert_eq!(w.committed().len(), 6, "{name}");
        let snap = stack(&mut s).snapshot().unwrap();

        w.clock.advance(999);
        assert_eq!(keys(stack(&mut s).all().unwrap()).len(), 6, "{name}");
        w.clock.advance(1);
        // At the deadline, invisible to every read at once, before any pass ran.
        assert_eq!(get(&mut s, "a1"), None, "{name}");
        assert_eq!(
            stack(&mut s).get_all(&[b"a2", b"b-long"]).unwrap(),
            vec![None, Some(b"long".to_vec())],
            "{name}"
        );
        let mut seen = Some(Vec::new());
        stack(&mut s)
            .get_with(b"a3", &mut |v| seen = v.map(<[u8]>::to_vec))
            .unwrap();
        assert_eq!(seen, None, "{name}");
        assert_eq!(
            keys(stack(&mut s).all().unwrap()),
            ["b-long", "c-never"],
            "{name}"
        );
        assert!(keys(stack(&mut s).range(b"a", b"b").unwrap()).is_empty());
        assert!(keys(stack(&mut s).prefix(b"a").unwrap()).is_empty());
        assert_eq!(snap.get(b"a4").unwrap(), None, "{name}: snapshots too");
        assert_eq!(keys(snap.all().unwrap()), ["b-long", "c-never"]);
        // Typed reads strip the header.
        {
            let mut typed: Store<String, String, &mut dyn KeyValueStore> =
                Store::new(stack(&mut s), SerdeName::String, SerdeName::String).unwrap();
            assert_eq!(
                typed.get(&"b-long".into()).unwrap().as_deref(),
                Some("long")
            );
            assert_eq!(typed.get(&"a4".into()).unwrap(), None);
        }
        // Still in the committed changelog until the passes remove them: 3 entries examined
        // per pass (ttl.cleanup.entries), so two commits.
        // (The commit at T0 examined a1-a3, found nothing expired and stopped before a4.)
        assert_eq!(w.committed().len(), 6, "{name}");
        commit(&mut s);
        assert_eq!(
            w.committed().len(),
            5,
            "{name}: a4 removed, the sweep at its end"
        );
        commit(&mut s);
        let left: Vec<_> = w.committed().into_keys().collect();
        assert_eq!(
            left,
            vec![b"b-long".to_vec(), b"c-never".to_vec()],
            "{name}"
        );
        // The stored values carry their deadlines.
        let committed = w.committed();
        assert_eq!(
            ttl::decode(STORE, &committed[&b"b-long".to_vec()]).unwrap(),
            (T0 + 10_000, &b"long"[..]),
            "{name}"
        );
        assert_eq!(
            ttl::decode(STORE, &committed[&b"c-never".to_vec()])
                .unwrap()
                .0,
            NEVER
        );
    }
}

#[test]
fn a_restore_after_expiry_brings_nothing_back_and_keeps_each_deadline() {
    for (name, w, engine) in worlds() {
        let config = w.config(engine, Some(1_000));
        let mut s = w.open(&config);
        stack(&mut s).put(b"gone", b"1").unwrap();
        stack(&mut s).put_with_ttl(b"later", b"2", 5_000).unwrap();
        commit(&mut s);
        w.clock.advance(1_000);
        // A crash before any commit removed `gone`: its put is all the changelog has.
        drop(s);
        for full in [false, true] {
            if full {
                w.remove_local();
            }
            let mut s = w.open(&config);
            assert_eq!(get(&mut s, "gone"), None, "{name}, full restore {full}");
            assert_eq!(keys(stack(&mut s).all().unwrap()), ["later"], "{name}");
            drop(s);
        }
        // Restored before its deadline, `later` expires at the same moment as before.
        w.remove_local();
        let mut s = w.open(&config);
        w.clock.set(T0 + 4_999);
        assert_eq!(get(&mut s, "later").as_deref(), Some("2"), "{name}");
        w.clock.set(T0 + 5_000);
        assert_eq!(get(&mut s, "later"), None, "{name}");
        commit(&mut s);
        assert!(w.committed().is_empty(), "{name}: tombstones committed");
        drop(s);
        w.remove_local();
        let mut s = w.open(&config);
        assert!(keys(stack(&mut s).all().unwrap()).is_empty(), "{name}");
    }
}

/// Silences the panic messages of the failpoints (they are expected); others still print.
fn quiet() {
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
}

#[test]
fn a_crash_between_the_expiry_pass_and_the_checkpoint_brings_nothing_back() {
    quiet();
    for (name, w, engine) in worlds() {
        for step in [CommitStep::SinkFlushed, CommitStep::CheckpointWritten] {
            let config = w.config(engine, Some(1_000));
            let mut s = w.open(&config);
            for k in ["x1", "x2"] {
                stack(&mut s).put(k.as_bytes(), b"v").unwrap();
            }
            commit(&mut s);
            w.clock.advance(1_000);
            s.set_failpoint(Box::new(move |at| {
                if at == step {
                    panic!("crash at {at:?}");
                }
            }));
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| commit(&mut s)));
            assert!(r.is_err(), "the failpoint fired");
            drop(s);
            let mut s = w.open(&config);
            assert_eq!(get(&mut s, "x1"), None, "{name} {step:?}");
            assert!(keys(stack(&mut s).all().unwrap()).is_empty(), "{name}");
            commit(&mut s);
            assert!(w.committed().is_empty(), "{name} {step:?}");
            drop(s);
            w.remove_local();
            let mut s = w.open(&config);
            assert!(keys(stack(&mut s).all().unwrap()).is_empty(), "{name}");
            commit(&mut s);
        }
    }
}

#[test]
fn a_changed_ttl_applies_to_new_writes_and_ttl_cannot_be_turned_on_or_off() {
    for (name, w, engine) in worlds() {
        let mut s = w.open(&w.config(engine, Some(1_000)));
        stack(&mut s).put(b"old", b"1").unwrap();
        commit(&mut s);
        drop(s);
        let longer = w.config(engine, Some(60_000));
        let mut s = w.open(&longer);
        stack(&mut s).put(b"new", b"2").unwrap();
        w.clock.advance(1_000);
        assert_eq!(
            get(&mut s, "old"),
            None,
            "{name}: old entries keep their deadline"
        );
        assert_eq!(get(&mut s, "new").as_deref(), Some("2"), "{name}");
        commit(&mut s);
        drop(s);
        let e = w
            .try_open(&w.config(engine, None))
            .err()
            .expect("turning TTL off is refused")
            .to_string();
        assert!(e.contains("stores.sessions.ttl.ms"), "{name}: {e}");
        let mut s = w.open(&longer);
        w.clock.advance(59_000);
        assert_eq!(get(&mut s, "new"), None, "{name}");
        drop(s);
    }
    let w = World::new(true);
    let mut s = w.open(&w.config(EngineKind::Rocksdb, None));
    let e = stack(&mut s)
        .put_with_ttl(b"k", b"v", 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("stores.sessions.ttl.ms"), "{e}");
    stack(&mut s).put(b"k", b"v").unwrap();
    commit(&mut s);
    drop(s);
    let e = w
        .try_open(&w.config(EngineKind::Rocksdb, Some(10)))
        .err()
        .expect("turning TTL on is refused")
        .to_string();
    assert!(e.contains("stores.sessions.ttl.ms"), "{e}");
}

#[test]
fn the_value_limit_counts_what_users_write_and_typed_ttls_work() {
    let w = World::new(true);
    let mut config = w.config(EngineKind::Rocksdb, Some(1_000));
    config.limits.max_value_bytes = 100;
    let mut s = w.open(&config);
    stack(&mut s)
        .put_with_ttl(b"full", &[7u8; 100], 60_000)
        .unwrap();
    let e = stack(&mut s).put(b"over", &[7u8; 101]).unwrap_err();
    assert!(e.to_string().contains("101"), "{e}");
    {
        let mut typed: Store<String, u64, &mut dyn KeyValueStore> =
            Store::new(stack(&mut s), SerdeName::String, SerdeName::U64).unwrap();
        typed
            .put_with_ttl(&"t".into(), &5, Duration::from_secs(3))
            .unwrap();
        typed.put_expiring_at(&"at".into(), &6, T0 + 2_000).unwrap();
        w.clock.advance(2_000);
        assert_eq!(typed.get(&"t".into()).unwrap(), Some(5));
        assert_eq!(typed.get(&"at".into()).unwrap(), None);
    }
    commit(&mut s);
    drop(s);
    // Flushed to RocksDB and read back after a reopen.
    let mut s = w.open(&config);
    assert_eq!(stack(&mut s).get(b"full").unwrap(), Some(vec![7u8; 100]));
    w.clock.advance(1_000);
    assert_eq!(get(&mut s, "t"), None);
}
