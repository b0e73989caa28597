//! `gregor store get|range|dump --read-only` (issue 11): inspection of a state directory that
//! must not be written (a backup, a read-only or full disk, a running job): no lock taken,
//! no manifest rewrite, no restore, not one byte or timestamp changed; a store behind its
//! checkpoint is shown as it is, with a note.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use gregor::statedir::StateDir;

fn gregor(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gregor"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .output()
        .unwrap()
}

fn ok(state: &Path, args: &[&str]) -> (String, String) {
    let o = gregor(state, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "gregor {args:?}: {err}");
    (String::from_utf8(o.stdout).unwrap(), err)
}

/// Every file and directory under `dir`: its contents (files) and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            let content = if meta.is_dir() {
                todo.push(e.path());
                None
            } else {
                Some(std::fs::read(e.path()).unwrap())
            };
            out.insert(e.path(), (content, meta.modified().unwrap()));
        }
    }
    out
}

fn put(state: &Path, key: &str, value: &str) {
    ok(
        state,
        &[
            "store",
            "put",
            "--task",
            "t",
            "--store",
            "s",
            "--changelog",
            "s-changelog",
            key,
            value,
        ],
    );
}

#[test]
fn read_only_inspection_takes_no_lock_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    put(&state, "a", "1");
    put(&state, "b", "2");
    put(&state, "c", "3");

    // Another process owns the directory (a running job): a normal open is refused.
    let lock = StateDir::open(&state).unwrap();
    let o = gregor(
        &state,
        &["store", "get", "--task", "t", "--store", "s", "a"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use"));

    let before = snapshot(&state);
    // Let any timestamp change be visible.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (out, err) = ok(
        &state,
        &[
            "store",
            "get",
            "--task",
            "t",
            "--store",
            "s",
            "b",
            "--read-only",
        ],
    );
    assert_eq!(out, "2\n");
    assert!(
        !err.contains("note:"),
        "an up-to-date store needs no note: {err}"
    );
    let (out, _) = ok(
        &state,
        &[
            "store",
            "range",
            "--task",
            "t",
            "--store",
            "s",
            "--from",
            "b",
            "--read-only",
        ],
    );
    assert_eq!(out, "b\t2\nc\t3\n");
    let (out, _) = ok(
        &state,
        &["store", "dump", "--store", "s", "--json", "--read-only"],
    );
    assert_eq!(out.lines().count(), 3, "{out}");
    let o = gregor(
        &state,
        &[
            "store",
            "get",
            "--task",
            "t",
            "--store",
            "s",
            "zz",
            "--read-only",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "a missing key exits 1");
    let after = snapshot(&state);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "files were created or removed"
    );
    for (path, b) in &before {
        assert!(&after[path] == b, "{} was written", path.display());
    }
    drop(lock);
}

#[test]
fn a_store_behind_its_checkpoint_is_shown_as_it_is_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    put(&state, "a", "1");
    // A backup of the engine, then more committed writes.
    let data = state.join("tasks/t/stores/s/data");
    let backup = dir.path().join("data-backup");
    copy_dir(&data, &backup);
    put(&state, "b", "2");
    put(&state, "c", "3");
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);

    let before = snapshot(&state);
    let o = gregor(
        &state,
        &[
            "store",
            "get",
            "--task",
            "t",
            "--store",
            "s",
            "c",
            "--read-only",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the engine as on disk lacks `c`: {err}"
    );
    assert!(
        err.contains("note:")
            && err.contains("behind its checkpoint")
            && err.contains("2 committed"),
        "{err}"
    );
    assert!(snapshot(&state) == before, "a read-only get wrote");
    // A normal open restores it.
    let (out, _) = ok(
        &state,
        &["store", "get", "--task", "t", "--store", "s", "c"],
    );
    assert_eq!(out, "3\n");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
