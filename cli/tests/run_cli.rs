//! `gregor run` and `gregor demo` through the binary: job file errors, unknown tasks,
//! missing inputs, SIGTERM (commit and exit 0), and the demo resuming from its checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gregor::checkpoint::Checkpoint;

#[path = "support/count_input.rs"]
mod count_input;

use count_input::produce;

const BIN: &str = env!("CARGO_BIN_EXE_gregor");

fn gregor(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts exit status 2 with exactly one line on stderr; returns that line.
fn fails_with_one_line(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err:?}");
    lines[0].to_string()
}

const GOOD_JOB: &str = count_input::COUNT_JOB;

fn write_job(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `store dump` of every task (a key appears once per task that has it), summed per key.
fn dump(state: &Path, store: &str) -> BTreeMap<String, u64> {
    let o = gregor(state, &["store", "dump", "--store", store]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut sums = BTreeMap::new();
    for l in stdout(&o).lines() {
        let (k, v) = l.split_once('\t').unwrap();
        *sums.entry(k.to_string()).or_insert(0) += v.parse::<u64>().unwrap();
    }
    sums
}

fn checkpointed(state: &Path, topic: &str) -> u64 {
    (0..4)
        .filter_map(|p| {
            Checkpoint::read(&state.join(format!("tasks/counts.partition-{p}/checkpoint"))).unwrap()
        })
        .map(|cp| cp.inputs.get(topic).map_or(0, |m| m.values().sum::<u64>()))
        .sum()
}

/// `processed N messages` from the run summary on stderr.
fn processed(err: &str) -> u64 {
    let line = err
        .lines()
        .find(|l| l.starts_with("processed "))
        .unwrap_or_else(|| panic!("no summary in {err:?}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn job_file_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for (name, text, key) in [
        (
            "unknown-key.toml",
            GOOD_JOB.replace("commit.ms", "comit.ms"),
            "job.comit.ms",
        ),
        (
            "wrong-type.toml",
            GOOD_JOB.replace("commit.ms = 100", "commit.ms = \"100ms\""),
            "job.commit.ms",
        ),
        (
            "store-key.toml",
            GOOD_JOB.replace("key.serde", "key.serd"),
            "stores.counts.key.serd",
        ),
        (
            "missing.toml",
            GOOD_JOB.replace("task = \"count\"", ""),
            "job.task",
        ),
    ] {
        let job = write_job(dir.path(), name, &text);
        let line = fails_with_one_line(&gregor(&state, &["run", job.to_str().unwrap()]));
        assert!(line.contains(key) && line.contains(name), "{name}: {line}");
    }
    // A job file that does not parse as TOML names the file too.
    let job = write_job(dir.path(), "broken.toml", "[job\nname = ");
    let line = fails_with_one_line(&gregor(&state, &["run", job.to_str().unwrap()]));
    assert!(line.contains("broken.toml"), "{line}");
}

#[test]
fn unknown_task_and_missing_input_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let job = write_job(
        dir.path(),
        "nope.toml",
        &GOOD_JOB.replace("task = \"count\"", "task = \"cuont\""),
    );
    let line = fails_with_one_line(&gregor(&state, &["run", job.to_str().unwrap()]));
    assert!(
        line.contains("cuont")
            && line.contains("not a built-in task")
            && line.contains("count, wordcount, pageviews"),
        "{line}"
    );
    let job = write_job(dir.path(), "count.toml", GOOD_JOB);
    let line = fails_with_one_line(&gregor(
        &state,
        &["run", job.to_str().unwrap(), "--until-end"],
    ));
    assert!(
        line.contains("input topic `in` does not exist") && line.contains("gregor topic create in"),
        "{line}"
    );
}

#[test]
fn sigterm_commits_and_exits_0_and_a_restart_finishes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let total = 400_000;
    let expected = produce(&state, total, 5_000);
    let job = write_job(dir.path(), "count.toml", GOOD_JOB);
    // Without --until-end the job runs until it is told to stop.
    let child = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["run", job.to_str().unwrap()])
        .env("GREGOR_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first checkpoint is written after the signal handler is installed and before
    // processing starts; then let it process for a while.
    let started = Instant::now();
    while !state.join("tasks/counts.partition-3/checkpoint").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(150));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("stopping: committing and closing"), "{err}");
    let first = processed(&err);
    assert!(first > 0, "{err}");
    assert_eq!(
        checkpointed(&state, "in"),
        first,
        "the checkpoint holds exactly what the run processed"
    );
    let counted: u64 = dump(&state, "counts").values().sum();
    assert_eq!(
        counted, first,
        "the store holds exactly what the checkpoint says"
    );

    let o = gregor(&state, &["run", job.to_str().unwrap(), "--until-end"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        processed(&stderr(&o)),
        total - first,
        "the restart resumed at the checkpoint"
    );
    assert_eq!(checkpointed(&state, "in"), total);
    assert_eq!(dump(&state, "counts"), expected);
}

#[test]
fn demo_twice_resumes_and_counts_every_view() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let first = gregor(&state, &["demo", "--events", "20000"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!stderr(&first).contains("resuming"), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("(20000 views counted so far"),
        "{}",
        stdout(&first)
    );
    let second = gregor(&state, &["demo", "--events", "20000"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("resuming the page-view job from its checkpoint"),
        "{}",
        stderr(&second)
    );
    assert!(
        stdout(&second).contains("(40000 views counted so far"),
        "{}",
        stdout(&second)
    );
    assert_eq!(dump(&state, "page-views").values().sum::<u64>(), 40_000);
    assert_eq!(dump(&state, "user-views").values().sum::<u64>(), 40_000);
}
