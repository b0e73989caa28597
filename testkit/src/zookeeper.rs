use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::process::{NotReady, Probe, Proc};
use crate::{Workdir, free_port, java, kafka_home, start_timeout, write_log4j};

/// A standalone ZooKeeper on a free port of 127.0.0.1 (or of an address given to
/// [`ZooKeeper::start_at`]), in a temporary directory.
///
/// It is the ZooKeeper 3.4.6 that ships inside the Kafka 0.9.0.1 distribution (the version
/// Kafka 0.9.0.1 was released and tested with), run from the same `libs/` as the broker: no
/// system package, nothing else to install. Killed on drop.
pub struct ZooKeeper {
    proc: Proc,
    host: Ipv4Addr,
    port: u16,
    started_in: Duration,
    dir: Workdir,
    cfg: PathBuf,
    log4j: PathBuf,
}

/// The JVM command that runs ZooKeeper with `cfg`.
fn command(
    home: &std::path::Path,
    log4j: &std::path::Path,
    cfg: &std::path::Path,
    dir: &std::path::Path,
) -> std::process::Command {
    let mut cmd = java();
    cmd.arg("-Xmx128m")
        .arg("-XX:+UseSerialGC")
        .arg("-Djava.awt.headless=true")
        .arg(format!("-Dlog4j.configuration=file:{}", log4j.display()))
        .arg("-cp")
        .arg(format!("{}/libs/*", home.display()))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(cfg)
        .current_dir(dir);
    cmd
}

/// Waits until the server at `addr` answers `ruok`.
fn wait_imok(proc: &mut Proc, addr: SocketAddr) -> Result<Duration, NotReady> {
    proc.wait_ready(start_timeout(), || {
        if four_letter(addr, "ruok").is_ok_and(|a| a == "imok") {
            Probe::Ready
        } else {
            Probe::NotYet
        }
    })
}

impl ZooKeeper {
    /// Starts ZooKeeper and waits until it answers `ruok`. Panics with its log tail if it does
    /// not come up.
    pub fn start() -> ZooKeeper {
        ZooKeeper::start_at(Ipv4Addr::LOCALHOST)
    }

    /// Like [`ZooKeeper::start`], listening on `host` (an address of this machine, say the
    /// host end of a veth pair, so that processes in another network namespace reach it).
    pub fn start_at(host: Ipv4Addr) -> ZooKeeper {
        let home = kafka_home();
        let dir = Workdir::new("gregor-zookeeper-");
        let log4j = write_log4j(dir.path(), "INFO");
        let log = dir.path().join("zookeeper.log");
        for attempt in 1.. {
            let port = free_port();
            let cfg = dir.path().join("zoo.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "tickTime=500\n\
                     dataDir={}\n\
                     clientPort={port}\n\
                     clientPortAddress={host}\n\
                     maxClientCnxns=0\n\
                     admin.enableServer=false\n\
                     4lw.commands.whitelist=*\n",
                    dir.path().join("data").display()
                ),
            )
            .expect("testkit: write zoo.cfg");
            let cmd = command(&home, &log4j, &cfg, dir.path());
            let mut proc = Proc::spawn("ZooKeeper", cmd, &log);
            match wait_imok(&mut proc, SocketAddr::from((host, port))) {
                Ok(started_in) => {
                    return ZooKeeper {
                        proc,
                        host,
                        port,
                        started_in,
                        dir,
                        cfg,
                        log4j,
                    };
                }
                Err(NotReady::Exited(_))
                    if attempt < 3 && proc.log_tail(200).contains("Address already in use") =>
                {
                    continue; // someone took the port between free_port() and the bind
                }
                Err(e) => proc.fail(&e.to_string()),
            }
        }
        unreachable!()
    }

    /// The client port (on [`ZooKeeper::host`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on (127.0.0.1 unless started with [`ZooKeeper::start_at`]).
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// `HOST:PORT`, for `zookeeper.connect` and `--zookeeper`.
    pub fn connect_string(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Its client address.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// How long start-up took (spawn to first `imok`).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The server's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("zookeeper.log")
    }

    /// The process id (the JVM).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL the server (its data stays on disk): every client loses its connection.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts the server again on the same port and data (after [`ZooKeeper::kill9`]; a
    /// running server is killed first) and waits until it answers. Sessions that had not
    /// expired when it died live on (ZooKeeper restarts their timeout on recovery). Panics
    /// with the log tail if it does not come back.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let cmd = command(&kafka_home(), &self.log4j, &self.cfg, self.dir.path());
        self.proc = Proc::spawn("ZooKeeper", cmd, &self.log_path());
        let addr = self.addr();
        match wait_imok(&mut self.proc, addr) {
            Ok(started_in) => self.started_in = started_in,
            Err(e) => self.proc.fail(&e.to_string()),
        }
    }

    /// Whether some session holds an ephemeral node at `path` (from the `dump` command).
    pub fn has_ephemeral(&self, path: &str) -> bool {
        let dump = four_letter(self.addr(), "dump").unwrap_or_default();
        ephemeral_in_dump(&dump, path)
    }
}

/// Whether `path` is listed among the ephemeral nodes of a ZooKeeper `dump` answer.
fn ephemeral_in_dump(dump: &str, path: &str) -> bool {
    dump.split_once("ephemeral nodes dump:")
        .is_some_and(|(_, eph)| eph.lines().any(|l| l.trim() == path))
}

/// Sends a four-letter command and returns the whole answer.
pub(crate) fn four_letter(addr: SocketAddr, cmd: &str) -> std::io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(cmd.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_ephemerals_in_a_dump() {
        let dump = "SessionTracker dump:\nSession Sets (2):\n0 expire at Thu Jan 01:\n\
                    ephemeral nodes dump:\nSessions with Ephemerals (1):\n0x18c2:\n\
                    \t/controller\n\t/kafka-1/brokers/ids/0\n";
        assert!(super::ephemeral_in_dump(dump, "/kafka-1/brokers/ids/0"));
        assert!(super::ephemeral_in_dump(dump, "/controller"));
        assert!(!super::ephemeral_in_dump(dump, "/brokers/ids/0"));
    }
}
