//! The kill -9 loop: `gregor-torture` applies a deterministic workload to a store and is
//! killed with SIGKILL at random moments (during open and restore, mid-batch, mid-commit,
//! mid-segment-roll, mid-checkpoint write). After every kill this process opens the state
//! directory exactly as the workload does — which restores the store — and checks that the
//! store holds exactly the effect of the committed operations: zero lost and zero extra
//! writes, and no changelog records left past the checkpoint.
//!
//! `GREGOR_CRASH_TRIALS` sets the number of RocksDB trials (default 200; e.g. 5000 for a long
//! run); the memory engine runs a quarter as many (at least 10).

#[path = "support/torture_ops.rs"]
mod torture_ops;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gregor::log::LogDir;
use gregor::restore::RestoreKind;
use gregor::statedir::StateDir;
use gregor::store::config::EngineKind;
use rand::{Rng, SeedableRng};

/// The two tests run one after the other: a child forked by one test's thread inherits (until
/// its exec) the other thread's open `LOCK` file, and an flock lives as long as any copy of
/// its descriptor, so a parallel test could make a trial's child see its own state directory
/// "in use" by the test process.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn trials() -> u64 {
    std::env::var("GREGOR_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

#[derive(Debug, Default)]
struct Tally {
    trials: u64,
    /// Killed before the state directory had any checkpoint.
    before_first_checkpoint: u64,
    /// Killed before the trial's process committed anything (the op count did not move).
    before_first_commit: u64,
    up_to_date: u64,
    delta: u64,
    full: u64,
    wiped: u64,
    truncated_records: u64,
    max_ops: u64,
}

/// Runs `trials` kill -9 trials of the workload with `seed` on `engine` in a fresh state
/// directory, checking the restored store after each one.
fn kill9_loop(engine: &str, kind: EngineKind, seed: u64, trials: u64) -> Tally {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let stderr_path = dir.path().join("torture.stderr");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    // The model is advanced incrementally: committed op counts never go backwards.
    let mut model = BTreeMap::new();
    let mut model_ops = 0u64;
    let started = Instant::now();
    for trial in 0..trials {
        // Kill delays: a fifth during process start-up and restore, the rest spread over
        // the first 150 ms of processing (about one commit every few milliseconds).
        let delay = match rng.gen_range(0..10) {
            0 | 1 => rng.gen_range(0..5),
            2..=4 => rng.gen_range(5..40),
            _ => rng.gen_range(40..150),
        };
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gregor-torture"))
            .arg("--state-dir")
            .arg(&state_dir)
            .args([
                "--seed",
                &seed.to_string(),
                "--engine",
                engine,
                "--ops-per-commit-max",
                "100",
            ])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "trial {trial}: gregor-torture exited by itself ({status}) instead of running until killed: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        tally.trials += 1;

        let ops = check_after_kill(
            &state_dir,
            kind,
            seed,
            &mut model,
            &mut model_ops,
            &mut tally,
        )
        .unwrap_or_else(|e| panic!("{engine} trial {trial} (killed after {delay} ms): {e}"));
        tally.max_ops = tally.max_ops.max(ops);
    }
    eprintln!(
        "{engine}: {tally:?} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tally
}

/// Opens the state directory like the workload does and checks the restored store against
/// the model of the committed operations. Returns the committed op count.
fn check_after_kill(
    state_dir: &Path,
    kind: EngineKind,
    seed: u64,
    model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    model_ops: &mut u64,
    tally: &mut Tally,
) -> Result<u64, String> {
    let state = StateDir::open(state_dir).map_err(|e| e.to_string())?;
    let logs = LogDir::open(state.root()).map_err(|e| e.to_string())?;
    let mut opened =
        torture_ops::open(&state, &logs, kind).map_err(|e| format!("open/restore failed: {e}"))?;
    let Some(cp) = opened.checkpoint.clone() else {
        // Killed before its first checkpoint: nothing was processed, nothing may be stored.
        tally.before_first_checkpoint += 1;
        tally.before_first_commit += 1;
        let got = torture_ops::contents(opened.store().stack()).map_err(|e| e.to_string())?;
        if !got.is_empty() {
            return Err(format!(
                "no checkpoint, yet the store holds {} entries",
                got.len()
            ));
        }
        return Ok(0);
    };
    let n = torture_ops::ops_of(&cp);
    if n < *model_ops {
        return Err(format!(
            "the checkpoint went backwards: {n} committed ops after {model_ops}"
        ));
    }
    tally.before_first_commit += u64::from(n == *model_ops);
    for i in *model_ops..n {
        torture_ops::apply(model, &torture_ops::op(seed, i));
    }
    *model_ops = n;
    match opened.stats.kind {
        RestoreKind::UpToDate => tally.up_to_date += 1,
        RestoreKind::Delta => tally.delta += 1,
        RestoreKind::Full => tally.full += 1,
    }
    tally.wiped += u64::from(opened.stats.wiped.is_some());
    tally.truncated_records += opened.stats.truncated;

    let got = torture_ops::contents(opened.store().stack()).map_err(|e| e.to_string())?;
    if got != *model {
        let lost = model
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .count();
        let extra = got.keys().filter(|k| !model.contains_key(*k)).count();
        return Err(format!(
            "store differs from the model of {n} committed ops: {lost} keys lost or wrong, {extra} extra keys (restore: {:?})",
            opened.stats
        ));
    }
    // Spot-check point reads through the whole stack too (cache + engine).
    for (k, v) in model.iter().take(50) {
        let got = opened.store().stack().get(k).map_err(|e| e.to_string())?;
        if got.as_ref() != Some(v) {
            return Err(format!("get({k:?}) disagrees with all()"));
        }
    }
    drop(opened);

    // Restore dropped every changelog record written after the checkpoint.
    let cl_end = cp
        .changelogs
        .get(torture_ops::STORE)
        .copied()
        .ok_or("checkpoint without changelog end")?;
    let (part, _) = logs
        .open_partition(torture_ops::CHANGELOG, 0)
        .map_err(|e| e.to_string())?;
    if part.end_offset() != cl_end {
        return Err(format!(
            "changelog ends at {} after restore, checkpoint says {cl_end}",
            part.end_offset()
        ));
    }
    Ok(n)
}

/// RocksDB engine (the default): the engine's own crash recovery (WAL off, atomic flush of
/// data + changelog marker) plus changelog truncation and replay.
#[test]
fn kill9_rocksdb_store_equals_committed_ops() {
    let n = trials();
    let started = Instant::now();
    let t = kill9_loop("rocksdb", EngineKind::Rocksdb, 0x5EED_0001, n);
    eprintln!(
        "rocksdb: {n} trials took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(t.trials, n);
    // The loop must have exercised something: commits happened and were checked.
    assert!(t.max_ops > 0, "no trial ever committed an operation: {t:?}");
    assert!(
        t.up_to_date + t.delta + t.full + t.before_first_checkpoint == n,
        "{t:?}"
    );
}

/// Memory engine: every open is a full restore from the changelog.
#[test]
fn kill9_memory_store_equals_committed_ops() {
    let n = (trials() / 4).max(10);
    let t = kill9_loop("memory", EngineKind::Memory, 0x5EED_0002, n);
    assert_eq!(t.trials, n);
    assert!(t.max_ops > 0, "no trial ever committed an operation: {t:?}");
    assert_eq!(
        t.up_to_date + t.delta,
        0,
        "a memory store keeps nothing, so every restore is full: {t:?}"
    );
}

/// A crash inside the commit window — checkpoint written, engine not yet flushed — costs a
/// delta restore of the records since the last engine flush, never a rebuild from scratch,
/// and the store equals the checkpoint (the reason commit flushes engines after the
/// checkpoint; see `TaskStorage::commit`).
#[test]
fn crash_between_checkpoint_and_engine_flush_needs_only_a_delta_restore() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let seed = 77;
    let status = Command::new(env!("CARGO_BIN_EXE_gregor-torture"))
        .arg("--state-dir")
        .arg(dir.path())
        .args([
            "--seed",
            "77",
            "--max-ops",
            "3000",
            "--crash-before-engine-flush",
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "the worker should have aborted inside the commit"
    );
    let state = StateDir::open(dir.path()).unwrap();
    let logs = LogDir::open(state.root()).unwrap();
    let mut opened = torture_ops::open(&state, &logs, EngineKind::Rocksdb).unwrap();
    let ops = torture_ops::ops_of(opened.checkpoint.as_ref().unwrap());
    assert_eq!(
        ops, 3000,
        "the checkpoint of the crashed commit was written"
    );
    assert_eq!(opened.stats.kind, RestoreKind::Delta, "{:?}", opened.stats);
    assert!(opened.stats.wiped.is_none(), "{:?}", opened.stats);
    assert!(opened.stats.records > 0, "{:?}", opened.stats);
    let contents = torture_ops::contents(opened.store().stack()).unwrap();
    assert!(
        contents == torture_ops::model(seed, ops),
        "store differs from the checkpoint"
    );
}
