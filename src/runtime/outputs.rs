//! A job's output partitions: recovered at start-up (output past what the checkpoints
//! committed is dropped), appended to only at a task's commit, and marked committed for
//! readers afterwards (see [`super::committed`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::checkpoint::Checkpoint;
use crate::log::{LogDir, Partition};

use super::committed;
use super::config::JobConfig;
use super::error::{RuntimeError, log_err};
use super::task::OutgoingMessage;

/// An output partition: topic and partition number.
pub(crate) type OutputKey = (String, u32);

/// Every output partition of a job, open for appends.
pub(crate) struct Outputs {
    partitions: BTreeMap<OutputKey, Partition>,
}

impl Outputs {
    /// Opens (creating with one partition per task if missing) every output topic of `job`,
    /// truncates each partition to the newest end recorded by the tasks' `checkpoints`, and
    /// writes the read-committed markers.
    pub(crate) fn recover(
        logs: &LogDir,
        job: &JobConfig,
        n_tasks: u32,
        checkpoints: &[Option<Checkpoint>],
    ) -> Result<Outputs, RuntimeError> {
        let mut partitions = BTreeMap::new();
        for t in &job.outputs {
            let topic = logs
                .topic_or_create(t, n_tasks.max(1), job.output_topic_config())
                .map_err(log_err(t))?;
            for p in 0..topic.partitions() {
                let (mut part, _) = topic.open_partition(p).map_err(log_err(t))?;
                // Tasks commit one at a time, so the newest end any checkpoint records is
                // where committed output ends; anything after it was never committed.
                let committed = checkpoints
                    .iter()
                    .flatten()
                    .filter_map(|cp| cp.outputs.get(t).and_then(|m| m.get(&p)).copied())
                    .max();
                if let Some(c) = committed
                    && part.end_offset() > c
                {
                    tracing::warn!(topic = %t, partition = p, "dropping {} uncommitted output records", part.end_offset() - c);
                    part.truncate(c).map_err(log_err(t))?;
                }
                committed::write(part.dir(), part.end_offset())?;
                partitions.insert((t.clone(), p), part);
            }
        }
        Ok(Outputs { partitions })
    }

    /// Partition count per output topic (what a task's collector partitions by).
    pub(crate) fn partition_counts(&self) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for (t, p) in self.partitions.keys() {
            let n = counts.entry(t.clone()).or_insert(0);
            *n = (*n).max(p + 1);
        }
        counts
    }

    /// Appends a committing task's messages and fsyncs the partitions they went to, which it
    /// returns.
    pub(crate) fn append(
        &mut self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<BTreeSet<OutputKey>, RuntimeError> {
        let mut touched = BTreeSet::new();
        for m in messages {
            let key = (m.topic, m.partition);
            let part = self
                .partitions
                .get_mut(&key)
                .expect("the collector only accepts declared outputs");
            part.append(m.timestamp, &m.key, m.value.as_deref())
                .map_err(log_err(&key.0))?;
            touched.insert(key);
        }
        for key in &touched {
            let part = self.partitions.get_mut(key).expect("touched output exists");
            part.sync().map_err(log_err(&key.0))?;
        }
        Ok(touched)
    }

    /// The end of every output partition, as a checkpoint records them.
    pub(crate) fn ends(&self) -> BTreeMap<String, BTreeMap<u32, u64>> {
        let mut ends: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
        for ((t, p), part) in &self.partitions {
            ends.entry(t.clone())
                .or_default()
                .insert(*p, part.end_offset());
        }
        ends
    }

    /// Moves the read-committed markers of `touched` partitions to their ends (after the
    /// checkpoint that commits them is written).
    pub(crate) fn mark_committed(&self, touched: &BTreeSet<OutputKey>) -> Result<(), RuntimeError> {
        for key in touched {
            let part = &self.partitions[key];
            committed::write(part.dir(), part.end_offset())?;
        }
        Ok(())
    }
}
