//! Simulated power loss under the whole task-storage stack (issue 11, "Power loss"): a task
//! with one store (memory engine, or RocksDB) and its changelog on the embedded log writes,
//! commits, compacts and flushes at random, and at random moments — between operations and
//! inside commits (after the changelog sync, after the checkpoint write) — a crash image of
//! its state directory is taken and reopened:
//!
//! - changelog partitions keep what their fsyncs made durable (the I/O hooks see every
//!   fsync), plus an arbitrary subset of the rest: each unsynced 4 KiB page kept or zeroed,
//!   the length anywhere between the durable and the current one, directory entries created
//!   or removed since the directory's last fsync there or not;
//! - files written atomically (checkpoint, store manifest, `OFFSET`, topic metadata) are
//!   durable when their write returns (temp file, fsync, rename, directory fsync), and
//!   images are taken between such writes, so they are copied as they are; so is RocksDB's
//!   directory (what its page cache holds: RocksDB keeping everything is one outcome of a
//!   power loss; a copy that races its background work and cannot be opened is moved aside
//!   and rebuilt from the changelog, another).
//!
//! Each image, reopened (restore), must hold exactly the state of the last commit whose
//! checkpoint was written, and say so in its checkpoint. `GREGOR_POWER_LOSS_TRIALS` sets the
//! number of images (default 1000, split between the engines).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::backend::{Backend, TopicPartition, TopicRole, TopicSpec};
use gregor::log::{IoHooks, LogDir, NoHooks, TopicConfig};
use gregor::restore::NoProgress;
use gregor::statedir::StateDir;
use gregor::store::config::{EngineKind, StoreConfig};
use gregor::task_storage::{CommitStep, TaskStorage, TaskStorageContext};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "support/crash_image.rs"]
mod crash_image;
const TASK: &str = "job.partition-0";
const STORE: &str = "s";
const CHANGELOG: &str = "s-changelog";
const INPUT: &str = "in";
const KEYS: u64 = 60;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(i: u64) -> Vec<u8> {
    format!("k{:02}", (i * 7) % KEYS).into_bytes()
}

/// Operation `i`: a put of `key(i)` (every 5th a delete), values of varying size so records
/// straddle pages and segments.
fn value(i: u64) -> Option<Vec<u8>> {
    (i % 5 != 4).then(|| format!("v{i}-{}", "x".repeat((i % 97) as usize)).into_bytes())
}

fn model_of(n: u64) -> Model {
    let mut m = Model::new();
    for i in 0..n {
        match value(i) {
            Some(v) => m.insert(key(i), v),
            None => m.remove(&key(i)),
        };
    }
    m
}

/// What the fsyncs under `logs/` made durable: a file's bytes at its last fsync, a
/// directory's entries at its last fsync.
#[derive(Default, Clone)]
struct Durable {
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: BTreeMap<PathBuf, BTreeSet<String>>,
}

struct Recorder {
    state: Mutex<Durable>,
}

impl IoHooks for Recorder {
    fn before_write(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        // A file created anew starts empty: nothing of a deleted namesake belongs to it.
        if !path.exists() {
            s.files.remove(path);
        }
        // A rename of an fsynced temp file over `path` publishes the temp's durable bytes.
        for suffix in [".tmp", ".compacting"] {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(suffix);
            let tmp = PathBuf::from(tmp);
            if tmp.exists()
                && let Some(bytes) = s.files.get(&tmp).cloned()
            {
                s.files.insert(path.to_path_buf(), bytes);
            }
        }
        Ok(())
    }

    fn before_sync(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if path.is_dir() {
            let entries = fs::read_dir(path)?
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            s.dirs.insert(path.to_path_buf(), entries);
        } else {
            s.files.insert(path.to_path_buf(), fs::read(path)?);
        }
        Ok(())
    }
}

/// A directory of the log whose contents power loss may change: a partition directory
/// (under `logs/`, holding segments; RocksDB's WAL files are `.log` files too).
fn is_partition_dir(dir: &Path) -> bool {
    dir.components().any(|c| c.as_os_str() == "logs")
        && fs::read_dir(dir)
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "log"))
}

/// Copies `src` to `dst`, applying power loss to partition directories; true if that lost
/// or zeroed records the files held (more than the newest sync marker).
fn crash_image(src: &Path, dst: &Path, durable: &Durable, rng: &mut StdRng) -> bool {
    fs::create_dir_all(dst).unwrap();
    if is_partition_dir(src) {
        return partition_image(src, dst, durable, rng);
    }
    let mut lost = false;
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            lost |= crash_image(&e.path(), &to, durable, rng);
        } else {
            match fs::copy(e.path(), to) {
                Ok(_) => {}
                // RocksDB deletes obsolete files in the background; a MANIFEST copied with a
                // file missing makes the engine unopenable, which gregor moves aside and
                // rebuilds from the changelog (the state must still be exact).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => panic!("copying {}: {e}", src.display()),
            }
        }
    }
    lost
}

fn partition_image(dir: &Path, out: &Path, durable: &Durable, rng: &mut StdRng) -> bool {
    let entries = durable.dirs.get(dir).cloned().unwrap_or_default();
    let loss = crash_image::dir_image(
        dir,
        out,
        &|n| durable.files.get(&dir.join(n)).cloned(),
        &entries,
        rng,
    );
    // More than a sync marker's worth (the newest marker is never fsynced itself).
    loss.dropped || loss.max_changed > 100
}

fn store_config(engine: EngineKind) -> BTreeMap<String, StoreConfig> {
    BTreeMap::from([(
        STORE.to_string(),
        StoreConfig {
            engine,
            changelog: Some(CHANGELOG.into()),
            cache_max_bytes: 8 * (gregor::store::cached::ENTRY_OVERHEAD + 16),
            ..StoreConfig::default()
        },
    )])
}

fn settings() -> EmbeddedSettings {
    EmbeddedSettings {
        changelog: TopicConfig {
            segment_bytes: 4096,
            ..TopicConfig::compacted()
        },
        ..EmbeddedSettings::default()
    }
}

fn open(root: &Path, hooks: Arc<dyn IoHooks>, engine: EngineKind) -> (StateDir, TaskStorage) {
    let state = StateDir::open(root).unwrap();
    let logs = LogDir::open_with_hooks(root, hooks).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend::with_log_dir(root, logs, settings()));
    backend
        .ensure_topic(&TopicSpec {
            name: CHANGELOG.into(),
            partitions: 1,
            role: TopicRole::Changelog,
        })
        .unwrap();
    let ctx = TaskStorageContext {
        backend,
        state: &state,
        task: TASK,
        changelog_partition: 0,
    };
    let (storage, _) = TaskStorage::open(&ctx, &store_config(engine), &mut NoProgress).unwrap();
    (state, storage)
}

fn commit(storage: &mut TaskStorage, ops: u64) {
    let inputs = BTreeMap::from([(TopicPartition::new(INPUT, 0), ops)]);
    storage.commit(&inputs, Vec::new()).unwrap();
}

/// An image waiting to be checked, with the number of committed operations it must hold
/// (`None`: the commit in flight decides, filled in when it returns).
struct Pending {
    dir: tempfile::TempDir,
    at: &'static str,
    expect: Option<u64>,
    /// Power loss took something the live files held.
    lost: bool,
}

/// Reopens an image; its state and checkpoint must be those of `expect` operations.
fn check_image(p: &Pending, engine: EngineKind) -> String {
    let expect = p.expect.expect("decided");
    let root = p.dir.path().join("state");
    let (_state, mut storage) = open(&root, Arc::new(NoHooks), engine);
    let got_ops = storage
        .checkpoint()
        .and_then(|c| c.input(INPUT, 0))
        .unwrap_or(0);
    assert_eq!(got_ops, expect, "image taken {}: checkpoint", p.at);
    let contents: Model = storage
        .store(STORE)
        .unwrap()
        .stack()
        .all()
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(
        contents,
        model_of(expect),
        "image taken {}: state of {expect} ops",
        p.at
    );
    drop(storage);
    p.at.to_string()
}

fn run(engine: EngineKind, seed: u64, images: u64) -> BTreeMap<String, u64> {
    let shm = Path::new("/dev/shm");
    let tmp_root = if shm.is_dir() { shm } else { Path::new("/tmp") };
    let work = tempfile::tempdir_in(tmp_root).unwrap();
    let root = work.path().join("state");
    let recorder = Arc::new(Recorder {
        state: Mutex::new(Durable::default()),
    });
    let (_state, mut storage) = open(&root, recorder.clone(), engine);
    commit(&mut storage, 0);
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let pending: Arc<Mutex<Vec<Pending>>> = Arc::default();
    let take = {
        let (recorder, rng, pending, root) =
            (recorder.clone(), rng.clone(), pending.clone(), root.clone());
        move |at: &'static str, expect: Option<u64>| {
            let durable = recorder.state.lock().unwrap().clone();
            let dir = tempfile::tempdir_in(tmp_root).unwrap();
            let lost = crash_image(
                &root,
                &dir.path().join("state"),
                &durable,
                &mut rng.lock().unwrap(),
            );
            pending.lock().unwrap().push(Pending {
                dir,
                at,
                expect,
                lost,
            });
        }
    };
    {
        let take = take.clone();
        let rng = rng.clone();
        storage.set_failpoint(Box::new(move |step| {
            if rng.lock().unwrap().gen_bool(0.3) {
                match step {
                    CommitStep::SinkFlushed => take("after the changelog sync", None),
                    _ => take("after the checkpoint write", None),
                }
            }
        }));
    }
    let mut tally = BTreeMap::<String, u64>::new();
    let (mut ops, mut committed) = (0u64, 0u64);
    let mut taken = 0u64;
    while taken < images {
        let r = rng.lock().unwrap().gen_range(0..100);
        match r {
            0..=69 => {
                let stack = storage.store(STORE).unwrap().stack();
                match value(ops) {
                    Some(v) => stack.put(&key(ops), &v).unwrap(),
                    None => stack.delete(&key(ops)).unwrap(),
                }
                ops += 1;
            }
            70..=79 => {
                let before = pending.lock().unwrap().len();
                commit(&mut storage, ops);
                // Images taken inside this commit: before the checkpoint, the previous
                // commit; after it, this one.
                for p in pending.lock().unwrap()[before..].iter_mut() {
                    p.expect = Some(if p.at == "after the changelog sync" {
                        committed
                    } else {
                        ops
                    });
                }
                committed = ops;
                if rng.lock().unwrap().gen_bool(0.3) {
                    storage.clean_changelogs(i64::MAX / 2).unwrap();
                    *tally.entry("compactions".into()).or_default() += 1;
                }
            }
            80..=84 => {
                // The engine flushed on its own, ahead of the checkpoint.
                storage.store(STORE).unwrap().stack().flush().unwrap();
            }
            _ => take("between operations", Some(committed)),
        }
        let ready: Vec<Pending> = {
            let mut p = pending.lock().unwrap();
            let n = p.iter().take_while(|x| x.expect.is_some()).count();
            p.drain(..n).collect()
        };
        for p in ready {
            if p.lost {
                *tally.entry("unsynced bytes lost".into()).or_default() += 1;
            }
            *tally.entry(check_image(&p, engine)).or_default() += 1;
            taken += 1;
        }
    }
    tally
}

fn check(engine: EngineKind, images: u64) {
    let mut total = BTreeMap::<String, u64>::new();
    let mut seed = 0;
    let mut done = 0;
    while done < images {
        let n = (images - done).min(50);
        for (k, v) in run(engine, seed, n) {
            *total.entry(k).or_default() += v;
        }
        done += n;
        seed += 1;
    }
    eprintln!("{engine:?}: {images} power-loss images checked: {total:?}");
    for at in [
        "unsynced bytes lost",
        "compactions",
        "between operations",
        "after the changelog sync",
        "after the checkpoint write",
    ] {
        assert!(total.get(at).copied().unwrap_or(0) > 0, "{at}: {total:?}");
    }
}

fn trials() -> u64 {
    std::env::var("GREGOR_POWER_LOSS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn power_loss_under_task_storage_memory_engine() {
    check(EngineKind::Memory, trials() / 2);
}

#[test]
fn power_loss_under_task_storage_rocksdb() {
    check(EngineKind::Rocksdb, trials() - trials() / 2);
}
