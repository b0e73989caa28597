//! The key-value service's writer: appends writes to the job's input topic at the key's
//! partition (murmur2, as a Kafka producer would), through the backend seam
//! ([`Backend::open_sink`] / [`RecordSink`]).
//!
//! One thread owns one sink per partition (one producer each, so writes to one partition keep
//! their order). It takes every write waiting when it wakes, appends them all and flushes the
//! partitions written, in parallel: a group commit, one fsync per partition file (embedded)
//! or one acknowledgement round (Kafka) for all writers waiting together. A write is
//! answered with the partition ends the flush made durable; the HTTP handler then waits until
//! the owning task has processed up to them ([`Serving::processed`]).
//!
//! On the embedded log the sink shares the partition with the task reading it (one open
//! partition per backend, appends under its lock), and the task reads only up to what a sync
//! made durable ([`crate::log::Partition::synced_end`]), so it never applies a write that a
//! machine crash could still take back.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc;

use crate::backend::{Backend, BackendError, RecordSink, TopicPartition};
use crate::partitioner::partition_for_key;

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

struct Append {
    records: Vec<(u32, Vec<u8>, Option<Vec<u8>>)>,
    reply: tokio::sync::oneshot::Sender<Result<Ends, WriteError>>,
}

/// Appends writes to a job's input topic (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct KvWriter {
    tx: mpsc::Sender<Append>,
    topic: String,
    partitions: u32,
}

impl KvWriter {
    /// Starts the writer thread for input `topic` of the job `serving` serves, appending
    /// through a sink of `backend`; it wakes the run loop after every flush.
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
        let (tx, rx) = mpsc::channel::<Append>();
        let t = topic.to_string();
        std::thread::Builder::new()
            .name("gregor-kv-writer".into())
            .spawn(move || write_loop(backend, sink, &name, &t, rx, serving))
            .map_err(|e| WriteError::Backend {
                topic: topic.to_string(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(KvWriter {
            tx,
            topic: topic.to_string(),
            partitions,
        })
    }

    /// The input topic written.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition a serialized key goes to.
    pub fn partition(&self, key: &[u8]) -> u32 {
        partition_for_key(key, self.partitions)
    }

    /// Appends `records` (serialized key; value, `None` a tombstone) in order and waits until
    /// they are durable; returns the durable end of every partition written.
    pub async fn append(
        &self,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<Ends, WriteError> {
        let records = records
            .into_iter()
            .map(|(k, v)| (self.partition(&k), k, v))
            .collect();
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Append { records, reply })
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }
}

/// One sink per input partition, opened on first use and dropped after a failed flush (a
/// poisoned partition): the next write to it opens a new one.
type Sinks = BTreeMap<u32, Box<dyn RecordSink>>;

fn write_loop(
    backend: Arc<dyn Backend>,
    sink: Box<dyn RecordSink>,
    name: &str,
    topic: &str,
    rx: mpsc::Receiver<Append>,
    serving: Serving,
) {
    let err = |e: BackendError| WriteError::Backend {
        topic: topic.to_string(),
        message: e.to_string(),
    };
    // The sink `start` opened (so a backend that cannot open one fails there) serves the
    // first partition written.
    let mut spare = Some(sink);
    let mut sinks = Sinks::new();
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let now = crate::changelog::now_ms();
        // Append everything, each record through its partition's sink (so one partition's
        // records keep their order); a write whose append fails is answered with the error.
        let mut failed: Vec<Option<WriteError>> = Vec::with_capacity(group.len());
        let mut touched = BTreeSet::new();
        for a in &group {
            let mut result = None;
            for (p, key, value) in &a.records {
                let sink = match sinks.entry(*p) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
                        match spare.take().map_or_else(|| backend.open_sink(name), Ok) {
                            Ok(s) => v.insert(s),
                            Err(e) => {
                                result = Some(err(e));
                                break;
                            }
                        }
                    }
                };
                touched.insert(*p);
                let tp = TopicPartition::new(topic, *p);
                if let Err(e) = sink.send(&tp, now, key, value.as_deref()) {
                    result = Some(err(e));
                    break;
                }
            }
            failed.push(result);
        }
        let flushed: BTreeMap<u32, Result<Ends, WriteError>> = flush_all(&mut sinks, &touched)
            .into_iter()
            .map(|(p, r)| (p, r.map_err(err)))
            .collect();
        for (a, failed) in group.into_iter().zip(failed) {
            let answer = match failed {
                Some(e) => Err(e),
                None => a
                    .records
                    .iter()
                    .map(|(p, _, _)| {
                        let tp = TopicPartition::new(topic, *p);
                        match flushed.get(p) {
                            Some(Ok(ends)) => Ok(ends.get(&tp).map(|&e| (tp, e))),
                            Some(Err(e)) => Err(e.clone()),
                            None => Ok(None),
                        }
                    })
                    .filter_map(Result::transpose)
                    .collect(),
            };
            let _ = a.reply.send(answer);
        }
        for (p, r) in &flushed {
            if r.is_err() {
                sinks.remove(p);
            }
        }
        serving.wake();
    }
}

/// Flushes the sinks of the `touched` partitions, in parallel when there are several (one
/// fsync per partition file on the embedded log: done one after the other they add up, and
/// the file system can commit concurrent ones together); each partition's result.
fn flush_all(
    sinks: &mut Sinks,
    touched: &BTreeSet<u32>,
) -> BTreeMap<u32, Result<Ends, BackendError>> {
    let mut todo: Vec<(u32, &mut Box<dyn RecordSink>)> = sinks
        .iter_mut()
        .filter(|(p, _)| touched.contains(p))
        .map(|(&p, s)| (p, s))
        .collect();
    let Some((p0, s0)) = todo.pop() else {
        return BTreeMap::new();
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = todo
            .into_iter()
            .map(|(p, s)| (p, scope.spawn(move || s.flush())))
            .collect();
        let mut out = BTreeMap::new();
        out.insert(p0, s0.flush());
        for (p, h) in others {
            let r = h.join().unwrap_or_else(|_| {
                Err(BackendError::fatal(
                    format!("flushing partition {p}"),
                    "the flushing thread panicked",
                ))
            });
            out.insert(p, r);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::TopicConfig;
    use crate::runtime::{JobConfig, embedded_backend};
    use crate::statedir::StateDir;

    /// Concurrent writes of several keys each, over every partition (each group flushes
    /// several partitions at once): every write is answered with the durable ends of exactly
    /// its partitions, and each partition holds every record once, each writer's in order.
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
        let writer =
            KvWriter::start(Arc::clone(&backend), Serving::new(job, true), "kv-in").unwrap();
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
