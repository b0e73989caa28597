//! A job file with a value gregor cannot run safely is refused by `gregor run` before anything
//! is created: exit status 2, one line on stderr naming the file, the key and what is allowed.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_gregor");

const JOB: &str = r#"
[job]
name = "counts"
task = "count"
inputs = ["in"]
commit.ms = 100

[stores.counts]
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#;

fn run(state: &Path, job: &Path) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .arg("run")
        .arg(job)
        .arg("--until-end")
        .env("GREGOR_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs the job `text`; asserts exit 2 and one stderr line containing every `needles`.
fn refused(text: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let job = dir.path().join("bad-job.toml");
    std::fs::write(&job, text).unwrap();
    // The input exists, so only the config can stop the job.
    gregor::log::LogDir::open(&state)
        .unwrap()
        .create_topic("in", 1, gregor::log::TopicConfig::default())
        .unwrap();
    let out = run(&state, &job);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}\nstderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err:?}");
    assert!(lines[0].contains("bad-job.toml"), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing in: {err}");
    }
    // Refused before anything was created: no other topic, no task directory.
    let topics: Vec<String> = std::fs::read_dir(state.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(topics, vec!["in"]);
    let tasks = state.join("tasks");
    assert!(
        !tasks.exists() || std::fs::read_dir(&tasks).unwrap().next().is_none(),
        "a task directory was created"
    );
}

#[test]
fn a_job_writing_into_its_own_input_is_refused() {
    refused(
        &JOB.replace("commit.ms = 100", "commit.ms = 100\noutputs = [\"in\"]"),
        &["job.outputs", "\"in\"", "input"],
    );
}

#[test]
fn a_changelog_that_is_an_input_is_refused() {
    refused(
        &JOB.replace("changelog = \"counts-changelog\"", "changelog = \"in\""),
        &["stores.counts.changelog", "\"in\"", "input"],
    );
}

#[test]
fn out_of_range_numbers_are_refused_naming_key_and_range() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "commit.ms = 100",
            "commit.ms = 9223372036854775000",
            &["job.commit.ms", "86400000"],
        ),
        (
            "commit.ms = 100",
            "commit.ms = 100\nchangelog.segment.bytes = 1",
            &["job.changelog.segment.bytes", "4096"],
        ),
        (
            "value.serde = \"u64\"",
            "value.serde = \"u64\"\nrocksdb.write.buffer.size = 0",
            &["stores.counts.rocksdb.write.buffer.size"],
        ),
        (
            "value.serde = \"u64\"",
            "value.serde = \"u64\"\nrocksdb.bloom.filter.bits = -3",
            &["stores.counts.rocksdb.bloom.filter.bits", "-3"],
        ),
    ];
    for (from, to, needles) in cases {
        refused(&JOB.replace(from, to), needles);
    }
}

/// The coordinator keys: a wrong kind, ZooKeeper for an embedded job, a missing connect
/// string, a bad root, ZooKeeper keys without the coordinator, standbys (not built yet).
#[test]
fn bad_coordinator_settings_are_refused_naming_the_key() {
    // `job_keys` go under [job]; `tail` (tables) after the whole file.
    let with = |job_keys: &str, tail: &str| {
        JOB.replace("commit.ms = 100", &format!("commit.ms = 100\n{job_keys}")) + tail
    };
    let kafka = "system = \"kafka\"\ncoordinator = \"zookeeper\"";
    let broker = "\n[kafka]\nbootstrap.servers = \"127.0.0.1:1\"\n";
    let cases: Vec<(String, &[&str])> = vec![
        (
            with("coordinator = \"yarn\"", ""),
            &["job.coordinator", "yarn", "zookeeper"],
        ),
        (
            with(
                "coordinator = \"zookeeper\"",
                "\n[zookeeper]\nconnect = \"127.0.0.1:2181\"\n",
            ),
            &["job.coordinator", "job.system = \"kafka\""],
        ),
        (with(kafka, broker), &["zookeeper.connect"]),
        (
            with(
                kafka,
                &format!("{broker}[zookeeper]\nconnect = \"h:1\"\nroot = \"gregor/\"\n"),
            ),
            &["zookeeper.root", "gregor/"],
        ),
        (
            with(
                kafka,
                &format!("{broker}[zookeeper]\nconnect = \"h:1\"\nsession.timeout.ms = 10\n"),
            ),
            &["zookeeper.session.timeout.ms", "1000"],
        ),
        (
            with("", "\n[zookeeper]\nconnect = \"127.0.0.1:2181\"\n"),
            &["zookeeper.connect", "only used with job.coordinator"],
        ),
        (
            with("standby.replicas = 1", ""),
            &["job.standby.replicas", "zookeeper"],
        ),
    ];
    for (text, needles) in cases {
        refused(&text, needles);
    }
}

#[test]
fn bad_ttl_settings_are_refused_naming_the_key() {
    let cases: &[(&str, &[&str])] = &[
        ("ttl.ms = 0", &["stores.counts.ttl.ms", "between 1 and"]),
        ("ttl.ms = -5", &["stores.counts.ttl.ms"]),
        ("ttl.ms = \"1h\"", &["stores.counts.ttl.ms"]),
        (
            "ttl.cleanup.entries = 10",
            &["stores.counts.ttl.cleanup.entries", "stores.counts.ttl.ms"],
        ),
        (
            "ttl.ms = 1000\nttl.cleanup.entries = 0",
            &["stores.counts.ttl.cleanup.entries", "between 1 and"],
        ),
        (
            "ttl.ms = 1000\nmax.value.bytes = 67043304",
            &["stores.counts.max.value.bytes", "expiry header", "67043295"],
        ),
        (
            "ttl.ms = 1000\nside.inputs = [\"users\"]",
            &["stores.counts.ttl.ms", "side inputs"],
        ),
    ];
    for (line, needles) in cases {
        refused(
            &JOB.replace(
                "value.serde = \"u64\"",
                &format!("value.serde = \"u64\"\n{line}"),
            ),
            needles,
        );
    }
}
