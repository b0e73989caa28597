use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{NotReady, Probe, Proc};
use crate::wire::{self, Metadata};
use crate::zookeeper::ZooKeeper;
use crate::{Workdir, free_port, java, kafka_home, start_timeout, write_log4j};

/// The broker id of every [`Kafka09`] (each broker has its own ZooKeeper or chroot).
const BROKER_ID: i32 = 0;
/// `zookeeper.session.timeout.ms`: after a kill -9, the restarted broker can only register
/// once ZooKeeper has expired the old session, about this long after the kill.
const ZK_SESSION_MS: u64 = 6000;

/// Apache Kafka 0.9.0.1, one broker (id 0) on a free port of 127.0.0.1 (or of the address given
/// to [`Kafka09::start_at`]), data in a temporary
/// directory that survives [`Kafka09::kill9`] + [`Kafka09::restart`]. Killed on drop (its own
/// ZooKeeper, if it has one, after it).
///
/// 0.9 has no admin API, no idempotent producer, no headers and no timestamps, and it does not
/// answer ApiVersions: librdkafka clients need [`Kafka09::client_config`]. The broker does not
/// create topics on first use (`auto.create.topics.enable=false`): tests create them with
/// [`Kafka09::create_topic`]. `group.max.session.timeout.ms` is raised to 300 s because
/// librdkafka's default `session.timeout.ms` (45 s) is above 0.9's default maximum (30 s).
pub struct Kafka09 {
    proc: Option<Proc>,
    /// `Some` when the broker brought its own ZooKeeper (dropped after the broker).
    own_zk: Option<ZooKeeper>,
    zk: SocketAddr,
    host: Ipv4Addr,
    chroot: String,
    port: u16,
    home: PathBuf,
    started_in: Duration,
    /// Length of the log when the current start began: what it printed starts there.
    log_start: u64,
    dir: Workdir,
}

impl Kafka09 {
    /// Starts a ZooKeeper of its own, then the broker; waits until the broker is registered
    /// and answers metadata requests. Panics with the log tail if either does not come up.
    pub fn start() -> Kafka09 {
        Kafka09::start_at(Ipv4Addr::LOCALHOST)
    }

    /// Like [`Kafka09::start`], with the broker and its ZooKeeper listening on (and the broker
    /// advertising) `host`, an address of this machine: say the host end of a veth pair, so
    /// that processes in another network namespace reach both.
    pub fn start_at(host: Ipv4Addr) -> Kafka09 {
        let zk = ZooKeeper::start_at(host);
        let mut kafka = Kafka09::launch_new(zk.addr(), host, String::new());
        kafka.own_zk = Some(zk);
        kafka
    }

    /// Starts a broker on an existing ZooKeeper, under a chroot of its own (`/kafka-N`), so
    /// several brokers (each its own one-broker cluster) can share one ZooKeeper. `zk` must
    /// outlive the broker.
    pub fn start_on(zk: &ZooKeeper) -> Kafka09 {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let chroot = format!("/kafka-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        Kafka09::launch_new(zk.addr(), zk.host(), chroot)
    }

    fn launch_new(zk: SocketAddr, host: Ipv4Addr, chroot: String) -> Kafka09 {
        let mut kafka = Kafka09 {
            proc: None,
            own_zk: None,
            zk,
            host,
            chroot,
            port: 0,
            home: kafka_home(),
            started_in: Duration::ZERO,
            log_start: 0,
            dir: Workdir::new("gregor-kafka09-"),
        };
        write_log4j(kafka.dir.path(), "INFO");
        for attempt in 1.. {
            kafka.port = free_port();
            match kafka.launch() {
                Ok(()) => return kafka,
                Err(NotReady::Exited(_) | NotReady::Failed(_))
                    if attempt < 3 && kafka.log_has("Address already in use") =>
                {
                    kafka.proc = None; // someone took the port: try another one
                }
                Err(e) => kafka.proc.as_mut().expect("proc").fail(&e.to_string()),
            }
        }
        unreachable!()
    }

    /// Writes `server.properties` and starts the JVM; `Ok` once the broker is registered.
    fn launch(&mut self) -> Result<(), NotReady> {
        let dir = self.dir.path();
        let props = dir.join("server.properties");
        std::fs::write(&props, self.server_properties()).expect("testkit: write server.properties");
        let log = self.log_path();
        self.log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| {
                use std::io::Write;
                writeln!(
                    f,
                    "==== testkit: starting Kafka 0.9.0.1 on port {}",
                    self.port
                )
            })
            .expect("testkit: write kafka.log");
        let mut cmd = java();
        cmd.arg("-Xmx512m")
            .arg("-Xms64m")
            .arg("-XX:+UseSerialGC")
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j.configuration=file:{}",
                dir.join("log4j.properties").display()
            ))
            .arg(format!("-Dkafka.logs.dir={}", dir.join("logs").display()))
            .arg("-cp")
            .arg(format!("{}/libs/*", self.home.display()))
            .arg("kafka.Kafka")
            .arg(&props)
            .current_dir(dir);
        let start = Instant::now();
        let mut proc = Proc::spawn("Kafka 0.9.0.1", cmd, &log);
        let addr = self.addr();
        let (log_start, log_path) = (self.log_start, self.log_path());
        let result = proc.wait_ready(start_timeout(), || {
            let registered = wire::metadata(addr, &[], Duration::from_secs(2))
                .is_ok_and(|m| m.brokers.iter().any(|b| b.0 == BROKER_ID));
            if registered {
                return Probe::Ready;
            }
            // After a fatal start-up error 0.9 may hang in its shutdown instead of exiting.
            match fatal_line(&log_path, log_start) {
                Some(line) => Probe::Failed(line),
                None => Probe::NotYet,
            }
        });
        self.proc = Some(proc);
        result.map(|_| self.started_in = start.elapsed())
    }

    fn server_properties(&self) -> String {
        format!(
            "broker.id={BROKER_ID}\n\
             listeners=PLAINTEXT://{host}:{port}\n\
             advertised.listeners=PLAINTEXT://{host}:{port}\n\
             log.dirs={data}\n\
             zookeeper.connect={zk}\n\
             zookeeper.session.timeout.ms={ZK_SESSION_MS}\n\
             zookeeper.connection.timeout.ms=30000\n\
             auto.create.topics.enable=false\n\
             delete.topic.enable=true\n\
             controlled.shutdown.enable=false\n\
             num.partitions=1\n\
             default.replication.factor=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=4\n\
             group.max.session.timeout.ms=300000\n\
             num.network.threads=2\n\
             num.io.threads=4\n\
             background.threads=2\n\
             num.recovery.threads.per.data.dir=1\n\
             log.cleaner.enable=true\n\
             log.cleaner.threads=1\n\
             log.cleaner.dedupe.buffer.size=16777216\n\
             log.cleaner.backoff.ms=1000\n",
            host = self.host,
            port = self.port,
            data = self.data_dir().display(),
            zk = self.zookeeper_connect(),
        )
    }

    /// Whether the output of the current (or last) start contains `needle`.
    fn log_has(&self, needle: &str) -> bool {
        log_since(&self.log_path(), self.log_start).contains(needle)
    }

    /// `HOST:PORT` (127.0.0.1 unless started with [`Kafka09::start_at`]), for
    /// `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// The broker's port (on the address of [`Kafka09::bootstrap`]); the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The settings every librdkafka client needs against 0.9, which does not answer
    /// ApiVersions requests: `api.version.request=false`, `broker.version.fallback=0.9.0.1`.
    pub fn client_config() -> Vec<(&'static str, &'static str)> {
        vec![
            ("api.version.request", "false"),
            ("broker.version.fallback", "0.9.0.1"),
        ]
    }

    /// `HOST:ZKPORT[/chroot]`, for `--zookeeper` of Kafka's tools.
    pub fn zookeeper_connect(&self) -> String {
        format!("{}{}", self.zk, self.chroot)
    }

    /// Its own ZooKeeper, when started with [`Kafka09::start`].
    pub fn zookeeper(&self) -> Option<&ZooKeeper> {
        self.own_zk.as_ref()
    }

    /// The broker's log (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kafka.log")
    }

    /// The broker's `log.dirs` (partition data; kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The installed distribution (`bin/`, `libs/`, `config/`).
    pub fn home(&self) -> &std::path::Path {
        &self.home
    }

    /// How long the last start took (spawn to registered and answering).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// SIGKILL the broker (its data stays on disk). Its ZooKeeper session lives on until it
    /// expires (about 6 s); [`Kafka09::restart`] waits for that.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// SIGTERM, a clean shutdown (SIGKILL after 30 s); the broker deregisters at once.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(30));
        }
    }

    /// Starts the broker again on the same port and data (after [`Kafka09::kill9`] or
    /// [`Kafka09::stop`]; a running broker is killed first). After a kill -9 it first waits
    /// until ZooKeeper has expired the old session (else 0.9 refuses to start: "A broker is
    /// already registered"), and retries if the start still races the expiry. Returns once the
    /// broker is registered and every existing topic's partitions have a leader again. Panics
    /// with the log tail if it does not come back.
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + start_timeout();
        let node = format!("{}/brokers/ids/{BROKER_ID}", self.chroot);
        let zk = self.zk;
        while Instant::now() < deadline {
            let dump = crate::zookeeper::four_letter(zk, "dump").unwrap_or_default();
            if !dump.contains("ephemeral nodes dump:") || !dump.contains(&node) {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        let start = Instant::now();
        loop {
            match self.launch() {
                Ok(()) => break,
                Err(NotReady::Exited(_) | NotReady::Failed(_))
                    if Instant::now() < deadline && self.log_has("already registered") =>
                {
                    // The old session was still alive after all: wait and try again.
                    self.proc = None;
                    thread::sleep(Duration::from_millis(500));
                }
                Err(e) => self.proc.as_mut().expect("proc").fail(&e.to_string()),
            }
        }
        self.wait_for_leaders(&[]);
        self.started_in = start.elapsed();
    }

    /// Metadata v0 from the broker for `topics` (all topics if empty).
    pub fn metadata(&self, topics: &[&str]) -> std::io::Result<Metadata> {
        wire::metadata(self.addr(), topics, Duration::from_secs(5))
    }

    /// Waits until every partition of `topics` (all topics if empty) has a leader. Panics with
    /// the broker's log tail after the start timeout.
    pub fn wait_for_leaders(&mut self, topics: &[&str]) {
        let deadline = Instant::now() + start_timeout();
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match self.metadata(topics) {
                Ok(m) if m.topics.iter().all(|t| t.is_led()) && m.topics.len() >= topics.len() => {
                    return;
                }
                Ok(m) => last = format!("{:?}", m.topics),
                Err(e) => last = e.to_string(),
            }
            if self.proc.as_mut().is_none_or(|p| p.exited().is_some()) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let why = format!("has no leader for every partition of {topics:?}: {last}");
        match self.proc.as_mut() {
            Some(p) => p.fail(&why),
            None => panic!("testkit: Kafka 0.9.0.1 is not running and {why}"),
        }
    }

    /// Creates `topic` with `partitions` partitions and replication factor 1 (compacted when
    /// `compact`), through ZooKeeper like `kafka-topics.sh --create`, and waits until every
    /// partition has a leader.
    pub fn create_topic(&mut self, topic: &str, partitions: u32, compact: bool) {
        let configs: &[(&str, &str)] = if compact {
            &[("cleanup.policy", "compact")]
        } else {
            &[]
        };
        self.create_topic_with(topic, partitions, configs);
    }

    /// [`Kafka09::create_topic`] with topic configs (`--config K=V`), e.g.
    /// `("cleanup.policy", "compact")`, `("segment.bytes", "1048576")`.
    pub fn create_topic_with(&mut self, topic: &str, partitions: u32, configs: &[(&str, &str)]) {
        let mut cmd = self.tool("kafka.admin.TopicCommand");
        cmd.args([
            "--zookeeper",
            &self.zookeeper_connect(),
            "--create",
            "--topic",
            topic,
        ])
        .args([
            "--partitions",
            &partitions.to_string(),
            "--replication-factor",
            "1",
        ]);
        for (k, v) in configs {
            cmd.arg("--config").arg(format!("{k}={v}"));
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("testkit: cannot run kafka.admin.TopicCommand: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !text.contains("Created topic") {
            panic!(
                "testkit: creating topic {topic:?} on Kafka 0.9 failed ({}):\n{text}",
                out.status
            );
        }
        self.wait_for_leaders(&[topic]);
    }

    /// A JVM command running one of Kafka's tool classes (e.g. `kafka.tools.ConsoleConsumer`)
    /// with the distribution's classpath, logging warnings to stderr.
    pub fn tool(&self, class: &str) -> Command {
        let mut cmd = java();
        cmd.arg("-Xmx256m")
            .arg("-XX:+UseSerialGC")
            .arg("-XX:TieredStopAtLevel=1")
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j.configuration=file:{}/config/tools-log4j.properties",
                self.home.display()
            ))
            .arg("-cp")
            .arg(format!("{}/libs/*", self.home.display()))
            .arg(class);
        cmd
    }

    /// A command running one of Kafka's shell scripts (`bin/NAME`, e.g.
    /// `kafka-console-consumer.sh`), with the environment Kafka 0.9's scripts need on a modern
    /// JVM ([`Kafka09::script_env`]) and their logs in the broker's temporary directory.
    pub fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.home.join("bin").join(name));
        cmd.envs(Kafka09::script_env())
            .env("LOG_DIR", self.dir.path().join("script-logs"));
        cmd
    }

    /// The environment Kafka 0.9's `bin/*.sh` need on Java 9+: the JVM flags they add by
    /// default (GC logging flags of Java 8) are refused by Java 17, so they are replaced.
    pub fn script_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("KAFKA_GC_LOG_OPTS", " "),
            ("KAFKA_JMX_OPTS", " "),
            ("KAFKA_HEAP_OPTS", "-Xmx256m"),
            (
                "KAFKA_JVM_PERFORMANCE_OPTS",
                "-XX:+UseSerialGC -Djava.awt.headless=true",
            ),
        ]
    }
}

/// The log from byte `since` on.
fn log_since(path: &std::path::Path, since: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let since = (since as usize).min(text.len());
    String::from_utf8_lossy(&text[since..]).into_owned()
}

/// The first FATAL line (and the exception line after it) logged since byte `since`.
fn fatal_line(path: &std::path::Path, since: u64) -> Option<String> {
    let text = log_since(path, since);
    let mut lines = text.lines().skip_while(|l| !l.contains("] FATAL "));
    let first = lines.next()?;
    Some(match lines.next() {
        Some(cause) => format!("{first} / {cause}"),
        None => first.to_string(),
    })
}
