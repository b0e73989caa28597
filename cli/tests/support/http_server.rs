//! A `gregor` process serving HTTP, for the HTTP tests: started on a free port (found from
//! its `http: listening on ADDR` line), a blocking client, killed when dropped.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gregor");

/// A reply: status, body, `Retry-After`.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// A `gregor` process serving HTTP; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    agent: ureq::Agent,
    stderr: Arc<Mutex<String>>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl Server {
    /// Starts `gregor --state-dir STATE ARGS…` and waits for `http: listening on ADDR`.
    pub fn start(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .env("GREGOR_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("http: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no listen line; stderr: {}", log.lock().unwrap()));
        Server {
            child,
            base: format!("http://{addr}"),
            agent: agent(),
            stderr: log,
        }
    }

    fn reply(mut r: ureq::http::Response<ureq::Body>) -> Reply {
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        Reply {
            status: r.status().as_u16(),
            body: r.body_mut().read_to_string().unwrap_or_default(),
            retry_after,
        }
    }

    pub fn try_get(&self, path: &str) -> Result<Reply, ureq::Error> {
        self.agent
            .get(format!("{}{path}", self.base))
            .call()
            .map(Self::reply)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}; stderr: {}", self.log()))
    }

    pub fn try_put(&self, path: &str, body: &[u8]) -> Result<Reply, ureq::Error> {
        self.agent
            .put(format!("{}{path}", self.base))
            .send(body)
            .map(Self::reply)
    }

    pub fn put(&self, path: &str, body: &[u8]) -> Reply {
        self.try_put(path, body)
            .unwrap_or_else(|e| panic!("PUT {path}: {e}; stderr: {}", self.log()))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.agent
            .delete(format!("{}{path}", self.base))
            .call()
            .map(Self::reply)
            .unwrap()
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.agent
            .post(format!("{}{path}", self.base))
            .content_type("application/json")
            .send(body)
            .map(Self::reply)
            .unwrap()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `/health` says ready.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get("/health");
            if r.status == 200 {
                assert_eq!(r.json()["status"], "ready");
                return;
            }
            assert_eq!(r.status, 503, "{}", r.body);
            assert!(
                Instant::now() < deadline,
                "not ready in time; stderr: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL without waiting, so it can be called while other threads use the
    /// server (`kill9` or dropping it reaps the process).
    pub fn sigkill(&self) {
        Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: commit, close, exit 0.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log();
        assert!(status.success(), "{status:?}: {log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a path segment (everything but unreserved characters).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn key_path(store: &str, key: &str) -> String {
    format!("/v1/stores/{store}/keys/{}", enc(key))
}

pub fn b64(v: &[u8]) -> String {
    STANDARD.encode(v)
}
