//! Side inputs (Samza's side-input stores, Kafka Streams' global tables): a store filled
//! from every partition of one or more topics, which every task of the process can read and
//! none can write (`stores.<name>.side.inputs = ["topic"]`).
//!
//! - **Bootstrap.** Before any task opens, each side-input store is rebuilt from its topics:
//!   every partition read from its start to the end it had when the job started. Tasks only
//!   run once every side input has caught up to that point, so a join never misses a row
//!   written before the job started.
//! - **Kept up to date.** While the job runs, the container reads new records of the topics
//!   between rounds of batches (a record with a value is a put, a tombstone a delete) and
//!   applies them; tasks see them from the next batch on.
//! - **No changelog.** The topic is the store's source of truth, so the store is rebuilt from
//!   it at every start (a compacted topic keeps that short). Its contents are not part of a
//!   task's checkpoint: a task that processes a message again after a crash may see a newer
//!   side-input value than the first time (as in Samza and Kafka Streams).
//! - **Read-only.** Tasks get a [`SideHandle`]: reads lock the shared store for the call
//!   (ranges read from a snapshot taken under the lock); every write is a
//!   [`StoreError::ReadOnly`] naming the store and its topics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::config::{JobConfig, SideInputStore};
use super::error::{RuntimeError, topic_err};
use crate::backend::{Backend, LogReader, TopicPartition};
use crate::statedir::StateDir;
use crate::store::{KeyValueStore, KvIter, KvSnapshot, Mutation, StoreError, stack};

/// Records read per side-input partition per poll.
const BATCH: usize = 1024;

/// Directory of the side-input stores in a state directory.
pub const SIDE_INPUTS_DIR: &str = "side-inputs";

type Shared = Arc<Mutex<Box<dyn KeyValueStore>>>;

struct Source {
    tp: TopicPartition,
    reader: Box<dyn LogReader>,
}

struct SideStore {
    name: String,
    topics: Vec<String>,
    store: Shared,
    sources: Vec<Source>,
}

/// The side-input stores of a process, with their readers.
pub struct SideInputs {
    stores: Vec<SideStore>,
}

impl SideInputs {
    /// Rebuilds every side-input store of `job` under `<state>/side-inputs/<store>` from its
    /// topics up to the ends they have now (see the module doc).
    pub fn bootstrap(
        backend: &dyn Backend,
        state: &StateDir,
        job: &JobConfig,
    ) -> Result<Self, RuntimeError> {
        let stores = job
            .side_inputs
            .iter()
            .map(|(name, side)| bootstrap_store(backend, state, name, side))
            .collect::<Result<_, _>>()?;
        Ok(SideInputs { stores })
    }

    /// Applies what was appended to the side-input topics since the last poll (at most
    /// 1024 records per partition); returns how many records.
    pub fn poll(&mut self) -> Result<u64, RuntimeError> {
        let mut n = 0;
        for s in &mut self.stores {
            for src in &mut s.sources {
                let records = src
                    .reader
                    .next_batch(BATCH)
                    .map_err(topic_err(&src.tp.topic))?;
                n += apply(&s.name, &s.store, records)?;
            }
        }
        Ok(n)
    }

    /// What tasks need to read the stores (shareable between threads).
    pub fn views(&self) -> SideViews {
        SideViews(
            self.stores
                .iter()
                .map(|s| (s.name.clone(), s.topics.join(", "), Arc::clone(&s.store)))
                .collect(),
        )
    }

    /// Whether the job has side inputs.
    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }
}

fn store_err(store: &str) -> impl FnOnce(StoreError) -> RuntimeError + '_ {
    move |source| RuntimeError::SideInput {
        store: store.to_string(),
        source: Box::new(source),
    }
}

fn bootstrap_store(
    backend: &dyn Backend,
    state: &StateDir,
    name: &str,
    side: &SideInputStore,
) -> Result<SideStore, RuntimeError> {
    let dir = state.root().join(SIDE_INPUTS_DIR).join(name);
    // Rebuilt from the topics at every start: whatever an earlier run left is dropped.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| {
            store_err(name)(StoreError::Io {
                store: name.to_string(),
                context: "cannot remove the old copy",
                path: dir.clone(),
                source,
            })
        })?;
    }
    let engine = stack::open_engine(name, &dir, &side.config).map_err(store_err(name))?;
    let store: Shared = Arc::new(Mutex::new(stack::add_layers(engine, &side.config)));
    let mut sources = Vec::new();
    let mut applied = 0;
    for topic in &side.topics {
        let Some(partitions) = backend.partitions(topic).map_err(topic_err(topic))? else {
            return Err(RuntimeError::NoInput {
                topic: topic.clone(),
            });
        };
        for p in 0..partitions {
            let tp = TopicPartition::new(topic.clone(), p);
            let offsets = backend.offsets(&tp).map_err(topic_err(topic))?;
            let mut reader = backend
                .open_reader(&tp, offsets.start)
                .map_err(topic_err(topic))?;
            // Up to the end the partition had at start; what comes later is polled.
            while reader.position() < offsets.end {
                let records = reader.next_batch(BATCH).map_err(topic_err(topic))?;
                if records.is_empty() {
                    break;
                }
                applied += apply(name, &store, records)?;
            }
            sources.push(Source { tp, reader });
        }
    }
    crate::sync::lock(&store).flush().map_err(store_err(name))?;
    tracing::info!(store = name, records = applied, "side input bootstrapped");
    Ok(SideStore {
        name: name.to_string(),
        topics: side.topics.clone(),
        store,
        sources,
    })
}

fn apply(
    name: &str,
    store: &Shared,
    records: Vec<crate::backend::Record>,
) -> Result<u64, RuntimeError> {
    if records.is_empty() {
        return Ok(0);
    }
    let n = records.len() as u64;
    let batch = records
        .into_iter()
        .map(|r| Mutation {
            key: r.key,
            value: r.value,
        })
        .collect();
    let mut store = crate::sync::lock(store);
    store.write_batch(batch).map_err(store_err(name))?;
    // Through the cache to the engine, so snapshots (range reads) see it too.
    store.flush().map_err(store_err(name))?;
    Ok(n)
}

/// The side-input stores as tasks see them: [`handles`](Self::handles) makes one task's.
#[derive(Clone, Default)]
pub struct SideViews(Vec<(String, String, Shared)>);

impl SideViews {
    /// A read-only handle on each store, for one task.
    pub fn handles(&self) -> BTreeMap<String, SideHandle> {
        self.0
            .iter()
            .map(|(name, topics, store)| {
                (
                    name.clone(),
                    SideHandle {
                        name: name.clone(),
                        topics: topics.clone(),
                        store: Arc::clone(store),
                        snapshot: None,
                    },
                )
            })
            .collect()
    }
}

/// A task's read-only view of a side-input store.
pub struct SideHandle {
    name: String,
    topics: String,
    store: Shared,
    /// The snapshot the last range read iterates.
    snapshot: Option<Box<dyn KvSnapshot>>,
}

impl SideHandle {
    fn read_only(&self) -> StoreError {
        StoreError::ReadOnly {
            store: self.name.clone(),
            why: format!(
                "it is a side input, filled from topic(s) {}; write to the topic instead",
                self.topics
            ),
        }
    }
}

impl KeyValueStore for SideHandle {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&mut self, key: &[u8]) -> crate::store::Result<Option<Vec<u8>>> {
        crate::sync::lock(&self.store).get(key)
    }

    fn write_batch(&mut self, _batch: Vec<Mutation>) -> crate::store::Result<()> {
        Err(self.read_only())
    }

    fn put(&mut self, _key: &[u8], _value: &[u8]) -> crate::store::Result<()> {
        Err(self.read_only())
    }

    fn delete(&mut self, _key: &[u8]) -> crate::store::Result<()> {
        Err(self.read_only())
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> crate::store::Result<KvIter<'_>> {
        let snapshot = crate::sync::lock(&self.store).snapshot()?;
        self.snapshot.insert(snapshot).scan(from, to)
    }

    fn snapshot(&mut self) -> crate::store::Result<Box<dyn KvSnapshot>> {
        crate::sync::lock(&self.store).snapshot()
    }

    fn flush(&mut self) -> crate::store::Result<()> {
        Ok(())
    }
}
