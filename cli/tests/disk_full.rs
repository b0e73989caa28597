//! A real full disk (issue 11, "ENOSPC and short writes"): the count job (RocksDB store with
//! a changelog, an output, commits every 20 ms) runs with its state directory on a small
//! tmpfs that a filler file has left only a few KiB to a few MiB free, so the disk fills
//! part-way through whatever the job writes at that moment: a changelog or output segment
//! (a short write, or a roll), RocksDB's WAL, SSTs or MANIFEST, a checkpoint, `OFFSET`,
//! `COMMITTED`, a store manifest. Each trial checks that
//! - the run ends with a one-line error (exit 2) or completes, never a panic or an abort;
//! - after the filler is removed, the job runs to the end and the state is exact: every
//!   count equals the input's, and the output holds, per key, `1..=count` once each
//!   (exactly-once output for read-committed readers).
//!
//! The tmpfs needs root (`mount -t tmpfs`), which CI and the development machines have. Where
//! mount is not permitted the test FAILS, saying so: it is never skipped silently.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use rand::{Rng, SeedableRng, rngs::StdRng};

const BIN: &str = env!("CARGO_BIN_EXE_gregor");
const PARTITIONS: u32 = 2;
const TMPFS_BYTES: u64 = 48 << 20;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            o.status.success(),
            "this test needs a real full disk: `mount -t tmpfs` failed (run the tests as root, \
             as CI does): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn gregor(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Appends `n` messages over `keys` keys to `in`; adds them to `counts`.
fn produce(state: &Path, n: u64, keys: u64, seed: u64, counts: &mut BTreeMap<String, u64>) {
    let logs = LogDir::open(state).unwrap();
    let t = match logs.topic("in") {
        Ok(t) => t,
        Err(_) => logs
            .create_topic("in", PARTITIONS, TopicConfig::default())
            .unwrap(),
    };
    let mut parts: Vec<_> = (0..PARTITIONS)
        .map(|p| t.open_partition(p).unwrap().0)
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let key = format!("key-{:05}", rng.gen_range(0..keys));
        let p = partition_for_key(key.as_bytes(), PARTITIONS);
        parts[p as usize]
            .append(0, key.as_bytes(), Some(b"x"))
            .unwrap();
        *counts.entry(key).or_insert(0) += 1;
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
}

/// Fills the file system of `dir` completely, then frees `leave` bytes of the filler.
fn fill_leaving(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xA5u8; 1 << 16];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    f.set_len(written.saturating_sub(leave)).unwrap();
    f.sync_all().unwrap();
    path
}

fn dump(state: &Path) -> BTreeMap<String, u64> {
    ok(&gregor(state, &["store", "dump", "--store", "counts"]))
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// Per key, the output values in order.
fn outputs(state: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in ok(&gregor(state, &["topic", "consume", "out"])).lines() {
        let f: Vec<&str> = l.split('\t').collect();
        per_key
            .entry(f[2].to_string())
            .or_default()
            .push(f[3].parse().unwrap());
    }
    per_key
}

/// Which kind of file an error line names.
fn file_kind(err: &str) -> &'static str {
    for (needle, kind) in [
        ("checkpoint", "checkpoint"),
        ("OFFSET", "OFFSET"),
        ("COMMITTED", "COMMITTED"),
        ("store.json", "store manifest"),
        ("MANIFEST", "RocksDB MANIFEST"),
        (".sst", "RocksDB SST"),
        ("rocksdb", "RocksDB"),
        ("RocksDB", "RocksDB"),
        (".log", "segment or WAL"),
        ("roles", "roles"),
    ] {
        if err.contains(needle) {
            return kind;
        }
    }
    "other"
}

#[test]
fn a_full_disk_at_any_write_loses_nothing_committed() {
    let trials: u64 = std::env::var("GREGOR_DISK_FULL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let fs = Tmpfs::mount(TMPFS_BYTES);
    let job = fs.path().join("count.toml");
    std::fs::write(
        &job,
        "[job]\nname = \"counts\"\ntask = \"count\"\ninputs = [\"in\"]\noutputs = [\"out\"]\n\
         commit.ms = 20\n\n[stores.counts]\nengine = \"rocksdb\"\nkey.serde = \"string\"\n\
         value.serde = \"u64\"\nchangelog = \"counts-changelog\"\n\n[embedded]\n\
         changelog.segment.bytes = 65536\n",
    )
    .unwrap();
    let job = job.to_str().unwrap().to_string();
    let mut rng = StdRng::seed_from_u64(11);
    let mut failed_with: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut examples: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut completed = 0;
    for trial in 0..trials {
        let state = fs.path().join(format!("state-{trial}"));
        let mut want = BTreeMap::new();
        produce(&state, 6000, 1500, trial, &mut want);
        // A first run, so later trials also fill the disk in restores, compaction and
        // commits of a job with history.
        if trial % 2 == 1 {
            ok(&gregor(&state, &["run", &job, "--until-end"]));
            produce(&state, 6000, 1500, trial + 1000, &mut want);
        }
        let leave = rng.gen_range(0u64..768 << 10);
        let filler = fill_leaving(fs.path(), leave);
        let full = gregor(&state, &["run", &job, "--until-end"]);
        std::fs::remove_file(&filler).unwrap();
        let stderr = String::from_utf8_lossy(&full.stderr).into_owned();
        assert!(
            !stderr.contains("panicked") && full.status.code().is_some(),
            "trial {trial} (free {leave} bytes): a panic or a signal\n{}",
            text(&full)
        );
        if full.status.success() {
            completed += 1;
        } else {
            assert_eq!(
                full.status.code(),
                Some(2),
                "trial {trial}: an error exits 2\n{}",
                text(&full)
            );
            assert!(
                stderr.contains("No space left") || stderr.contains("space"),
                "trial {trial}: the error says the disk is full\n{}",
                text(&full)
            );
            let kind = file_kind(&stderr);
            *failed_with.entry(kind).or_default() += 1;
            examples
                .entry(kind)
                .or_insert_with(|| stderr.trim().to_string());
        }
        // Space again: the job finishes, exactly once.
        ok(&gregor(&state, &["run", &job, "--until-end"]));
        let got = dump(&state);
        assert_eq!(got, want, "trial {trial} (free {leave} bytes): counts");
        let out = outputs(&state);
        for (k, &n) in &want {
            let expected: Vec<u64> = (1..=n).collect();
            assert_eq!(
                out.get(k),
                Some(&expected),
                "trial {trial} (free {leave} bytes): output of {k}"
            );
        }
        std::fs::remove_dir_all(&state).unwrap();
    }
    eprintln!(
        "{trials} trials: {completed} completed despite the full disk, failures by file: {failed_with:?}"
    );
    for (kind, e) in &examples {
        eprintln!("  {kind}: {e}");
    }
    assert!(
        failed_with.values().sum::<u32>() >= (trials / 3) as u32,
        "too few trials hit the full disk: {failed_with:?}"
    );
}
