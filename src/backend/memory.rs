//! An in-process backend for tests: topics are vectors of records, checkpoints a map.
//!
//! It behaves like a remote log where that matters for correctness: a sink's records become
//! visible only at [`RecordSink::flush`] (dropping a sink without flushing loses them, like a
//! killed producer), and truncation can be switched off ([`MemoryBackend::without_truncation`])
//! to exercise the path Kafka takes. [`MemoryBackend::compact`] keeps the newest record per
//! key, as a broker's log cleaner does. Never a stand-in for the real backends in the tests
//! that prove them; it lets the logged layer, restore and commit be tested exhaustively.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{
    Backend, BackendError, LogReader, Offsets, Record, RecordSink, Result, TopicPartition,
    TopicRole, TopicSpec,
};
use crate::checkpoint::Checkpoint;
use crate::sync::lock;

#[derive(Default)]
struct Partition {
    start: u64,
    end: u64,
    records: Vec<Record>,
}

struct Topic {
    compacted: bool,
    partitions: Vec<Partition>,
}

#[derive(Default)]
struct State {
    topics: BTreeMap<String, Topic>,
    checkpoints: BTreeMap<String, Checkpoint>,
    roles: super::roles::RoleRegistry,
}

/// The in-memory backend. Clones share the same topics.
#[derive(Clone)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    truncate: bool,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend that can truncate (like the embedded log).
    pub fn new() -> Self {
        MemoryBackend {
            state: Arc::default(),
            truncate: true,
        }
    }

    /// The same topics, seen through a backend that cannot truncate (like Kafka).
    pub fn without_truncation(&self) -> Self {
        MemoryBackend {
            state: Arc::clone(&self.state),
            truncate: false,
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32, compacted: bool) {
        lock(&self.state)
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| Topic {
                compacted,
                partitions: (0..partitions).map(|_| Partition::default()).collect(),
            });
    }

    /// Appends records directly (a producer outside the job); returns the new end.
    pub fn append(&self, tp: &TopicPartition, records: &[(&[u8], Option<&[u8]>)]) -> u64 {
        let mut s = lock(&self.state);
        let p = &mut s
            .topics
            .get_mut(&tp.topic)
            .expect("topic exists")
            .partitions[tp.partition as usize];
        for (k, v) in records {
            p.records.push(Record {
                offset: p.end,
                timestamp: 0,
                key: k.to_vec(),
                value: v.map(<[u8]>::to_vec),
            });
            p.end += 1;
        }
        p.end
    }

    /// Every record of `tp`, in offset order.
    pub fn records(&self, tp: &TopicPartition) -> Vec<Record> {
        lock(&self.state).topics[&tp.topic].partitions[tp.partition as usize]
            .records
            .clone()
    }

    /// Compacts the records below `below` (a log cleaner that leaves the active segment at
    /// and after `below` alone, as a broker does): of those, only the newest record per key
    /// stays. Offsets do not change.
    pub fn compact(&self, tp: &TopicPartition, below: u64) {
        let mut s = lock(&self.state);
        let p = &mut s
            .topics
            .get_mut(&tp.topic)
            .expect("topic exists")
            .partitions[tp.partition as usize];
        let mut newest: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for r in p.records.iter().take_while(|r| r.offset < below) {
            newest.insert(r.key.clone(), r.offset);
        }
        p.records
            .retain(|r| r.offset >= below || newest.get(&r.key) == Some(&r.offset));
    }

    fn with_partition<T>(
        &self,
        tp: &TopicPartition,
        f: impl FnOnce(&mut Partition) -> T,
    ) -> Result<T> {
        let mut s = lock(&self.state);
        let topic = s
            .topics
            .get_mut(&tp.topic)
            .ok_or_else(|| BackendError::TopicNotFound {
                topic: tp.topic.clone(),
            })?;
        let p = topic
            .partitions
            .get_mut(tp.partition as usize)
            .ok_or_else(|| BackendError::TopicMismatch {
                topic: tp.topic.clone(),
                reason: format!("partition {} does not exist", tp.partition),
            })?;
        Ok(f(p))
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn flushes_locally(&self) -> bool {
        true
    }

    fn partitions(&self, topic: &str) -> Result<Option<u32>> {
        Ok(lock(&self.state)
            .topics
            .get(topic)
            .map(|t| t.partitions.len() as u32))
    }

    fn ensure_topic(&self, spec: &TopicSpec) -> Result<u32> {
        let compacted = spec.role == TopicRole::Changelog;
        self.create_topic(&spec.name, spec.partitions.max(1), compacted);
        let s = lock(&self.state);
        let t = &s.topics[&spec.name];
        let n = t.partitions.len() as u32;
        if n < spec.partitions {
            return Err(BackendError::TopicMismatch {
                topic: spec.name.clone(),
                reason: format!("it has {n} partitions but {} are needed", spec.partitions),
            });
        }
        if compacted && !t.compacted {
            return Err(BackendError::TopicMismatch {
                topic: spec.name.clone(),
                reason: "it is not compacted; a changelog needs a compacted topic".into(),
            });
        }
        Ok(n)
    }

    fn claim_roles(&self, job: &str, claims: &[super::roles::RoleClaim]) -> Result<()> {
        let mut s = lock(&self.state);
        s.roles.check(job, claims)?;
        s.roles.set(job, claims);
        Ok(())
    }

    fn offsets(&self, tp: &TopicPartition) -> Result<Offsets> {
        self.with_partition(tp, |p| Offsets {
            start: p.start,
            end: p.end,
        })
    }

    fn open_reader(&self, tp: &TopicPartition, from: u64) -> Result<Box<dyn LogReader>> {
        self.offsets(tp)?;
        Ok(Box::new(MemoryReader {
            backend: self.clone(),
            tp: tp.clone(),
            position: from,
        }))
    }

    fn open_sink(&self, _task: &str) -> Result<Box<dyn RecordSink>> {
        Ok(Box::new(MemorySink {
            backend: self.clone(),
            queued: Vec::new(),
        }))
    }

    fn read_checkpoint(&self, task: &str) -> Result<Option<Checkpoint>> {
        Ok(lock(&self.state).checkpoints.get(task).cloned())
    }

    fn write_checkpoint(&self, task: &str, checkpoint: &Checkpoint) -> Result<()> {
        lock(&self.state)
            .checkpoints
            .insert(task.to_string(), checkpoint.clone());
        Ok(())
    }

    fn can_truncate(&self) -> bool {
        self.truncate
    }

    fn truncate(&self, tp: &TopicPartition, to: u64) -> Result<()> {
        if !self.truncate {
            return Err(BackendError::Unsupported {
                backend: "memory (without truncation)",
                what: format!("truncating {tp}"),
            });
        }
        self.with_partition(tp, |p| {
            p.records.retain(|r| r.offset < to);
            p.end = p.end.min(to);
        })
    }
}

struct MemoryReader {
    backend: MemoryBackend,
    tp: TopicPartition,
    position: u64,
}

impl LogReader for MemoryReader {
    fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        let from = self.position;
        let batch = self.backend.with_partition(&self.tp, |p| {
            let i = p.records.partition_point(|r| r.offset < from);
            p.records[i..p.records.len().min(i + max)].to_vec()
        })?;
        if let Some(last) = batch.last() {
            self.position = last.offset + 1;
        }
        Ok(batch)
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn seek(&mut self, offset: u64) -> Result<()> {
        self.position = offset;
        Ok(())
    }
}

type Queued = (TopicPartition, Option<Vec<u8>>, Vec<u8>);

/// Queues records until `flush`, like a producer: dropped unflushed, they are lost.
struct MemorySink {
    backend: MemoryBackend,
    queued: Vec<Queued>,
}

impl RecordSink for MemorySink {
    fn send(
        &mut self,
        tp: &TopicPartition,
        _timestamp: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        self.queued
            .push((tp.clone(), value.map(<[u8]>::to_vec), key.to_vec()));
        Ok(())
    }

    fn flush(&mut self) -> Result<BTreeMap<TopicPartition, u64>> {
        let mut ends = BTreeMap::new();
        for (tp, value, key) in std::mem::take(&mut self.queued) {
            let end = self.backend.with_partition(&tp, |p| {
                p.records.push(Record {
                    offset: p.end,
                    timestamp: 0,
                    key,
                    value,
                });
                p.end += 1;
                p.end
            })?;
            ends.insert(tp, end);
        }
        Ok(ends)
    }
}
