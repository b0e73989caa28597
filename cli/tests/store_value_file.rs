//! `gregor store put --value-file PATH|-` (issue 11): values too large for a command line,
//! read from a file or standard input, kept byte for byte, refused above the store's limit.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn gregor(state: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gregor"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        // The child may refuse before reading everything (a broken pipe here is fine).
        let _ = input.write_all(bytes);
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(state: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let o = gregor(state, args, stdin);
    assert_eq!(
        o.status.code(),
        Some(0),
        "gregor {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn fails(state: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    let o = gregor(state, args, stdin);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "gregor {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 300 KB text value (newlines at the end kept) from a file and from stdin.
#[test]
fn large_text_values_from_a_file_and_stdin_are_kept_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let value: String = (0..30_000).map(|i| format!("{i:09}\n")).collect::<String>() + "\n";
    assert!(value.len() > 200_000);
    let file = d.join("value.txt");
    std::fs::write(&file, &value).unwrap();
    let f = file.to_str().unwrap();
    let state = d.join("state");
    ok(
        &state,
        &[
            "store",
            "put",
            "--task",
            "t",
            "--store",
            "s",
            "big",
            "--value-file",
            f,
        ],
        None,
    );
    let got = ok(
        &state,
        &["store", "get", "--task", "t", "--store", "s", "big"],
        None,
    );
    assert!(got == format!("{value}\n").into_bytes(), "value changed");
    ok(
        &state,
        &[
            "store",
            "put",
            "--task",
            "t",
            "--store",
            "s",
            "piped",
            "--value-file",
            "-",
        ],
        Some(value.as_bytes()),
    );
    let got = ok(
        &state,
        &["store", "get", "--task", "t", "--store", "s", "piped"],
        None,
    );
    assert!(
        got == format!("{value}\n").into_bytes(),
        "value from stdin changed"
    );
}

/// The `bytes` serde takes raw bytes (not UTF-8) exactly; a text serde refuses them.
#[test]
fn raw_bytes_for_the_bytes_serde_and_utf8_for_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let raw: Vec<u8> = (0..250_000u32).map(|i| (i * 7 % 256) as u8).collect();
    assert!(std::str::from_utf8(&raw).is_err());
    let args = [
        "store",
        "put",
        "--task",
        "t",
        "--store",
        "b",
        "--key-serde",
        "string",
        "--value-serde",
        "bytes",
        "k",
        "--value-file",
        "-",
    ];
    ok(&state, &args, Some(&raw));
    let got = ok(
        &state,
        &["store", "get", "--task", "t", "--store", "b", "k"],
        None,
    );
    let want = format!("0x{}\n", hex(&raw));
    assert!(
        String::from_utf8(got).unwrap() == want,
        "the bytes read back differ from the bytes put"
    );
    let e = fails(
        &state,
        &[
            "store",
            "put",
            "--task",
            "t",
            "--store",
            "s",
            "k",
            "--value-file",
            "-",
        ],
        Some(&raw),
    );
    assert!(e.contains("UTF-8") && e.contains("string"), "{e}");
}

/// A value over `max.value.bytes` (1 MiB by default) is refused and nothing is written.
#[test]
fn a_value_over_the_limit_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let big = vec![b'x'; (1 << 20) + 1];
    let e = fails(
        &state,
        &[
            "store",
            "put",
            "--task",
            "t",
            "--store",
            "s",
            "k",
            "--value-file",
            "-",
        ],
        Some(&big),
    );
    assert!(
        e.contains("max.value.bytes") && e.contains("1048576"),
        "{e}"
    );
    let o = gregor(
        &state,
        &["store", "get", "--task", "t", "--store", "s", "k"],
        None,
    );
    assert_ne!(o.status.code(), Some(0), "the refused value was written");
    // Exactly at the limit is fine.
    let at_limit = vec![b'y'; 1 << 20];
    ok(
        &state,
        &[
            "store",
            "put",
            "--task",
            "t",
            "--store",
            "s",
            "k",
            "--value-file",
            "-",
        ],
        Some(&at_limit),
    );
    // VALUE and --value-file together are refused by the argument parser.
    let o = gregor(
        &state,
        &[
            "store",
            "put",
            "--task",
            "t",
            "--store",
            "s",
            "k",
            "v",
            "--value-file",
            "-",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
}
