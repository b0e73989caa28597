//! Job configuration (TOML, flat Samza-style keys):
//!
//! ```toml
//! [job]
//! name = "counts"
//! task = "count"              # a built-in task, or the task a Rust program registers
//! inputs = ["in"]
//! outputs = []                # topics the task may send to
//! commit.ms = 1000
//! window.ms = 10000           # optional
//! changelog.cleanup.ms = 300000  # compact changelogs this often (after a commit)
//! changelog.segment.bytes = 134217728  # segment size of changelogs the job creates
//! log.fsync = true            # fsync changelogs and outputs the job creates on commit
//! container.thread.pool.size = 2  # threads processing tasks (default: the machine's cores)
//! coordinator = "zookeeper"   # "static" (default) | "zookeeper": who runs which task
//! debounce.time.ms = 2000     # zookeeper: membership quiet this long before a new job model
//! standby.replicas = 1        # zookeeper: warm copies of each task's stores on other processes
//!
//! [zookeeper]                 # with job.coordinator = "zookeeper" (Kafka jobs only)
//! connect = "127.0.0.1:2181"  # host:port[,host:port...]
//! session.timeout.ms = 10000
//! root = "/gregor"            # the job's nodes live under <root>/<job name>
//!
//! [stores.counts]
//! engine = "rocksdb"
//! key.serde = "string"
//! value.serde = "u64"
//! changelog = "counts-changelog"
//! # guarantee = "at-least-once"  # the opt-in for a RocksDB store without a changelog
//!
//! [stores.users]              # a side input: every task reads the whole topic
//! side.inputs = ["users"]
//!
//! [task]                      # free-form settings for the task itself
//! top.n = 10
//!
//! [http]                      # optional: serve the stores over HTTP (docs/http-api.md)
//! listen = "127.0.0.1:8080"
//! # auth.token = "..."        # require `Authorization: Bearer <token>` (or GREGOR_HTTP_AUTH_TOKEN)
//! ```
//!
//! Unknown keys under `job` and `stores`, values of the wrong type and numbers outside their
//! allowed range (`commit.ms` 1 ms to 1 day, `window.ms` and `changelog.cleanup.ms` up to 7
//! days, `changelog.segment.bytes` 4 KiB to 1 GiB; store bounds in
//! [`crate::store::config`]) are errors naming the key, the file and the range. A topic plays
//! one role in a job: an input, an output, or the changelog of one store; naming it twice is
//! an error. Keys under `task` belong to the task and are passed through.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{ConfigError, FlatConfig};
use crate::log::validate_topic_name;
use crate::statedir::validate_name;
use crate::store::config::StoreConfig;

/// Largest `job.standby.replicas`.
pub const MAX_STANDBY_REPLICAS: u64 = 8;

/// Largest `job.container.thread.pool.size`.
pub const MAX_THREAD_POOL_SIZE: u64 = 256;

/// Default `job.container.thread.pool.size`: the number of cores the process may use.
pub fn default_thread_pool_size() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A store filled from side-input topics (`stores.<name>.side.inputs`).
#[derive(Debug, Clone, PartialEq)]
pub struct SideInputStore {
    /// The topics, read whole (every partition).
    pub topics: Vec<String>,
    /// The store's settings (engine, serdes, cache; no changelog).
    pub config: StoreConfig,
}

/// Default `job.changelog.cleanup.ms`: five minutes.
pub const DEFAULT_CHANGELOG_CLEANUP_MS: u64 = 5 * 60 * 1000;

/// Default `job.commit.ms`.
pub const DEFAULT_COMMIT_MS: u64 = 1000;

/// Largest `job.commit.ms`: one day. Longer means a crash replays a day of input, and larger
/// values overflow the clock arithmetic.
pub const MAX_COMMIT_MS: u64 = 24 * 3600 * 1000;

/// Largest `job.window.ms`: seven days.
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;

/// Largest `job.changelog.cleanup.ms`: seven days.
pub const MAX_CHANGELOG_CLEANUP_MS: u64 = 7 * 24 * 3600 * 1000;

/// Allowed `job.changelog.segment.bytes`: 4 KiB (smaller makes a file per few records) to
/// 1 GiB.
pub const CHANGELOG_SEGMENT_BYTES: std::ops::RangeInclusive<u64> = 4096..=(1 << 30);

/// Each topic plays one role in a job: an input, an output, or the changelog of one store.
/// Returns the offending key and why.
fn check_topic_roles(
    inputs: &[String],
    outputs: &[String],
    stores: &BTreeMap<String, StoreConfig>,
) -> Result<(), (String, String)> {
    let mut roles: BTreeMap<String, String> = BTreeMap::new();
    let mut claim = |topic: &str, key: &str, role: String| match roles.get(topic) {
        None => {
            roles.insert(topic.to_string(), role);
            Ok(())
        }
        Some(first) => Err((
            key.to_string(),
            format!(
                "topic \"{topic}\" is already {first}; a topic plays one role in a job: \
                 one input, one output, or the changelog of one store (a job writing into \
                 its own input reads its own output; restoring a store truncates its changelog)"
            ),
        )),
    };
    for t in inputs {
        claim(t, "job.inputs", "an input of this job (job.inputs)".into())?;
    }
    for t in outputs {
        claim(
            t,
            "job.outputs",
            "an output of this job (job.outputs)".into(),
        )?;
    }
    for (name, store) in stores {
        if let Some(t) = &store.changelog {
            claim(
                t,
                &format!("stores.{name}.changelog"),
                format!("the changelog of store `{name}` (stores.{name}.changelog)"),
            )?;
        }
    }
    Ok(())
}

/// What each store kind guarantees, checked for a job: a memory store without a changelog
/// keeps nothing (it starts empty on every run), so it is refused; a RocksDB store without a
/// changelog is at-least-once (after a crash the input since the last checkpoint is applied
/// again on top of what the engine kept), so the job must say so with
/// `stores.<name>.guarantee = "at-least-once"`. Returns the offending key and why.
fn check_store_guarantees(stores: &BTreeMap<String, StoreConfig>) -> Result<(), (String, String)> {
    use crate::store::config::{EngineKind, Guarantee};
    for (name, s) in stores {
        if s.changelog.is_some() {
            continue;
        }
        match (s.engine, s.guarantee) {
            (EngineKind::Memory, _) => {
                return Err((
                    format!("stores.{name}.engine"),
                    format!(
                        "a memory store without a changelog keeps nothing: it would start empty \
                         on every run. Set stores.{name}.changelog = \"TOPIC\" (restored on \
                         start, exactly-once) or engine = \"rocksdb\""
                    ),
                ));
            }
            (_, Guarantee::AtLeastOnce) => {}
            (_, _) => {
                return Err((
                    format!("stores.{name}.changelog"),
                    format!(
                        "store `{name}` has no changelog, so after a crash the input since the \
                         last checkpoint is applied to it again (counts too high): set \
                         stores.{name}.changelog = \"TOPIC\" for exactly-once, or \
                         stores.{name}.guarantee = \"at-least-once\" to accept that"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A job's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    /// Where it was read from (for messages).
    pub source: String,
    /// `job.name`.
    pub name: String,
    /// `job.task`: the task to run.
    pub task: String,
    /// `job.inputs`: input topics; task N consumes partition N of each.
    pub inputs: Vec<String>,
    /// `job.outputs`: topics the task may send to.
    pub outputs: Vec<String>,
    /// `job.commit.ms`: commit interval.
    pub commit_ms: u64,
    /// `job.container.thread.pool.size` (Samza's name): threads that process the process's
    /// tasks, each task on one thread at a time (default: the cores the process may use;
    /// 1 processes every task on the container's own thread).
    pub thread_pool_size: usize,
    /// `job.window.ms`: window interval, if the task has a window.
    pub window_ms: Option<u64>,
    /// `embedded.changelog.cleanup.ms`: how often the embedded log compacts changelogs (right
    /// after a commit).
    pub changelog_cleanup_ms: u64,
    /// `embedded.changelog.segment.bytes`: segment size of the changelog topics the job
    /// creates on the embedded log.
    pub changelog_segment_bytes: Option<u64>,
    /// `embedded.log.fsync`: fsync changelog and output topics the job creates on every
    /// commit (default true; false trades durability against a machine crash for speed).
    pub log_fsync: bool,
    /// Stores with `stores.<name>.side.inputs` (Samza's name): filled from every partition
    /// of those topics, readable by every task of the process, read-only to them. Not in
    /// [`stores`](Self::stores). See [`crate::runtime::side_input`].
    pub side_inputs: BTreeMap<String, SideInputStore>,
    /// `stores.<name>.*`: the tasks' own stores.
    pub stores: BTreeMap<String, StoreConfig>,
    /// `job.cache.max.bytes`: the memory all store caches of the process share (default
    /// 256 MiB); each store's cache gets at most an even share of it; 0 disables the caches.
    pub cache_max_bytes: usize,
    /// `metrics.recording.level` (Kafka Streams' name): `info` (default) or `debug`, which
    /// adds per-operation latency histograms to every store (a clock read per operation).
    pub metrics_recording_level: RecordingLevel,
    /// `task.*`, keys without the `task.` prefix.
    pub task_config: BTreeMap<String, toml::Value>,
    /// `job.system`: where topics, changelogs and checkpoints live.
    pub system: System,
    /// `kafka.*` without the prefix: librdkafka properties, each value as its text.
    pub kafka: BTreeMap<String, String>,
    /// `job.process.error` (`fail` (default) | `skip` | `dead-letter`, the latter with
    /// `job.dead.letter.topic`): what happens to a message whose processing fails.
    pub on_process_error: super::container::ProcessErrorPolicy,
    /// `http.listen`: where `gregor run` serves the job's stores over HTTP (`IP:PORT`);
    /// `None`: no HTTP server.
    pub http_listen: Option<std::net::SocketAddr>,
    /// `http.auth.token`: when set, HTTP requests (all but `GET /health`) need
    /// `Authorization: Bearer <token>`; the environment variable `GREGOR_HTTP_AUTH_TOKEN`
    /// overrides it.
    pub http_auth_token: Option<String>,
    /// `job.coordinator`: who decides which process runs which task.
    pub coordinator: CoordinatorConfig,
    /// `job.standby.replicas`: standby copies of each task's state besides the active one.
    pub standby_replicas: u32,
}

/// `job.coordinator`: how a job's processes share its tasks.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum CoordinatorConfig {
    /// Fixed: all tasks in one process, or process I of N runs the tasks `t mod N == I`
    /// (`gregor run --processors N --processor-id I`).
    #[default]
    Static,
    /// Apache ZooKeeper: processes join and leave, a leader assigns the tasks
    /// ([`crate::coordinator::zookeeper`]).
    ZooKeeper(ZooKeeperConfig),
}

/// `[zookeeper]`: where the ZooKeeper coordinator keeps the job's membership and model.
#[derive(Debug, Clone, PartialEq)]
pub struct ZooKeeperConfig {
    /// `zookeeper.connect`: `host:port[,host:port...]`.
    pub connect: String,
    /// `zookeeper.session.timeout.ms` (default 10 s): a process silent this long is gone;
    /// it stops processing after half of it without an answer from ZooKeeper.
    pub session_timeout_ms: u64,
    /// `zookeeper.root` (default `/gregor`): the job's nodes live under `<root>/<job>`.
    pub root: String,
    /// `job.debounce.time.ms` (Samza's name; default 2 s): the leader publishes a new job
    /// model once membership has not changed for this long.
    pub debounce_ms: u64,
}

/// `metrics.recording.level`: which metrics are recorded (after Kafka Streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecordingLevel {
    /// Counters and gauges (the default): no clock read per store operation.
    #[default]
    Info,
    /// Also latency histograms per store operation.
    Debug,
}

impl RecordingLevel {
    /// Parses a config value (`info`, `debug`; case-insensitive as in Kafka Streams).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Some(RecordingLevel::Info),
            "debug" => Some(RecordingLevel::Debug),
            _ => None,
        }
    }
}

/// `job.system`: the backend a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum System {
    /// Segment files under the state directory (the default).
    #[default]
    Embedded,
    /// Apache Kafka (`[kafka] bootstrap.servers = ...`).
    Kafka,
}

impl JobConfig {
    /// The config of a changelog topic this job creates.
    pub fn changelog_topic_config(&self) -> crate::log::TopicConfig {
        let mut c = crate::log::TopicConfig::compacted();
        if let Some(b) = self.changelog_segment_bytes {
            c.segment_bytes = b;
        }
        c.fsync = self.log_fsync;
        c
    }

    /// The config of an output topic this job creates.
    pub fn output_topic_config(&self) -> crate::log::TopicConfig {
        crate::log::TopicConfig {
            fsync: self.log_fsync,
            ..Default::default()
        }
    }

    /// Reads a job file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_flat(FlatConfig::from_file(path)?)
    }

    /// Reads job TOML text; `source` names it in errors.
    pub fn from_toml_str(source: &str, text: &str) -> Result<Self, ConfigError> {
        Self::from_flat(FlatConfig::from_toml_str(source, text)?)
    }

    /// Takes the job's keys from `c`; anything left over is an error.
    pub fn from_flat(mut c: FlatConfig) -> Result<Self, ConfigError> {
        let source = c.source().to_string();
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: source.clone(),
            key: key.to_string(),
            message,
        };
        let name = c.require_str("job.name")?;
        validate_name("job", &name).map_err(|e| invalid("job.name", e.to_string()))?;
        let task = c.require_str("job.task")?;
        let inputs = c.take_str_list("job.inputs")?.unwrap_or_default();
        if inputs.is_empty() {
            return Err(ConfigError::Missing {
                file: source.clone(),
                key: "job.inputs".into(),
            });
        }
        let outputs = c.take_str_list("job.outputs")?.unwrap_or_default();
        for (key, topics) in [("job.inputs", &inputs), ("job.outputs", &outputs)] {
            for t in topics {
                validate_topic_name(t).map_err(|e| invalid(key, e.to_string()))?;
            }
        }
        let commit_ms = c
            .take_u64_in("job.commit.ms", 1..=MAX_COMMIT_MS)?
            .unwrap_or(DEFAULT_COMMIT_MS);
        let window_ms = c.take_u64_in("job.window.ms", 1..=MAX_WINDOW_MS)?;
        let thread_pool_size = c
            .take_u64_in("job.container.thread.pool.size", 1..=MAX_THREAD_POOL_SIZE)?
            .map_or_else(default_thread_pool_size, |n| n as usize);
        let system = match c.take_str("job.system")?.as_deref() {
            None | Some("embedded") => System::Embedded,
            Some("kafka") => System::Kafka,
            Some(other) => {
                return Err(invalid(
                    "job.system",
                    format!("must be \"embedded\" or \"kafka\", found \"{other}\""),
                ));
            }
        };
        // Settings only the embedded log has live under [embedded]; their old names under
        // [job] are still accepted, with a warning.
        let embedded_key = |c: &FlatConfig, name: &str| {
            let new = format!("embedded.{name}");
            let old = format!("job.{name}");
            if c.keys_with_prefix(&old).contains(&old) {
                tracing::warn!("{source}: `{old}` is deprecated; write `{name}` under [embedded]");
                old
            } else {
                new
            }
        };
        let key = embedded_key(&c, "changelog.segment.bytes");
        let changelog_segment_bytes = c.take_u64_in(&key, CHANGELOG_SEGMENT_BYTES)?;
        let key = embedded_key(&c, "log.fsync");
        let log_fsync = c.take_bool(&key)?.unwrap_or(true);
        let key = embedded_key(&c, "changelog.cleanup.ms");
        let changelog_cleanup_ms = c
            .take_u64_in(&key, 1..=MAX_CHANGELOG_CLEANUP_MS)?
            .unwrap_or(DEFAULT_CHANGELOG_CLEANUP_MS);
        let mut kafka = BTreeMap::new();
        for key in c.keys_with_prefix("kafka.") {
            if let Some(v) = c.take_raw(&key) {
                let text = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                        v.to_string()
                    }
                    other => {
                        return Err(invalid(
                            &key,
                            format!("must be a string, number or boolean, found {other}"),
                        ));
                    }
                };
                kafka.insert(key["kafka.".len()..].to_string(), text);
            }
        }
        if system == System::Kafka && !kafka.contains_key("bootstrap.servers") {
            return Err(ConfigError::Missing {
                file: source.clone(),
                key: "kafka.bootstrap.servers".into(),
            });
        }
        let mut stores = BTreeMap::new();
        let mut side_inputs = BTreeMap::new();
        for store in c.children("stores") {
            validate_name("store", &store)
                .map_err(|e| invalid(&format!("stores.{store}"), e.to_string()))?;
            let key = format!("stores.{store}.side.inputs");
            if let Some(topics) = c.take_str_list(&key)? {
                if topics.is_empty() {
                    return Err(invalid(&key, "names no topic".into()));
                }
                for t in &topics {
                    validate_topic_name(t).map_err(|e| invalid(&key, e.to_string()))?;
                    if inputs.contains(t) || outputs.contains(t) {
                        return Err(invalid(
                            &key,
                            format!(
                                "topic `{t}` is already an input or output of this job; a \
                                 side input is read whole by every task, an input is split \
                                 among them"
                            ),
                        ));
                    }
                }
                side_inputs.insert(store.clone(), topics);
            }
            stores.insert(store.clone(), StoreConfig::from_flat(&store, &mut c)?);
        }
        let cache_max_bytes = c
            .take_u64_in(
                "job.cache.max.bytes",
                0..=crate::store::config::MAX_CACHE_BYTES,
            )?
            .map_or(crate::store::cached::DEFAULT_PROCESS_CACHE_MAX_BYTES, |v| {
                v as usize
            });
        let metrics_recording_level = c
            .take_parsed(
                "metrics.recording.level",
                "info, debug",
                RecordingLevel::parse,
            )?
            .unwrap_or_default();
        for s in stores.values_mut() {
            s.process_cache_max_bytes = cache_max_bytes;
            if cache_max_bytes == 0 {
                // No memory for caches: every store writes through.
                s.cache_max_bytes = 0;
            }
            s.latency_histograms = metrics_recording_level == RecordingLevel::Debug;
        }
        // Side-input stores are kept apart from the tasks' own stores.
        let side_inputs: BTreeMap<String, SideInputStore> = side_inputs
            .into_iter()
            .map(|(store, topics): (String, Vec<String>)| {
                let config = stores.remove(&store).expect("parsed with its side inputs");
                (store, SideInputStore { topics, config })
            })
            .collect();
        for (store, side) in &side_inputs {
            if side.config.ttl_ms.is_some() {
                return Err(invalid(
                    &format!("stores.{store}.ttl.ms"),
                    format!(
                        "store `{store}` is filled from its side inputs, which decide what it holds: \
                         entries cannot expire (remove stores.{store}.ttl.ms, or delete them \
                         with tombstones in the topic)"
                    ),
                ));
            }
            if side.config.changelog.is_some() {
                return Err(invalid(
                    &format!("stores.{store}.changelog"),
                    format!(
                        "store `{store}` is filled from its side inputs, which are its source \
                         of truth: it has no changelog (remove stores.{store}.changelog)"
                    ),
                ));
            }
        }
        check_topic_roles(&inputs, &outputs, &stores).map_err(|(key, m)| invalid(&key, m))?;
        let dead_letter = c.take_str("job.dead.letter.topic")?;
        let on_process_error = match (c.take_str("job.process.error")?.as_deref(), dead_letter) {
            (None | Some("fail"), None) => super::container::ProcessErrorPolicy::Fail,
            (Some("skip"), None) => super::container::ProcessErrorPolicy::Skip,
            (Some("dead-letter"), Some(t)) => {
                validate_topic_name(&t)
                    .map_err(|e| invalid("job.dead.letter.topic", e.to_string()))?;
                if inputs.contains(&t)
                    || outputs.contains(&t)
                    || stores
                        .values()
                        .any(|s| s.changelog.as_deref() == Some(t.as_str()))
                {
                    return Err(invalid(
                        "job.dead.letter.topic",
                        format!("topic `{t}` already plays another role in this job"),
                    ));
                }
                super::container::ProcessErrorPolicy::DeadLetter(t)
            }
            (Some("dead-letter"), None) => {
                return Err(ConfigError::Missing {
                    file: source.clone(),
                    key: "job.dead.letter.topic".into(),
                });
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "job.dead.letter.topic",
                    "is only used with job.process.error = \"dead-letter\"".into(),
                ));
            }
            (Some(other), None) => {
                return Err(invalid(
                    "job.process.error",
                    format!("must be \"fail\", \"skip\" or \"dead-letter\", found \"{other}\""),
                ));
            }
        };
        check_store_guarantees(&stores).map_err(|(key, m)| invalid(&key, m))?;
        let http_listen = match c.take_str("http.listen")? {
            None => None,
            Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|e| {
                invalid(
                    "http.listen",
                    format!("\"{a}\" is not IP:PORT (e.g. \"127.0.0.1:8080\"): {e}"),
                )
            })?),
        };
        let http_auth_token = c.take_str("http.auth.token")?;
        if http_auth_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "http.auth.token",
                "is shorter than 16 characters; use a long random token".into(),
            ));
        }
        let coordinator_kind = c.take_str("job.coordinator")?;
        let debounce_ms = c.take_u64_in("job.debounce.time.ms", 0..=MAX_COMMIT_MS)?;
        let standby_replicas = c
            .take_u64_in("job.standby.replicas", 0..=MAX_STANDBY_REPLICAS)?
            .unwrap_or(0) as u32;
        let zk_connect = c.take_str("zookeeper.connect")?;
        let zk_session = c.take_u64_in("zookeeper.session.timeout.ms", 1000..=600_000)?;
        let zk_root = c.take_str("zookeeper.root")?;
        let coordinator = match coordinator_kind.as_deref() {
            None | Some("static") => {
                for (key, set) in [
                    ("zookeeper.connect", zk_connect.is_some()),
                    ("zookeeper.session.timeout.ms", zk_session.is_some()),
                    ("zookeeper.root", zk_root.is_some()),
                    ("job.debounce.time.ms", debounce_ms.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            key,
                            "is only used with job.coordinator = \"zookeeper\"".into(),
                        ));
                    }
                }
                CoordinatorConfig::Static
            }
            Some("zookeeper") => {
                if system != System::Kafka {
                    return Err(invalid(
                        "job.coordinator",
                        "\"zookeeper\" needs job.system = \"kafka\": processes on several \
                         machines share a job's state through Kafka (an embedded job runs in the \
                         one process that owns its state directory)"
                            .into(),
                    ));
                }
                let Some(connect) = zk_connect else {
                    return Err(ConfigError::Missing {
                        file: source.clone(),
                        key: "zookeeper.connect".into(),
                    });
                };
                let root = zk_root.unwrap_or_else(|| "/gregor".into());
                if !root.starts_with('/') || root.ends_with('/') || root.contains("//") {
                    return Err(invalid(
                        "zookeeper.root",
                        format!("\"{root}\" is not a ZooKeeper path (e.g. \"/gregor\")"),
                    ));
                }
                CoordinatorConfig::ZooKeeper(ZooKeeperConfig {
                    connect,
                    session_timeout_ms: zk_session.unwrap_or(10_000),
                    root,
                    debounce_ms: debounce_ms.unwrap_or(2_000),
                })
            }
            Some(other) => {
                return Err(invalid(
                    "job.coordinator",
                    format!("must be \"static\" or \"zookeeper\", found \"{other}\""),
                ));
            }
        };
        if standby_replicas > 0 && coordinator == CoordinatorConfig::Static {
            return Err(invalid(
                "job.standby.replicas",
                "standby replicas need job.coordinator = \"zookeeper\" (static assignment has no \
                 job model to place them)"
                    .into(),
            ));
        }
        let mut task_config = BTreeMap::new();
        for key in c.keys_with_prefix("task.") {
            if let Some(v) = c.take_raw(&key) {
                task_config.insert(key["task.".len()..].to_string(), v);
            }
        }
        c.finish()?;
        Ok(JobConfig {
            source,
            name,
            task,
            inputs,
            outputs,
            commit_ms,
            thread_pool_size,
            window_ms,
            changelog_cleanup_ms,
            changelog_segment_bytes,
            log_fsync,
            stores,
            cache_max_bytes,
            metrics_recording_level,
            task_config,
            system,
            kafka,
            on_process_error,
            http_listen,
            http_auth_token,
            side_inputs,
            coordinator,
            standby_replicas,
        })
    }

    /// The Kafka settings of a `job.system = "kafka"` job: `[kafka]` handed to librdkafka,
    /// the checkpoint topic `__gregor-checkpoints-<job>` and consumer group `gregor-<job>`.
    pub fn kafka_settings(&self) -> crate::backend::kafka::KafkaSettings {
        let mut s = crate::backend::kafka::KafkaSettings::new(&self.name, "");
        s.client = self.kafka.clone();
        s
    }

    /// A `task.*` integer setting.
    pub fn task_u64(&self, key: &str) -> Option<u64> {
        self.task_config
            .get(key)
            .and_then(|v| v.as_integer())
            .and_then(|i| u64::try_from(i).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [job]
        name = "counts"
        task = "count"
        inputs = ["in"]
        commit.ms = 1000
        window.ms = 10000

        [stores.counts]
        engine = "rocksdb"
        key.serde = "string"
        value.serde = "u64"
        changelog = "counts-changelog"

        [task]
        top.n = 5
    "#;

    #[test]
    fn reads_the_documented_example() {
        let j = JobConfig::from_toml_str("count.toml", GOOD).unwrap();
        assert_eq!(j.name, "counts");
        assert_eq!(j.inputs, vec!["in"]);
        assert_eq!(j.commit_ms, 1000);
        assert_eq!(j.window_ms, Some(10000));
        assert_eq!(
            j.stores["counts"].changelog.as_deref(),
            Some("counts-changelog")
        );
        assert_eq!(j.task_u64("top.n"), Some(5));
    }

    #[test]
    fn topic_settings_reach_the_topics_the_job_creates() {
        let j = JobConfig::from_toml_str("count.toml", GOOD).unwrap();
        assert!(j.changelog_topic_config().fsync && j.output_topic_config().fsync);
        let text = GOOD.replace(
            "window.ms = 10000",
            "window.ms = 10000\nlog.fsync = false\nchangelog.segment.bytes = 4096",
        );
        let j = JobConfig::from_toml_str("count.toml", &text).unwrap();
        let c = j.changelog_topic_config();
        assert_eq!((c.fsync, c.segment_bytes), (false, 4096));
        assert_eq!(c.cleanup_policy, crate::log::CleanupPolicy::Compact);
        assert!(!j.output_topic_config().fsync);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_file() {
        let e = JobConfig::from_toml_str(
            "count.toml",
            &GOOD.replace("commit.ms = 1000", "commit.ms = \"1s\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("count.toml") && e.contains("job.commit.ms"),
            "{e}"
        );
        let e = JobConfig::from_toml_str("count.toml", &GOOD.replace("window.ms", "windw.ms"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("count.toml") && e.contains("job.windw.ms"),
            "{e}"
        );
        let e = JobConfig::from_toml_str(
            "count.toml",
            &GOOD.replace("engine = \"rocksdb\"", "engin = \"rocksdb\""),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("stores.counts.engin"), "{e}");
        let e = JobConfig::from_toml_str("count.toml", &GOOD.replace("name = \"counts\"", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("job.name"), "{e}");
    }

    fn refused(text: &str) -> String {
        JobConfig::from_toml_str("count.toml", text)
            .expect_err(text)
            .to_string()
    }

    /// `job.cache.max.bytes` and `metrics.recording.level` reach every store; defaults are
    /// the fast path (256 MiB shared, no latency histograms); bad values name key and file.
    #[test]
    fn cache_budget_and_recording_level() {
        let j = JobConfig::from_toml_str("count.toml", GOOD).unwrap();
        assert_eq!(j.cache_max_bytes, 256 << 20);
        assert_eq!(j.metrics_recording_level, RecordingLevel::Info);
        let s = &j.stores["counts"];
        assert_eq!(
            (s.process_cache_max_bytes, s.latency_histograms, s.cached()),
            (256 << 20, false, true)
        );
        let text = GOOD.replace(
            "window.ms = 10000",
            "window.ms = 10000\ncache.max.bytes = 1048576\n[metrics]\nrecording.level = \"DEBUG\"",
        );
        let j = JobConfig::from_toml_str("count.toml", &text).unwrap();
        let s = &j.stores["counts"];
        assert_eq!(j.metrics_recording_level, RecordingLevel::Debug);
        assert_eq!(
            (s.process_cache_max_bytes, s.latency_histograms),
            (1 << 20, true)
        );
        let e = refused(&GOOD.replace(
            "window.ms = 10000",
            "window.ms = 10000\n[metrics]\nrecording.level = \"trace\"",
        ));
        assert!(
            e.contains("metrics.recording.level")
                && e.contains("info, debug")
                && e.contains("count.toml"),
            "{e}"
        );
        let off = GOOD.replace("window.ms = 10000", "cache.max.bytes = 0");
        let j = JobConfig::from_toml_str("count.toml", &off).unwrap();
        assert!(!j.stores["counts"].cached(), "0 disables the caches");
        let e = refused(&GOOD.replace("window.ms = 10000", "cache.max.bytes = -1"));
        assert!(
            e.contains("job.cache.max.bytes") && e.contains("between 0 and 1099511627776"),
            "{e}"
        );
    }

    /// Issue 11 #9: a store without a changelog is refused unless the job opts in to
    /// at-least-once; a memory store without one is refused outright.
    #[test]
    fn stores_without_a_changelog_need_an_explicit_guarantee() {
        use crate::store::config::Guarantee;
        let no_changelog = GOOD.replace("changelog = \"counts-changelog\"", "");
        let e = refused(&no_changelog);
        assert!(
            e.contains("count.toml")
                && e.contains("stores.counts.changelog")
                && e.contains("guarantee = \"at-least-once\""),
            "{e}"
        );
        let opted_in = no_changelog.replace(
            "value.serde = \"u64\"",
            "value.serde = \"u64\"\nguarantee = \"at-least-once\"",
        );
        let j = JobConfig::from_toml_str("count.toml", &opted_in).unwrap();
        assert_eq!(j.stores["counts"].guarantee, Guarantee::AtLeastOnce);
        let memory = opted_in.replace("engine = \"rocksdb\"", "engine = \"memory\"");
        let e = refused(&memory);
        assert!(
            e.contains("stores.counts.engine") && e.contains("keeps nothing"),
            "{e}"
        );
        let e = refused(&GOOD.replace(
            "value.serde = \"u64\"",
            "value.serde = \"u64\"\nguarantee = \"at-most-once\"",
        ));
        assert!(
            e.contains("stores.counts.guarantee") && e.contains("at-least-once"),
            "{e}"
        );
        // With a changelog the store is exactly-once whatever it says.
        let j = JobConfig::from_toml_str("count.toml", GOOD).unwrap();
        assert_eq!(j.stores["counts"].guarantee, Guarantee::ExactlyOnce);
    }

    #[test]
    fn a_topic_in_two_roles_is_refused() {
        let with_outputs = GOOD.replace("commit.ms = 1000", "commit.ms = 1000\noutputs = [\"in\"]");
        let e = refused(&with_outputs);
        assert!(
            e.contains("count.toml")
                && e.contains("job.outputs")
                && e.contains("\"in\"")
                && e.contains("an input of this job"),
            "{e}"
        );
        for (changelog, role) in [
            ("in", "an input of this job"),
            ("out", "an output of this job"),
        ] {
            let text = GOOD
                .replace("commit.ms = 1000", "commit.ms = 1000\noutputs = [\"out\"]")
                .replace("\"counts-changelog\"", &format!("\"{changelog}\""));
            let e = refused(&text);
            assert!(
                e.contains("stores.counts.changelog") && e.contains(role),
                "{changelog}: {e}"
            );
        }
        let two_stores = format!("{GOOD}\n[stores.other]\nchangelog = \"counts-changelog\"\n");
        let e = refused(&two_stores);
        assert!(
            e.contains("stores.other.changelog") && e.contains("the changelog of store `counts`"),
            "{e}"
        );
        let e = refused(&GOOD.replace("inputs = [\"in\"]", "inputs = [\"in\", \"in\"]"));
        assert!(
            e.contains("job.inputs") && e.contains("already an input"),
            "{e}"
        );
        // Distinct topics in each role are fine.
        let ok = GOOD.replace("commit.ms = 1000", "commit.ms = 1000\noutputs = [\"out\"]");
        JobConfig::from_toml_str("count.toml", &ok).unwrap();
    }

    #[test]
    fn numbers_out_of_range_are_refused_naming_key_and_range() {
        for (from, to, key, range) in [
            (
                "commit.ms = 1000",
                "commit.ms = 9223372036854775000",
                "job.commit.ms",
                "between 1 and 86400000",
            ),
            (
                "commit.ms = 1000",
                "commit.ms = 0",
                "job.commit.ms",
                "between 1 and 86400000",
            ),
            (
                "commit.ms = 1000",
                "commit.ms = -5",
                "job.commit.ms",
                "between 1 and 86400000",
            ),
            (
                "window.ms = 10000",
                "window.ms = 0",
                "job.window.ms",
                "between 1 and 604800000",
            ),
            (
                "window.ms = 10000",
                "window.ms = 9223372036854775807",
                "job.window.ms",
                "between 1 and 604800000",
            ),
            (
                "window.ms = 10000",
                "changelog.segment.bytes = 1",
                "job.changelog.segment.bytes",
                "between 4096 and 1073741824",
            ),
            (
                "window.ms = 10000",
                "changelog.segment.bytes = 1099511627776",
                "job.changelog.segment.bytes",
                "between 4096 and 1073741824",
            ),
            (
                "window.ms = 10000",
                "changelog.cleanup.ms = 0",
                "job.changelog.cleanup.ms",
                "between 1 and 604800000",
            ),
            (
                "window.ms = 10000",
                "changelog.cleanup.ms = 9223372036854775807",
                "job.changelog.cleanup.ms",
                "between 1 and 604800000",
            ),
            (
                "engine = \"rocksdb\"",
                "rocksdb.write.buffer.size = 0",
                "stores.counts.rocksdb.write.buffer.size",
                "between 65536",
            ),
            (
                "engine = \"rocksdb\"",
                "rocksdb.bloom.filter.bits = -3",
                "stores.counts.rocksdb.bloom.filter.bits",
                "found -3",
            ),
        ] {
            let e = refused(&GOOD.replace(from, to));
            assert!(
                e.contains("count.toml") && e.contains(&format!("`{key}`")) && e.contains(range),
                "{to}: {e}"
            );
        }
        let edges = GOOD
            .replace("commit.ms = 1000", "commit.ms = 86400000")
            .replace(
                "window.ms = 10000",
                "window.ms = 1\nchangelog.segment.bytes = 4096",
            );
        let j = JobConfig::from_toml_str("count.toml", &edges).unwrap();
        assert_eq!((j.commit_ms, j.window_ms), (86_400_000, Some(1)));
        assert_eq!(j.changelog_segment_bytes, Some(4096));
    }

    #[test]
    fn process_error_policy_keys() {
        use crate::runtime::container::ProcessErrorPolicy;
        let base = "[job]\nname = \"j\"\ntask = \"count\"\ninputs = [\"in\"]\n";
        let parse = |extra: &str| JobConfig::from_toml_str("j.toml", &format!("{base}{extra}"));
        assert_eq!(
            parse("").unwrap().on_process_error,
            ProcessErrorPolicy::Fail
        );
        assert_eq!(
            parse("process.error = \"skip\"\n")
                .unwrap()
                .on_process_error,
            ProcessErrorPolicy::Skip
        );
        assert_eq!(
            parse("process.error = \"dead-letter\"\ndead.letter.topic = \"dlq\"\n")
                .unwrap()
                .on_process_error,
            ProcessErrorPolicy::DeadLetter("dlq".into())
        );
        let e = parse("process.error = \"dead-letter\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("job.dead.letter.topic"), "{e}");
        let e = parse("process.error = \"ignore\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("job.process.error") && e.contains("ignore"),
            "{e}"
        );
        let e = parse("process.error = \"dead-letter\"\ndead.letter.topic = \"in\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("another role"), "{e}");
        let e = parse("dead.letter.topic = \"dlq\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only used with"), "{e}");
    }

    #[test]
    fn http_listen_is_an_address() {
        let base = "[job]\nname = \"j\"\ntask = \"count\"\ninputs = [\"in\"]\n";
        let parse = |extra: &str| JobConfig::from_toml_str("j.toml", &format!("{base}{extra}"));
        assert_eq!(parse("").unwrap().http_listen, None);
        let j = parse("[http]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        assert_eq!(j.http_listen, Some("127.0.0.1:8080".parse().unwrap()));
        let e = parse("[http]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listen") && e.contains("IP:PORT"), "{e}");
        let e = parse("[http]\nlistn = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listn"), "{e}");
    }

    #[test]
    fn kafka_system_and_embedded_section() {
        let base = "[job]\nname = \"j\"\ntask = \"count\"\ninputs = [\"in\"]\n";
        let parse = |extra: &str| JobConfig::from_toml_str("j.toml", &format!("{base}{extra}"));
        let e = parse("system = \"kafka\"\n").unwrap_err().to_string();
        assert!(e.contains("kafka.bootstrap.servers"), "{e}");
        let j = parse(
            "system = \"kafka\"\n[kafka]\nbootstrap.servers = \"h:9092\"\napi.version.request = false\nlinger.ms = 3\n",
        )
        .unwrap();
        assert_eq!(j.system, System::Kafka);
        assert_eq!(j.kafka["api.version.request"], "false");
        assert_eq!(j.kafka["linger.ms"], "3");
        assert!(j.kafka_settings().legacy());
        let e = parse("system = \"pulsar\"\n").unwrap_err().to_string();
        assert!(e.contains("job.system") && e.contains("pulsar"), "{e}");
        // [embedded] and the old [job] names both work.
        let j = parse("[embedded]\nlog.fsync = false\nchangelog.segment.bytes = 8192\n").unwrap();
        assert!(!j.log_fsync);
        assert_eq!(j.changelog_segment_bytes, Some(8192));
        let j = parse("log.fsync = false\n").unwrap();
        assert!(!j.log_fsync);
    }
}
