//! Issue 11: config changes and lost files between runs, through [`TaskStorage`] on both
//! kinds of changelog (the embedded log, which truncates; the in-memory backend without
//! truncation, like Kafka):
//!
//! - #9: a store without a changelog (at-least-once) is flushed before the checkpoint, so a
//!   crash right after the checkpoint never loses what the checkpoint covers;
//! - #2: turning a changelog on for a RocksDB store with data seeds the changelog from the
//!   store, and a crash at every step of the seed loses nothing;
//! - a task with state but no checkpoint is refused, and [`TaskStorage::reset`] starts it
//!   from scratch.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::backend::memory::MemoryBackend;
use gregor::backend::{Backend, TopicPartition};
use gregor::restore::NoProgress;
use gregor::statedir::StateDir;
use gregor::store::config::{EngineKind, Guarantee, StoreConfig};
use gregor::task_storage::{
    self, ChangelogReset, CommitStep, SeedStep, TaskStorage, TaskStorageContext, TaskStoreError,
};

const STORE: &str = "s";
const CHANGELOG: &str = "s-changelog";
const INPUT: &str = "in";

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A state directory and a backend: the embedded log of the directory, or an in-memory
/// backend that cannot truncate.
struct World {
    _dir: tempfile::TempDir,
    state: StateDir,
    backend: Arc<dyn Backend>,
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
        }
    }

    fn try_open(&self, task: &str, config: &StoreConfig) -> Result<TaskStorage, TaskStoreError> {
        let ctx = TaskStorageContext {
            backend: Arc::clone(&self.backend),
            state: &self.state,
            task,
            changelog_partition: 0,
        };
        let configs = BTreeMap::from([(STORE.to_string(), config.clone())]);
        TaskStorage::open(&ctx, &configs, &mut NoProgress).map(|(s, _)| s)
    }

    fn open(&self, task: &str, config: &StoreConfig) -> TaskStorage {
        self.try_open(task, config)
            .unwrap_or_else(|e| panic!("open {task}: {e}"))
    }

    fn reset(&self, task: &str, config: &StoreConfig) -> task_storage::ResetReport {
        let ctx = TaskStorageContext {
            backend: Arc::clone(&self.backend),
            state: &self.state,
            task,
            changelog_partition: 0,
        };
        TaskStorage::reset(&ctx, &BTreeMap::from([(STORE.to_string(), config.clone())])).unwrap()
    }

    fn remove_local(&self, task: &str) {
        std::fs::remove_dir_all(self.state.store_dir(task, STORE)).unwrap();
    }

    fn changelog_end(&self) -> u64 {
        self.backend
            .offsets(&TopicPartition::new(CHANGELOG, 0))
            .unwrap()
            .end
    }
}

fn rocks(changelog: bool) -> StoreConfig {
    StoreConfig {
        engine: EngineKind::Rocksdb,
        changelog: changelog.then(|| CHANGELOG.to_string()),
        guarantee: if changelog {
            Guarantee::ExactlyOnce
        } else {
            Guarantee::AtLeastOnce
        },
        ..StoreConfig::default()
    }
}

fn contents(s: &mut TaskStorage) -> Model {
    s.store(STORE)
        .unwrap()
        .stack()
        .all()
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
}

/// Writes keys `[from, to)` (value = the index) and records them in `model`.
fn write(s: &mut TaskStorage, from: u64, to: u64, model: &mut Model) {
    let stack = s.store(STORE).unwrap().stack();
    for i in from..to {
        let (k, v) = (
            format!("k{i:06}").into_bytes(),
            format!("v{i}").into_bytes(),
        );
        stack.put(&k, &v).unwrap();
        model.insert(k, v);
    }
}

fn commit(s: &mut TaskStorage, next_input: u64) {
    s.commit(
        &BTreeMap::from([(TopicPartition::new(INPUT, 0), next_input)]),
        Vec::new(),
    )
    .unwrap();
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

/// #9: with the WAL off, an at-least-once store's writes live in memtables until flushed; a
/// crash after the checkpoint and before the engine flush used to lose writes the checkpoint
/// covered (the input was not processed again): the store was behind its own checkpoint.
#[test]
fn an_at_least_once_store_keeps_what_its_checkpoint_covers() {
    let w = World::new(true);
    let task = "alo.partition-0";
    let mut model = Model::new();
    let mut s = w.open(task, &rocks(false));
    write(&mut s, 0, 100, &mut model);
    commit(&mut s, 100);
    write(&mut s, 100, 200, &mut model);
    s.set_failpoint(Box::new(|step| {
        if step == CommitStep::CheckpointWritten {
            panic!("crash after the checkpoint");
        }
    }));
    quiet();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| commit(&mut s, 200)));
    assert!(r.is_err(), "the failpoint fired");
    drop(s);
    let mut s = w.open(task, &rocks(false));
    assert_eq!(s.checkpoint().unwrap().input(INPUT, 0), Some(200));
    assert_eq!(
        contents(&mut s).len(),
        200,
        "writes covered by the checkpoint were lost"
    );
    assert_eq!(contents(&mut s), model);
}

/// #2: a changelog turned on for a store with data: the data stays, the changelog holds it,
/// and a full restore from the changelog alone gives it back.
fn seed_keeps_the_data(embedded: bool) {
    let w = World::new(embedded);
    let task = "seed.partition-0";
    let mut model = Model::new();
    let mut s = w.open(task, &rocks(false));
    write(&mut s, 0, 5000, &mut model);
    commit(&mut s, 5000);
    s.close().unwrap();

    let mut s = w.open(task, &rocks(true));
    assert_eq!(
        contents(&mut s),
        model,
        "turning the changelog on lost data"
    );
    assert_eq!(w.changelog_end(), 5000, "every entry is in the changelog");
    assert_eq!(s.checkpoint().unwrap().changelogs.get(STORE), Some(&5000));
    assert_eq!(s.checkpoint().unwrap().input(INPUT, 0), Some(5000));
    write(&mut s, 5000, 5100, &mut model);
    commit(&mut s, 5100);
    s.close().unwrap();

    w.remove_local(task);
    let mut s = w.open(task, &rocks(true));
    assert_eq!(
        contents(&mut s),
        model,
        "full restore from the seeded changelog"
    );
}

#[test]
fn turning_on_a_changelog_seeds_it_embedded() {
    seed_keeps_the_data(true);
}

#[test]
fn turning_on_a_changelog_seeds_it_without_truncation() {
    seed_keeps_the_data(false);
}

/// #2, crash safety: a crash at each step of a seed (a panic inside it, the process's
/// unflushed writes lost), then a reopen: the data is all there, the changelog replays to it.
fn seed_survives_crashes(embedded: bool) {
    quiet();
    for step in [
        SeedStep::MarkerWritten,
        SeedStep::BatchSent,
        SeedStep::Flushed,
        SeedStep::CheckpointWritten,
    ] {
        let w = World::new(embedded);
        let task = format!("crash-{}.partition-0", embedded as u8);
        let mut model = Model::new();
        let mut s = w.open(&task, &rocks(false));
        write(&mut s, 0, 6000, &mut model);
        commit(&mut s, 6000);
        s.close().unwrap();

        // The first seed crashes at `step`; a second seed is interrupted too at the first
        // batch (the partial records of the first must not matter to it).
        for crash_at in [step, SeedStep::BatchSent] {
            task_storage::set_seed_failpoint(
                &task,
                Some(Box::new(move |s| {
                    if s == crash_at {
                        panic!("crash at {s:?}");
                    }
                })),
            );
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| w.try_open(&task, &rocks(true))));
            assert!(r.is_err(), "{step:?}: the failpoint fired");
        }
        task_storage::set_seed_failpoint(&task, None);

        let mut s = w.open(&task, &rocks(true));
        assert_eq!(contents(&mut s), model, "{step:?}: data lost");
        commit(&mut s, 6000);
        s.close().unwrap();
        w.remove_local(&task);
        let mut s = w.open(&task, &rocks(true));
        assert_eq!(
            contents(&mut s),
            model,
            "{step:?}: the changelog does not replay to the data"
        );
        if embedded {
            assert_eq!(w.changelog_end(), 6000, "{step:?}: partial seeds were kept");
        }
    }
}

#[test]
fn a_crash_anywhere_in_a_seed_loses_nothing_embedded() {
    seed_survives_crashes(true);
}

#[test]
fn a_crash_anywhere_in_a_seed_loses_nothing_without_truncation() {
    seed_survives_crashes(false);
}

/// A changelog topic cannot be renamed under a store (its engine marker and checkpoint refer
/// to the old one): refused, naming both.
#[test]
fn a_renamed_changelog_is_refused() {
    let w = World::new(true);
    let task = "rename.partition-0";
    let mut s = w.open(task, &rocks(true));
    write(&mut s, 0, 10, &mut Model::new());
    commit(&mut s, 10);
    s.close().unwrap();
    let renamed = StoreConfig {
        changelog: Some("other-changelog".into()),
        ..rocks(true)
    };
    let e = w
        .try_open(task, &renamed)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains(CHANGELOG) && e.contains("other-changelog"),
        "{e}"
    );
}

/// A task with state but no checkpoint is refused (its inputs would be processed again on
/// top of the state); a reset empties its changelog and local store and lets it start over.
#[test]
fn state_without_a_checkpoint_is_refused_until_reset() {
    let w = World::new(true);
    let task = "lost.partition-0";
    let mut s = w.open(task, &rocks(true));
    write(&mut s, 0, 50, &mut Model::new());
    commit(&mut s, 50);
    s.close().unwrap();
    std::fs::remove_file(w.state.checkpoint_path(task)).unwrap();
    let e = w
        .try_open(task, &rocks(true))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains(task) && e.contains("no checkpoint") && e.contains("gregor job reset"),
        "{e}"
    );
    // Without the local store either, the changelog still shows the state.
    w.remove_local(task);
    let e = w
        .try_open(task, &rocks(true))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("changelog"), "{e}");

    let r = w.reset(task, &rocks(true));
    assert_eq!(r.changelogs[0].2, ChangelogReset::Truncated { records: 50 });
    assert!(r.checkpoint.inputs.is_empty());
    let mut s = w.open(task, &rocks(true));
    assert!(contents(&mut s).is_empty(), "a reset store holds data");
    assert_eq!(s.checkpoint().unwrap().input(INPUT, 0), None);
}

/// A store without a changelog with data and no checkpoint is refused too.
#[test]
fn an_at_least_once_store_without_a_checkpoint_is_refused() {
    let w = World::new(true);
    let task = "alo-lost.partition-0";
    let mut s = w.open(task, &rocks(false));
    write(&mut s, 0, 20, &mut Model::new());
    commit(&mut s, 20);
    s.close().unwrap();
    std::fs::remove_file(w.state.checkpoint_path(task)).unwrap();
    let e = w
        .try_open(task, &rocks(false))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("holds entries"), "{e}");
    w.reset(task, &rocks(false));
    let mut s = w.open(task, &rocks(false));
    assert!(contents(&mut s).is_empty());
}

/// On a changelog that cannot be truncated (Kafka), a reset appends a tombstone per key: the
/// store restored from the whole changelog is empty.
#[test]
fn a_reset_without_truncation_tombstones_every_key() {
    let w = World::new(false);
    let task = "kafka-like.partition-0";
    let mut s = w.open(task, &rocks(true));
    write(&mut s, 0, 30, &mut Model::new());
    commit(&mut s, 30);
    write(&mut s, 0, 30, &mut Model::new());
    commit(&mut s, 30);
    s.close().unwrap();
    let r = w.reset(task, &rocks(true));
    assert_eq!(r.changelogs[0].2, ChangelogReset::Tombstoned { keys: 30 });
    assert_eq!(w.changelog_end(), 90);
    let mut s = w.open(task, &rocks(true));
    assert!(contents(&mut s).is_empty(), "a reset store holds data");
    assert_eq!(s.checkpoint().unwrap().changelogs.get(STORE), Some(&90));
}
