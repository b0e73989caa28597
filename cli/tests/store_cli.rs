//! The `gregor store` round trip (issue 2), through the real binary: put/get/delete, range
//! with --from/--to/--prefix, dump, JSON lines, numeric serdes, the error contract (one line
//! on stderr, exit 2), the state directory lock, and a restore from the changelog after the
//! store directory was deleted.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn gregor(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gregor"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs and asserts exit status 0; returns stdout.
fn ok(state: &Path, args: &[&str]) -> String {
    let o = gregor(state, args);
    assert_eq!(o.status.code(), Some(0), "gregor {args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Runs and asserts the error contract: exit 2, nothing on stdout, exactly one line on
/// stderr. Returns that line.
fn fails(state: &Path, args: &[&str]) -> String {
    let o = gregor(state, args);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "gregor {args:?} should fail with 2: {err}"
    );
    assert_eq!(stdout(&o), "", "gregor {args:?}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    err
}

fn at<'a>(verb: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["store", verb, "--task", "t", "--store", "s"];
    v.extend_from_slice(rest);
    v
}

/// put, get, get of a missing key, delete, and the ordered views (range, prefix, dump, JSON).
#[test]
fn put_get_delete_range_dump_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (k, v) in [
        ("b", "2"),
        ("a", "1"),
        ("c/x", "3"),
        ("c/y", "4"),
        ("d", "five words here"),
    ] {
        ok(d, &at("put", &[k, v]));
    }
    assert_eq!(ok(d, &at("get", &["a"])), "1\n");
    assert_eq!(ok(d, &at("get", &["d"])), "five words here\n");

    // A missing key: exit 1, nothing on stdout, a message naming the key on stderr.
    let o = gregor(d, &at("get", &["nope"]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains("nope") && stderr(&o).contains("not found"),
        "{}",
        stderr(&o)
    );

    // Overwrite and delete.
    ok(d, &at("put", &["a", "one"]));
    assert_eq!(ok(d, &at("get", &["a"])), "one\n");
    ok(d, &at("delete", &["b"]));
    assert_eq!(gregor(d, &at("get", &["b"])).status.code(), Some(1));

    assert_eq!(
        ok(d, &at("range", &[])),
        "a\tone\nc/x\t3\nc/y\t4\nd\tfive words here\n"
    );
    assert_eq!(
        ok(d, &at("range", &["--from", "b", "--to", "d"])),
        "c/x\t3\nc/y\t4\n"
    );
    assert_eq!(
        ok(d, &at("range", &["--from", "c/y"])),
        "c/y\t4\nd\tfive words here\n"
    );
    assert_eq!(ok(d, &at("range", &["--prefix", "c/"])), "c/x\t3\nc/y\t4\n");
    assert_eq!(
        ok(d, &at("range", &["--from", "d", "--to", "a"])),
        "",
        "from >= to is empty"
    );
    assert_eq!(
        ok(d, &["store", "dump", "--store", "s"]),
        "a\tone\nc/x\t3\nc/y\t4\nd\tfive words here\n"
    );
    assert_eq!(
        ok(d, &at("range", &["--prefix", "c/", "--json"])),
        "{\"key\":\"c/x\",\"value\":\"3\"}\n{\"key\":\"c/y\",\"value\":\"4\"}\n"
    );
    let dump = ok(
        d,
        &["store", "dump", "--task", "t", "--store", "s", "--json"],
    );
    let lines: Vec<serde_json::Value> = dump
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[3],
        serde_json::json!({"key": "d", "value": "five words here"})
    );
}

/// dump without --task merges every task's store in key order.
#[test]
fn dump_merges_tasks_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (t, k) in [
        ("partition-0", "b"),
        ("partition-1", "a"),
        ("partition-0", "d"),
        ("partition-1", "c"),
    ] {
        ok(d, &["store", "put", "--task", t, "--store", "s", k, t]);
    }
    assert_eq!(
        ok(d, &["store", "dump", "--store", "s"]),
        "a\tpartition-1\nb\tpartition-0\nc\tpartition-1\nd\tpartition-0\n"
    );
}

/// u64 keys and values print in decimal and range in numeric (not text) order.
#[test]
fn u64_serde_store_ranges_in_numeric_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let serdes = ["--key-serde", "u64", "--value-serde", "u64"];
    for (k, v) in [
        ("10", "100"),
        ("9", "90"),
        ("100", "1000"),
        ("2", "20"),
        ("18446744073709551615", "1"),
    ] {
        let mut args = at("put", &serdes);
        args.extend([k, v]);
        ok(d, &args);
    }
    assert_eq!(ok(d, &at("get", &["100"])), "1000\n");
    assert_eq!(
        ok(d, &at("range", &[])),
        "2\t20\n9\t90\n10\t100\n100\t1000\n18446744073709551615\t1\n"
    );
    assert_eq!(
        ok(d, &at("range", &["--from", "9", "--to", "100"])),
        "9\t90\n10\t100\n"
    );
    assert_eq!(
        ok(d, &at("range", &["--to", "10", "--json"])),
        "{\"key\":2,\"value\":20}\n{\"key\":9,\"value\":90}\n"
    );
    // A key that is not a u64 is a one-line error, as is a serde that contradicts the store.
    assert!(fails(d, &at("get", &["ten"])).contains("u64"));
    let e = fails(d, &at("get", &["--key-serde", "string", "10"]));
    assert!(e.contains("key.serde"), "{e}");
}

/// Errors are one line on stderr with exit status 2.
#[test]
fn errors_are_one_line_with_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = fails(d, &at("put", &["--engine", "memory", "k", "v"]));
    assert!(e.contains("--changelog"), "{e}");
    let e = fails(d, &at("get", &["k"]));
    assert!(e.contains("no store `s`"), "{e}");
    let e = fails(
        d,
        &[
            "store",
            "get",
            "--task",
            "../x",
            "--store",
            "s",
            "--changelog",
            "cl",
            "k",
        ],
    );
    assert!(e.contains("invalid task name"), "{e}");
    let e = fails(d, &["store", "dump", "--store", "nothing"]);
    assert!(e.contains("nothing"), "{e}");
}

/// While another process holds the state directory, a store command fails with "in use".
#[test]
fn a_second_process_on_the_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("state");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_gregor-torture"))
        .arg("--state-dir")
        .arg(&d)
        .args(["--seed", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The LOCK file holds the owner's pid once the lock is taken.
    let started = Instant::now();
    while std::fs::read_to_string(d.join("LOCK"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        != Some(holder.id())
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gregor-torture never took the lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = fails(&d, &["store", "get", "--task", "t", "--store", "s", "k"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        e.contains("in use") && e.contains(&holder.id().to_string()),
        "{e}"
    );
    // Once the holder is gone the lock is free again (an OS lock is never stale).
    let o = gregor(
        &d,
        &["store", "get", "--task", "t", "--store", "s", "key-00005"],
    );
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
}

/// `store restore` after `rm -rf` of the store directory rebuilds it from its changelog.
#[test]
fn restore_rebuilds_a_deleted_store_from_its_changelog() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cl = ["--changelog", "s-cl"];
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("a", "11")] {
        let mut args = at("put", &cl);
        args.extend([k, v]);
        ok(d, &args);
    }
    ok(d, &at("delete", &["b"]));
    let before = ok(d, &at("range", &[]));
    assert_eq!(before, "a\t11\nc\t3\n");

    std::fs::remove_dir_all(d.join("tasks/t/stores/s")).unwrap();
    assert!(fails(d, &at("get", &["a"])).contains("no store"));
    let o = gregor(d, &at("restore", &cl));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(ok(d, &at("range", &[])), before);
    assert_eq!(ok(d, &at("get", &["a"])), "11\n");
}
