//! The key-value service's writer: appends writes to the job's input topic at the key's
//! partition (murmur2, as a Kafka producer would), through the backend seam
//! ([`Backend::open_sink`] / [`RecordSink`]).
//!
//! One thread per input partition (started on the partition's first write), each with a sink
//! of its own (one producer each, so writes to one partition keep their order). It takes
//! every write waiting when it wakes, appends them all and flushes: a group commit, one fsync
//! of the partition file (embedded) or one acknowledgement round (Kafka) for all writers
//! waiting together. Partitions commit side by side and independently: a write waits for
//! its own partitions' flushes only. A write is answered with the partition ends the flush
//! made durable, after they are recorded as the read barrier ([`Serving::note_durable`]).
//!
//! On the embedded log the sink shares the partition with the task reading it (one open
//! partition per backend, appends under its lock), and the task reads only up to what a sync
//! made durable ([`crate::log::Partition::synced_end`]), so it never applies a write that a
//! machine crash could still take back.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

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
    /// The writer thread is gone.
    #[error("the writer has stopped")]
    Stopped,
}

/// One write: the serialized key and value (`None`: a delete, appended as a tombstone).
pub type WriteRecord = (Vec<u8>, Option<Vec<u8>>);

/// Partition ends a flush made durable.
pub type Ends = BTreeMap<TopicPartition, u64>;

/// The records of one write that go to one partition, in order.
struct Append {
    records: Vec<WriteRecord>,
    reply: tokio::sync::oneshot::Sender<Result<u64, WriteError>>,
}

/// Appends writes to a job's input topic (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct KvWriter {
    inner: Arc<Inner>,
    partitions: u32,
    /// Each partition's writer thread, once started (a thread ends when every
    /// [`KvWriter`] is dropped).
    threads: Arc<Mutex<BTreeMap<u32, mpsc::Sender<Append>>>>,
}

/// What the writer threads share.
struct Inner {
    backend: Arc<dyn Backend>,
    serving: Serving,
    topic: String,
    /// The sink name (`<job>.http-writer`).
    name: String,
    /// The sink `start` opened (so a backend that cannot open one fails there), for the
    /// first partition written.
    spare: Mutex<Option<Box<dyn RecordSink>>>,
}

impl KvWriter {
    /// Prepares the writer of input `topic` of the job `serving` serves, appending through
    /// sinks of `backend` (one opened now, so a backend that cannot fails here); each
    /// partition's thread wakes the run loop after every flush.
    pub fn start(
        backend: Arc<dyn Backend>,
        serving: Serving,
        topic: &str,
    ) -> Result<Self, WriteError> {
        let err = |e: BackendError| WriteError::Backend {
            topic: topic.to_string(),
            message: e.to_string(),
        };
        let partitions = backend
            .partitions(topic)
            .map_err(err)?
            .ok_or_else(|| WriteError::NoTopic(topic.to_string()))?;
        let name = format!("{}.http-writer", serving.job().name);
        let sink = backend.open_sink(&name).map_err(err)?;
        Ok(KvWriter {
            inner: Arc::new(Inner {
                backend,
                serving,
                topic: topic.to_string(),
                name,
                spare: Mutex::new(Some(sink)),
            }),
            partitions,
            threads: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// The input topic written.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The partition a serialized key goes to.
    pub fn partition(&self, key: &[u8]) -> u32 {
        partition_for_key(key, self.partitions)
    }

    /// Appends `records` (serialized key; value, `None` a tombstone) and waits until they are
    /// durable; returns the durable end of every partition written. Records of one partition
    /// keep their order; a write over several partitions is durable once all are, and if
    /// one fails the others may be durable (each partition is its own log).
    pub async fn append(&self, records: Vec<WriteRecord>) -> Result<Ends, WriteError> {
        let mut by_partition: BTreeMap<u32, Vec<WriteRecord>> = BTreeMap::new();
        for (k, v) in records {
            by_partition
                .entry(self.partition(&k))
                .or_default()
                .push((k, v));
        }
        let mut waiting = Vec::with_capacity(by_partition.len());
        for (p, records) in by_partition {
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.sender(p)?
                .send(Append { records, reply })
                .map_err(|_| WriteError::Stopped)?;
            waiting.push((p, rx));
        }
        let mut ends = Ends::new();
        for (p, rx) in waiting {
            let end = rx.await.map_err(|_| WriteError::Stopped)??;
            ends.insert(TopicPartition::new(&self.inner.topic, p), end);
        }
        Ok(ends)
    }

    /// Partition `p`'s writer thread, started on first use.
    fn sender(&self, p: u32) -> Result<mpsc::Sender<Append>, WriteError> {
        let mut threads = lock(&self.threads);
        if let Some(tx) = threads.get(&p) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel::<Append>();
        let inner = Arc::clone(&self.inner);
        std::thread::Builder::new()
            .name(format!("gregor-kv-writer-{p}"))
            .spawn(move || write_loop(&inner, p, rx))
            .map_err(|e| WriteError::Backend {
                topic: self.inner.topic.clone(),
                message: format!("cannot start the writer thread of partition {p}: {e}"),
            })?;
        threads.insert(p, tx.clone());
        Ok(tx)
    }
}

/// Partition `p`'s writer: group commits until every [`KvWriter`] is dropped. Its sink is
/// opened on first use and dropped after a failed append or flush (a poisoned partition):
/// the next write opens a new one.
fn write_loop(inner: &Inner, p: u32, rx: mpsc::Receiver<Append>) {
    let topic = inner.topic.as_str();
    let tp = TopicPartition::new(topic, p);
    let err = |e: BackendError| WriteError::Backend {
        topic: topic.to_string(),
        message: e.to_string(),
    };
    let mut sink: Option<Box<dyn RecordSink>> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let s = match sink.take() {
            Some(s) => Ok(s),
            None => match lock(&inner.spare).take() {
                Some(s) => Ok(s),
                None => inner.backend.open_sink(&inner.name),
            },
        };
        let mut s = match s {
            Ok(s) => s,
            Err(e) => {
                let e = err(e);
                for a in group {
                    let _ = a.reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        let now = crate::changelog::now_ms();
        // Append everything (a write whose append fails is answered with the error), then
        // one flush for all.
        let mut failed: Vec<Option<WriteError>> = Vec::with_capacity(group.len());
        for a in &group {
            let r = a
                .records
                .iter()
                .try_for_each(|(key, value)| s.send(&tp, now, key, value.as_deref()));
            failed.push(r.err().map(err));
        }
        let flushed = s.flush().map_err(err).and_then(|ends| {
            ends.get(&tp).copied().ok_or_else(|| WriteError::Backend {
                topic: topic.to_string(),
                message: format!("the flush did not report partition {p}"),
            })
        });
        match &flushed {
            Ok(end) => {
                inner.serving.note_durable([(&tp, end)]);
                if failed.iter().all(Option::is_none) {
                    sink = Some(s);
                }
            }
            Err(_) => drop(s),
        }
        for (a, failed) in group.into_iter().zip(failed) {
            let answer = match failed {
                Some(e) => Err(e),
                None => flushed.clone(),
            };
            let _ = a.reply.send(answer);
        }
        inner.serving.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::TopicConfig;
    use crate::runtime::{JobConfig, embedded_backend};
    use crate::statedir::StateDir;
    use std::collections::BTreeSet;

    /// Concurrent writes of several keys each, over every partition (the partitions' threads
    /// commit side by side): every write is answered with the durable ends of exactly its
    /// partitions, each partition holds every record once, each writer's in order, and the
    /// read barrier is the highest end answered.
    #[test]
    fn group_commits_over_partitions_answer_each_write_with_its_durable_ends() {
        let dir = tempfile::tempdir().unwrap();
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
        let state = StateDir::open(dir.path()).unwrap();
        let backend = embedded_backend(&state, &job).unwrap();
        backend
            .logs()
            .topic_or_create("kv-in", 4, TopicConfig::default())
            .unwrap();
        let backend: Arc<dyn Backend> = Arc::new(backend);
        let serving = Serving::new(job, true);
        let writer = KvWriter::start(Arc::clone(&backend), serving.clone(), "kv-in").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (writers, writes, keys) = (8u32, 40u32, 3u32);
        let results = rt.block_on(async {
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
        });
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
    }
}
