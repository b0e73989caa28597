//! Snapshot benchmark (issue 13): bringing up a store of 1M keys (16 B random keys, 100 B
//! values) from a snapshot, vs a full restore from its changelog, vs a raw `cp -r` of the
//! same bytes (the snapshot directory).
//!
//! - **snapshot restore (links)**: `snapshot::restore` into an empty state directory (every
//!   file checked against its CRC32C, SST files hard-linked, the rest copied and fsynced),
//!   then `TaskStorage::open` of the task (the store is up to date: nothing replayed).
//! - **snapshot restore (copies)**: the same with every file copied (`--copy`).
//! - **full changelog restore**: the same state without the store's engine:
//!   `TaskStorage::open` rebuilds it from the whole changelog.
//! - **raw copy**: `cp -r` of the snapshot directory (no checks, no fsync).
//!
//! The page cache is warm for all of them (the data was just written; nothing is dropped, so
//! other work on a shared machine is not disturbed). Also timed: creating the snapshot, and a
//! second, incremental snapshot after 1% more writes.
//!
//! `cargo bench --bench snapshot` (1M keys) or `cargo bench --bench snapshot -- --quick`
//! (200k keys).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::restore::{NoProgress, RestoreKind};
use gregor::runtime::JobConfig;
use gregor::snapshot::{self, CreateOptions, RestoreOptions};
use gregor::statedir::StateDir;
use gregor::task_storage::{TaskStorage, TaskStorageContext};
use rand::{Rng, SeedableRng};

const JOB: &str = r#"
[job]
name = "bench"
task = "count"
inputs = ["in"]

[stores.s]
engine = "rocksdb"
key.serde = "bytes"
value.serde = "bytes"
changelog = "s-changelog"
"#;

/// Opens task `t` of `job` in `state` through the production open; returns its storage and
/// the store's restore statistics.
fn open(state: &StateDir, job: &JobConfig) -> (TaskStorage, gregor::restore::RestoreStats) {
    let backend = EmbeddedBackend::open(state.root(), EmbeddedSettings::default()).unwrap();
    let ctx = TaskStorageContext {
        backend: Arc::new(backend),
        state,
        task: "t",
        changelog_partition: 0,
    };
    let (storage, stats) = TaskStorage::open(&ctx, &job.stores, &mut NoProgress).unwrap();
    (storage, stats.into_iter().next().unwrap())
}

/// Puts `n` random keys (seeded by `seed`) and commits.
fn fill(state: &StateDir, job: &JobConfig, n: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut key, mut value) = ([0u8; 16], [0u8; 100]);
    let (mut storage, _) = open(state, job);
    let store = storage.store("s").unwrap();
    for _ in 0..n {
        rng.fill(&mut key);
        rng.fill(&mut value[..]);
        store.stack().put(&key, &value).unwrap();
    }
    storage.commit(&BTreeMap::new(), Vec::new()).unwrap();
    storage.close().unwrap();
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

/// Restores `snap` into the new state directory `target` and opens the task; returns the
/// seconds of the restore alone, of the restore and the open, and the kind of restore the
/// open did.
fn from_snapshot(
    snap: &Path,
    target: &Path,
    job: &JobConfig,
    copy_all: bool,
) -> (f64, f64, RestoreKind) {
    let t = Instant::now();
    let state = StateDir::open_for_restore(target).unwrap();
    snapshot::restore(snap, &state, &RestoreOptions { copy_all }).unwrap();
    let restored = t.elapsed().as_secs_f64();
    let (storage, stats) = open(&state, job);
    storage.close().unwrap();
    (restored, t.elapsed().as_secs_f64(), stats.kind)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u64 = if quick { 200_000 } else { 1_000_000 };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}; mode: {}; {n} keys",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick { "quick" } else { "full" }
    );
    let job = JobConfig::from_toml_str("bench.toml", JOB).unwrap();
    let tmp =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let root = tmp.path();
    let src = root.join("state");
    let state = StateDir::open(&src).unwrap();
    fill(&state, &job, n, 42);
    let tasks = vec!["t".to_string()];

    let snap = root.join("snaps/s1");
    let t = Instant::now();
    let r = snapshot::create(
        &state,
        &job,
        &tasks,
        &snap,
        &CreateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let create_secs = t.elapsed().as_secs_f64();
    let bytes = r.manifest.bytes();
    let mb = bytes as f64 / 1e6;

    // A second snapshot after 1% more writes: shares the unchanged SST files.
    fill(&state, &job, n / 100, 7);
    let snap2 = root.join("snaps/s2");
    let t = Instant::now();
    let r2 = snapshot::create(
        &state,
        &job,
        &tasks,
        &snap2,
        &CreateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let incr_secs = t.elapsed().as_secs_f64();
    drop(state);

    // Raw copy of the same bytes.
    let t = Instant::now();
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(&snap)
        .arg(root.join("raw-copy"))
        .status()
        .unwrap();
    assert!(st.success());
    let cp_secs = t.elapsed().as_secs_f64();
    assert_eq!(dir_bytes(&root.join("raw-copy")), dir_bytes(&snap));

    // The parts: checking every checksum, and the open of an up-to-date store.
    let t = Instant::now();
    snapshot::verify(&snap).unwrap();
    let verify_secs = t.elapsed().as_secs_f64();
    let (link_only, link_secs, link_kind) =
        from_snapshot(&snap, &root.join("restored-links"), &job, false);
    let t = Instant::now();
    let reopened = StateDir::open(&root.join("restored-links")).unwrap();
    open(&reopened, &job).0.close().unwrap();
    drop(reopened);
    let open_secs = t.elapsed().as_secs_f64();
    // A durable raw copy: `cp -r` then `sync` of the copy's files.
    let t = Instant::now();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cp -r {0} {1} && find {1} -type f -exec sync {{}} +",
            snap.display(),
            root.join("raw-copy-synced").display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let cp_sync_secs = t.elapsed().as_secs_f64();
    let (copy_only, copy_secs, copy_kind) =
        from_snapshot(&snap, &root.join("restored-copies"), &job, true);
    assert_eq!(link_kind, RestoreKind::UpToDate);
    assert_eq!(copy_kind, RestoreKind::UpToDate);

    // Full restore from the changelog: the snapshot's files without the engine.
    let full = root.join("full");
    {
        let state = StateDir::open_for_restore(&full).unwrap();
        snapshot::restore(&snap, &state, &RestoreOptions { copy_all: true }).unwrap();
        std::fs::remove_dir_all(state.store_dir("t", "s").join("data")).unwrap();
    }
    let state = StateDir::open(&full).unwrap();
    let t = Instant::now();
    let (storage, stats) = open(&state, &job);
    storage.close().unwrap();
    let full_secs = t.elapsed().as_secs_f64();
    assert_eq!(stats.kind, RestoreKind::Full);
    assert_eq!(stats.records, n);

    println!(
        "snapshot: {} files, {mb:.1} MB; created in {create_secs:.2} s; second snapshot after {} more keys in {incr_secs:.2} s, sharing {} files ({:.1} MB)",
        r.manifest.files.len(),
        n / 100,
        r2.shared_files,
        r2.shared_bytes as f64 / 1e6
    );
    println!("| bring up {n} keys | time | rate | vs raw copy (speed) |");
    println!("|---|---|---|---|");
    println!(
        "| raw `cp -r` of the snapshot | {cp_secs:.3} s | {:.0} MB/s | 1.00 |",
        mb / cp_secs
    );
    println!(
        "| raw `cp -r` + `sync` of each file | {cp_sync_secs:.3} s | {:.0} MB/s | {:.2} |",
        mb / cp_sync_secs,
        cp_secs / cp_sync_secs
    );
    println!(
        "| (part) `snapshot verify`: every CRC32C | {verify_secs:.3} s | {:.0} MB/s | |",
        mb / verify_secs
    );
    println!("| (part) open of the up-to-date store | {open_secs:.3} s | | |");
    println!(
        "| snapshot restore alone, SSTs linked | {link_only:.3} s | {:.0} MB/s | {:.2} (goal >= 0.8) |",
        mb / link_only,
        cp_secs / link_only
    );
    println!(
        "| snapshot restore alone, all copied | {copy_only:.3} s | {:.0} MB/s | {:.2} |",
        mb / copy_only,
        cp_secs / copy_only
    );
    println!(
        "| snapshot restore, SSTs linked, + open | {link_secs:.3} s | {:.0} MB/s | {:.2} (goal >= 0.8) |",
        mb / link_secs,
        cp_secs / link_secs
    );
    println!(
        "| snapshot restore, all copied (`--copy`), + open | {copy_secs:.3} s | {:.0} MB/s | {:.2} (goal >= 0.8) |",
        mb / copy_secs,
        cp_secs / copy_secs
    );
    println!(
        "| full restore from the changelog | {full_secs:.3} s | {:.0} MB/s | {:.2} |",
        mb / full_secs,
        cp_secs / full_secs
    );
}
