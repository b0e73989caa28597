//! The Python client's tests (`clients/python`, issue 10): pytest in the virtualenv `.ci/deps`
//! makes (`${GREGOR_PY_VENV:-~/.cache/gregor-python}`, through `.ci/python`), against this
//! build's `gregor serve` (`GREGOR_BIN`). The pytest suite starts the server itself on a free
//! loopback port, tests the sync and async clients against it, unit-tests retries on a fake
//! transport, and runs `mypy --strict` over the package and the tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longer than the suite ever takes (about 10 s): a hung run fails instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(600);

fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("GREGOR_PY_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set (and GREGOR_PY_VENV is not)");
    Path::new(&home).join(".cache/gregor-python")
}

#[test]
fn python_client_tests_pass_against_gregor_serve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let project = root.join("clients/python");
    let venv = venv();
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run .ci/deps (it makes the Python client's virtualenv at {})",
        python.display(),
        venv.display()
    );
    let ok = Command::new(&python)
        .args(["-c", "import httpx, pytest, mypy"])
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "the virtualenv {} lacks the Python client's test dependencies: run .ci/deps",
        venv.display()
    );

    let out = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(&python)
        .args(["-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"])
        .current_dir(&project)
        .env("GREGOR_BIN", env!("CARGO_BIN_EXE_gregor"))
        // The checkout's source first, whatever checkout the venv's editable install names.
        .env("PYTHONPATH", project.join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > DEADLINE {
            // The suite's `gregor serve` dies with it (PR_SET_PDEATHSIG in conftest.py).
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "{}{}",
        std::fs::read_to_string(&stdout).unwrap_or_default(),
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    match status {
        None => panic!("pytest did not finish within {DEADLINE:?}:\n{output}"),
        Some(s) => assert!(s.success(), "pytest clients/python/tests: {s}\n{output}"),
    }
    println!("{output}");
}
