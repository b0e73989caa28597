use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{NotReady, Probe, Proc};
use crate::{MOTO_DIR, Workdir, brokers_dir, free_port, loopback, start_timeout};

/// A local S3 server (moto 5.2.5, `moto.server`) on a free loopback port, for tansu's `s3://`
/// storage. Everything is in its memory: it keeps tansu's data across a *broker* kill, not
/// its own. Killed on drop.
pub struct MotoS3 {
    proc: Proc,
    port: u16,
    started_in: Duration,
    dir: Workdir,
}

impl MotoS3 {
    /// Starts moto and waits until it answers HTTP. Panics with its log tail if it does not.
    pub fn start() -> MotoS3 {
        let python = moto_python();
        let dir = Workdir::new("gregor-moto-");
        let log = dir.path().join("moto.log");
        for attempt in 1.. {
            let port = free_port();
            let mut cmd = Command::new(&python);
            cmd.args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(dir.path());
            let mut proc = Proc::spawn("moto S3 server", cmd, &log);
            match proc.wait_ready(start_timeout(), || match http(port, "GET", "/") {
                Ok(200) => Probe::Ready,
                _ => Probe::NotYet,
            }) {
                Ok(started_in) => {
                    return MotoS3 {
                        proc,
                        port,
                        started_in,
                        dir,
                    };
                }
                Err(NotReady::Exited(_)) if attempt < 3 && proc.log_tail(50).contains("in use") => {
                    continue;
                }
                Err(e) => proc.fail(&e.to_string()),
            }
        }
        unreachable!()
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (`PUT /BUCKET`). Panics if the server refuses.
    pub fn create_bucket(&self, bucket: &str) {
        match http(self.port, "PUT", &format!("/{bucket}")) {
            Ok(200) => {}
            other => panic!("testkit: creating S3 bucket {bucket:?} on moto: {other:?}"),
        }
    }

    /// The environment an S3 client (tansu's object_store) needs to use this server.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "gregor".into()),
            ("AWS_SECRET_ACCESS_KEY", "gregor".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// How long start-up took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("moto.log")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// The Python of the moto venv `.ci/brokers` installs. Panics, saying to run it, when missing.
fn moto_python() -> PathBuf {
    let venv = brokers_dir().join(MOTO_DIR);
    if !venv.join(".installed").is_file() {
        panic!(
            "testkit: moto (S3 server) is not installed in {}: run .ci/brokers (or .ci/deps) \
             from the repository root",
            venv.display()
        );
    }
    venv.join("bin/python")
}

/// A bodyless HTTP/1.1 request; returns the status code.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&loopback(port), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(status)
}
