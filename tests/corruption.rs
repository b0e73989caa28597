//! Durability the hard way, on real files: damaged changelogs, injected I/O failures,
//! corrupt small files, and the restore paths they lead to. Every test ends with either the
//! store equal to its checkpoint or a clear error naming the damaged file — never a silently
//! wrong store.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::checkpoint::Checkpoint;
use gregor::log::{IoHooks, LogDir, TopicConfig};
use gregor::restore::{NoProgress, RestoreKind, RestoreStats};
use gregor::statedir::StateDir;
use gregor::store::KeyValueStore;
use gregor::store::StoreError;
use gregor::store::config::StoreConfig;
use gregor::store::stack::{DATA_DIR, MANIFEST_FILE, OFFSET_FILE};
use gregor::task_storage::{TaskStorage, TaskStorageContext, TaskStoreError};

const TASK: &str = "t";
const STORE: &str = "s";
const CHANGELOG: &str = "s-changelog";

type Contents = BTreeMap<Vec<u8>, Vec<u8>>;
/// A named way to damage a changelog segment.
type Damage = (String, DamageFn);
type DamageFn = Box<dyn Fn(&Env, &Path)>;

fn config(cache: usize) -> StoreConfig {
    StoreConfig {
        changelog: Some(CHANGELOG.into()),
        object_cache_size: Some(cache),
        write_batch_size: Some(8),
        ..StoreConfig::default()
    }
}

struct Env {
    _dir: tempfile::TempDir,
    state: StateDir,
    logs: LogDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let logs = LogDir::open(state.root()).unwrap();
        Env {
            _dir: dir,
            state,
            logs,
        }
    }

    /// A fresh state directory whose changelog topic has small segments (several files).
    fn with_small_segments(segment_bytes: u64) -> Env {
        let env = Env::new();
        env.logs
            .create_topic(
                CHANGELOG,
                1,
                TopicConfig {
                    segment_bytes,
                    ..TopicConfig::compacted()
                },
            )
            .unwrap();
        env
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        Checkpoint::read(&self.state.checkpoint_path(TASK)).unwrap()
    }

    /// Opens task `task` with `configs` (restoring its stores) through `logs`.
    fn open_task(
        &self,
        logs: &LogDir,
        task: &str,
        configs: BTreeMap<String, StoreConfig>,
    ) -> Result<(Opened, Vec<RestoreStats>), TaskStoreError> {
        let backend = EmbeddedBackend::with_log_dir(
            self.state.root(),
            logs.clone(),
            EmbeddedSettings::default(),
        );
        let ctx = TaskStorageContext {
            backend: Arc::new(backend),
            state: &self.state,
            task,
            changelog_partition: 0,
        };
        let (storage, stats) = TaskStorage::open(&ctx, &configs, &mut NoProgress)?;
        let store = configs.keys().next().expect("one store").clone();
        Ok((Opened { storage, store }, stats))
    }

    /// Opens the store (restoring it to the checkpoint) through `logs`.
    fn open_with(
        &self,
        logs: &LogDir,
        cache: usize,
    ) -> Result<(Opened, RestoreStats), TaskStoreError> {
        let (opened, stats) = self.open_task(
            logs,
            TASK,
            BTreeMap::from([(STORE.to_string(), config(cache))]),
        )?;
        Ok((
            opened,
            stats
                .into_iter()
                .next()
                .expect("a store with a changelog reports its restore"),
        ))
    }

    fn open(&self) -> Result<(Opened, RestoreStats), TaskStoreError> {
        self.open_with(&self.logs, 16)
    }

    /// Commits through the task's storage (store, then checkpoint, then engine). Returns the
    /// changelog end.
    fn commit(&self, store: &mut Opened) -> u64 {
        store.commit().unwrap()
    }

    fn store_dir(&self) -> PathBuf {
        self.state.store_dir(TASK, STORE)
    }

    fn segments(&self) -> Vec<PathBuf> {
        let dir = self.logs.root().join(CHANGELOG).join("0");
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        v.sort();
        v
    }

    fn changelog_end(&self) -> u64 {
        self.logs
            .open_partition(CHANGELOG, 0)
            .unwrap()
            .0
            .end_offset()
    }
}

/// An open task storage holding one store.
struct Opened {
    storage: TaskStorage,
    store: String,
}

impl Opened {
    fn stack(&mut self) -> &mut dyn KeyValueStore {
        self.storage.store(&self.store).expect("opened").stack()
    }

    /// The production commit; returns the store's changelog end.
    fn commit(&mut self) -> Result<u64, TaskStoreError> {
        let cp = self.storage.commit(&BTreeMap::new(), Vec::new())?;
        Ok(cp.changelogs.get(&self.store).copied().unwrap_or(0))
    }

    /// Flushes the store's engine past the checkpoint (what RocksDB may do on its own) and
    /// returns the changelog end the engine now reflects; no checkpoint is written.
    fn flush_without_checkpoint(&mut self) -> u64 {
        self.stack().flush().unwrap();
        self.storage
            .store(&self.store)
            .unwrap()
            .changelog_end()
            .unwrap()
    }

    fn close(self) -> Result<(), TaskStoreError> {
        self.storage.close()
    }
}

fn contents(store: &mut Opened) -> Contents {
    store
        .stack()
        .all()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Writes `n` entries `key-<base+i>` with values of varied sizes (some deletes).
fn write_some(store: &mut Opened, base: u64, n: u64) {
    for i in base..base + n {
        let k = format!("key-{:04}", i % 300).into_bytes();
        if i % 7 == 3 {
            store.stack().delete(&k).unwrap();
        } else {
            store
                .stack()
                .put(&k, &vec![(i % 251) as u8; (i % 97) as usize])
                .unwrap();
        }
    }
}

/// A store with `n` committed writes; returns its committed contents.
fn committed_store(env: &Env, n: u64) -> Contents {
    let (mut store, _) = env.open().unwrap();
    write_some(&mut store, 0, n);
    env.commit(&mut store);
    let c = contents(&mut store);
    store.close().unwrap();
    c
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Torn tails and garbage after the committed records of the changelog's last segment:
/// reopening cuts exactly the bad bytes (the file is back to its committed length), the
/// changelog ends at the checkpoint and the store equals the checkpoint.
#[test]
fn torn_tail_or_garbage_on_the_changelog_is_cut_and_the_store_equals_its_checkpoint() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    use rand::{Rng, SeedableRng};
    let tails: Vec<(&str, DamageFn)> = vec![
        ("one zero byte", Box::new(|_, p| append(p, &[0]))),
        ("zeros", Box::new(|_, p| append(p, &[0; 4096]))),
        (
            "a header claiming a huge record",
            Box::new(|_, p| append(p, &[0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3, 4])),
        ),
        (
            "the first 20 bytes of the segment again",
            Box::new(|_, p| append(p, &std::fs::read(p).unwrap()[..20])),
        ),
        (
            "half of a real uncommitted record",
            Box::new(|env: &Env, p: &Path| {
                let before = len(p);
                let (mut store, _) = env.open().unwrap();
                store.stack().put(b"uncommitted", &[9; 200]).unwrap();
                store.stack().flush().unwrap(); // reaches the changelog file, no checkpoint
                drop(store);
                let after = len(p);
                assert!(after > before + 100);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(before + (after - before) / 2)
                    .unwrap();
            }),
        ),
    ];
    let mut all: Vec<Damage> = tails.into_iter().map(|(n, f)| (n.to_string(), f)).collect();
    for round in 0..5 {
        let garbage: Vec<u8> = (0..rng.gen_range(1..600)).map(|_| rng.r#gen()).collect();
        all.push((
            format!("random garbage #{round} ({} bytes)", garbage.len()),
            Box::new(move |_, p| append(p, &garbage)),
        ));
    }
    for (name, damage) in all {
        let env = Env::new();
        let expected = committed_store(&env, 150);
        let cp_end = env.checkpoint().unwrap().changelogs[STORE];
        let seg = env.segments().pop().unwrap();
        let committed_len = len(&seg);
        damage(&env, &seg);
        assert_ne!(
            len(&seg),
            committed_len,
            "{name}: the damage changed nothing"
        );

        let (mut store, stats) = env
            .open()
            .unwrap_or_else(|e| panic!("{name}: reopen failed: {e}"));
        assert_eq!(contents(&mut store), expected, "{name}");
        drop(store);
        assert_eq!(
            len(&seg),
            committed_len,
            "{name}: exactly the bad tail is cut ({stats:?})"
        );
        assert_eq!(env.changelog_end(), cp_end, "{name}");
    }
}

/// One flipped byte in the middle of the changelog, in records a full restore must read
/// (the store's data directory was deleted): opening fails with an error naming the
/// segment file and the byte position, whether the damage is in the active (last) segment
/// (found by the open-time scan) or in a closed one (found by the restore's reader).
#[test]
fn flipped_byte_in_committed_changelog_records_is_an_error_naming_file_and_position() {
    for (what, env) in [
        ("active segment", Env::new()),
        ("closed segment", Env::with_small_segments(4096)),
    ] {
        committed_store(&env, 400);
        let segs = env.segments();
        assert!(
            what == "active segment" || segs.len() > 3,
            "{what}: expected several segments, got {segs:?}"
        );
        let seg = segs[0].clone();
        let mut bytes = std::fs::read(&seg).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&seg, bytes).unwrap();
        std::fs::remove_dir_all(env.store_dir().join(DATA_DIR)).unwrap();

        let e = match env.open() {
            Ok((mut s, stats)) => panic!(
                "{what}: opened a store from a corrupt changelog: {stats:?}, {} entries",
                contents(&mut s).len()
            ),
            Err(e) => e.to_string(),
        };
        let file = seg.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            e.contains(&file),
            "{what}: error does not name the segment {file}: {e}"
        );
        assert!(
            e.contains("byte position"),
            "{what}: error does not give the position: {e}"
        );
        assert!(e.contains("corrupt"), "{what}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

/// Fails the first write or fsync of a changelog segment (`*.log`) once armed.
#[derive(Default)]
struct Faulty {
    fail_write: AtomicBool,
    fail_sync: AtomicBool,
}

impl Faulty {
    fn check(flag: &AtomicBool, path: &Path) -> io::Result<()> {
        if path.extension().is_some_and(|e| e == "log") && flag.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected I/O failure"));
        }
        Ok(())
    }
}

impl IoHooks for Faulty {
    fn before_write(&self, path: &Path) -> io::Result<()> {
        Faulty::check(&self.fail_write, path)
    }
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        Faulty::check(&self.fail_sync, path)
    }
}

fn assert_poisoned(r: Result<(), StoreError>, what: &str) {
    match r {
        Err(StoreError::Poisoned { reason, .. }) => {
            assert!(reason.contains("injected"), "{what}: {reason}")
        }
        other => panic!("{what}: expected Poisoned, got {other:?}"),
    }
}

/// A write failure and an fsync failure injected into the changelog partition: the failing
/// call returns the error, every later write is refused (`Poisoned`), and after reopening
/// without the fault the store equals its last successful commit.
#[test]
fn changelog_write_or_fsync_failure_poisons_the_store_and_reopen_restores_the_last_commit() {
    for fault in ["write", "fsync"] {
        let env = Env::new();
        let hooks = Arc::new(Faulty::default());
        let faulty_logs = LogDir::open_with_hooks(env.state.root(), hooks.clone()).unwrap();
        // No cache: every write goes straight to the logged layer.
        let (mut store, _) = env.open_with(&faulty_logs, 0).unwrap();
        write_some(&mut store, 0, 100);
        let cp_end = env.commit(&mut store);
        let expected = contents(&mut store);
        write_some(&mut store, 1000, 20); // uncommitted, must not survive

        match fault {
            "write" => {
                hooks.fail_write.store(true, Ordering::SeqCst);
                let e = store.stack().put(b"failing", b"write").unwrap_err();
                assert!(
                    matches!(e, StoreError::Changelog { .. }) && e.to_string().contains("injected"),
                    "{e}"
                );
            }
            _ => {
                hooks.fail_sync.store(true, Ordering::SeqCst);
                let e = store.commit().unwrap_err().to_string();
                assert!(e.contains("injected") && e.contains("fsync"), "{e}");
            }
        }
        assert_poisoned(store.stack().put(b"later", b"x"), fault);
        assert_poisoned(store.stack().delete(b"key-0001"), fault);
        assert_poisoned(
            store.stack().put_all(vec![(b"a".to_vec(), b"b".to_vec())]),
            fault,
        );
        assert!(
            store.commit().is_err(),
            "{fault}: a poisoned store must not commit"
        );
        drop(store);

        let (mut store, stats) = env.open().unwrap();
        assert_eq!(contents(&mut store), expected, "{fault}: {stats:?}");
        store.stack().put(b"after", b"reopen").unwrap(); // writable again
        drop(store);
        assert_eq!(env.checkpoint().unwrap().changelogs[STORE], cp_end);
    }
}

/// The same failures under the write-back cache: a put may be absorbed by the cache, but the
/// commit that would make it durable fails, and so does every later commit.
#[test]
fn changelog_failure_under_the_cache_fails_every_later_commit() {
    let env = Env::new();
    let hooks = Arc::new(Faulty::default());
    let faulty_logs = LogDir::open_with_hooks(env.state.root(), hooks.clone()).unwrap();
    let (mut store, _) = env.open_with(&faulty_logs, 16).unwrap();
    write_some(&mut store, 0, 50);
    env.commit(&mut store);
    let expected = contents(&mut store);
    store.stack().put(b"cached", b"only").unwrap();
    hooks.fail_sync.store(true, Ordering::SeqCst);
    assert!(store.commit().unwrap_err().to_string().contains("injected"));
    let _ = store.stack().put(b"more", b"writes");
    let e = store.commit().unwrap_err();
    assert!(e.to_string().contains("refuses writes"), "{e}");
    drop(store);
    let (mut store, _) = env.open().unwrap();
    assert_eq!(contents(&mut store), expected);
}

/// A corrupt `OFFSET` file: the local store cannot be trusted, so it is rebuilt by a full
/// restore that yields the checkpointed state (no error). The restore rewrites `OFFSET`, so
/// the next open is up to date.
#[test]
fn corrupt_offset_file_gives_a_full_restore_to_the_checkpoint() {
    let env = Env::new();
    let expected = committed_store(&env, 200);
    let path = env.store_dir().join(OFFSET_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let (mut store, stats) = env.open().unwrap();
    assert_eq!(stats.kind, RestoreKind::Full, "{stats:?}");
    assert!(
        stats
            .wiped
            .as_deref()
            .is_some_and(|w| w.contains(OFFSET_FILE)),
        "the reason names the file: {stats:?}"
    );
    assert_eq!(contents(&mut store), expected);
    drop(store);
    let (mut store, stats) = env.open().unwrap();
    assert_eq!(stats.kind, RestoreKind::UpToDate, "{stats:?}");
    assert_eq!(contents(&mut store), expected);
}

/// A corrupt checkpoint file: a clear error naming the file (the task's input offsets are
/// in it too, so nothing can be restored safely without it).
#[test]
fn corrupt_checkpoint_is_an_error_naming_the_file() {
    let env = Env::new();
    committed_store(&env, 50);
    let path = env.state.checkpoint_path(TASK);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2 + 10;
    bytes[mid] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
    let e = Checkpoint::read(&path).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("corrupt"),
        "{e}"
    );
}

/// A corrupt store manifest (`store.json`): a clear error naming the file (the manifest says
/// how the bytes on disk are encoded, so the store is not opened with a guess).
#[test]
fn corrupt_manifest_is_an_error_naming_the_file() {
    let env = Env::new();
    committed_store(&env, 50);
    let path = env.store_dir().join(MANIFEST_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let e = env
        .open()
        .err()
        .expect("opened a store with a corrupt manifest")
        .to_string();
    assert!(
        e.contains(MANIFEST_FILE) && e.contains("corrupt") && e.contains(&format!("`{STORE}`")),
        "{e}"
    );
}

/// Delta restore: the engine is at its clean commit and the checkpoint is further along the
/// changelog (records appended and checkpointed while the engine did not see them): only
/// those records are replayed, nothing is wiped.
#[test]
fn delta_restore_replays_only_records_after_the_engine_marker() {
    let env = Env::new();
    let mut expected = committed_store(&env, 100);
    let engine_end = env.checkpoint().unwrap().changelogs[STORE];
    let (mut part, _) = env.logs.open_partition(CHANGELOG, 0).unwrap();
    for i in 0..37u32 {
        let k = format!("key-{:04}", i * 3).into_bytes();
        if i % 5 == 0 {
            part.append(0, &k, None).unwrap();
            expected.remove(&k);
        } else {
            part.append(0, &k, Some(format!("delta-{i}").as_bytes()))
                .unwrap();
            expected.insert(k, format!("delta-{i}").into_bytes());
        }
    }
    let end = part.sync().unwrap();
    drop(part);
    assert_eq!(end, engine_end + 37);
    let mut cp = env.checkpoint().unwrap();
    cp.changelogs.insert(STORE.into(), end);
    cp.write(&env.state.checkpoint_path(TASK)).unwrap();

    let (mut store, stats) = env.open().unwrap();
    assert_eq!(stats.kind, RestoreKind::Delta, "{stats:?}");
    assert_eq!(stats.records, 37, "{stats:?}");
    assert_eq!(
        (stats.wiped.as_deref(), stats.truncated),
        (None, 0),
        "{stats:?}"
    );
    assert_eq!(contents(&mut store), expected);
}

/// Engine ahead of the checkpoint: writes flushed into the engine (and its `OFFSET`) after the
/// last checkpoint, then a crash before the checkpoint was written. Reopening rebuilds the
/// store (full restore), drops the uncommitted changelog records, and yields the
/// checkpointed state; the open after that is up to date (no second rebuild).
#[test]
fn engine_ahead_of_checkpoint_gives_a_full_restore_to_the_checkpoint() {
    let env = Env::new();
    let expected = committed_store(&env, 120);
    let cp_end = env.checkpoint().unwrap().changelogs[STORE];
    let (mut store, _) = env.open().unwrap();
    write_some(&mut store, 500, 60);
    // Flushes the engine past the checkpoint; no checkpoint follows.
    let ahead = store.flush_without_checkpoint();
    assert!(ahead > cp_end);
    drop(store);

    let (mut store, stats) = env.open().unwrap();
    assert_eq!(stats.kind, RestoreKind::Full, "{stats:?}");
    assert!(stats.wiped.is_some(), "{stats:?}");
    assert_eq!(stats.truncated, ahead - cp_end, "{stats:?}");
    assert_eq!(contents(&mut store), expected);
    drop(store);
    assert_eq!(env.changelog_end(), cp_end);
    let (mut store, stats) = env.open().unwrap();
    assert_eq!(
        stats.kind,
        RestoreKind::UpToDate,
        "a restored store is not rebuilt again: {stats:?}"
    );
    assert_eq!(contents(&mut store), expected);
}

/// A RocksDB directory that no longer opens (here: a garbage `CURRENT` file) is moved aside
/// to `data.broken` and rebuilt from the changelog when the store has one; without a
/// changelog it holds the only copy of the data, so opening fails and nothing is removed.
#[test]
fn unopenable_engine_is_moved_aside_and_rebuilt_only_when_a_changelog_exists() {
    let env = Env::new();
    let (mut store, _) = env.open().unwrap();
    write_some(&mut store, 0, 500);
    env.commit(&mut store);
    let expected = contents(&mut store);
    store.close().unwrap();
    let store_dir = env.state.store_dir(TASK, STORE);
    std::fs::write(store_dir.join(DATA_DIR).join("CURRENT"), b"garbage\n").unwrap();

    let (mut store, stats) = env.open().unwrap();
    assert_eq!(stats.kind, RestoreKind::Full, "{stats:?}");
    assert!(
        stats
            .wiped
            .as_deref()
            .is_some_and(|r| r.contains("failed to open")),
        "{stats:?}"
    );
    assert_eq!(contents(&mut store), expected);
    assert!(
        store_dir.join("data.broken").join("CURRENT").exists(),
        "the broken engine is kept aside"
    );
    store.close().unwrap();

    // The same damage on a store without a changelog is an error, and the files stay.
    let plain = StoreConfig {
        changelog: None,
        ..config(16)
    };
    let plain_configs = || BTreeMap::from([(STORE.to_string(), plain.clone())]);
    let (mut store, _) = env.open_task(&env.logs, "plain", plain_configs()).unwrap();
    store.stack().put(b"only-copy", b"v").unwrap();
    store.close().unwrap();
    let plain_data = env.state.store_dir("plain", STORE).join(DATA_DIR);
    std::fs::write(plain_data.join("CURRENT"), b"garbage\n").unwrap();
    let err = env
        .open_task(&env.logs, "plain", plain_configs())
        .err()
        .expect("opening must fail");
    assert!(err.to_string().contains(STORE), "{err}");
    assert!(
        plain_data.join("CURRENT").exists()
            && !env
                .state
                .store_dir("plain", STORE)
                .join("data.broken")
                .exists()
    );
}
