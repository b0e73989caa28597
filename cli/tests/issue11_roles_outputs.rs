//! Issue 11, with the release `gregor` binary and real processes: a new output on a job with
//! older checkpoints (#1), topic roles across jobs (#3, #4b), `topic produce` into a job's
//! output (#4a), and changed topic settings of existing topics (#7).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;

const BIN: &str = env!("CARGO_BIN_EXE_gregor");

fn gregor_env(state: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn gregor(state: &Path, args: &[&str]) -> Output {
    gregor_env(state, args, &[], None)
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

/// Exit status 2 with one error line; returns it.
fn refused(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err:?}");
    lines[0].to_string()
}

/// Appends `n` messages over `keys` keys to `topic` (created with 2 partitions if missing);
/// returns the per-key counts.
fn produce(state: &Path, topic: &str, n: u64, keys: u64, seed: u64) -> BTreeMap<String, u64> {
    let logs = LogDir::open(state).unwrap();
    let t = match logs.topic(topic) {
        Ok(t) => t,
        Err(_) => logs.create_topic(topic, 2, TopicConfig::default()).unwrap(),
    };
    let mut parts: Vec<_> = (0..2).map(|p| t.open_partition(p).unwrap().0).collect();
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let key = format!("k{}", (i * 7919 + seed) % keys);
        let p = partition_for_key(key.as_bytes(), 2);
        parts[p as usize]
            .append(0, key.as_bytes(), Some(b"x"))
            .unwrap();
        *counts.entry(key).or_insert(0) += 1;
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
    counts
}

fn job(
    dir: &Path,
    file: &str,
    name: &str,
    extra_job: &str,
    changelog: &str,
    tail: &str,
) -> PathBuf {
    let path = dir.join(file);
    let inputs = if extra_job.contains("inputs") {
        ""
    } else {
        "inputs = [\"in\"]"
    };
    std::fs::write(
        &path,
        format!(
            r#"
[job]
name = "{name}"
task = "count"
{inputs}
commit.ms = 3600000
{extra_job}

[stores.counts]
engine = "rocksdb"
key.serde = "string"
value.serde = "u64"
changelog = "{changelog}"
{tail}
"#
        ),
    )
    .unwrap();
    path
}

fn run(state: &Path, job: &Path) -> Output {
    gregor(state, &["run", job.to_str().unwrap(), "--until-end"])
}

/// `topic consume` of `topic`: (key, value) per record.
fn consume(state: &Path, topic: &str) -> Vec<(String, String)> {
    ok(&gregor(state, &["topic", "consume", topic]))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[2].to_string(), f[3].to_string())
        })
        .collect()
}

/// #1: `outputs = ["out"]` added to a job that already has checkpoints; the process dies
/// after the commit's output append and before its checkpoint. The restart must drop the
/// uncommitted output: per key, `out` holds exactly `before+1 ..= before+new`, once each.
/// (Before the fix every message of the first attempt was published twice.)
#[test]
fn a_new_output_on_a_job_with_checkpoints_publishes_no_uncommitted_output() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let before = produce(&state, "in", 300, 20, 0);
    let v1 = job(dir.path(), "v1.toml", "counts", "", "counts-changelog", "");
    ok(&run(&state, &v1));
    let new = produce(&state, "in", 300, 20, 3);
    let v2 = job(
        dir.path(),
        "v2.toml",
        "counts",
        "outputs = [\"out\"]",
        "counts-changelog",
        "",
    );
    let crashed = gregor_env(
        &state,
        &["run", v2.to_str().unwrap(), "--until-end"],
        &[("GREGOR_CRASH_AT", "sink-flushed:1")],
        None,
    );
    assert!(!crashed.status.success(), "{}", text(&crashed));
    // The crash left uncommitted output on disk (what the restart must drop).
    let on_disk: u64 = (0..2)
        .map(|p| {
            let dir = state.join(format!("logs/out/{p}"));
            gregor::log::PartitionReader::open(&dir, 0)
                .unwrap()
                .read(usize::MAX)
                .unwrap()
                .len() as u64
        })
        .sum();
    assert!(on_disk > 0, "the crash should leave output behind");
    ok(&run(&state, &v2));
    let out = consume(&state, "out");
    assert_eq!(out.len(), 300, "one output record per new message: {out:?}");
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (k, v) in out {
        per_key.entry(k).or_default().push(v.parse().unwrap());
    }
    for (k, n) in &new {
        let b = before.get(k).copied().unwrap_or(0);
        let want: Vec<u64> = (b + 1..=b + n).collect();
        assert_eq!(per_key.get(k), Some(&want), "key {k}");
    }
}

/// #3 (a), (b) and #4 (b): a second job taking another job's changelog, input or output in
/// a conflicting role is refused before it touches anything, naming the topic, both jobs
/// and the fix; reading another job's output is fine; `topic roles --release` frees them.
#[test]
fn conflicting_topic_roles_across_jobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    produce(&state, "in", 100, 10, 0);
    produce(&state, "in2", 10, 10, 0);
    let a = job(
        dir.path(),
        "a.toml",
        "a",
        "outputs = [\"out\"]",
        "a-changelog",
        "",
    );
    ok(&run(&state, &a));
    let roles = ok(&gregor(&state, &["topic", "roles"]));
    assert!(
        roles.contains("a\tout\toutput")
            && roles.contains("a\ta-changelog\tchangelog of store counts"),
        "{roles}"
    );
    let changelog_before = consume(&state, "a-changelog").len();
    for (name, extra, changelog, topic, held) in [
        (
            "b1",
            "",
            "a-changelog",
            "a-changelog",
            "the changelog of store `counts` of job `a`",
        ),
        (
            "b2",
            "inputs = [\"in2\"]",
            "in",
            "in",
            "an input of job `a`",
        ),
        ("b3", "", "out", "out", "an output of job `a`"),
        (
            "b4",
            "outputs = [\"out\"]",
            "b4-changelog",
            "out",
            "an output of job `a`",
        ),
    ] {
        let b = job(
            dir.path(),
            &format!("{name}.toml"),
            name,
            extra,
            changelog,
            "",
        );
        let e = refused(&run(&state, &b));
        assert!(
            e.contains(&format!("`{topic}`"))
                && e.contains(&format!("job `{name}`"))
                && e.contains(held)
                && e.contains("gregor topic roles --release a"),
            "{name}: {e}"
        );
    }
    // Nothing of job a's was touched by the refused jobs.
    assert_eq!(consume(&state, "a-changelog").len(), changelog_before);
    // A downstream job reading a's output is fine.
    let down = dir.path().join("down.toml");
    std::fs::write(
        &down,
        "[job]\nname = \"down\"\ntask = \"count\"\ninputs = [\"out\"]\n\n[stores.counts]\nkey.serde = \"string\"\nvalue.serde = \"u64\"\nchangelog = \"down-changelog\"\n",
    )
    .unwrap();
    ok(&run(&state, &down));
    // `job reset` of a job whose changelog is another job's is refused too: it would empty
    // job a's changelog.
    let b1 = dir.path().join("b1.toml");
    let e = refused(&gregor(&state, &["job", "reset", b1.to_str().unwrap()]));
    assert!(e.contains("`a-changelog`") && e.contains("job `a`"), "{e}");
    assert_eq!(consume(&state, "a-changelog").len(), changelog_before);
    // Once a is released, b1 may take its changelog.
    ok(&gregor(&state, &["topic", "roles", "--release", "a"]));
    // a-changelog holds job a's records and b1's task has no checkpoint: refused until b1 is
    // reset (which empties the changelog it takes over).
    let e = text(&run(&state, &b1));
    assert!(
        e.contains("no checkpoint") && e.contains("gregor job reset"),
        "{e}"
    );
    ok(&gregor(&state, &["job", "reset", b1.to_str().unwrap()]));
    ok(&run(&state, &b1));
}

/// #4 (a): `topic produce` into a job's output (or changelog) is refused (nothing written)
/// unless --force; before the fix it moved the committed marker and the job's next start
/// deleted the record.
#[test]
fn topic_produce_into_a_jobs_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    produce(&state, "in", 50, 5, 0);
    let a = job(
        dir.path(),
        "a.toml",
        "a",
        "outputs = [\"out\"]",
        "a-changelog",
        "",
    );
    ok(&run(&state, &a));
    let before = consume(&state, "out").len();
    for topic in ["out", "a-changelog"] {
        let e = refused(&gregor_env(
            &state,
            &["topic", "produce", topic],
            &[],
            Some("x\t1\n"),
        ));
        assert!(
            e.contains(topic)
                && e.contains("of job `a`")
                && e.contains("--force")
                && e.contains("nothing was written"),
            "{e}"
        );
    }
    assert_eq!(consume(&state, "out").len(), before);
    // The input is the place to produce to.
    ok(&gregor_env(
        &state,
        &["topic", "produce", "in"],
        &[],
        Some("x\t1\n"),
    ));
    ok(&gregor_env(
        &state,
        &["topic", "produce", "out", "--force"],
        &[],
        Some("x\t1\n"),
    ));
    assert_eq!(consume(&state, "out").len(), before + 1);
}

/// #7: `changelog.segment.bytes` and `log.fsync` changed for an existing changelog (and
/// fsync for an existing output) are applied: the topic metadata changes and the changelog
/// rolls small segments from then on. Before the fix both were silently ignored.
#[test]
fn changed_topic_settings_apply_to_existing_topics() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    produce(&state, "in", 200, 50, 0);
    let v1 = job(
        dir.path(),
        "v1.toml",
        "counts",
        "outputs = [\"out\"]",
        "counts-changelog",
        "\n[embedded]\nlog.fsync = false\n",
    );
    ok(&run(&state, &v1));
    let logs = LogDir::open(&state).unwrap();
    let cfg = logs.topic("counts-changelog").unwrap().config().clone();
    assert!(!cfg.fsync && cfg.segment_bytes == 128 << 20, "{cfg:?}");
    assert!(!logs.topic("out").unwrap().config().fsync);
    produce(&state, "in", 4000, 2000, 1);
    let v2 = job(
        dir.path(),
        "v2.toml",
        "counts",
        "outputs = [\"out\"]",
        "counts-changelog",
        "\n[embedded]\nlog.fsync = true\nchangelog.segment.bytes = 4096\n",
    );
    ok(&run(&state, &v2));
    let cfg = logs.topic("counts-changelog").unwrap().config().clone();
    assert!(cfg.fsync && cfg.segment_bytes == 4096, "{cfg:?}");
    assert!(logs.topic("out").unwrap().config().fsync);
    for p in 0..2 {
        let segments = std::fs::read_dir(state.join(format!("logs/counts-changelog/{p}")))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert!(segments > 2, "partition {p}: {segments} segments");
    }
    // The counts are still right after the change.
    let third = job(
        dir.path(),
        "v2.toml",
        "counts",
        "outputs = [\"out\"]",
        "counts-changelog",
        "\n[embedded]\nlog.fsync = true\nchangelog.segment.bytes = 4096\n",
    );
    ok(&run(&state, &third));
}

/// `store dump` of every task, summed per key.
fn dump(state: &Path, store: &str) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for l in ok(&gregor(state, &["store", "dump", "--store", store])).lines() {
        let (k, v) = l.split_once('\t').unwrap();
        *sums.entry(k.to_string()).or_insert(0) += v.parse::<u64>().unwrap();
    }
    sums
}

/// #5: `topic compact` of a changelog between a crash (changelog records durable, no
/// checkpoint) and the restart must not compact a committed record away because an
/// uncommitted one shadows it: the restart drops the uncommitted records, and a full restore
/// from the changelog must still bring back every committed count. (Before the fix, keys
/// lost their committed counts.) Also checks what `topic compact` says it kept.
#[test]
fn topic_compact_between_a_crash_and_the_restart_keeps_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Small segments, so the committed records sit in closed segments that compaction
    // rewrites, and the uncommitted ones that shadow them come after.
    let small = "\n[embedded]\nchangelog.segment.bytes = 4096\n";
    let mut want = produce(&state, "in", 4000, 2000, 0);
    let v1 = job(
        dir.path(),
        "v1.toml",
        "counts",
        "",
        "counts-changelog",
        small,
    );
    ok(&run(&state, &v1));
    for (k, n) in produce(&state, "in", 4000, 2000, 5) {
        *want.entry(k).or_insert(0) += n;
    }
    let crashed = gregor_env(
        &state,
        &["run", v1.to_str().unwrap(), "--until-end"],
        &[("GREGOR_CRASH_AT", "sink-flushed:1")],
        None,
    );
    assert!(!crashed.status.success(), "{}", text(&crashed));
    let compacted = ok(&gregor(&state, &["topic", "compact", "counts-changelog"]));
    assert!(
        compacted.contains("committed horizon"),
        "compact says where committed records end: {compacted}"
    );
    // A full restore from the changelog: the stores' local state is gone.
    for p in 0..2 {
        let store =
            gregor::statedir::store_dir_in(&state, &format!("counts.partition-{p}"), "counts");
        std::fs::remove_dir_all(&store).unwrap();
    }
    ok(&run(&state, &v1));
    let got = dump(&state, "counts");
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, n)| got.get(*k) != Some(n))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} keys wrong, e.g. {wrong:?} (got {:?})",
        want.iter().filter(|(k, n)| got.get(*k) != Some(n)).count(),
        wrong.iter().map(|(k, _)| got.get(*k)).collect::<Vec<_>>()
    );
    assert_eq!(got.len(), want.len());
    // The same committed state read from the changelogs up to the checkpoints.
    let mut from_changelog = BTreeMap::new();
    let text = ok(&gregor(
        &state,
        &[
            "store",
            "dump",
            "--job",
            v1.to_str().unwrap(),
            "--store",
            "counts",
        ],
    ));
    for l in text.lines() {
        let (k, v) = l.split_once('\t').unwrap();
        *from_changelog.entry(k.to_string()).or_insert(0) += v.parse::<u64>().unwrap();
    }
    assert_eq!(from_changelog, want, "store dump --job");
}

/// An operator's `store put` between a crash (changelog records durable, no checkpoint) and
/// the restart: it opens the task through the job's own restore (the uncommitted records are
/// dropped), writes on top of the committed state and commits without moving the input
/// offsets, so the restart reprocesses exactly the uncommitted input on top of the put.
#[test]
fn store_put_between_a_crash_and_the_restart_applies_to_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut want = produce(&state, "in", 600, 30, 0);
    let v1 = job(dir.path(), "v1.toml", "counts", "", "counts-changelog", "");
    ok(&run(&state, &v1));
    let second = produce(&state, "in", 600, 30, 9);
    let crashed = gregor_env(
        &state,
        &["run", v1.to_str().unwrap(), "--until-end"],
        &[("GREGOR_CRASH_AT", "sink-flushed:1")],
        None,
    );
    assert!(!crashed.status.success(), "{}", text(&crashed));
    let key = "k3";
    let task = format!("counts.partition-{}", partition_for_key(key.as_bytes(), 2));
    ok(&gregor(
        &state,
        &[
            "store", "put", "--task", &task, "--store", "counts", key, "1000",
        ],
    ));
    ok(&run(&state, &v1));
    for (k, n) in second {
        *want.entry(k).or_insert(0) += n;
    }
    let got = dump(&state, "counts");
    let n_second = {
        let mut counts = BTreeMap::new();
        for i in 0..600u64 {
            *counts
                .entry(format!("k{}", (i * 7919 + 9) % 30))
                .or_insert(0u64) += 1;
        }
        counts.get(key).copied().unwrap_or(0)
    };
    assert_eq!(
        got.get(key),
        Some(&(1000 + n_second)),
        "the put, then the uncommitted input"
    );
    for (k, n) in &want {
        if k != key {
            assert_eq!(got.get(k), Some(n), "key {k}");
        }
    }
}
