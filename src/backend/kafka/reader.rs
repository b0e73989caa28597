//! Reading one partition with a consumer assigned to it (no group rebalancing).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer as _;

use super::context::{Consumer, KafkaContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use super::{KafkaSettings, kafka_err};
use crate::backend::{LogReader, Record, RecordBatch, Result, TopicPartition};

/// How long one poll waits.
const POLL: Duration = Duration::from_millis(200);
/// How long a reader keeps retrying errors that may pass (a broker restarting).
const GIVE_UP: Duration = Duration::from_secs(300);
/// How long the high watermark found at the end of a partition must stay unread before the
/// reader checks whether the offsets below it hold records at all ([`GapProbe`]).
const GAP_GRACE: Duration = Duration::from_secs(1);
/// How long one such check may take before it counts as inconclusive (the broker is slow or
/// down): the container thread calls the reader and must not wait long on the broker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Consumer settings of a bulk reader (a full restore), each applied unless the user set it
/// (or a setting it must agree with, listed after it): fetches of 8 MiB per partition
/// instead of 1 MiB (fewer round trips to the broker, which serves one fetch at a time per
/// connection), and a prefetch queue that does not stop at 100k messages, so librdkafka
/// keeps fetching while the restore sorts and builds files (the queue stays bounded by
/// `queued.max.messages.kbytes`, 64 MiB by default). Measured in `benches/kafka.rs`
/// (`docs/BENCHMARKS.md`): 32 MiB fetches were slower, and so was `fetch.wait.max.ms=100`.
const BULK_SETTINGS: &[(&str, &str, &[&str])] = &[
    (
        "fetch.message.max.bytes",
        "8388608",
        &[
            "max.partition.fetch.bytes",
            "fetch.max.bytes",
            "receive.message.max.bytes",
        ],
    ),
    ("queued.min.messages", "1000000", &[]),
];

/// Errors no retry can fix: the position is gone (retention) or the request is wrong.
fn is_permanent(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::OffsetOutOfRange
                | C::AutoOffsetReset
                | C::InvalidArgument
                | C::TopicAuthorizationFailed
        )
    )
}

/// A reader of one Kafka partition.
pub(super) struct KafkaReader {
    tp: TopicPartition,
    consumer: Consumer,
    /// The backend's metadata client, which asks for watermarks. Not `consumer`: Kafka
    /// answers the requests of one connection in order, so a ListOffsets sent on the
    /// reader's own connection waits behind its fetch, which the broker holds for up to
    /// `fetch.wait.max.ms` (500 ms) at the end of the partition. Asked that way at every
    /// end of the partition, it stalled the run loop ~0.5 s per write to `gregor serve`.
    meta: Arc<Consumer>,
    position: u64,
    at_end: bool,
    /// At the end, the high watermark was above the position (and when that was seen):
    /// either records were appended after the consumer's end-of-partition event (they are
    /// on their way) or the offsets below it hold no records (compacted away, transaction
    /// markers). Moved past only once nothing arrived for [`GAP_GRACE`] *and* the
    /// [`GapProbe`] found no record below it: jumping at once skipped records appended right
    /// after the event (the key-value service writes its input while it reads it), and
    /// jumping after a timer alone would skip records a slow broker has not handed over yet.
    pending_end: Option<(u64, Instant)>,
    /// Made at the first check (most readers never need one).
    probe: Option<GapProbe>,
    settings: KafkaSettings,
}

/// A second consumer of the reader's partition that answers one question: does any record
/// lie in `[from, until)`? Offsets below the high watermark are final (nothing is ever
/// appended below it), so "no" is a fact, not a guess: the probe is assigned at `from`
/// after `until` was read as the watermark, and librdkafka signals the end of the partition
/// only once its fetch position reached the watermark of a fetch made after that, having
/// handed over every record on the way. It reads uncommitted records too, so an open
/// transaction's records count as records (not gaps) until they are committed or aborted.
struct GapProbe {
    consumer: Consumer,
}

impl GapProbe {
    fn new(settings: &KafkaSettings, tp: &TopicPartition) -> Result<Self> {
        let mut cc = settings.client_config();
        cc.set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            // Answer at once: no waiting for bytes that may never come.
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "1");
        if !settings.legacy() {
            cc.set("isolation.level", "read_uncommitted");
        }
        let consumer: Consumer = cc
            .create_with_context(KafkaContext)
            .map_err(|e| kafka_err(format!("creating a consumer of {tp}"), e))?;
        Ok(GapProbe { consumer })
    }

    /// `Some(true)` if no record lies in `[from, until)`, `Some(false)` if one does, `None`
    /// if the broker did not answer within [`PROBE_TIMEOUT`].
    fn only_gaps(&self, tp: &TopicPartition, from: u64, until: u64) -> Option<bool> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition as i32, Offset::Offset(from as i64))
            .ok()?;
        self.consumer.assign(&tpl).ok()?;
        let started = Instant::now();
        let answer = loop {
            let left = PROBE_TIMEOUT.saturating_sub(started.elapsed());
            if left.is_zero() {
                break None;
            }
            match self.consumer.poll(left) {
                Some(Ok(m)) => {
                    let offset = m.offset().max(0) as u64;
                    if offset >= from {
                        break Some(offset >= until);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break Some(true),
                Some(Err(e)) => {
                    tracing::debug!("checking {tp} for records in [{from}, {until}): {e}");
                }
                None => {}
            }
        };
        // Stop fetching until the next check.
        let _ = self.consumer.unassign();
        answer
    }
}

impl KafkaReader {
    /// A reader of `tp` from `from`; `meta` (a client that fetches nothing) asks for
    /// watermarks.
    pub(super) fn open(
        settings: &KafkaSettings,
        meta: &Arc<Consumer>,
        tp: &TopicPartition,
        from: u64,
    ) -> Result<Self> {
        Self::open_with(settings, meta, tp, from, false)
    }

    /// A reader of `tp` from `from` tuned for throughput ([`BULK_SETTINGS`]).
    pub(super) fn open_bulk(
        settings: &KafkaSettings,
        meta: &Arc<Consumer>,
        tp: &TopicPartition,
        from: u64,
    ) -> Result<Self> {
        Self::open_with(settings, meta, tp, from, true)
    }

    fn open_with(
        settings: &KafkaSettings,
        meta: &Arc<Consumer>,
        tp: &TopicPartition,
        from: u64,
        bulk: bool,
    ) -> Result<Self> {
        let mut cc = settings.client_config();
        cc.set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error");
        if bulk {
            for (key, value, related) in BULK_SETTINGS {
                let user_set = std::iter::once(key)
                    .chain(related.iter())
                    .any(|k| settings.client.contains_key(*k));
                if !user_set {
                    cc.set(*key, *value);
                }
            }
        }
        let consumer: Consumer = cc
            .create_with_context(KafkaContext)
            .map_err(|e| kafka_err(format!("creating a consumer of {tp}"), e))?;
        let mut r = KafkaReader {
            tp: tp.clone(),
            consumer,
            meta: Arc::clone(meta),
            position: from,
            at_end: false,
            pending_end: None,
            probe: None,
            settings: settings.clone(),
        };
        r.assign(from)?;
        Ok(r)
    }

    fn assign(&mut self, from: u64) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.tp.topic,
            self.tp.partition as i32,
            Offset::Offset(from as i64),
        )
        .map_err(|e| kafka_err(format!("reading {}", self.tp), e))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| kafka_err(format!("reading {}", self.tp), e))?;
        self.position = from;
        self.at_end = false;
        self.pending_end = None;
        Ok(())
    }
}

impl KafkaReader {
    /// The partition's high watermark now (the offset the next record appended gets).
    /// Retries what may pass (a broker restarting) for up to [`GIVE_UP`], like reads.
    pub(super) fn high_watermark(&self) -> Result<u64> {
        let started = Instant::now();
        let mut warned = started;
        loop {
            match self.meta.fetch_watermarks(
                &self.tp.topic,
                self.tp.partition as i32,
                Duration::from_secs(10),
            ) {
                Ok((_, high)) => return Ok(high.max(0) as u64),
                Err(e) if is_permanent(&e) || started.elapsed() > GIVE_UP => {
                    return Err(kafka_err(format!("reading the end of {}", self.tp), e));
                }
                Err(e) => {
                    if warned.elapsed() >= Duration::from_secs(10) || warned == started {
                        tracing::warn!("reading the end of {}: {e}; retrying", self.tp);
                        warned = Instant::now();
                    }
                    std::thread::sleep(POLL);
                }
            }
        }
    }

    /// Reads up to `max` records from the position, handing each to `emit` as (offset,
    /// timestamp, key, value) borrowed from the consumer's message; returns how many. Reads
    /// nothing (0) at the end of the partition. Records below the position (Kafka may hand
    /// back a whole compressed batch before it) are skipped.
    fn read_with(
        &mut self,
        max: usize,
        mut emit: impl FnMut(u64, i64, &[u8], Option<&[u8]>),
    ) -> Result<usize> {
        let mut n = 0usize;
        let started = Instant::now();
        let mut warned = started;
        while n < max {
            // Once something was read, or the end was reached, only take what is there
            // (unless records may be on their way, see `pending_end`).
            let timeout = if n == 0 && (!self.at_end || self.pending_end.is_some()) {
                POLL
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => {
                    let offset = m.offset().max(0) as u64;
                    self.at_end = false;
                    self.pending_end = None;
                    if offset < self.position {
                        // Kafka may hand back a whole compressed batch before the position.
                        continue;
                    }
                    self.position = offset + 1;
                    emit(
                        offset,
                        m.timestamp().to_millis().unwrap_or(0),
                        m.key().unwrap_or_default(),
                        m.payload(),
                    );
                    n += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.at_end = true;
                    // The end of the partition as the consumer saw it; the watermark now may
                    // be higher (see `pending_end`).
                    if let Ok((_, high)) = self.meta.fetch_watermarks(
                        &self.tp.topic,
                        self.tp.partition as i32,
                        Duration::from_secs(5),
                    ) {
                        let high = high.max(0) as u64;
                        if high > self.position {
                            self.pending_end = Some((high, Instant::now()));
                        }
                    }
                    break;
                }
                Some(Err(e)) if is_permanent(&e) || started.elapsed() > GIVE_UP => {
                    return Err(kafka_err(format!("reading {}", self.tp), e));
                }
                Some(Err(e)) => {
                    // A broker down or restarting: librdkafka reconnects on its own.
                    if warned.elapsed() >= Duration::from_secs(10) || warned == started {
                        tracing::warn!("reading {}: {e}; retrying", self.tp);
                        warned = Instant::now();
                    }
                }
                None if n > 0 => break,
                None if self.at_end => {
                    if let Some((high, since)) = self.pending_end
                        && since.elapsed() >= GAP_GRACE
                    {
                        if self.only_gaps_below(high) {
                            // Nothing lies below the watermark: move past the gaps.
                            self.position = self.position.max(high);
                            self.pending_end = None;
                        } else {
                            // Records are on their way (or in an open transaction): wait.
                            self.pending_end = Some((high, Instant::now()));
                        }
                    }
                    break;
                }
                None => {
                    if warned.elapsed() >= Duration::from_secs(10) {
                        tracing::warn!(
                            "waiting for records of {} at offset {} from Kafka",
                            self.tp,
                            self.position
                        );
                        warned = Instant::now();
                    }
                }
            }
        }
        Ok(n)
    }
}

impl KafkaReader {
    /// Whether the [`GapProbe`] finds no record between the position and `high`; `false`
    /// when it cannot tell.
    fn only_gaps_below(&mut self, high: u64) -> bool {
        if self.probe.is_none() {
            match GapProbe::new(&self.settings, &self.tp) {
                Ok(p) => self.probe = Some(p),
                Err(e) => {
                    tracing::warn!("{e}");
                    return false;
                }
            }
        }
        let answer = self
            .probe
            .as_ref()
            .and_then(|p| p.only_gaps(&self.tp, self.position, high));
        tracing::debug!(
            "{}: records in [{}, {high})? probe says only gaps: {answer:?}",
            self.tp,
            self.position
        );
        answer == Some(true)
    }
}

impl LogReader for KafkaReader {
    fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        self.read_with(max, |offset, timestamp, key, value| {
            records.push(Record {
                offset,
                timestamp,
                key: key.to_vec(),
                value: value.map(<[u8]>::to_vec),
            });
        })?;
        Ok(records)
    }

    fn read_into(&mut self, batch: &mut RecordBatch, max: usize) -> Result<usize> {
        self.read_with(max, |offset, timestamp, key, value| {
            batch.push(offset, timestamp, key, value);
        })
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn seek(&mut self, offset: u64) -> Result<()> {
        self.assign(offset)
    }
}
