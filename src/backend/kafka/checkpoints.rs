//! Checkpoints in a compacted Kafka topic with one partition: key = task name, value = the
//! checkpoint as JSON. Every read first reads what was appended since the last one (the
//! whole topic the first time; newest value per task), because other processes of the job
//! write checkpoints too: a task that moves here must see its last owner's checkpoint.
//! Every write is acknowledged before it returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer as _, PurgeConfig};

use super::context::{Consumer, KafkaContext, Producer};

use super::reader::KafkaReader;
use super::{KafkaSettings, kafka_err};
use crate::backend::{AbortCheck, BackendError, LogReader, Result, TopicPartition};
use crate::checkpoint::Checkpoint;

pub(super) struct CheckpointTopic {
    settings: KafkaSettings,
    producer: Producer,
    /// The backend's metadata client (readers ask it for watermarks).
    meta: Arc<Consumer>,
    cache: Mutex<Cache>,
}

/// The newest checkpoint per task, as read up to `next`.
#[derive(Default)]
struct Cache {
    checkpoints: BTreeMap<String, Checkpoint>,
    next: u64,
}

impl CheckpointTopic {
    pub(super) fn new(settings: &KafkaSettings, meta: &Arc<Consumer>) -> Result<Self> {
        let mut cc = settings.producer_config();
        // One small record per commit, flushed at once: no reason to linger.
        cc.set("linger.ms", "0");
        let producer = cc
            .create_with_context(KafkaContext)
            .map_err(|e| kafka_err("creating the checkpoint producer", e))?;
        Ok(CheckpointTopic {
            settings: settings.clone(),
            producer,
            meta: Arc::clone(meta),
            cache: Mutex::new(Cache::default()),
        })
    }

    fn tp(&self) -> TopicPartition {
        TopicPartition::new(self.settings.checkpoint_topic.clone(), 0)
    }

    /// Reads what was appended since `cache.next` into `cache`.
    fn refresh(&self, cache: &mut Cache) -> Result<()> {
        let tp = self.tp();
        let mut reader = KafkaReader::open(&self.settings, &self.meta, &tp, cache.next)?;
        // Up to the end as it is now: other processes keep appending, so "until nothing
        // more arrives" might never come.
        let target = reader.high_watermark()?;
        while reader.position() < target {
            let batch = reader.next_batch(1024)?;
            for r in batch {
                let task = String::from_utf8_lossy(&r.key).into_owned();
                match r.value {
                    None => {
                        cache.checkpoints.remove(&task);
                    }
                    Some(v) => {
                        let cp: Checkpoint = serde_json::from_slice(&v).map_err(|e| {
                            BackendError::fatal(
                                format!(
                                    "checkpoint of task `{task}` in {tp} at offset {}",
                                    r.offset
                                ),
                                format!("not a valid checkpoint: {e}"),
                            )
                        })?;
                        match cache.checkpoints.get(&task) {
                            Some(newer) if supersedes(newer, &cp) => {
                                // A former owner's late write (it was cut off while its
                                // checkpoint was on the way): the newer owner's stands.
                                tracing::warn!(
                                    task = %task,
                                    offset = r.offset,
                                    "ignoring a checkpoint written under job model version {:?} after one written under version {:?}",
                                    cp.owner.as_ref().map(|o| o.generation),
                                    newer.owner.as_ref().map(|o| o.generation)
                                );
                            }
                            _ => {
                                cache.checkpoints.insert(task, cp);
                            }
                        }
                    }
                }
            }
        }
        cache.next = cache.next.max(reader.position());
        Ok(())
    }

    /// The newest checkpoint of `task`: the last one in the topic, except that one written
    /// under an older job model version than a checkpoint before it is ignored (see
    /// [`supersedes`]).
    pub(super) fn read(&self, task: &str) -> Result<Option<Checkpoint>> {
        let mut cache = crate::sync::lock(&self.cache);
        self.refresh(&mut cache)?;
        Ok(cache.checkpoints.get(task).cloned())
    }

    /// Writes `checkpoint` and waits for the broker's acknowledgement, up to
    /// `message.timeout.ms`, or until `abort` says `Err` (asked every 100 ms): then what is
    /// queued is purged, so a checkpoint the fence refused is never delivered later.
    pub(super) fn write(
        &self,
        task: &str,
        checkpoint: &Checkpoint,
        abort: Option<&AbortCheck>,
    ) -> Result<()> {
        let tp = self.tp();
        let value = serde_json::to_vec(checkpoint)
            .map_err(|e| BackendError::fatal(format!("task `{task}`: checkpoint"), e))?;
        let record = BaseRecord::<str, [u8]>::to(&tp.topic)
            .partition(0)
            .key(task)
            .payload(&value);
        self.producer.send(record).map_err(|(e, _)| {
            kafka_err(format!("task `{task}`: writing its checkpoint to {tp}"), e)
        })?;
        let give_up = Duration::from_millis(
            self.settings
                .client
                .get("message.timeout.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(300_000),
        );
        let started = std::time::Instant::now();
        loop {
            let slice = match abort {
                Some(_) => Duration::from_millis(100),
                None => give_up,
            };
            match super::flush_producer(&self.producer, slice) {
                Ok(()) => break,
                Err(e) if started.elapsed() >= give_up => {
                    return Err(kafka_err(
                        format!("task `{task}`: writing its checkpoint to {tp}"),
                        e,
                    ));
                }
                Err(_) => {
                    if let Some(reason) = abort.and_then(|a| a().err()) {
                        self.producer
                            .purge(PurgeConfig::default().queue().inflight());
                        return Err(BackendError::fatal(
                            format!("task `{task}`: writing its checkpoint to {tp}"),
                            format!("stopped waiting for Kafka: {reason}"),
                        ));
                    }
                }
            }
        }
        // The next refresh reads this record again, in log order with the others.
        crate::sync::lock(&self.cache)
            .checkpoints
            .insert(task.to_string(), checkpoint.clone());
        Ok(())
    }
}

/// Whether `newer` (read earlier) stands against `late` (read after it): both name their
/// writer's job model version and `late`'s is older. Only a process that lost the task writes
/// under an older version than its new owner (a checkpoint held up by a network partition and
/// delivered after the task moved); the fence stops it before the write, and this stops a
/// write that was already on its way.
fn supersedes(newer: &Checkpoint, late: &Checkpoint) -> bool {
    match (&newer.owner, &late.owner) {
        (Some(n), Some(l)) => l.generation < n.generation,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::supersedes;
    use crate::checkpoint::{Checkpoint, CheckpointOwner};

    fn by(member: &str, generation: Option<u64>) -> Checkpoint {
        Checkpoint {
            owner: generation.map(|generation| CheckpointOwner {
                member: member.into(),
                generation,
            }),
            ..Checkpoint::default()
        }
    }

    #[test]
    fn a_late_checkpoint_of_an_older_model_version_is_ignored() {
        assert!(supersedes(&by("p-2", Some(5)), &by("p-1", Some(4))));
        // The same version (the same owner committing again) or a newer one is taken.
        assert!(!supersedes(&by("p-2", Some(5)), &by("p-2", Some(5))));
        assert!(!supersedes(&by("p-2", Some(5)), &by("p-3", Some(6))));
        // Without owners (static assignment, embedded) the last write wins as before.
        assert!(!supersedes(&by("x", None), &by("y", Some(1))));
        assert!(!supersedes(&by("x", Some(3)), &by("y", None)));
    }
}
