//! `gregor snapshot create|verify|restore` and `gregor run --from-snapshot`, end to end with
//! real processes and files: exact counts after a restore (nothing lost, nothing counted
//! twice), restores that replay only the changelog the snapshot's engines lack, every kind of
//! damaged file named, partial snapshots refused, snapshots never modified by a restore or
//! the restored job, incremental snapshots sharing SST files, and kill -9 of `create`.

#[path = "support/count_input.rs"]
mod count_input;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use count_input::{COUNT_JOB, produce};
use rand::{Rng, SeedableRng};

fn gregor_env(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gregor"));
    c.arg("--state-dir").arg(state).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn gregor(state: &Path, args: &[&str]) -> Output {
    gregor_env(state, args, &[])
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Stdout + stderr of a successful command.
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The job file in `dir`.
fn job_file(dir: &Path) -> PathBuf {
    let p = dir.join("job.toml");
    std::fs::write(&p, COUNT_JOB).unwrap();
    p
}

/// Runs the job to the end of its input; returns stderr.
fn run(state: &Path, job: &Path) -> String {
    ok(&gregor(state, &["run", s(job), "--until-end"]))
}

/// Every count of the job's store, merged over its tasks.
fn counts(state: &Path) -> BTreeMap<String, u64> {
    let out = ok(&gregor(state, &["store", "dump", "--store", "counts"]));
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
        .collect()
}

fn add(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_insert(0) += v;
    }
    out
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// An independent copy (no shared inodes) of the tree at `from` in `to`.
fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in contents(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// The "restore:" summary line of a run: (delta stores, delta records, full stores).
fn restore_line(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("restore: "))
        .unwrap_or_else(|| panic!("no restore line: {stderr}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    // "restore: U stores up to date, D delta (R records replayed), F full (R2 ...)"
    (nums[1], nums[2], nums[3])
}

#[test]
fn a_restored_snapshot_resumes_at_its_commits_exactly_and_the_snapshot_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = job_file(d);
    let a = d.join("a");
    let first = produce(&a, 3000, 40);
    run(&a, &job);
    assert_eq!(counts(&a), first);
    let snap = d.join("snaps/s1");
    let out = ok(&gregor(&a, &["snapshot", "create", s(&job), s(&snap)]));
    assert!(out.contains("job `counts`, 4 tasks"), "{out}");
    let before = contents(&snap);
    assert!(
        before.contains_key(Path::new("MANIFEST"))
            && before.keys().any(|p| p.to_string_lossy().ends_with(".sst"))
            && before.contains_key(Path::new("logs/in/0/00000000000000000000.log"))
            && before.contains_key(Path::new("tasks/counts.partition-0/checkpoint")),
        "{:?}",
        before.keys().collect::<Vec<_>>()
    );
    ok(&gregor(d, &["snapshot", "verify", s(&snap)]));

    // The original goes on.
    let second = produce(&a, 1000, 40);
    run(&a, &job);
    let total = add(&first, &second);
    assert_eq!(counts(&a), total);

    // Restored: the state at the snapshot, nothing to replay, then the same new input.
    let b = d.join("b");
    let out = ok(&gregor(&b, &["snapshot", "restore", s(&snap)]));
    assert!(
        out.contains("first start: up to date") && !out.contains("FULL"),
        "{out}"
    );
    let err = run(&b, &job);
    let (_, _, full) = restore_line(&err);
    assert_eq!(full, 0, "no store is rebuilt from its changelog: {err}");
    assert!(err.contains("processed 0 messages"), "{err}");
    assert_eq!(counts(&b), first, "exactly the snapshot's commits");
    produce(&b, 1000, 40);
    run(&b, &job);
    assert_eq!(counts(&b), total, "no double counting, nothing lost");

    // `run --from-snapshot` on an empty state directory does the same in one step.
    let c = d.join("c");
    let err = ok(&gregor(
        &c,
        &["run", s(&job), "--until-end", "--from-snapshot", s(&snap)],
    ));
    assert_eq!(restore_line(&err).2, 0, "{err}");
    assert_eq!(counts(&c), first);
    // ... and refuses a state directory that holds anything.
    let o = gregor(
        &c,
        &["run", s(&job), "--until-end", "--from-snapshot", s(&snap)],
    );
    assert!(
        !o.status.success() && text(&o).contains("not empty"),
        "{}",
        text(&o)
    );
    let o = gregor(&a, &["snapshot", "restore", s(&snap)]);
    assert!(
        !o.status.success() && text(&o).contains("not empty"),
        "{}",
        text(&o)
    );

    // A restore with --copy shares nothing with the snapshot.
    let e = d.join("e");
    let out = ok(&gregor(&e, &["snapshot", "restore", "--copy", s(&snap)]));
    assert!(out.contains(", 0 hard-linked"), "{out}");
    run(&e, &job);
    assert_eq!(counts(&e), first);

    // Neither the restores nor the restored jobs changed a byte of the snapshot.
    assert_eq!(contents(&snap), before, "the snapshot changed");
    ok(&gregor(d, &["snapshot", "verify", s(&snap)]));
}

#[test]
fn a_snapshot_of_a_crashed_job_needs_only_a_delta_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = job_file(d);
    let a = d.join("a");
    let first = produce(&a, 4000, 50);
    // Commits 1-4 are the tasks' first (empty) commits; the 6th stops the process after its
    // checkpoint and before its engine flush: that task's engine is behind its checkpoint.
    let crashed = gregor_env(
        &a,
        &["run", s(&job), "--until-end"],
        &[("GREGOR_CRASH_AT", "checkpoint-written:6")],
    );
    assert!(!crashed.status.success(), "{}", text(&crashed));
    let snap = d.join("s");
    let out = ok(&gregor(&a, &["snapshot", "create", s(&job), s(&snap)]));
    let behind = out.lines().any(|l| {
        let nums: Vec<u64> = l
            .rsplit(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .map(|w| w.parse().unwrap())
            .collect();
        l.contains("engine at changelog offset") && nums.len() >= 2 && nums[1] < nums[0]
    });
    assert!(behind, "one engine is behind its checkpoint: {out}");
    let b = d.join("b");
    let out = ok(&gregor(&b, &["snapshot", "restore", s(&snap)]));
    assert!(
        out.contains("delta restore of") && !out.contains("FULL"),
        "{out}"
    );
    let err = run(&b, &job);
    let (delta, records, full) = restore_line(&err);
    assert!(delta >= 1 && records > 0 && full == 0, "{err}");
    assert_eq!(counts(&b), first, "every message counted once");
    // The original, restarted, agrees.
    run(&a, &job);
    assert_eq!(counts(&a), first);
}

/// Snapshot files of each kind, by a part of their relative path.
const KINDS: &[&str] = &[
    "tasks/counts.partition-0/checkpoint",
    "tasks/counts.partition-0/stores/counts/store.json",
    "tasks/counts.partition-0/stores/counts/OFFSET",
    ".sst",
    "stores/counts/data/MANIFEST-",
    "stores/counts/data/CURRENT",
    "stores/counts/data/OPTIONS-",
    "logs/in/1/00000000000000000000.log",
    "logs/counts-changelog/topic.meta",
    "roles",
];

#[test]
fn damaged_and_partial_snapshots_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = job_file(d);
    let a = d.join("a");
    produce(&a, 2000, 30);
    run(&a, &job);
    let snap = d.join("s");
    ok(&gregor(&a, &["snapshot", "create", s(&job), s(&snap)]));
    let files = contents(&snap);
    let mut trial = 0;
    let mut check = |what: &str, damage: &dyn Fn(&Path) -> PathBuf| {
        trial += 1;
        let copy = d.join(format!("damaged-{trial}"));
        copy_tree(&snap, &copy);
        let named = damage(&copy);
        let name = named.to_string_lossy().into_owned();
        let o = gregor(d, &["snapshot", "verify", s(&copy)]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains(&name), "{what}: verify names {name}: {err}");
        let target = d.join(format!("restored-{trial}"));
        let o = gregor(&target, &["snapshot", "restore", s(&copy)]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains(&name), "{what}: restore names {name}: {err}");
        let left: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["LOCK"], "{what}: nothing restored");
        std::fs::remove_dir_all(&copy).unwrap();
    };
    for kind in KINDS {
        let (rel, bytes) = files
            .iter()
            .find(|(p, b)| p.to_string_lossy().contains(kind) && !b.is_empty())
            .unwrap_or_else(|| panic!("no {kind} in the snapshot"));
        let rel = rel.clone();
        let len = bytes.len();
        check(&format!("a flipped byte in {kind}"), &|copy| {
            let p = copy.join(&rel);
            let mut b = std::fs::read(&p).unwrap();
            b[len / 2] ^= 0x20;
            std::fs::write(&p, b).unwrap();
            rel.clone()
        });
        check(&format!("{kind} missing"), &|copy| {
            std::fs::remove_file(copy.join(&rel)).unwrap();
            rel.clone()
        });
    }
    check("a flipped byte in the MANIFEST", &|copy| {
        let p = copy.join("MANIFEST");
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len() - 10;
        b[n] ^= 0x01;
        std::fs::write(&p, b).unwrap();
        PathBuf::from("MANIFEST")
    });
    // Partial: no MANIFEST.
    check("no MANIFEST", &|copy| {
        std::fs::remove_file(copy.join("MANIFEST")).unwrap();
        PathBuf::from("no MANIFEST")
    });
    // A partial snapshot is never overwritten by a new create either.
    let partial = d.join("partial");
    copy_tree(&snap, &partial);
    std::fs::remove_file(partial.join("MANIFEST")).unwrap();
    let o = gregor(&a, &["snapshot", "create", s(&job), s(&partial)]);
    assert!(
        !o.status.success() && text(&o).contains("not empty"),
        "{}",
        text(&o)
    );
    // The undamaged snapshot still restores.
    let b = d.join("b");
    ok(&gregor(&b, &["snapshot", "restore", s(&snap)]));
}

/// SST files of the snapshot in `dir`: relative path -> inode.
fn ssts(dir: &Path) -> BTreeMap<PathBuf, u64> {
    contents(dir)
        .keys()
        .filter(|p| p.to_string_lossy().ends_with(".sst"))
        .map(|p| (p.clone(), std::fs::metadata(dir.join(p)).unwrap().ino()))
        .collect()
}

/// Runs the incremental scenario with snapshots under `snaps`; returns (SST files of the
/// second snapshot, how many of them are the first's files).
fn incremental(d: &Path, snaps: &Path) -> (usize, usize) {
    let job = job_file(d);
    let a = d.join("a");
    let first = produce(&a, 20_000, 5000);
    run(&a, &job);
    let s1 = snaps.join("s1");
    ok(&gregor(&a, &["snapshot", "create", s(&job), s(&s1)]));
    let second = produce(&a, 200, 5000);
    run(&a, &job);
    let s2 = snaps.join("s2");
    let out = ok(&gregor(&a, &["snapshot", "create", s(&job), s(&s2)]));
    assert!(out.contains("shared with"), "{out}");
    let (one, two) = (ssts(&s1), ssts(&s2));
    let inodes: BTreeSet<u64> = one.values().copied().collect();
    let shared = two.values().filter(|i| inodes.contains(i)).count();
    // Both restore correctly.
    for (snap, want) in [(&s1, first.clone()), (&s2, add(&first, &second))] {
        ok(&gregor(d, &["snapshot", "verify", s(snap)]));
        let target = d.join(format!("r-{}", snap.file_name().unwrap().to_string_lossy()));
        ok(&gregor(&target, &["snapshot", "restore", s(snap)]));
        run(&target, &job);
        assert_eq!(counts(&target), want);
    }
    (two.len(), shared)
}

#[test]
fn a_second_snapshot_shares_most_sst_files_with_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (total, shared) = incremental(dir.path(), &dir.path().join("snaps"));
    assert!(
        total > 0 && shared * 2 > total,
        "{shared} of {total} shared"
    );
    eprintln!("same file system: {shared} of {total} SST files shared");
}

#[test]
fn snapshots_on_another_file_system_are_copies_and_still_share_sst_files() {
    let shm = Path::new("/dev/shm");
    let tmp_dev = std::fs::metadata(std::env::temp_dir()).unwrap().dev();
    if !shm.is_dir() || std::fs::metadata(shm).unwrap().dev() == tmp_dev {
        eprintln!("skipped: no /dev/shm on another file system");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snaps = tempfile::tempdir_in(shm).unwrap();
    let (total, shared) = incremental(dir.path(), snaps.path());
    assert!(
        total > 0 && shared * 2 > total,
        "{shared} of {total} shared"
    );
    eprintln!("another file system: {shared} of {total} SST files shared");
}

#[test]
fn kill_9_of_create_leaves_no_snapshot_or_a_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = job_file(d);
    let a = d.join("a");
    let want = produce(&a, 3000, 100);
    run(&a, &job);
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let (mut valid, mut partial) = (0, 0);
    // How long an uninterrupted create takes with a 4 ms pause after each file; kills are
    // spread over 1.5 times that, so some land after the end.
    let started = std::time::Instant::now();
    let full = d.join("snaps/full");
    ok(&gregor_env(
        &a,
        &["snapshot", "create", s(&job), s(&full), "--no-base"],
        &[("GREGOR_SNAPSHOT_FILE_DELAY_MS", "4")],
    ));
    let span = started.elapsed().as_millis() as u64 * 3 / 2;
    for trial in 0..16 {
        let snap = d.join(format!("snaps/k{trial}"));
        let delay = rng.gen_range(0..span);
        let mut child = Command::new(env!("CARGO_BIN_EXE_gregor"))
            .arg("--state-dir")
            .arg(&a)
            .args(["snapshot", "create", s(&job), s(&snap), "--no-base"])
            .env("GREGOR_SNAPSHOT_FILE_DELAY_MS", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let o = gregor(d, &["snapshot", "verify", s(&snap)]);
        if o.status.success() {
            valid += 1;
            let target = d.join(format!("r{trial}"));
            ok(&gregor(&target, &["snapshot", "restore", s(&snap)]));
            run(&target, &job);
            assert_eq!(counts(&target), want, "trial {trial} ({status:?})");
        } else {
            partial += 1;
            assert_eq!(o.status.code(), Some(1), "{}", text(&o));
            assert!(
                !snap.join("MANIFEST").exists() && text(&o).contains("no MANIFEST"),
                "trial {trial}: a snapshot without a valid MANIFEST: {}",
                text(&o)
            );
            let o = gregor(
                &d.join(format!("r{trial}")),
                &["snapshot", "restore", s(&snap)],
            );
            assert!(!o.status.success(), "{}", text(&o));
        }
    }
    eprintln!("kill -9 of create: {valid} valid snapshots, {partial} partial ones refused");
    assert!(partial > 0, "no kill landed inside a create");
    assert!(valid > 0, "no create finished before its kill");
    // The killed creates left the job's own state intact.
    run(&a, &job);
    assert_eq!(counts(&a), want);
}
