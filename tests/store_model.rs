//! Model-based test: random sequences of store operations, applied both to a store stack and
//! to a `BTreeMap` model, must agree on every read. Keys come from a small alphabet with
//! 0x00/0xFF bytes (so keys collide, prefix each other and sit at the edges of unsigned byte
//! order). Runs on each engine bare and under a small cache (3 entries, write batch 2, with
//! the metered layer on top), and for RocksDB also drops and reopens the stack mid-sequence.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use gregor::store::cached::CachedStore;
use gregor::store::memory::MemoryEngine;
use gregor::store::metered::MeteredStore;
use gregor::store::rocks::{RocksEngine, RocksOptions};
use gregor::store::{Entry, KeyValueStore, KvIter, KvSnapshot, Limits};
use proptest::prelude::*;
use proptest::test_runner::Config;
use tempfile::TempDir;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const ALPHABET: [u8; 6] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF];
/// Snapshots kept open at once (older ones are dropped first).
const MAX_SNAPSHOTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    PutAll(Vec<(Vec<u8>, Vec<u8>)>),
    DeleteAll(Vec<Vec<u8>>),
    Get(Vec<u8>),
    GetAll(Vec<Vec<u8>>),
    Range(Vec<u8>, Vec<u8>),
    Prefix(Vec<u8>),
    All,
    /// Takes a snapshot and remembers the model as of now.
    Snapshot,
    /// Compares one open snapshot (by index) with its remembered model over a range.
    CheckSnapshot(prop::sample::Index, Vec<u8>, Vec<u8>),
    Flush,
    /// RocksDB: flush, drop the whole stack, reopen it from the same directory.
    /// Memory: a flush (the engine keeps nothing across a reopen).
    Reopen,
}

fn byte() -> impl Strategy<Value = u8> {
    prop::sample::select(ALPHABET.to_vec())
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(byte(), 1..=3)
}

/// A range bound or prefix: may be empty (the very start of the key space).
fn bound() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(byte(), 0..=3)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key().prop_map(Op::Delete),
        1 => prop::collection::vec((key(), value()), 0..6).prop_map(Op::PutAll),
        1 => prop::collection::vec(key(), 0..6).prop_map(Op::DeleteAll),
        2 => key().prop_map(Op::Get),
        1 => prop::collection::vec(key(), 0..5).prop_map(Op::GetAll),
        2 => (bound(), bound()).prop_map(|(f, t)| Op::Range(f, t)),
        1 => bound().prop_map(Op::Prefix),
        1 => Just(Op::All),
        1 => Just(Op::Snapshot),
        1 => (any::<prop::sample::Index>(), bound(), bound()).prop_map(|(i, f, t)| Op::CheckSnapshot(i, f, t)),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Memory,
    Rocks,
}

struct Subject {
    kind: Kind,
    cached: bool,
    dir: TempDir,
}

impl Subject {
    fn open(&self) -> Box<dyn KeyValueStore> {
        let limits = Limits::default();
        let engine: Box<dyn KeyValueStore> = match self.kind {
            Kind::Memory => Box::new(MemoryEngine::new("model", limits)),
            Kind::Rocks => Box::new(
                RocksEngine::open("model", self.dir.path(), limits, &RocksOptions::default())
                    .expect("open RocksDB"),
            ),
        };
        if self.cached {
            let cache = CachedStore::new(engine, limits, NonZeroUsize::new(3).unwrap(), 2);
            Box::new(MeteredStore::new(Box::new(cache)))
        } else {
            engine
        }
    }
}

fn collect(it: KvIter<'_>) -> Result<Vec<Entry>, TestCaseError> {
    it.map(|r| r.map_err(|e| TestCaseError::fail(format!("iteration failed: {e}"))))
        .collect()
}

fn model_scan(m: &Model, from: &[u8], to: Option<&[u8]>) -> Vec<Entry> {
    m.iter()
        .filter(|(k, _)| from <= k.as_slice() && to.is_none_or(|t| k.as_slice() < t))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn model_prefix(m: &Model, p: &[u8]) -> Vec<Entry> {
    m.iter()
        .filter(|(k, _)| k.starts_with(p))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn check_snapshot(
    snap: &dyn KvSnapshot,
    model: &Model,
    from: &[u8],
    to: &[u8],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        collect(snap.range(from, to).unwrap())?,
        model_scan(model, from, Some(to))
    );
    prop_assert_eq!(collect(snap.all().unwrap())?, model_scan(model, &[], None));
    if !from.is_empty() {
        prop_assert_eq!(snap.get(from).unwrap(), model.get(from).cloned());
        prop_assert_eq!(
            collect(snap.prefix(from).unwrap())?,
            model_prefix(model, from)
        );
    }
    Ok(())
}

fn run(kind: Kind, cached: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let subject = Subject {
        kind,
        cached,
        dir: tempfile::tempdir().unwrap(),
    };
    let mut store = subject.open();
    let mut model = Model::new();
    let mut snapshots: Vec<(Box<dyn KvSnapshot>, Model)> = Vec::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                store.put(&k, &v).unwrap();
                model.insert(k, v);
            }
            Op::Delete(k) => {
                store.delete(&k).unwrap();
                model.remove(&k);
            }
            Op::PutAll(entries) => {
                store.put_all(entries.clone()).unwrap();
                model.extend(entries);
            }
            Op::DeleteAll(keys) => {
                store.delete_all(keys.clone()).unwrap();
                for k in keys {
                    model.remove(&k);
                }
            }
            Op::Get(k) => prop_assert_eq!(
                store.get(&k).unwrap(),
                model.get(&k).cloned(),
                "get {:02x?}",
                k
            ),
            Op::GetAll(keys) => {
                let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let expected: Vec<Option<Vec<u8>>> =
                    keys.iter().map(|k| model.get(k).cloned()).collect();
                prop_assert_eq!(store.get_all(&refs).unwrap(), expected);
            }
            Op::Range(f, t) => {
                let got = collect(store.range(&f, &t).unwrap())?;
                prop_assert_eq!(
                    got,
                    model_scan(&model, &f, Some(&t)),
                    "range {:02x?}..{:02x?}",
                    f,
                    t
                );
            }
            Op::Prefix(p) => {
                let got = collect(store.prefix(&p).unwrap())?;
                prop_assert_eq!(got, model_prefix(&model, &p), "prefix {:02x?}", p);
            }
            Op::All => prop_assert_eq!(
                collect(store.all().unwrap())?,
                model_scan(&model, &[], None)
            ),
            Op::Snapshot => {
                if snapshots.len() == MAX_SNAPSHOTS {
                    snapshots.remove(0);
                }
                snapshots.push((store.snapshot().unwrap(), model.clone()));
            }
            Op::CheckSnapshot(i, f, t) => {
                if !snapshots.is_empty() {
                    let (snap, m) = &snapshots[i.index(snapshots.len())];
                    check_snapshot(&**snap, m, &f, &t)?;
                }
            }
            Op::Flush => store.flush().unwrap(),
            Op::Reopen => {
                store.flush().unwrap();
                if kind == Kind::Rocks {
                    // Snapshots hold the database open; they go before it can be reopened.
                    snapshots.clear();
                    drop(store);
                    store = subject.open();
                }
            }
        }
    }
    prop_assert_eq!(
        collect(store.all().unwrap())?,
        model_scan(&model, &[], None)
    );
    for (snap, m) in &snapshots {
        prop_assert_eq!(collect(snap.all().unwrap())?, model_scan(m, &[], None));
    }
    if kind == Kind::Rocks {
        // Whatever the sequence, a final flush + reopen holds exactly the model.
        store.flush().unwrap();
        snapshots.clear();
        drop(store);
        let mut store = subject.open();
        prop_assert_eq!(
            collect(store.all().unwrap())?,
            model_scan(&model, &[], None)
        );
    }
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The bare memory engine agrees with the model.
    #[test]
    fn memory_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(Kind::Memory, false, ops)?;
    }

    /// Memory under a 3-entry cache (write batch 2) and the metered layer agrees with the model.
    #[test]
    fn memory_cached_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(Kind::Memory, true, ops)?;
    }

    /// The bare RocksDB engine agrees with the model, across flushes and reopens.
    #[test]
    fn rocks_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(Kind::Rocks, false, ops)?;
    }

    /// RocksDB under a 3-entry cache and the metered layer agrees with the model, across
    /// flushes and reopens.
    #[test]
    fn rocks_cached_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(Kind::Rocks, true, ops)?;
    }
}
