//! Real Kafka-protocol brokers for gregor's tests, started and stopped by the tests themselves.
//!
//! - [`ZooKeeper`]: ZooKeeper 3.4.6 (the one Kafka 0.9.0.1 ships and was released with).
//! - [`Kafka09`]: Apache Kafka 0.9.0.1 on a ZooKeeper, with [`Kafka09::kill9`],
//!   [`Kafka09::restart`] (data kept on disk) and topic creation through Kafka's own
//!   `TopicCommand` (0.9 has no admin API).
//! - [`Tansu`]: tansu, a Kafka-protocol broker in Rust: `memory://` storage ([`Tansu::start`])
//!   or `s3://` on its own local S3 server ([`MotoS3`], moto), which keeps its data across a
//!   broker kill ([`Tansu::start_s3`]).
//! - [`NetNs`]: a network namespace joined to the host by a veth pair, to cut one process off
//!   from the servers while it keeps running (a partition, not a crash); servers it must reach
//!   start on the pair's host address ([`Kafka09::start_at`], [`ZooKeeper::start_at`]).
//!
//! Each server runs on a free loopback port in its own temporary directory, with its output in
//! a log file there. Start-up waits until the server answers (a Metadata request for brokers),
//! and a server that does not come up **panics** with the tail of its log: a test never skips
//! silently. Dropping a server kills its whole process group, and every server is also killed
//! by the kernel if the test process dies (`PR_SET_PDEATHSIG`), so no JVM is left behind. When
//! a test panics, the temporary directories (logs, data) are kept and their paths printed; set
//! `GREGOR_TESTKIT_KEEP=1` to keep them always.
//!
//! The distributions are installed by `.ci/brokers` (run by `.ci/deps`) into
//! `$GREGOR_BROKERS_DIR` (default `~/.cache/gregor-brokers`); when they are missing, starting a
//! server panics saying to run it.
//!
//! Environment: `GREGOR_BROKERS_DIR` (where the distributions are), `GREGOR_TESTKIT_KEEP`
//! (keep every server's directory), `GREGOR_TESTKIT_START_SECS` (how long a server may take
//! to come up; default 120), `GREGOR_TANSU_LOG` (tansu's `RUST_LOG`; default `warn`).
//!
//! Start-up times measured here (2 cores, other builds running): ZooKeeper 0.2-0.5 s, Kafka
//! 0.9.0.1 0.6-1.9 s, a Kafka restart after kill -9 about 7 s (6 s of it waiting for ZooKeeper
//! to expire the killed broker's session), tansu 0.1 s, moto 0.4 s.
//!
//! ```no_run
//! use gregor_testkit::{Kafka09, Tansu};
//!
//! let mut kafka = Kafka09::start(); // brings its own ZooKeeper
//! kafka.create_topic("changelog", 4, true); // compacted
//! let bootstrap = kafka.bootstrap(); // "127.0.0.1:PORT"
//! let settings = Kafka09::client_config(); // for librdkafka clients
//! # let _ = (bootstrap, settings);
//! kafka.kill9();
//! kafka.restart(); // same port, same data
//!
//! let tansu = Tansu::start();
//! # let _ = tansu.bootstrap();
//! ```

mod kafka09;
mod netns;
mod process;
mod s3;
mod tansu;
pub mod wire;
mod zookeeper;

pub use kafka09::Kafka09;
pub use netns::NetNs;
pub use process::log_tail;
pub use s3::MotoS3;
pub use tansu::Tansu;
pub use zookeeper::ZooKeeper;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The version directories `.ci/brokers` installs; keep the two in step.
const KAFKA_DIR: &str = "kafka_2.11-0.9.0.1";
const TANSU_DIR: &str = "tansu-0.6.0-510f3e2";
const MOTO_DIR: &str = "moto-5.2.5";

/// Where `.ci/brokers` installs the brokers: `$GREGOR_BROKERS_DIR`, or
/// `$HOME/.cache/gregor-brokers`.
pub fn brokers_dir() -> PathBuf {
    match std::env::var_os("GREGOR_BROKERS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/gregor-brokers")
        }
    }
}

/// The installed Kafka 0.9.0.1 distribution (`bin/`, `libs/`, `config/`). Panics, saying to
/// run `.ci/brokers`, when it is not installed.
pub fn kafka_home() -> PathBuf {
    let home = brokers_dir().join(KAFKA_DIR);
    if !home.join(".installed").is_file() {
        panic!(
            "testkit: Apache Kafka 0.9.0.1 is not installed in {}: run .ci/brokers (or .ci/deps) \
             from the repository root",
            home.display()
        );
    }
    home
}

/// The installed tansu binary. Panics, saying to run `.ci/brokers`, when it is not installed.
pub fn tansu_bin() -> PathBuf {
    let bin = brokers_dir().join(TANSU_DIR).join("tansu");
    if !bin.is_file() {
        panic!(
            "testkit: tansu is not installed at {}: run .ci/brokers (or .ci/deps) from the \
             repository root",
            bin.display()
        );
    }
    bin
}

/// A loopback TCP port that was free a moment ago (the OS picks it). Another process may take
/// it before the server binds it; the servers here retry with a new port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("testkit: cannot bind a loopback port")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// How long a server may take to come up. Generous: a 2-core CI machine may be compiling at the
/// same time. `GREGOR_TESTKIT_START_SECS` overrides it.
fn start_timeout() -> Duration {
    let secs = std::env::var("GREGOR_TESTKIT_START_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// `java` from `$JAVA_HOME`, else from `PATH`.
fn java() -> Command {
    match std::env::var_os("JAVA_HOME") {
        Some(home) if !home.is_empty() => Command::new(Path::new(&home).join("bin/java")),
        _ => Command::new("java"),
    }
}

/// A log4j 1.2 configuration that sends everything at `level` and above to stdout (which the
/// harness sends to the server's log file).
fn write_log4j(dir: &Path, level: &str) -> PathBuf {
    let path = dir.join("log4j.properties");
    let text = format!(
        "log4j.rootLogger={level}, stdout\n\
         log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n\
         log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n\
         log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n\
         log4j.logger.kafka.request.logger=WARN\n\
         log4j.logger.org.I0Itec.zkclient=WARN\n\
         log4j.logger.org.apache.zookeeper=WARN\n"
    );
    std::fs::write(&path, text).expect("testkit: write log4j.properties");
    path
}

/// A temporary directory for one server, removed on drop unless the thread is panicking (a
/// failed test keeps its logs) or `GREGOR_TESTKIT_KEEP` is set.
struct Workdir(Option<tempfile::TempDir>);

impl Workdir {
    fn new(prefix: &str) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("testkit: cannot create a temporary directory");
        Workdir(Some(dir))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().expect("workdir").path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("GREGOR_TESTKIT_KEEP").is_some();
        if let (true, Some(dir)) = (keep, self.0.take()) {
            eprintln!("testkit: kept {}", dir.keep().display());
        }
    }
}
