//! The key-value service's writer: appends writes to the job's input topic at the key's
//! partition (murmur2, as a Kafka producer would), through the backend seam
//! ([`Backend::open_sink`] / [`RecordSink`]).
//!
//! Each input partition has a lane: a queue of writes, one sink (one producer per partition,
//! so writes to one partition keep their order) and a writer thread, started on first need.
//! Writes commit in groups, one group at a time per lane: the group's leader appends every
//! write of the group and flushes once (one fsync of the partition file on the embedded log;
//! one acknowledgement round on Kafka), then answers them all. Who leads, as in RocksDB's
//! write thread:
//! - a write that finds its lane idle leads its own group on the thread that made it (an
//!   HTTP worker), when the flush is local ([`Backend::flushes_locally`]): a lone client's
//!   write is appended, fsynced and answered without crossing a thread, as Redis does with
//!   `appendfsync always`;
//! - writes that arrive while a group commits queue behind it; when it ends, the lead passes
//!   to the lane's writer thread, which commits everything queued as one group, and again
//!   until the queue is empty. An HTTP worker thus blocks in at most one fsync at a time per
//!   lane, and never in a network round trip (a Kafka write always goes to the thread).
//!
//! Each lane counts the writes it made durable and its group commits by who led them
//! ([`crate::telemetry::KV_WRITES`], [`crate::telemetry::KV_WRITE_GROUPS`]): writes per
//! fsync, in `/metrics`.
//!
//! Lanes commit side by side and independently: a write waits for its own partitions'
//! flushes only. A write is answered with the partition ends the flush made durable, after
//! they are recorded, with the keys written, as the read barrier ([`Serving::note_durable`]).
//!
//! On the embedded log the sink shares the partition with the task reading it (one open
//! partition per backend, appends under its lock), and the task reads only up to what a sync
//! made durable ([`crate::log::Partition::synced_end`]), so it never applies a write that a
//! machine crash could still take back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tokio::sync::oneshot;

use crate::backend::{Backend, BackendError, RecordSink, TopicPartition};
use crate::partitioner::partition_for_key;
use crate::sync::lock;

use super::Serving;

/// Most writes one group commit takes.
const MAX_GROUP: usize = 1024;

/// A write could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The input topic does not exist.
    #[error("input topic `{0}` does not exist")]
    NoTopic(String),
    /// The backend failed (the message says what).
    #[error("appending to `{topic}`: {message}")]
    Backend {
        /// The input topic.
        topic: String,
        /// The backend's error.
        message: String,
    },
    /// The group commit the write was queued in ended without an answer (its leader
    /// panicked, or the writer is shutting down); the write may or may not be durable.
    #[error("the writer has stopped")]
    Stopped,
}

/// One write: the serialized key and value (`None`: a delete, appended as a tombstone).
pub type WriteRecord = (Vec<u8>, Option<Vec<u8>>);

/// Partition ends a flush made durable.
pub type Ends = BTreeMap<TopicPartition, u64>;

/// Appends writes to a job's input topic (see the module doc). Cheap to clone; the writer
/// threads end when the last clone is dropped.
#[derive(Clone)]
pub struct KvWriter {
    inner: Arc<Inner>,
    _threads: Arc<StopThreads>,
}

/// What the writers share.
struct Inner {
    backend: Arc<dyn Backend>,
    serving: Serving,
    topic: String,
    /// The sink name (`<job>.http-writer`).
    name: String,
    /// The sink `start` opened (so a backend that cannot open one fails there), for the
    /// first partition written.
    spare: Mutex<Option<Box<dyn RecordSink>>>,
    /// One lane per input partition.
    lanes: Vec<Lane>,
    /// Whether a write finding its lane idle may lead on its own thread.
    lead_inline: bool,
}

/// One partition's writes: the queue behind its leader, its sink, its writer thread.
#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
    /// Wakes the lane's writer thread.
    wake: Condvar,
    /// Its metrics, registered at its first group commit: writes come through the HTTP
    /// server, which `gregor serve` starts after installing the metrics recorder. Without a
    /// recorder installed by then they stay no-ops (unit tests).
    counters: OnceLock<LaneCounters>,
}

/// A lane's counters: [`crate::telemetry::KV_WRITES`] and
/// [`crate::telemetry::KV_WRITE_GROUPS`] by leader.
struct LaneCounters {
    writes: metrics::Counter,
    led_by_request: metrics::Counter,
    led_by_writer: metrics::Counter,
}

/// Who leads a group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// The write that found its lane idle, on the thread that made it (an HTTP worker).
    Request,
    /// The lane's writer thread, for the writes queued behind another group.
    Writer,
}

#[derive(Default)]
struct LaneState {
    /// A group is committing or about to (the writes arriving queue in `waiting`).
    leading: bool,
    /// Writes queued, in arrival order.
    waiting: VecDeque<Waiter>,
    /// The lane's sink between groups (`None` before the first write and after a failed
    /// append or flush: the next leader opens a new one).
    sink: Option<Box<dyn RecordSink>>,
    /// The lead was handed to the writer thread (which takes `waiting` as its group).
    thread_leads: bool,
    /// The writer thread is running.
    thread: bool,
    /// The writer thread waits on the lane's condition variable: only then is it notified
    /// (a notification is a system call even when nobody waits, and the thread hands the
    /// lead to itself after every group it commits while writes queued meanwhile).
    thread_waits: bool,
    /// Every [`KvWriter`] is gone: the thread ends once idle.
    closed: bool,
}

/// A write queued behind a leader, and where its answer goes.
struct Waiter {
    records: Vec<WriteRecord>,
    answer: oneshot::Sender<Result<u64, WriteError>>,
}

impl KvWriter {
    /// Prepares the writer of input `topic` of the job `serving` serves, appending through
    /// sinks of `backend` (one opened now, so a backend that cannot fails here); the run
    /// loop is woken after every group commit.
    pub fn start(
        backend: Arc<dyn Backend>,
        serving: Serving,
        topic: &str,
    ) -> Result<Self, WriteError> {
        let partitions = backend
            .partitions(topic)
            .map_err(backend_err(topic))?
            .ok_or_else(|| WriteError::NoTopic(topic.to_string()))?;
        let lead_inline = backend.flushes_locally();
        Self::open(backend, serving, topic, partitions, lead_inline)
    }

    /// The writer [`start`](Self::start) makes, once it knows the partition count and
    /// whether a write may lead inline.
    fn open(
        backend: Arc<dyn Backend>,
        serving: Serving,
        topic: &str,
        partitions: u32,
        lead_inline: bool,
    ) -> Result<Self, WriteError> {
        let name = format!("{}.http-writer", serving.job().name);
        let sink = backend.open_sink(&name).map_err(backend_err(topic))?;
        let inner = Arc::new(Inner {
            backend,
            serving,
            topic: topic.to_string(),
            name,
            spare: Mutex::new(Some(sink)),
            lanes: (0..partitions).map(|_| Lane::default()).collect(),
            lead_inline,
        });
        Ok(KvWriter {
            _threads: Arc::new(StopThreads(Arc::clone(&inner))),
            inner,
        })
    }

    /// The input topic written.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The partition a serialized key goes to.
    pub fn partition(&self, key: &[u8]) -> u32 {
        partition_for_key(key, self.inner.lanes.len() as u32)
    }

    /// The partition of every record of `records`, if they have one (and there is one).
    fn single_partition(&self, records: &[WriteRecord]) -> Option<u32> {
        let (first, rest) = records.split_first()?;
        let p = self.partition(&first.0);
        rest.iter()
            .all(|(k, _)| self.partition(k) == p)
            .then_some(p)
    }

    /// Appends `records` (serialized key; value, `None` a tombstone) and waits until they are
    /// durable; returns the durable end of every partition written. Records of one partition
    /// keep their order; a write over several partitions is durable once all are, and if
    /// one fails the others may be durable (each partition is its own log). A write whose
    /// future is dropped before its answer may or may not become durable.
    pub async fn append(&self, records: Vec<WriteRecord>) -> Result<Ends, WriteError> {
        // The usual write (one key, or a batch of one partition): one lane, nothing to sort.
        if let Some(p) = self.single_partition(&records) {
            let end = self.inner.settle(self.inner.enqueue(p, records)).await?;
            return Ok(Ends::from([(
                TopicPartition::new(&self.inner.topic, p),
                end,
            )]));
        }
        let mut by_partition: BTreeMap<u32, Vec<WriteRecord>> = BTreeMap::new();
        for (k, v) in records {
            by_partition
                .entry(self.partition(&k))
                .or_default()
                .push((k, v));
        }
        // Queue in (or take the lead of) every lane first, so the lanes commit side by
        // side; then lead the groups this write leads (no await in between), then wait.
        let mut tickets: Vec<(u32, Ticket<'_>)> = by_partition
            .into_iter()
            .map(|(p, records)| (p, self.inner.enqueue(p, records)))
            .collect();
        tickets.sort_by_key(|(p, t)| (matches!(t, Ticket::Queued(_)), *p));
        let mut ends = Ends::new();
        let mut failed = None;
        for (p, ticket) in tickets {
            match self.inner.settle(ticket).await {
                Ok(end) => {
                    ends.insert(TopicPartition::new(&self.inner.topic, p), end);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(ends),
        }
    }
}

/// The error mapping of a backend failure while writing `topic`.
fn backend_err(topic: &str) -> impl Fn(BackendError) -> WriteError + '_ {
    move |e| WriteError::Backend {
        topic: topic.to_string(),
        message: e.to_string(),
    }
}

/// A write's place in its lane.
enum Ticket<'a> {
    /// It leads its own group (its records first), on the caller's thread (the lane was
    /// idle).
    Lead(Seat<'a>, Vec<WriteRecord>),
    /// It is queued; the group's answer comes here.
    Queued(oneshot::Receiver<Result<u64, WriteError>>),
}

/// A lane's lead, held: dropped before its group commits (a panic in a sink, or while
/// leading another lane first), it passes the lead on, so the lane never stalls.
struct Seat<'a> {
    inner: &'a Arc<Inner>,
    p: u32,
    done: bool,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.pass_lead(self.p, None);
        }
    }
}

/// Ends the writer threads when the last [`KvWriter`] is dropped.
struct StopThreads(Arc<Inner>);

impl Drop for StopThreads {
    fn drop(&mut self) {
        for lane in &self.0.lanes {
            lock(&lane.state).closed = true;
            lane.wake.notify_all();
        }
    }
}

impl Inner {
    /// Takes the lead of partition `p`'s lane if it is idle and leading inline is allowed;
    /// otherwise queues `records` (handing an idle lane to its writer thread).
    fn enqueue(self: &Arc<Self>, p: u32, records: Vec<WriteRecord>) -> Ticket<'_> {
        let lane = &self.lanes[p as usize];
        let mut st = lock(&lane.state);
        if !st.leading && self.lead_inline {
            st.leading = true;
            return Ticket::Lead(self.seat(p), records);
        }
        let (answer, rx) = oneshot::channel();
        st.waiting.push_back(Waiter { records, answer });
        if !st.leading {
            st.leading = true;
            self.hand_to_thread(p, &mut st);
        }
        Ticket::Queued(rx)
    }

    /// The answer of a write's `ticket`: it leads its group here, or waits for the group's
    /// leader.
    async fn settle(&self, ticket: Ticket<'_>) -> Result<u64, WriteError> {
        match ticket {
            Ticket::Lead(seat, records) => self.lead(seat, records, Leader::Request),
            Ticket::Queued(rx) => rx.await.unwrap_or(Err(WriteError::Stopped)),
        }
    }

    /// Hands lane `p`'s lead to its writer thread (started if needed). `st` is the lane's
    /// locked state, with writes waiting. If the thread cannot start, they are answered
    /// with the error and the lane is idle again.
    fn hand_to_thread(self: &Arc<Self>, p: u32, st: &mut LaneState) {
        st.thread_leads = true;
        if st.thread {
            if st.thread_waits {
                self.lanes[p as usize].wake.notify_one();
            }
            return;
        }
        let inner = Arc::clone(self);
        match std::thread::Builder::new()
            .name(format!("gregor-kv-writer-{p}"))
            .spawn(move || inner.write_loop(p))
        {
            Ok(_) => st.thread = true,
            Err(e) => {
                let e = WriteError::Backend {
                    topic: self.topic.clone(),
                    message: format!("cannot start the writer thread of partition {p}: {e}"),
                };
                for w in st.waiting.drain(..) {
                    let _ = w.answer.send(Err(e.clone()));
                }
                st.thread_leads = false;
                st.leading = false;
            }
        }
    }

    /// Lane `p`'s writer thread: leads a group whenever the lead is handed to it; ends once
    /// every [`KvWriter`] is gone and the lane is idle.
    fn write_loop(self: &Arc<Self>, p: u32) {
        let lane = &self.lanes[p as usize];
        loop {
            {
                let mut st = lock(&lane.state);
                while !st.thread_leads && !st.closed {
                    st.thread_waits = true;
                    st = lane.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.thread_waits = false;
                }
                if !st.thread_leads {
                    st.thread = false;
                    return;
                }
                st.thread_leads = false;
            }
            let _ = self.lead(self.seat(p), Vec::new(), Leader::Writer);
        }
    }

    /// The lead of lane `p`, which the caller has just taken (`leading` set).
    fn seat(self: &Arc<Self>, p: u32) -> Seat<'_> {
        Seat {
            inner: self,
            p,
            done: false,
        }
    }

    /// The counters of lane `p` (registered on first use).
    fn counters(&self, p: u32) -> &LaneCounters {
        self.lanes[p as usize].counters.get_or_init(|| {
            let labels = [
                ("job", self.serving.job().name.clone()),
                ("topic", self.topic.clone()),
                ("partition", p.to_string()),
            ];
            let led = |by: &'static str| {
                let mut l = labels.to_vec();
                l.push(("leader", by.to_string()));
                metrics::counter!(crate::telemetry::KV_WRITE_GROUPS, &l)
            };
            LaneCounters {
                writes: metrics::counter!(crate::telemetry::KV_WRITES, &labels),
                led_by_request: led("request"),
                led_by_writer: led("writer"),
            }
        })
    }

    /// Leads one group commit of `seat`'s lane, led `by` a request or the writer thread:
    /// `mine` (the leader's own records, if any) first, then every write queued (up to
    /// [`MAX_GROUP`]); appends, flushes once, passes the lead on, answers the group and
    /// returns `mine`'s answer.
    fn lead(
        &self,
        mut seat: Seat<'_>,
        mine: Vec<WriteRecord>,
        by: Leader,
    ) -> Result<u64, WriteError> {
        let p = seat.p;
        let lane = &self.lanes[p as usize];
        let (sink, group) = {
            let mut st = lock(&lane.state);
            let n = st.waiting.len().min(MAX_GROUP);
            let group: Vec<Waiter> = st.waiting.drain(..n).collect();
            (st.sink.take(), group)
        };
        let topic = self.topic.as_str();
        let tp = TopicPartition::new(topic, p);
        let err = backend_err(topic);
        let sink = match sink {
            Some(s) => Ok(s),
            None => match lock(&self.spare).take() {
                Some(s) => Ok(s),
                None => self.backend.open_sink(&self.name),
            },
        };
        let (kept, mine_answer, answers) = match sink {
            Err(e) => {
                let e = err(e);
                (None, Err(e.clone()), vec![Err(e); group.len()])
            }
            Ok(mut s) => {
                let now = crate::changelog::now_ms();
                // Append everything (a write whose append fails is answered with the
                // error), then one flush for all.
                let mut append = |records: &[WriteRecord]| {
                    records
                        .iter()
                        .try_for_each(|(key, value)| s.send(&tp, now, key, value.as_deref()))
                        .err()
                        .map(&err)
                };
                let mine_failed = append(&mine);
                let failed: Vec<Option<WriteError>> =
                    group.iter().map(|w| append(&w.records)).collect();
                let flushed = s.flush().map_err(&err).and_then(|ends| {
                    ends.get(&tp).copied().ok_or_else(|| WriteError::Backend {
                        topic: topic.to_string(),
                        message: format!("the flush did not report partition {p}"),
                    })
                });
                let healthy =
                    flushed.is_ok() && mine_failed.is_none() && failed.iter().all(Option::is_none);
                if let Ok(end) = &flushed {
                    let counters = self.counters(p);
                    let durable = usize::from(!mine.is_empty() && mine_failed.is_none())
                        + failed.iter().filter(|f| f.is_none()).count();
                    counters.writes.increment(durable as u64);
                    match by {
                        Leader::Request => counters.led_by_request.increment(1),
                        Leader::Writer => counters.led_by_writer.increment(1),
                    }
                    let keys = mine
                        .iter()
                        .chain(group.iter().flat_map(|w| &w.records))
                        .map(|(key, _)| key.as_slice());
                    self.serving.note_durable(&tp, *end, keys);
                }
                let answer = |failed: Option<WriteError>| match failed {
                    Some(e) => Err(e),
                    None => flushed.clone(),
                };
                let answers = failed.into_iter().map(answer).collect();
                (healthy.then_some(s), answer(mine_failed), answers)
            }
        };
        // The next group may start before this one's writers hear back.
        seat.done = true;
        seat.inner.pass_lead(p, kept);
        for (w, answer) in group.into_iter().zip(answers) {
            let _ = w.answer.send(answer);
        }
        self.serving.wake();
        mine_answer
    }

    /// Ends a group: keeps `sink` for the next one and hands the lead to the writer thread
    /// if writes are waiting, else leaves the lane idle.
    fn pass_lead(self: &Arc<Self>, p: u32, sink: Option<Box<dyn RecordSink>>) {
        let mut st = lock(&self.lanes[p as usize].state);
        if sink.is_some() {
            st.sink = sink;
        }
        if st.waiting.is_empty() {
            st.leading = false;
        } else {
            self.hand_to_thread(p, &mut st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::TopicConfig;
    use crate::runtime::{JobConfig, embedded_backend};
    use crate::statedir::StateDir;
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    /// A job `kv` on the embedded backend of `dir`, with input `kv-in` of `partitions`.
    fn embedded(dir: &std::path::Path, partitions: u32) -> (Arc<dyn Backend>, Serving) {
        let job = JobConfig::from_toml_str(
            "<test>",
            r#"
            [job]
            name = "kv"
            task = "kv"
            inputs = ["kv-in"]

            [stores.kv]
            key.serde = "string"
            value.serde = "bytes"
            changelog = "kv-changelog"
            "#,
        )
        .unwrap();
        let state = StateDir::open(dir).unwrap();
        let backend = embedded_backend(&state, &job).unwrap();
        backend
            .logs()
            .topic_or_create("kv-in", partitions, TopicConfig::default())
            .unwrap();
        (Arc::new(backend), Serving::new(job, true))
    }

    fn rec(k: &str) -> Vec<WriteRecord> {
        vec![(k.as_bytes().to_vec(), Some(k.as_bytes().to_vec()))]
    }

    fn queued(t: Ticket<'_>) -> oneshot::Receiver<Result<u64, WriteError>> {
        match t {
            Ticket::Queued(rx) => rx,
            Ticket::Lead(..) => panic!("expected to queue"),
        }
    }

    /// The answer to a queued write (within 10 s).
    fn answer(mut rx: oneshot::Receiver<Result<u64, WriteError>>) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(end) => return end.unwrap(),
                Err(oneshot::error::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "no answer within 10 s");
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn idle(inner: &Inner) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&inner.lanes[0].state).leading {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Who leads: a write finding its lane idle leads inline and takes the writes queued
    /// behind it into its group; writes queued while a group commits go to the lane's
    /// thread when it ends; with a flush that is not local every write goes to the thread;
    /// the log holds every write once, in order.
    #[test]
    fn an_idle_lane_is_led_inline_and_queued_writes_by_the_lane_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, serving) = embedded(dir.path(), 1);
        let writer = KvWriter::start(Arc::clone(&backend), serving.clone(), "kv-in").unwrap();
        let inner = Arc::clone(&writer.inner);
        let Ticket::Lead(a, a_records) = inner.enqueue(0, rec("a")) else {
            panic!("an idle lane is led inline")
        };
        let b = queued(inner.enqueue(0, rec("b")));
        let c = queued(inner.enqueue(0, rec("c")));
        assert_eq!(
            inner.lead(a, a_records, Leader::Request).unwrap(),
            3,
            "one group: a, b, c"
        );
        assert_eq!(answer(b), 3);
        assert_eq!(answer(c), 3);
        assert!(!lock(&inner.lanes[0].state).leading);
        assert!(!lock(&inner.lanes[0].state).thread, "no thread was needed");
        // Writes queued while a group commits: the thread leads them when it ends.
        lock(&inner.lanes[0].state).leading = true;
        let d = queued(inner.enqueue(0, rec("d")));
        let e = queued(inner.enqueue(0, rec("e")));
        inner.pass_lead(0, None);
        assert_eq!(answer(d), 5);
        assert_eq!(answer(e), 5);
        assert!(idle(&inner));
        assert!(lock(&inner.lanes[0].state).thread);
        // A lead taken and dropped unused (a panic before it led) leaves the lane idle.
        let Ticket::Lead(f, _) = inner.enqueue(0, rec("f")) else {
            panic!("an idle lane is led inline")
        };
        let h = queued(inner.enqueue(0, rec("h")));
        drop(f);
        assert_eq!(answer(h), 6, "the lead passed on to the thread");
        assert!(idle(&inner));
        // A flush that waits for the network never runs on the caller's thread.
        let remote = KvWriter::open(Arc::clone(&backend), serving, "kv-in", 1, false).unwrap();
        let g = queued(remote.inner.enqueue(0, rec("g")));
        assert_eq!(answer(g), 7);
        assert!(idle(&remote.inner));
        let tp = TopicPartition::new("kv-in", 0);
        let mut reader = backend.open_reader(&tp, 0).unwrap();
        let keys: Vec<Vec<u8>> = reader
            .next_batch(100)
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        let want: Vec<Vec<u8>> = ["a", "b", "c", "d", "e", "h", "g"]
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        assert_eq!(keys, want);
    }

    /// Concurrent writes of several keys each, over every partition (the partitions' threads
    /// commit side by side): every write is answered with the durable ends of exactly its
    /// partitions, each partition holds every record once, each writer's in order, and the
    /// read barrier is the highest end answered.
    #[test]
    fn group_commits_over_partitions_answer_each_write_with_its_durable_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, serving) = embedded(dir.path(), 4);
        let writer = KvWriter::start(Arc::clone(&backend), serving.clone(), "kv-in").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let (writers, writes, keys) = (8u32, 40u32, 3u32);
        let all = async {
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let writer = writer.clone();
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for i in 0..writes {
                            let records: Vec<WriteRecord> = (0..keys)
                                .map(|j| {
                                    let key = format!("w{w}-k{}", (i + j) % 7).into_bytes();
                                    (key, Some(format!("{w}/{i:03}/{j}").into_bytes()))
                                })
                                .collect();
                            let ends = writer.append(records.clone()).await.unwrap();
                            out.push((records, ends));
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        };
        let results = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), all).await })
            .expect("every write answered within 60 s");
        let mut highest: BTreeMap<TopicPartition, u64> = BTreeMap::new();
        for (records, ends) in &results {
            let parts: BTreeSet<u32> = records.iter().map(|(k, _)| writer.partition(k)).collect();
            let answered: BTreeSet<u32> = ends.keys().map(|tp| tp.partition).collect();
            assert_eq!(answered, parts);
            for (tp, &end) in ends {
                let h = highest.entry(tp.clone()).or_default();
                *h = (*h).max(end);
            }
        }
        assert_eq!(highest.len(), 4, "the writes covered every partition");
        for (records, ends) in &results {
            for (k, _) in records {
                let tp = TopicPartition::new(writer.topic(), writer.partition(k));
                let barrier = serving.key_barrier(&tp, k);
                assert!(
                    barrier >= ends[&tp] && barrier <= highest[&tp],
                    "{tp}: a read of a written key waits for {barrier}, its write ended at {}",
                    ends[&tp]
                );
            }
        }
        let mut total = 0;
        for (tp, &end) in &highest {
            assert!(
                backend.readable_end(tp).unwrap() >= end,
                "{tp}: {end} not durable"
            );
            // The read barrier is the highest end acknowledged; no task ran, so a read
            // would wait.
            assert_eq!(serving.read_barrier(tp), end, "{tp}");
            assert!(!serving.has_processed(tp, end));
            assert!(serving.has_processed(tp, 0));
            // A read of one key waits for the group that wrote it last, not for the others.
            assert_eq!(serving.key_barrier(tp, b"never written"), 0, "{tp}");
            let mut reader = backend.open_reader(tp, 0).unwrap();
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            loop {
                let batch = reader.next_batch(1000).unwrap();
                if batch.is_empty() {
                    break;
                }
                for r in batch {
                    let v = String::from_utf8(r.value.unwrap()).unwrap();
                    let w = v.split('/').next().unwrap().to_string();
                    assert_eq!(writer.partition(&r.key), tp.partition);
                    if let Some(prev) = last.insert(w, v.clone()) {
                        assert!(prev < v, "{tp}: {prev} then {v}");
                    }
                    total += 1;
                }
            }
        }
        assert_eq!(total, writers * writes * keys);
        // Some groups were led by the writer threads (writes queued behind a leader), and
        // the threads end with the last writer.
        let inner = Arc::clone(&writer.inner);
        assert!(inner.lanes.iter().any(|l| lock(&l.state).thread));
        drop(writer);
        let deadline = Instant::now() + Duration::from_secs(10);
        while inner.lanes.iter().any(|l| lock(&l.state).thread) {
            assert!(Instant::now() < deadline, "writer threads still running");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
