//! `promtool check metrics` for the tests that check exported metrics (`tests/prometheus.rs`,
//! `cli/tests/serve_http.rs`): Debian package `prometheus`, installed by `.ci/deps`.

use std::io::Write;
use std::process::{Command, Stdio};

/// `promtool check metrics` on `text`: its output, or a loud failure if promtool is missing.
pub fn promtool_check(text: &str) -> (bool, String) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "PROMTOOL IS MISSING ({e}): this test checks the exported metrics with \
             `promtool check metrics`; install it with `apt-get install prometheus` \
             (.ci/deps does). The test fails rather than skip."
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}
