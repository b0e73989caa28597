//! A task's producer: changelog and output records of one task, in order per partition;
//! `flush` waits for every acknowledgement and returns the acknowledged ends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, PurgeConfig};

use super::{KafkaSettings, kafka_err};
use crate::backend::{AbortCheck, BackendError, RecordSink, Result, TopicPartition};

/// What the delivery callbacks learned since the last flush.
#[derive(Default)]
struct Deliveries {
    ends: BTreeMap<(String, i32), u64>,
    error: Option<KafkaError>,
}

/// The producer's context: collects acknowledgements and failures.
#[derive(Default)]
struct SinkContext {
    deliveries: Mutex<Deliveries>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::context::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::context::error(&error, reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut d = crate::sync::lock(&self.deliveries);
        match result {
            Ok(m) => {
                let end = m.offset().max(0) as u64 + 1;
                let e = d
                    .ends
                    .entry((m.topic().to_string(), m.partition()))
                    .or_default();
                *e = (*e).max(end);
            }
            Err((e, _)) => {
                d.error.get_or_insert_with(|| e.clone());
            }
        }
    }
}

/// The record sink of one task.
pub(super) struct KafkaSink {
    task: String,
    producer: BaseProducer<SinkContext>,
    touched: BTreeSet<TopicPartition>,
    /// `message.timeout.ms`: how long a flush waits for a broker before it fails.
    give_up_after: Duration,
    /// Sends since delivery reports were last served.
    unpolled: u32,
    /// Asked while waiting for the broker (see [`RecordSink::set_abort`]).
    abort: Option<AbortCheck>,
}

/// How long one wait for the broker lasts before the abort check is asked again.
const WAIT_SLICE: Duration = Duration::from_millis(100);

impl KafkaSink {
    pub(super) fn open(settings: &KafkaSettings, task: &str) -> Result<Self> {
        let mut cc = settings.producer_config();
        if !settings.client.contains_key("linger.ms") {
            cc.set("linger.ms", "5");
        }
        let give_up_after = Duration::from_millis(
            settings
                .client
                .get("message.timeout.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(300_000),
        );
        let producer = cc
            .create_with_context(SinkContext::default())
            .map_err(|e| kafka_err(format!("task `{task}`: creating its producer"), e))?;
        Ok(KafkaSink {
            task: task.to_string(),
            producer,
            touched: BTreeSet::new(),
            give_up_after,
            unpolled: 0,
            abort: None,
        })
    }

    /// `Err` once the abort check says so: what is queued is purged, never to be sent.
    fn check_abort(&self, doing: &str) -> Result<()> {
        let Some(reason) = self.abort.as_ref().and_then(|a| a().err()) else {
            return Ok(());
        };
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        Err(BackendError::fatal(
            format!("task `{}`: {doing}", self.task),
            format!("stopped waiting for Kafka: {reason}"),
        ))
    }

    fn take_error(&self) -> Option<KafkaError> {
        crate::sync::lock(&self.producer.context().deliveries)
            .error
            .take()
    }
}

impl RecordSink for KafkaSink {
    fn send(
        &mut self,
        tp: &TopicPartition,
        timestamp: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        if !self.touched.contains(tp) {
            self.touched.insert(tp.clone());
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&tp.topic)
            .partition(tp.partition as i32)
            .key(key)
            .timestamp(timestamp);
        if let Some(v) = value {
            record = record.payload(v);
        }
        // Serve delivery reports now and then: until served they count against the local
        // queue's limit.
        self.unpolled += 1;
        if self.unpolled >= 1024 {
            self.unpolled = 0;
            self.producer.poll(Duration::ZERO);
        }
        let started = Instant::now();
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: serve delivery reports, then try again.
                    record = r;
                    self.producer.poll(WAIT_SLICE);
                    self.check_abort(&format!("sending to {tp} (queue full)"))?;
                    if started.elapsed() > self.give_up_after {
                        return Err(kafka_err(
                            format!("task `{}`: sending to {tp} (queue full)", self.task),
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        ));
                    }
                }
                Err((e, _)) => {
                    return Err(kafka_err(
                        format!("task `{}`: sending to {tp}", self.task),
                        e,
                    ));
                }
            }
        }
    }

    fn flush(&mut self) -> Result<BTreeMap<TopicPartition, u64>> {
        let started = Instant::now();
        let mut warned = Instant::now();
        loop {
            match super::flush_producer(&self.producer, WAIT_SLICE) {
                Ok(()) => break,
                Err(e) if started.elapsed() < self.give_up_after => {
                    self.check_abort("flushing its producer")?;
                    if started.elapsed() < Duration::from_secs(5) {
                        continue;
                    }
                    if warned.elapsed() >= Duration::from_secs(10) || warned == started {
                        tracing::warn!(
                            task = %self.task,
                            "waiting for Kafka to acknowledge {} records ({e}); retrying",
                            self.producer.in_flight_count()
                        );
                        warned = Instant::now();
                    }
                }
                Err(e) => {
                    return Err(kafka_err(
                        format!("task `{}`: flushing its producer", self.task),
                        e,
                    ));
                }
            }
        }
        if let Some(e) = self.take_error() {
            return Err(kafka_err(
                format!("task `{}`: a record was not delivered", self.task),
                e,
            ));
        }
        let d = crate::sync::lock(&self.producer.context().deliveries);
        let mut ends = BTreeMap::new();
        for tp in std::mem::take(&mut self.touched) {
            let Some(&end) = d.ends.get(&(tp.topic.clone(), tp.partition as i32)) else {
                return Err(BackendError::fatal(
                    format!("task `{}`: flushing its producer", self.task),
                    format!("no acknowledgement arrived for the records sent to {tp}"),
                ));
            };
            ends.insert(tp, end);
        }
        Ok(ends)
    }

    fn set_abort(&mut self, abort: Option<AbortCheck>) {
        self.abort = abort;
    }
}

impl Drop for KafkaSink {
    /// A sink dropped with records still queued belongs to a task dropped without a commit
    /// (a crash-like close, or fenced): those records must not reach the broker later, when
    /// a new owner may be writing the same partitions.
    fn drop(&mut self) {
        if self.producer.in_flight_count() > 0 {
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
        }
    }
}
