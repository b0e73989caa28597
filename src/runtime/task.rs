//! The task API: what a stream task implements ([`StreamTask`]) and what it gets to work
//! with ([`TaskContext`]: its stores, a collector for output, a coordinator).
//!
//! ```
//! use gregor::runtime::{Envelope, StreamTask, TaskContext, TaskError};
//!
//! /// Counts messages per key into the store `counts` (string -> u64).
//! struct Count;
//!
//! impl StreamTask for Count {
//!     fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
//!         let key = String::from_utf8_lossy(msg.key).into_owned();
//!         let mut counts = ctx.store::<String, u64>("counts")?;
//!         let n = counts.get(&key)?.unwrap_or(0);
//!         counts.put(&key, &(n + 1))?;
//!         Ok(())
//!     }
//! }
//! ```

use std::collections::BTreeMap;

use crate::partitioner::partition_for_key;
use crate::serde::Codec;
use crate::store::KeyValueStore;
use crate::store::typed::Store;
use crate::task_storage::TaskStore;

use super::config::JobConfig;

/// Errors a task returns; anything implementing `std::error::Error` converts with `?`.
pub type TaskError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One input message.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The input topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: u32,
    /// The message's offset in the partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The key bytes.
    pub key: &'a [u8],
    /// The value bytes; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

/// A stateful stream task. One instance runs per task (input partition); it is never called
/// from two threads at once.
pub trait StreamTask: Send {
    /// Called once after the task's stores are restored, before the first message.
    fn init(&mut self, _ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        Ok(())
    }

    /// Called for every input message, in offset order per input partition.
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError>;

    /// Called every `job.window.ms`, if set.
    fn window(&mut self, _ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        Ok(())
    }

    /// Called once when the container stops cleanly, before the final commit.
    fn close(&mut self, _ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Builds a task instance for a task name.
pub type TaskFactory = Box<dyn Fn(&str) -> Box<dyn StreamTask> + Send + Sync>;

/// A message sent by a task, held until the task commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Output topic.
    pub topic: String,
    /// Output partition.
    pub partition: u32,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Value bytes (`None`: tombstone).
    pub value: Option<Vec<u8>>,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// Collects a task's output until its next commit; only then is it written to the output
/// topics, so readers never see output of processing that was rolled back.
#[derive(Debug, Default)]
pub struct Collector {
    /// Output topic -> partition count.
    pub(crate) partitions: BTreeMap<String, u32>,
    pub(crate) pending: Vec<OutgoingMessage>,
}

impl Collector {
    /// Messages waiting for the next commit.
    pub fn pending(&self) -> &[OutgoingMessage] {
        &self.pending
    }
}

/// Requests a task makes of its container.
#[derive(Debug, Default, Clone, Copy)]
pub struct Coordinator {
    pub(crate) commit: bool,
    pub(crate) shutdown: bool,
}

/// What a task sees while it runs.
pub struct TaskContext<'a> {
    pub(crate) task: &'a str,
    pub(crate) partition: u32,
    pub(crate) stores: &'a mut BTreeMap<String, TaskStore>,
    pub(crate) side: &'a mut BTreeMap<String, super::side_input::SideHandle>,
    pub(crate) collector: &'a mut Collector,
    pub(crate) coordinator: &'a mut Coordinator,
    pub(crate) config: &'a JobConfig,
    pub(crate) now_ms: i64,
}

/// A task asked for something that does not exist.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// No such store in the job config.
    #[error("task `{task}` has no store `{store}` (stores: {known})")]
    NoStore {
        /// Task name.
        task: String,
        /// Store asked for.
        store: String,
        /// Stores that exist.
        known: String,
    },
    /// Sending to a topic not listed in `job.outputs`.
    #[error("topic `{topic}` is not in job.outputs ({known})")]
    NotAnOutput {
        /// The topic.
        topic: String,
        /// Declared outputs.
        known: String,
    },
    /// Partition out of range.
    #[error("topic `{topic}` has {partitions} partitions; partition {partition} does not exist")]
    NoPartition {
        /// The topic.
        topic: String,
        /// Its partition count.
        partitions: u32,
        /// Partition asked for.
        partition: u32,
    },
}

impl<'a> TaskContext<'a> {
    /// The task's name (`<job>.partition-<N>`).
    pub fn task_name(&self) -> &str {
        self.task
    }

    /// The input partition this task consumes.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The job's configuration (`task.*` settings are in `config().task_config`).
    pub fn config(&self) -> &JobConfig {
        self.config
    }

    /// Milliseconds since the epoch when this call started (the message's processing time).
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Typed access to store `name`, with the serdes from its config.
    pub fn store<K: Codec, V: Codec>(
        &mut self,
        name: &str,
    ) -> Result<Store<K, V, &mut dyn KeyValueStore>, TaskError> {
        if !self.stores.contains_key(name)
            && self.side.contains_key(name)
            && let Some(side) = self.config.side_inputs.get(name)
        {
            let (k, v) = (side.config.key_serde, side.config.value_serde);
            let h = self.side.get_mut(name).expect("checked above");
            return Ok(Store::new(h as &mut dyn KeyValueStore, k, v)?);
        }
        let s = self.task_store(name)?;
        let (k, v) = (s.config().key_serde, s.config().value_serde);
        Ok(Store::new(s.stack(), k, v)?)
    }

    /// The bytes-level stack of store `name` (a side-input store: its read-only view).
    pub fn raw_store(&mut self, name: &str) -> Result<&mut dyn KeyValueStore, TaskError> {
        if !self.stores.contains_key(name) && self.side.contains_key(name) {
            return Ok(self.side.get_mut(name).expect("checked above"));
        }
        Ok(self.task_store(name)?.stack())
    }

    fn task_store(&mut self, name: &str) -> Result<&mut TaskStore, TaskError> {
        if !self.stores.contains_key(name) {
            let known = self
                .stores
                .keys()
                .chain(self.side.keys())
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Box::new(ContextError::NoStore {
                task: self.task.to_string(),
                store: name.to_string(),
                known,
            }));
        }
        Ok(self.stores.get_mut(name).expect("checked above"))
    }

    /// Sends a message to `topic`, to the partition Kafka's default partitioner would pick
    /// for `key` (murmur2).
    pub fn send(&mut self, topic: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), TaskError> {
        let partitions = self.output_partitions(topic)?;
        self.push(topic, partition_for_key(key, partitions), key, value);
        Ok(())
    }

    /// Sends a message to partition `partition` of `topic`.
    pub fn send_to(
        &mut self,
        topic: &str,
        partition: u32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), TaskError> {
        let partitions = self.output_partitions(topic)?;
        if partition >= partitions {
            return Err(Box::new(ContextError::NoPartition {
                topic: topic.to_string(),
                partitions,
                partition,
            }));
        }
        self.push(topic, partition, key, value);
        Ok(())
    }

    fn output_partitions(&self, topic: &str) -> Result<u32, TaskError> {
        self.collector
            .partitions
            .get(topic)
            .copied()
            .ok_or_else(|| {
                Box::new(ContextError::NotAnOutput {
                    topic: topic.to_string(),
                    known: self.config.outputs.join(", "),
                }) as TaskError
            })
    }

    fn push(&mut self, topic: &str, partition: u32, key: &[u8], value: Option<&[u8]>) {
        self.collector.pending.push(OutgoingMessage {
            topic: topic.to_string(),
            partition,
            key: key.to_vec(),
            value: value.map(|v| v.to_vec()),
            timestamp: self.now_ms,
        });
    }

    /// Asks the container to commit this task as soon as the current call returns.
    pub fn commit(&mut self) {
        self.coordinator.commit = true;
    }

    /// Asks the container to stop (commit, close, exit) after the current call.
    pub fn shutdown(&mut self) {
        self.coordinator.shutdown = true;
    }
}
