//! The CLI against Kafka (issue 8, part 5), with the release binary and real brokers:
//! `gregor topic create|produce|list|consume --kafka BOOTSTRAP` on tansu (admin API) and on
//! Kafka 0.9.0.1 (`--kafka-config` for its client settings; topics made by Kafka's own tool),
//! and `gregor demo --kafka BOOTSTRAP` on tansu.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use gregor::partitioner::partition_for_key;
use gregor_testkit::{Kafka09, Tansu};

const BIN: &str = env!("CARGO_BIN_EXE_gregor");

fn gregor(state: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// create (where the broker can), produce 300 keyed lines and a tombstone, list, consume.
fn topic_round_trip(kafka: &[&str], create: bool) {
    let dir = tempfile::tempdir().unwrap();
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(kafka.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>, stdin: Option<&str>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        gregor(dir.path(), &refs, stdin)
    };
    if create {
        let out = ok(&run(
            with(&["topic", "create", "clicks", "--partitions", "3"]),
            None,
        ));
        assert!(
            out.contains("created topic clicks with 3 partitions"),
            "{out}"
        );
    }
    let mut input = String::new();
    for i in 0..300 {
        input.push_str(&format!("user-{}\tclick-{i}\n", i % 17));
    }
    input.push_str("user-3\t\\N\n");
    let out = ok(&run(with(&["topic", "produce", "clicks"]), Some(&input)));
    assert!(out.contains("produced 301 records"), "{out}");

    let listed = ok(&run(with(&["topic", "list"]), None));
    let ends: u64 = listed
        .lines()
        .filter(|l| l.starts_with("clicks\t"))
        .map(|l| l.split('\t').nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(ends, 301, "{listed}");

    let consumed = ok(&run(with(&["topic", "consume", "clicks"]), None));
    let lines: Vec<&str> = consumed.lines().collect();
    assert_eq!(lines.len(), 301);
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        let (p, key, value) = (f[0].parse::<u32>().unwrap(), f[2], f[3]);
        assert_eq!(
            partition_for_key(key.as_bytes(), 3),
            p,
            "{key} on partition {p}"
        );
        per_key.entry(key.into()).or_default().push(value.into());
    }
    assert_eq!(per_key.len(), 17);
    assert_eq!(per_key["user-3"].last().map(String::as_str), Some("\\N"));
    assert_eq!(per_key["user-5"][0], "click-5");

    let limited = ok(&run(
        with(&["topic", "consume", "clicks", "--max", "10"]),
        None,
    ));
    assert_eq!(limited.lines().count(), 10);
    let e = run(with(&["topic", "verify", "clicks"]), None);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("embedded log only"));
}

#[test]
fn topic_commands_on_tansu() {
    let tansu = Tansu::start();
    let b = tansu.bootstrap();
    topic_round_trip(&["--kafka", &b], true);
}

#[test]
fn topic_commands_on_kafka09() {
    let mut kafka = Kafka09::start();
    let b = kafka.bootstrap();
    kafka.create_topic("clicks", 3, false);
    let mut args = vec!["--kafka".to_string(), b];
    for (k, v) in Kafka09::client_config() {
        args.push("--kafka-config".into());
        args.push(format!("{k}={v}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    topic_round_trip(&refs, false);
}

#[test]
fn demo_on_kafka() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let b = tansu.bootstrap();
    let out = ok(&gregor(
        dir.path(),
        &["demo", "--events", "5000", "--kafka", &b],
        None,
    ));
    assert!(
        out.contains("Top pages (5000 views counted so far"),
        "{out}"
    );
    // A second run resumes from the checkpoints kept in Kafka.
    let out2 = gregor(
        dir.path(),
        &["demo", "--events", "1000", "--kafka", &b],
        None,
    );
    let text = ok(&out2);
    assert!(
        text.contains("Top pages (6000 views counted so far"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out2.stderr).contains("resuming"),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
}
