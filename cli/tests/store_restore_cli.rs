//! `gregor store restore` over a corrupt changelog: the store directory is gone, so every
//! committed changelog record must be read, and one of them has a flipped byte. The command
//! must fail (exit 2) with a single error line naming the segment file and the byte
//! position, never rebuild a silently wrong store.

use std::path::Path;
use std::process::{Command, Output};

fn gregor(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gregor"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn restore_from_a_changelog_with_a_flipped_byte_fails_naming_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = ["--task", "t", "--store", "s", "--changelog", "s-cl"];
    for i in 0..8 {
        let (k, v) = (
            format!("key-{i}"),
            format!("value number {i} with some padding"),
        );
        let args: Vec<&str> = ["store", "put"]
            .iter()
            .copied()
            .chain(store)
            .chain([k.as_str(), v.as_str()])
            .collect();
        let o = gregor(d, &args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let seg = d.join("logs/s-cl/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x08;
    std::fs::write(&seg, bytes).unwrap();
    std::fs::remove_dir_all(d.join("tasks/t/stores/s")).unwrap();

    let args: Vec<&str> = ["store", "restore"].iter().copied().chain(store).collect();
    let o = gregor(d, &args);
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(o.stdout.is_empty());
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {err}");
    assert_eq!(
        err.lines().last(),
        Some(errors[0]),
        "the error is the last line: {err}"
    );
    let e = errors[0];
    assert!(
        e.contains("00000000000000000000.log")
            && e.contains("byte position")
            && e.contains("corrupt"),
        "{e}"
    );
    // The store was not rebuilt from the records before the damage: a later read fails the
    // same way instead of answering from a partial store.
    let o = gregor(d, &["store", "get", "--task", "t", "--store", "s", "key-0"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
