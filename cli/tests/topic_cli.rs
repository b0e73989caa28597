//! `gregor topic ...` end to end through the binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use gregor::partitioner::partition_for_key;

fn gregor(state: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gregor"))
        .arg("--state-dir")
        .arg(state)
        .arg("topic")
        .args(args)
        .env("GREGOR_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child may stop reading at the first bad line: a broken pipe here is expected.
    let mut input = child.stdin.take().unwrap();
    if let Err(e) = input.write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(state: &Path, args: &[&str], stdin: &str) -> String {
    let out = gregor(state, args, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn create_produce_consume_list_verify() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    ok(
        s,
        &[
            "create",
            "orders",
            "--partitions",
            "4",
            "--segment-bytes",
            "150",
        ],
        "",
    );
    let mut input = String::new();
    for i in 0..40 {
        input.push_str(&format!("key{}\tvalue {i}\n", i % 9));
    }
    input.push_str("key1\t\\N\n");
    input.push_str("tab\\tkey\tline\\nbreak \\xff\n");
    let out = ok(s, &["produce", "orders"], &input);
    assert!(out.contains("wrote 42 records"), "{out}");

    let consumed = ok(s, &["consume", "orders"], "");
    let lines: Vec<Vec<&str>> = consumed.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 42);
    for l in &lines {
        assert_eq!(l.len(), 4, "{l:?}");
        let key = l[2].replace("\\t", "\t");
        let p: u32 = l[0].parse().unwrap();
        assert_eq!(
            p,
            partition_for_key(key.as_bytes(), 4),
            "murmur2 partitioning of {key:?}"
        );
    }
    // Per-partition offsets are contiguous from 0 and keep input order.
    for p in 0..4 {
        let offs: Vec<u64> = lines
            .iter()
            .filter(|l| l[0] == p.to_string())
            .map(|l| l[1].parse().unwrap())
            .collect();
        assert_eq!(offs, (0..offs.len() as u64).collect::<Vec<_>>());
    }
    assert!(
        lines.iter().any(|l| l[2] == "key1" && l[3] == "\\N"),
        "tombstone printed as \\N"
    );
    assert!(
        lines
            .iter()
            .any(|l| l[2] == "tab\\tkey" && l[3] == "line\\nbreak \\xff"),
        "escapes round-trip"
    );

    let list = ok(s, &["list"], "");
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 4);
    let total: u64 = rows.iter().map(|r| r[3].parse::<u64>().unwrap()).sum();
    assert_eq!(total, 42);
    assert!(rows.iter().all(|r| r[0] == "orders" && r[2] == "0"));

    // --partition, --from, --max
    let p0 = ok(
        s,
        &[
            "consume",
            "orders",
            "--partition",
            "1",
            "--from",
            "1",
            "--max",
            "2",
        ],
        "",
    );
    let l: Vec<&str> = p0.lines().collect();
    assert!(l.len() <= 2);
    assert!(l.iter().all(|x| x.starts_with("1\t")));
    if let Some(first) = l.first() {
        assert_eq!(first.split('\t').nth(1), Some("1"));
    }

    let verify = ok(s, &["verify", "orders"], "");
    assert_eq!(
        verify.lines().filter(|l| l.contains("\tok\t")).count(),
        4,
        "{verify}"
    );

    // Forced partition.
    let out = ok(
        s,
        &["produce", "orders", "--partition", "3"],
        "x\t1\ny\t2\n",
    );
    assert!(out.contains("wrote 2 records"));
}

#[test]
fn produce_rejects_line_without_tab_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    ok(s, &["create", "t", "--partitions", "1"], "");
    let out = gregor(s, &["produce", "t"], "a\t1\nb\t2\nno tab here\nc\t3\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && err.contains("line 3"), "{err}");
    assert_eq!(ok(s, &["consume", "t"], ""), "");
}

#[test]
fn errors_for_unknown_topic_and_partition() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    let out = gregor(s, &["consume", "nope"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    ok(s, &["create", "t", "--partitions", "2"], "");
    let out = gregor(s, &["produce", "t", "--partition", "5"], "a\tb\n");
    assert_eq!(out.status.code(), Some(2));
    let out = gregor(s, &["create", "t", "--partitions", "2"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = gregor(s, &["create", "bad/name", "--partitions", "1"], "");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn verify_reports_corruption_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    ok(
        s,
        &["create", "t", "--partitions", "1", "--segment-bytes", "120"],
        "",
    );
    let input: String = (0..30).map(|i| format!("k{i}\tvalue-{i}\n")).collect();
    ok(s, &["produce", "t"], &input);
    let seg = s.join("logs/t/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[12] ^= 0xff; // inside the first record's payload
    std::fs::write(&seg, bytes).unwrap();
    let out = gregor(s, &["verify", "t"], "");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("corrupt"), "{stdout}");
    assert!(stdout.contains("00000000000000000000.log"), "{stdout}");
    assert!(stdout.contains("position 0"), "{stdout}");
}

#[test]
fn compact_keeps_newest_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    ok(
        s,
        &[
            "create",
            "cl",
            "--partitions",
            "1",
            "--compact",
            "--segment-bytes",
            "100",
        ],
        "",
    );
    let input: String = (0..50).map(|i| format!("k{}\tv{i}\n", i % 3)).collect();
    ok(s, &["produce", "cl"], &input);
    let out = ok(s, &["compact", "cl"], "");
    assert!(out.contains("compacted"), "{out}");
    let consumed = ok(s, &["consume", "cl"], "");
    let lines: Vec<&str> = consumed.lines().collect();
    assert!(lines.len() < 50, "{consumed}");
    // The newest value of every key survives with its original offset.
    for (k, i) in [(0, 48), (1, 49), (2, 47)] {
        assert!(
            lines.contains(&format!("0\t{i}\tk{k}\tv{i}").as_str()),
            "{consumed}"
        );
    }
    ok(s, &["verify", "cl"], "");
}

/// Issue #10: a record the log cannot take on line 2 used to fail the append only after line 1
/// was written, so a retry duplicated line 1. Every record is checked before anything is
/// written; on error the topic is unchanged.
#[test]
fn produce_with_an_oversized_record_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    ok(s, &["create", "t", "--partitions", "2"], "");
    ok(s, &["produce", "t"], "before\t0\n");
    let big = "x".repeat(gregor::log::record::MAX_PAYLOAD_LEN);
    let input = format!("a\t1\nb\t{big}\nc\t3\n");
    let out = gregor(s, &["produce", "t"], &input);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Only the record produced before: nothing of the failed input.
    let consumed = ok(s, &["consume", "t"], "");
    assert_eq!(consumed.lines().count(), 1, "{consumed}\n{err}");
    assert!(consumed.contains("\tbefore\t0"), "{consumed}");
    assert!(
        err.contains("line 2") && err.contains("exceeds") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A retry with the input fixed writes each record exactly once.
    ok(s, &["produce", "t"], "a\t1\nb\t2\nc\t3\n");
    let consumed = ok(s, &["consume", "t"], "");
    for k in ["a", "b", "c", "before"] {
        assert_eq!(
            consumed
                .lines()
                .filter(|l| l.split('\t').nth(2) == Some(k))
                .count(),
            1,
            "{k}: {consumed}"
        );
    }
}

/// An oversized key alone (the log's limit counts key + value) is refused the same way.
#[test]
fn produce_checks_key_plus_value_size_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    ok(s, &["create", "t", "--partitions", "1"], "");
    let half = "y".repeat(gregor::log::record::MAX_PAYLOAD_LEN / 2);
    let input = format!("ok\t1\n{half}\t{half}\n");
    let out = gregor(s, &["produce", "t", "--partition", "0"], &input);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(ok(s, &["consume", "t"], ""), "");
}

/// Values too large for a command line (an argument is limited to 128 KiB on Linux) or with
/// any bytes at all: one record from a file or stdin, stored exactly.
#[test]
fn produce_a_value_from_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    ok(s, &["create", "t", "--partitions", "3"], "");
    let value: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = s.join("value.bin");
    std::fs::write(&file, &value).unwrap();
    let out = ok(
        s,
        &[
            "produce",
            "t",
            "--key",
            "big\\tkey",
            "--value-file",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.contains("wrote 1 records"), "{out}");
    // From stdin, into a forced partition.
    let text = "line 1\nline 2\twith a tab\n\\N";
    ok(
        s,
        &[
            "produce",
            "t",
            "--partition",
            "2",
            "--key",
            "doc",
            "--value-file",
            "-",
        ],
        text,
    );
    let topic = gregor::log::LogDir::open(s).unwrap().topic("t").unwrap();
    let p = partition_for_key(b"big\tkey", 3);
    let (mut part, _) = topic.open_partition(p).unwrap();
    let recs = part.read(0, 10).unwrap();
    assert!(
        recs.iter()
            .any(|r| r.key == b"big\tkey" && r.value.as_deref() == Some(&value[..])),
        "the 3 MB value round-trips byte for byte"
    );
    let (mut part, _) = topic.open_partition(2).unwrap();
    let recs = part.read(0, 10).unwrap();
    let doc = recs
        .iter()
        .find(|r| r.key == b"doc")
        .expect("doc in partition 2");
    assert_eq!(doc.value.as_deref(), Some(text.as_bytes()), "no unescaping");

    // Too large for the log: refused before anything is written.
    let huge = s.join("huge.bin");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(gregor::log::record::MAX_PAYLOAD_LEN as u64)
        .unwrap();
    let out = gregor(
        s,
        &[
            "produce",
            "t",
            "--key",
            "k",
            "--value-file",
            huge.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was written") && err.contains("huge.bin"),
        "{err}"
    );
    // --value-file without --key is a usage error.
    let out = gregor(s, &["produce", "t", "--value-file", "-"], "");
    assert_eq!(out.status.code(), Some(2));
    let total: u64 = ok(s, &["list"], "")
        .lines()
        .map(|l| l.split('\t').nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 2);
}

/// Out-of-range numbers for `topic create` are refused by name before anything is created
/// (a retention of 0 or less used to be accepted and deleted every closed segment).
#[test]
fn create_refuses_out_of_range_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    for (flag, value) in [
        ("--partitions", "0"),
        ("--partitions", "4000000000"),
        ("--segment-bytes", "0"),
        ("--segment-bytes", "1099511627776"),
        ("--retention-bytes", "0"),
        ("--retention-ms", "0"),
        ("--retention-ms", "-5"),
    ] {
        let arg = format!("{flag}={value}");
        let mut args = vec!["create", "t", arg.as_str()];
        if flag != "--partitions" {
            args.extend(["--partitions", "1"]);
        }
        let out = gregor(s, &args, "");
        assert_eq!(out.status.code(), Some(2), "{arg} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{arg}: {err}");
        assert_eq!(ok(s, &["list"], ""), "", "{arg}: a topic was created");
    }
    ok(
        s,
        &["create", "t", "--partitions", "1", "--retention-ms", "1"],
        "",
    );
}
