//! A `gregor` command piped into `head` exits quietly when the reader goes away, as Unix
//! tools do: no panic, no backtrace, no error line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_gregor");

fn run_ok(state: &Path, args: &[&str], stdin: &[u8]) {
    let mut child = Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Exit 0, or killed by SIGPIPE (what `cat`, `grep` ... do), is quiet; anything else is not.
fn quiet(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.success() || status.signal() == Some(13)
}

/// Runs `args`, reads one line of its stdout, closes the pipe; returns the exit status and
/// stderr.
fn read_one_line_then_close(state: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "error")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut first).unwrap();
    } // stdout closed here, like `head -1` exiting
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), first, err)
}

/// Many records: far more than a pipe buffer holds, so the writer is still writing when the
/// reader goes away.
fn many_lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("key-{i}\t{}\n", "v".repeat(100)))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn topic_consume_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    run_ok(s, &["topic", "create", "t", "--partitions", "2"], b"");
    run_ok(s, &["topic", "produce", "t"], &many_lines(20_000));
    let (status, first, err) = read_one_line_then_close(s, &["topic", "consume", "t"]);
    assert!(first.contains("key-"), "{first:?}");
    assert!(
        !err.contains("panicked") && !err.contains("error") && !err.contains("backtrace"),
        "stderr: {err}"
    );
    assert!(quiet(status), "{status:?}, stderr: {err}");
}

#[test]
fn store_dump_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    // A job fills the store: count 20,000 distinct keys.
    run_ok(s, &["topic", "create", "in", "--partitions", "1"], b"");
    run_ok(s, &["topic", "produce", "in"], &many_lines(20_000));
    let job = s.join("job.toml");
    std::fs::write(
        &job,
        "[job]\nname = \"counts\"\ntask = \"count\"\ninputs = [\"in\"]\n\n\
         [stores.counts]\nkey.serde = \"string\"\nvalue.serde = \"u64\"\n\
         changelog = \"counts-changelog\"\n",
    )
    .unwrap();
    run_ok(s, &["run", job.to_str().unwrap(), "--until-end"], b"");
    let (status, first, err) = read_one_line_then_close(s, &["store", "dump", "--store", "counts"]);
    assert!(first.contains("key-"), "{first:?}");
    assert!(
        !err.contains("panicked") && !err.contains("error") && !err.contains("backtrace"),
        "stderr: {err}"
    );
    assert!(quiet(status), "{status:?}, stderr: {err}");
}
