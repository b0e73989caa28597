//! The crash-test workload, shared by the `gregor-torture` binary (which runs it until it is
//! killed) and `tests/crash_kill9.rs` (which recomputes what the store must hold).
//!
//! Operation `i` of seed `s` is a pure function of `(s, i)`, so a checker that knows how many
//! operations were committed (`inputs["ops"][0]` of the task checkpoint) rebuilds the exact
//! expected contents without talking to the process that was killed. Opening the store is
//! shared too, so the checker opens it exactly as the workload does.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use gregor::backend::TopicPartition;
use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::checkpoint::Checkpoint;
use gregor::log::{LogDir, LogError, TopicConfig};
use gregor::restore::{NoProgress, RestoreStats};
use gregor::statedir::StateDir;
use gregor::store::config::{EngineKind, StoreConfig};
use gregor::store::{KeyValueStore, Mutation};
use gregor::task_storage::{TaskStorage, TaskStorageContext, TaskStore};

/// The task owning the store.
pub const TASK: &str = "t";
/// The store.
pub const STORE: &str = "s";
/// Its changelog topic (partition 0).
pub const CHANGELOG: &str = "s-changelog";
/// The "input" whose checkpointed offset is the number of committed operations.
pub const INPUT: &str = "ops";
/// Distinct keys written.
pub const KEY_SPACE: u64 = 2000;
/// Changelog segment size: small, so segment rolls happen (and kills land in them).
pub const SEGMENT_BYTES: u64 = 256 << 10;

/// One operation of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `put(key, value)`.
    Put(Vec<u8>, Vec<u8>),
    /// `delete(key)`.
    Delete(Vec<u8>),
    /// `put_all(entries)` (may repeat a key: the later entry wins).
    PutAll(Vec<(Vec<u8>, Vec<u8>)>),
    /// `delete_all(keys)`.
    DeleteAll(Vec<Vec<u8>>),
}

/// splitmix64: a tiny, stable generator (no dependency whose algorithm could change).
pub struct Rng(u64);

impl Rng {
    /// The generator of stream `stream` of operation `i` under `seed`.
    pub fn new(seed: u64, i: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ 0x243F_6A88_85A3_08D3);
        let a = r.next_u64();
        let mut r = Rng(a ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let b = r.next_u64();
        Rng(b ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Key number `j` as bytes. Some keys start with or contain 0x00 and 0xFF bytes (ordering
/// edge cases), lengths vary from 1 to ~40 bytes; every key is non-empty and distinct.
pub fn key(j: u64) -> Vec<u8> {
    let id = j.to_be_bytes();
    match j % 10 {
        0 => [&[0x00][..], &id].concat(),
        1 => [&[0xFF, 0xFF][..], &id, &[0x00]].concat(),
        2 => vec![(j % 251) as u8 + 1],
        3 => [&b"k\x00"[..], &id, &[0xFF; 3]].concat(),
        4 => format!("user/{j:05}/profile/with/a/long/path").into_bytes(),
        _ => format!("key-{j:05}").into_bytes(),
    }
}

fn random_key(r: &mut Rng) -> Vec<u8> {
    // Key 2 mod 10 collides for j and j+251*10; that is fine (still a valid key).
    key(r.below(KEY_SPACE))
}

fn random_value(r: &mut Rng, i: u64) -> Vec<u8> {
    let len = if r.below(50) == 0 {
        1000 + r.below(4000)
    } else {
        r.below(300)
    } as usize;
    let fill = r.next_u64();
    // Starts with the op number (when long enough), then pseudo-random bytes.
    let mut v: Vec<u8> = i.to_le_bytes().into_iter().take(len).collect();
    v.extend((v.len()..len).map(|n| (fill.rotate_left(n as u32 % 64) as u8) ^ n as u8));
    v
}

/// Operation `i` of `seed`.
pub fn op(seed: u64, i: u64) -> Op {
    let mut r = Rng::new(seed, i, 1);
    match r.below(100) {
        0..=74 => {
            let k = random_key(&mut r);
            Op::Put(k, random_value(&mut r, i))
        }
        75..=89 => Op::Delete(random_key(&mut r)),
        90..=96 => {
            let n = 1 + r.below(40);
            Op::PutAll(
                (0..n)
                    .map(|_| (random_key(&mut r), random_value(&mut r, i)))
                    .collect(),
            )
        }
        _ => {
            let n = 1 + r.below(20);
            Op::DeleteAll((0..n).map(|_| random_key(&mut r)).collect())
        }
    }
}

/// Whether the workload commits right after operation `i` (on average about every
/// `max_ops_per_commit / 2` operations, with short and long stretches mixed).
pub fn commit_after(seed: u64, i: u64, max_ops_per_commit: u64) -> bool {
    let mut r = Rng::new(seed, i, 2);
    let every = 1 + r.below(max_ops_per_commit.max(1));
    r.below(every) == 0
}

/// Applies `op` to the model.
pub fn apply(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: &Op) {
    match op {
        Op::Put(k, v) => {
            model.insert(k.clone(), v.clone());
        }
        Op::Delete(k) => {
            model.remove(k);
        }
        Op::PutAll(es) => {
            for (k, v) in es {
                model.insert(k.clone(), v.clone());
            }
        }
        Op::DeleteAll(ks) => {
            for k in ks {
                model.remove(k);
            }
        }
    }
}

/// Applies `op` to a store.
pub fn apply_to_store(store: &mut dyn KeyValueStore, op: Op) -> gregor::store::Result<()> {
    match op {
        Op::Put(k, v) => store.put(&k, &v),
        Op::Delete(k) => store.delete(&k),
        Op::PutAll(es) => store.put_all(es),
        Op::DeleteAll(ks) => store.write_batch(ks.into_iter().map(Mutation::delete).collect()),
    }
}

/// The expected store contents after operations `0..n` of `seed`.
pub fn model(seed: u64, n: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        apply(&mut m, &op(seed, i));
    }
    m
}

/// The store's configuration: a small byte-sized cache (16 KiB, about 100 entries) so
/// evictions and early flushes of dirty entries (past half of it) happen between commits.
pub fn store_config(engine: EngineKind) -> StoreConfig {
    StoreConfig {
        engine,
        changelog: Some(CHANGELOG.to_string()),
        cache_max_bytes: 16 << 10,
        ..StoreConfig::default()
    }
}

/// Creates the changelog topic with small segments unless it exists (fsync on, compacted).
pub fn ensure_changelog(logs: &LogDir) -> Result<(), LogError> {
    match logs.topic(CHANGELOG) {
        Ok(_) => Ok(()),
        Err(LogError::TopicNotFound(_)) => {
            let config = TopicConfig {
                segment_bytes: SEGMENT_BYTES,
                fsync: true,
                ..TopicConfig::compacted()
            };
            logs.create_topic(CHANGELOG, 1, config).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// The number of committed operations recorded in a checkpoint.
pub fn ops_of(cp: &Checkpoint) -> u64 {
    cp.input(INPUT, 0).unwrap_or(0)
}

/// Store `s` of task `t`, restored to the task's checkpoint.
pub struct Opened {
    /// The task's storage (holding the one store).
    pub storage: TaskStorage,
    /// What the restore did.
    pub stats: RestoreStats,
    /// The checkpoint it was restored to (`None`: the task never committed).
    pub checkpoint: Option<Checkpoint>,
}

impl Opened {
    /// The store.
    pub fn store(&mut self) -> &mut TaskStore {
        self.storage.store(STORE).expect("opened with the store")
    }
}

/// Opens the store as the workload does: changelog topic, then [`TaskStorage::open`].
pub fn open(
    state: &StateDir,
    logs: &LogDir,
    engine: EngineKind,
) -> Result<Opened, Box<dyn std::error::Error>> {
    ensure_changelog(logs)?;
    let backend =
        EmbeddedBackend::with_log_dir(state.root(), logs.clone(), EmbeddedSettings::default());
    let ctx = TaskStorageContext {
        backend: Arc::new(backend),
        state,
        task: TASK,
        changelog_partition: 0,
    };
    let configs = BTreeMap::from([(STORE.to_string(), store_config(engine))]);
    let (storage, stats) = TaskStorage::open(&ctx, &configs, &mut NoProgress)?;
    let checkpoint = storage.checkpoint().cloned();
    Ok(Opened {
        storage,
        stats: stats
            .into_iter()
            .next()
            .ok_or("a store with a changelog returns restore stats")?,
        checkpoint,
    })
}

/// Commits through [`TaskStorage::commit`], recording `ops` processed operations. Returns
/// the store's changelog end.
pub fn commit(storage: &mut TaskStorage, ops: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let inputs = BTreeMap::from([(TopicPartition::new(INPUT, 0), ops)]);
    let cp = storage.commit(&inputs, Vec::new())?;
    Ok(cp.changelogs[STORE])
}

/// Every entry of a store, in key order.
pub fn contents(
    store: &mut dyn KeyValueStore,
) -> gregor::store::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    store.all()?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_deterministic_and_varied() {
        assert_eq!(op(7, 123), op(7, 123));
        assert_ne!(
            (0..20).map(|i| op(7, i)).collect::<Vec<_>>(),
            (0..20).map(|i| op(8, i)).collect::<Vec<_>>()
        );
        let kinds = (0..2000)
            .map(|i| std::mem::discriminant(&op(1, i)))
            .collect::<std::collections::HashSet<_>>();
        assert_eq!(kinds.len(), 4);
        assert!((0..KEY_SPACE).all(|j| !key(j).is_empty()));
    }
}
