//! The key-value service's writer: appends writes to the job's input topic at the key's
//! partition (murmur2, as a Kafka producer would), through the backend seam
//! ([`Backend::open_sink`] / [`RecordSink`]).
//!
//! One thread owns the one sink (one producer, so writes to one partition keep their order).
//! It takes every write waiting when it wakes, appends them all and flushes once: a group
//! commit, one fsync (embedded) or one acknowledgement round (Kafka) for all writers waiting
//! together. A write is answered with the partition ends the flush made durable; the HTTP
//! handler then waits until the owning task has processed up to them
//! ([`Serving::processed`]).
//!
//! On the embedded log the sink shares the partition with the task reading it (one open
//! partition per backend, appends under its lock), and the task reads only up to what a sync
//! made durable ([`crate::log::Partition::synced_end`]), so it never applies a write that a
//! machine crash could still take back.

use std::collections::BTreeMap;
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
    let mut sink = Some(sink);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        if sink.is_none() {
            match backend.open_sink(name) {
                Ok(s) => sink = Some(s),
                Err(e) => {
                    let e = err(e);
                    for a in group {
                        let _ = a.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let Some(s) = sink.as_mut() else { continue };
        let now = crate::changelog::now_ms();
        let mut failed: Vec<Option<WriteError>> = Vec::with_capacity(group.len());
        for a in &group {
            let mut result = None;
            for (p, key, value) in &a.records {
                let tp = TopicPartition::new(topic, *p);
                if let Err(e) = s.send(&tp, now, key, value.as_deref()) {
                    result = Some(err(e));
                    break;
                }
            }
            failed.push(result);
        }
        match s.flush() {
            Ok(ends) => {
                for (a, failed) in group.into_iter().zip(failed) {
                    let answer = match failed {
                        Some(e) => Err(e),
                        None => Ok(a
                            .records
                            .iter()
                            .filter_map(|(p, _, _)| {
                                let tp = TopicPartition::new(topic, *p);
                                ends.get(&tp).map(|&e| (tp, e))
                            })
                            .collect()),
                    };
                    let _ = a.reply.send(answer);
                }
            }
            Err(e) => {
                // A failed flush may leave the sink unusable (a poisoned partition): the next
                // write opens a new one.
                sink = None;
                let e = err(e);
                for a in group {
                    let _ = a.reply.send(Err(e.clone()));
                }
            }
        }
        serving.wake();
    }
}
