//! The Kafka backend, on librdkafka (the `rdkafka` crate, bundled build): inputs, outputs,
//! changelogs and checkpoints live in Kafka topics.
//!
//! - **Admin**: partition counts from cluster metadata (asking for *all* topics, so a broker
//!   with `auto.create.topics.enable` never creates one by accident), offsets from the
//!   watermarks, topics created with the admin API where the broker has one. Kafka before
//!   0.10.1 has none (and librdkafka is told so by `api.version.request=false`): a missing
//!   topic is then an error that prints the exact `kafka-topics.sh --create` command, and a
//!   changelog's cleanup policy cannot be checked (said once).
//! - **Readers** (`reader`): a consumer per partition with manual assignment; an empty
//!   batch means the end of the partition was reached.
//! - **Sinks** (`sink`): one producer per task; `flush` waits for every acknowledgement and
//!   returns the acknowledged ends. Idempotent where the broker supports it, otherwise one
//!   request in flight with retries, so records of a partition keep their order.
//! - **Checkpoints** (`checkpoints`): a compacted topic with one partition; key = task
//!   name, value = the checkpoint as JSON.
//! - **No truncation**: restore TRIMs uncommitted changelog records (see `docs/design.md`);
//!   output is at-least-once.

mod checkpoints;
mod context;
mod reader;
pub mod roles;
mod sink;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer as _;

use context::{Consumer, KafkaContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use super::{
    Backend, BackendError, ErrorClass, LogReader, Offsets, RecordSink, Result, TopicPartition,
    TopicRole, TopicSpec,
};
use crate::checkpoint::Checkpoint;

/// How a job reaches Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// librdkafka properties, handed over as they are (`bootstrap.servers`,
    /// `security.protocol`, `api.version.request`, ...).
    pub client: BTreeMap<String, String>,
    /// The topic holding the job's checkpoints (compacted, one partition).
    pub checkpoint_topic: String,
    /// The consumer group input offsets are committed to (for lag tools).
    pub group: String,
    /// Replication factor of the topics gregor creates.
    pub replication_factor: i32,
    /// How long a metadata or offset request may take before it fails as retriable.
    pub request_timeout: Duration,
}

impl KafkaSettings {
    /// Settings for job `job` on the brokers at `bootstrap`.
    pub fn new(job: &str, bootstrap: &str) -> Self {
        KafkaSettings {
            client: BTreeMap::from([("bootstrap.servers".to_string(), bootstrap.to_string())]),
            checkpoint_topic: format!("__gregor-checkpoints-{job}"),
            group: format!("gregor-{job}"),
            replication_factor: 1,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Whether the brokers predate the admin API and idempotence (Kafka 0.9 / 0.10.0): the
    /// user told librdkafka not to ask for API versions.
    pub fn legacy(&self) -> bool {
        self.client
            .get("api.version.request")
            .is_some_and(|v| v == "false")
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.client {
            c.set(k, v);
        }
        if self.legacy() {
            // librdkafka warns at every client creation that the two settings Kafka 0.9
            // needs are deprecated; errors still come through.
            c.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
        }
        c
    }

    /// Producer settings that keep each partition's records in order on every broker:
    /// `acks=all`, idempotence where the broker has it, otherwise one request in flight (a
    /// retry may then duplicate a record, which only delays the expected changelog end; see
    /// `crate::changelog`).
    fn producer_config(&self) -> ClientConfig {
        let mut cc = self.client_config();
        cc.set("acks", "all");
        if self.legacy() {
            cc.set("max.in.flight.requests.per.connection", "1");
        } else {
            cc.set("enable.idempotence", "true");
        }
        cc
    }

    fn bootstrap(&self) -> &str {
        self.client
            .get("bootstrap.servers")
            .map_or("<bootstrap.servers>", String::as_str)
    }
}

/// A Kafka cluster as a backend. Cheap to clone.
#[derive(Clone)]
pub struct KafkaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    /// Metadata, watermarks and group commits; it fetches nothing, so readers ask it for
    /// watermarks too (see `reader::KafkaReader`).
    meta: Arc<Consumer>,
    admin: Option<AdminClient<KafkaContext>>,
    checkpoints: checkpoints::CheckpointTopic,
    policy_warned: AtomicBool,
    group_warned: AtomicBool,
    roles_warned: AtomicBool,
    /// Per partition: the high watermark last seen and the end verified for it.
    verified_ends: Mutex<BTreeMap<TopicPartition, (u64, u64)>>,
    /// When a quick watermark request ([`Backend::readable_end_once`]) last failed: the
    /// next ones fail at once for a second, so a loop over many partitions does not wait
    /// out one timeout per partition while the broker is unreachable.
    quick_failed: Mutex<Option<std::time::Instant>>,
}

/// How long a quick watermark request ([`Backend::readable_end_once`]) may take.
const QUICK_TIMEOUT: Duration = Duration::from_millis(500);

/// How long one wait for delivery reports lasts in [`flush_producer`].
const FLUSH_POLL: Duration = Duration::from_millis(1);

/// Waits until every record `producer` was given is acknowledged (or failed: the delivery
/// callbacks say which), for at most `timeout`.
///
/// Not `Producer::flush`: rdkafka's `BaseProducer::flush` (0.39) serves delivery reports with
/// `poll(100 ms)`, which returns only when the 100 ms are over, so every flush took at least
/// 100 ms however fast the broker answered (a put to `gregor serve` on Kafka took 100 ms of
/// that alone). Here the reports are served in steps of [`FLUSH_POLL`], so a flush returns
/// within a millisecond of the last acknowledgement. Each step first asks librdkafka to send
/// what it holds (`rd_kafka_flush` with no wait: queued records go out without waiting for
/// `linger.ms`).
pub(crate) fn flush_producer<C>(producer: &BaseProducer<C>, timeout: Duration) -> KafkaResult<()>
where
    C: ProducerContext,
{
    let started = std::time::Instant::now();
    loop {
        // Sends what lingers; `Ok` once nothing is in flight and every report was served.
        if producer.flush(Duration::ZERO).is_ok() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        producer.poll(FLUSH_POLL);
    }
}

/// Classifies a librdkafka error.
pub(crate) fn kafka_err(context: impl Into<String>, e: KafkaError) -> BackendError {
    let class = match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch,
        ) => ErrorClass::Fenced,
        Some(
            RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::MessageTimedOut,
        ) => ErrorClass::Retriable,
        _ => ErrorClass::Fatal,
    };
    BackendError::Failed {
        class,
        context: context.into(),
        source: Box::new(e),
    }
}

impl KafkaBackend {
    /// Connects to the cluster in `settings` and makes sure the checkpoint topic exists.
    /// Fails with a clear error if no broker answers within the request timeout.
    pub fn connect(settings: KafkaSettings) -> Result<Self> {
        let backend = Self::connect_without_checkpoints(settings)?;
        let topic = backend.inner.settings.checkpoint_topic.clone();
        backend.ensure_topic_inner(&topic, 1, true)?;
        Ok(backend)
    }

    /// Like [`connect`](Self::connect), for tools that only read and write topics (the
    /// checkpoint topic is neither checked nor created; reading checkpoints then fails if it
    /// does not exist).
    pub fn connect_without_checkpoints(settings: KafkaSettings) -> Result<Self> {
        let mut cc = settings.client_config();
        cc.set("enable.auto.commit", "false");
        cc.set("group.id", &settings.group);
        let meta: Consumer = cc
            .create_with_context(KafkaContext)
            .map_err(|e| kafka_err("creating a Kafka client", e))?;
        let admin = if settings.legacy() {
            None
        } else {
            Some(
                settings
                    .client_config()
                    .create_with_context(KafkaContext)
                    .map_err(|e| kafka_err("creating a Kafka admin client", e))?,
            )
        };
        // Fail early, with the address, if no broker answers.
        meta.fetch_metadata(None, settings.request_timeout)
            .map_err(|e| {
                kafka_err(
                    format!(
                        "no Kafka broker answered at {} within {:?} (is it running? for Kafka 0.9 set api.version.request=false and broker.version.fallback=0.9.0.1)",
                        settings.bootstrap(),
                        settings.request_timeout
                    ),
                    e,
                )
            })?;
        let meta = Arc::new(meta);
        let checkpoints = checkpoints::CheckpointTopic::new(&settings, &meta)?;
        let backend = KafkaBackend {
            inner: Arc::new(Inner {
                settings,
                meta,
                admin,
                checkpoints,
                policy_warned: AtomicBool::new(false),
                group_warned: AtomicBool::new(false),
                roles_warned: AtomicBool::new(false),
                verified_ends: Mutex::new(BTreeMap::new()),
                quick_failed: Mutex::new(None),
            }),
        };
        Ok(backend)
    }

    /// The settings this backend was made with.
    pub fn settings(&self) -> &KafkaSettings {
        &self.inner.settings
    }

    fn timeout(&self) -> Duration {
        self.inner.settings.request_timeout
    }

    /// Runs `f` until it succeeds or `request_timeout` has passed, backing off between
    /// tries and saying so every 10 s: while a broker restarts, metadata and offset requests
    /// fail for a while (no leader yet, unknown partition) on topics that exist.
    fn retrying<T>(&self, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let mut said = None::<std::time::Instant>;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if started.elapsed() < self.timeout() => {
                    if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!("{what}: {e}; retrying");
                        said = Some(std::time::Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every topic of the cluster with its partition count.
    pub fn topics(&self) -> Result<BTreeMap<String, u32>> {
        let md = self.retrying("fetching cluster metadata", || {
            self.inner
                .meta
                .fetch_metadata(None, self.timeout())
                .map_err(|e| kafka_err("fetching cluster metadata", e))
        })?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as u32))
            .collect())
    }

    fn ensure_topic_inner(&self, name: &str, partitions: u32, compacted: bool) -> Result<u32> {
        let have = self.topics()?.get(name).copied();
        let n = match have {
            Some(n) => n,
            None => {
                self.create_topic(name, partitions.max(1), compacted)?;
                partitions.max(1)
            }
        };
        if n < partitions {
            return Err(BackendError::TopicMismatch {
                topic: name.to_string(),
                reason: format!(
                    "it has {n} partitions but {partitions} are needed (one per task); \
                     a changelog's partition count cannot change without moving state"
                ),
            });
        }
        if compacted && have.is_some() {
            self.check_compacted(name)?;
        }
        Ok(n)
    }

    /// Creates `name` with the admin API; on brokers without one, an error with the command.
    fn create_topic(&self, name: &str, partitions: u32, compacted: bool) -> Result<()> {
        let policy = if compacted { "compact" } else { "delete" };
        let Some(admin) = &self.inner.admin else {
            return Err(BackendError::TopicMismatch {
                topic: name.to_string(),
                reason: format!(
                    "it does not exist, and this broker has no admin API to create it (api.version.request=false); create it with:\n  \
                     kafka-topics.sh --zookeeper <zookeeper> --create --topic {name} --partitions {partitions} --replication-factor {} --config cleanup.policy={policy}",
                    self.inner.settings.replication_factor
                ),
            });
        };
        let parts = i32::try_from(partitions).unwrap_or(i32::MAX);
        let topic = NewTopic::new(
            name,
            parts,
            TopicReplication::Fixed(self.inner.settings.replication_factor),
        )
        .set("cleanup.policy", policy);
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout()));
        let results = futures_executor::block_on(admin.create_topics([&topic], &opts))
            .map_err(|e| kafka_err(format!("creating topic `{name}`"), e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(kafka_err(
                        format!("creating topic `{t}`"),
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        tracing::info!(topic = name, partitions, policy, "created Kafka topic");
        Ok(())
    }

    /// Also commits the checkpointed input offsets to the job's consumer group, so standard
    /// lag tools (`kafka-consumer-groups.sh`) see them. The checkpoint topic stays the truth;
    /// a failure here is only logged (once).
    fn commit_group_offsets(&self, task: &str, checkpoint: &Checkpoint) {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (topic, parts) in &checkpoint.inputs {
            for (&p, &next) in parts {
                let _ =
                    tpl.add_partition_offset(topic, p as i32, rdkafka::Offset::Offset(next as i64));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self
            .inner
            .meta
            .commit(&tpl, rdkafka::consumer::CommitMode::Async)
            && !self.inner.group_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                task,
                group = %self.inner.settings.group,
                "could not commit input offsets to the consumer group (lag tools will not see them; the checkpoint topic is unaffected): {e}"
            );
        }
    }

    /// The end of `tp` given its watermarks: the high watermark, unless records lie at or
    /// past it. That happens on tansu 0.6, whose ListOffsets(latest) answers too low while
    /// the last batch holds more than one record; reading from just below the watermark to
    /// the end of the partition finds the true end. Cached per watermark, so a partition that
    /// does not change costs one watermark request.
    fn verified_end(&self, tp: &TopicPartition, low: u64, high: u64) -> Result<u64> {
        let mut cache = crate::sync::lock(&self.inner.verified_ends);
        if let Some(&(h, end)) = cache.get(tp)
            && h == high
        {
            return Ok(end);
        }
        let mut end = high;
        // Only brokers that speak the newer protocol can be tansu; a legacy (0.9) broker's
        // watermark is right, and the check costs a new consumer (~1.5 s there) per new
        // watermark, which a key-value service writing its input pays on every write.
        if high > low && !self.inner.settings.legacy() {
            let mut r =
                reader::KafkaReader::open(&self.inner.settings, &self.inner.meta, tp, high - 1)?;
            loop {
                let batch = r.next_batch(1024)?;
                let Some(last) = batch.last() else { break };
                end = end.max(last.offset + 1);
            }
            if end != high {
                tracing::debug!(%tp, high, end, "records past the high watermark (tansu's ListOffsets)");
            }
        }
        cache.insert(tp.clone(), (high, end));
        Ok(end)
    }

    fn check_compacted(&self, name: &str) -> Result<()> {
        let Some(admin) = &self.inner.admin else {
            if !self.inner.policy_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "this broker cannot describe topic configs (api.version.request=false): the cleanup policy of changelog and checkpoint topics was not checked; they must be compacted"
                );
            }
            return Ok(());
        };
        let opts = AdminOptions::new().request_timeout(Some(self.timeout()));
        let spec = ResourceSpecifier::Topic(name);
        let described = futures_executor::block_on(admin.describe_configs([&spec], &opts));
        let policy = match described {
            Ok(mut rs) => match rs.pop() {
                Some(Ok(res)) => res.get("cleanup.policy").and_then(|e| e.value.clone()),
                _ => None,
            },
            Err(_) => None,
        };
        match policy {
            Some(p) if p.split(',').any(|x| x.trim() == "compact") => Ok(()),
            Some(p) => Err(BackendError::TopicMismatch {
                topic: name.to_string(),
                reason: format!(
                    "it has cleanup.policy={p}; a changelog or checkpoint topic must be compacted, or retention deletes committed state (kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config cleanup.policy=compact)"
                ),
            }),
            None => {
                if !self.inner.policy_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        topic = name,
                        "could not read the topic's cleanup policy; it must be compacted"
                    );
                }
                Ok(())
            }
        }
    }
}

impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn partitions(&self, topic: &str) -> Result<Option<u32>> {
        Ok(self.topics()?.get(topic).copied())
    }

    fn ensure_topic(&self, spec: &TopicSpec) -> Result<u32> {
        let compacted = spec.role == TopicRole::Changelog;
        self.ensure_topic_inner(&spec.name, spec.partitions, compacted)
    }

    fn claim_roles(&self, job: &str, claims: &[crate::backend::roles::RoleClaim]) -> Result<()> {
        self.claim(job, claims)
    }

    fn offsets(&self, tp: &TopicPartition) -> Result<Offsets> {
        self.retrying(&format!("offsets of {tp}"), || {
            let (low, high) = self
                .inner
                .meta
                .fetch_watermarks(&tp.topic, tp.partition as i32, self.timeout())
                .map_err(|e| kafka_err(format!("offsets of {tp}"), e))?;
            let (start, high) = (low.max(0) as u64, high.max(0) as u64);
            Ok(Offsets {
                start,
                end: self.verified_end(tp, start, high)?,
            })
        })
    }

    fn end_for_metrics(&self, tp: &TopicPartition) -> Result<u64> {
        self.readable_end_once(tp)
    }

    fn readable_end_once(&self, tp: &TopicPartition) -> Result<u64> {
        let what = format!("offsets of {tp}");
        if let Some(at) = *crate::sync::lock(&self.inner.quick_failed)
            && at.elapsed() < Duration::from_secs(1)
        {
            return Err(BackendError::retriable(
                what,
                "the broker did not answer a moment ago",
            ));
        }
        let asked = self
            .inner
            .meta
            .fetch_watermarks(&tp.topic, tp.partition as i32, QUICK_TIMEOUT)
            .map_err(|e| kafka_err(what, e))
            .and_then(|(low, high)| self.verified_end(tp, low.max(0) as u64, high.max(0) as u64));
        *crate::sync::lock(&self.inner.quick_failed) = asked.is_err().then(std::time::Instant::now);
        asked
    }

    fn open_reader(&self, tp: &TopicPartition, from: u64) -> Result<Box<dyn LogReader>> {
        Ok(Box::new(reader::KafkaReader::open(
            &self.inner.settings,
            &self.inner.meta,
            tp,
            from,
        )?))
    }

    fn open_bulk_reader(&self, tp: &TopicPartition, from: u64) -> Result<Box<dyn LogReader>> {
        Ok(Box::new(reader::KafkaReader::open_bulk(
            &self.inner.settings,
            &self.inner.meta,
            tp,
            from,
        )?))
    }

    fn open_sink(&self, task: &str) -> Result<Box<dyn RecordSink>> {
        Ok(Box::new(sink::KafkaSink::open(&self.inner.settings, task)?))
    }

    fn read_checkpoint(&self, task: &str) -> Result<Option<Checkpoint>> {
        self.inner.checkpoints.read(task)
    }

    fn write_checkpoint(&self, task: &str, checkpoint: &Checkpoint) -> Result<()> {
        self.inner.checkpoints.write(task, checkpoint, None)?;
        self.commit_group_offsets(task, checkpoint);
        Ok(())
    }

    fn write_checkpoint_unless(
        &self,
        task: &str,
        checkpoint: &Checkpoint,
        abort: &crate::backend::AbortCheck,
    ) -> Result<()> {
        self.inner
            .checkpoints
            .write(task, checkpoint, Some(abort))?;
        self.commit_group_offsets(task, checkpoint);
        Ok(())
    }

    fn can_truncate(&self) -> bool {
        false
    }

    fn truncate(&self, tp: &TopicPartition, _to: u64) -> Result<()> {
        Err(BackendError::Unsupported {
            backend: "kafka",
            what: format!("truncating {tp}"),
        })
    }
}
