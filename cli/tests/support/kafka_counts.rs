//! Checking a count job on Kafka from outside: its counts restored from Kafka alone, and a
//! topic read whole with a plain librdkafka consumer (not gregor's reader).

#![allow(dead_code)] // each test binary uses its own part

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gregor::backend::Backend;
use gregor::backend::kafka::KafkaSettings;
use gregor::restore::NoProgress;
use gregor::runtime::{JobConfig, task_name};
use gregor::statedir::StateDir;
use gregor::task_storage::{TaskStorage, TaskStorageContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The merged counts of `job`'s store `counts` over its `partitions` tasks, restored from
/// `backend` alone into a fresh state directory.
pub fn restored_counts(
    backend: Arc<dyn Backend>,
    job: &JobConfig,
    partitions: u32,
) -> BTreeMap<String, u64> {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let task = task_name(&job.name, p);
        let ctx = TaskStorageContext {
            backend: Arc::clone(&backend),
            state: &state,
            task: &task,
            changelog_partition: p,
        };
        let (mut storage, _) = TaskStorage::open(&ctx, &job.stores, &mut NoProgress).unwrap();
        let s = storage.store("counts").unwrap().stack();
        for e in s.all().unwrap() {
            let (k, v) = e.unwrap();
            let v = u64::from_be_bytes(v.try_into().unwrap());
            assert!(out.insert(String::from_utf8(k).unwrap(), v).is_none());
        }
    }
    out
}

/// Every record of `topic` (partitions `0..partitions`) in offset order per partition, read
/// with a plain librdkafka consumer: (partition, key, value).
pub fn consume_all(
    settings: &KafkaSettings,
    topic: &str,
    partitions: u32,
) -> Vec<(u32, Vec<u8>, Option<Vec<u8>>)> {
    let mut cc = ClientConfig::new();
    for (k, v) in &settings.client {
        cc.set(k, v);
    }
    cc.set("group.id", "independent-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cc.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut at_end = BTreeSet::new();
    let started = Instant::now();
    while at_end.len() < partitions as usize {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "reading {topic} takes too long"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push((
                m.partition() as u32,
                m.key().unwrap_or_default().to_vec(),
                m.payload().map(<[u8]>::to_vec),
            )),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}
