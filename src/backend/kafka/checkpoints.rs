//! Checkpoints in a compacted Kafka topic with one partition: key = task name, value = the
//! checkpoint as JSON. Read once (the whole topic, newest value per task) and cached; every
//! write is acknowledged before it returns.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::reader::KafkaReader;
use super::{KafkaSettings, kafka_err};
use crate::backend::{BackendError, LogReader, Result, TopicPartition};
use crate::checkpoint::Checkpoint;

pub(super) struct CheckpointTopic {
    settings: KafkaSettings,
    producer: BaseProducer,
    cache: Mutex<Option<BTreeMap<String, Checkpoint>>>,
}

impl CheckpointTopic {
    pub(super) fn new(settings: &KafkaSettings) -> Result<Self> {
        let mut cc = settings.producer_config();
        // One small record per commit, flushed at once: no reason to linger.
        cc.set("linger.ms", "0");
        let producer = cc
            .create()
            .map_err(|e| kafka_err("creating the checkpoint producer", e))?;
        Ok(CheckpointTopic {
            settings: settings.clone(),
            producer,
            cache: Mutex::new(None),
        })
    }

    fn tp(&self) -> TopicPartition {
        TopicPartition::new(self.settings.checkpoint_topic.clone(), 0)
    }

    fn load(&self) -> Result<BTreeMap<String, Checkpoint>> {
        let tp = self.tp();
        let mut all = BTreeMap::new();
        let mut reader = KafkaReader::open(&self.settings, &tp, 0)?;
        loop {
            let batch = reader.next_batch(1024)?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                let task = String::from_utf8_lossy(&r.key).into_owned();
                match r.value {
                    None => {
                        all.remove(&task);
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
                        all.insert(task, cp);
                    }
                }
            }
        }
        Ok(all)
    }

    pub(super) fn read(&self, task: &str) -> Result<Option<Checkpoint>> {
        let mut cache = crate::sync::lock(&self.cache);
        if cache.is_none() {
            *cache = Some(self.load()?);
        }
        Ok(cache.as_ref().and_then(|c| c.get(task).cloned()))
    }

    pub(super) fn write(&self, task: &str, checkpoint: &Checkpoint) -> Result<()> {
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
        self.producer
            .flush(Duration::from_millis(
                self.settings
                    .client
                    .get("message.timeout.ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(300_000),
            ))
            .map_err(|e| kafka_err(format!("task `{task}`: writing its checkpoint to {tp}"), e))?;
        crate::sync::lock(&self.cache)
            .get_or_insert_with(BTreeMap::new)
            .insert(task.to_string(), checkpoint.clone());
        Ok(())
    }
}
