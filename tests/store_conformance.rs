//! One conformance suite for the `KeyValueStore` contract (see `src/store/mod.rs`), run
//! against every engine and layer combination: memory and RocksDB engines, each bare, under a
//! default-sized cache and under a tiny cache (3 entries, write batch 2, so dirty entries are
//! evicted and batches flushed all the time), each with and without the metered layer, and
//! with the TTL layer (`ttl.ms`, nothing expiring) over the logged layer. The
//! typed facade is exercised on top of every combination. Engine-only points
//! (`write_logged`, `changelog_end`, `bulk_load`, `wipe`) run on the bare engines, and
//! persistence across reopen runs on every RocksDB combination.
//!
//! Each contract point is its own test per combination, e.g.
//! `rocks_tiny_cache_metered::range_with_00_and_ff_keys`.
//!
//! `suite_catches::*` checks the suite itself: deliberately broken layers must fail it.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use gregor::backend::memory::MemoryBackend;
use gregor::backend::{Backend, TopicPartition};
use gregor::changelog::{Changelog, SharedSink};
use gregor::serde::SerdeName;
use gregor::store::cached::CachedStore;
use gregor::store::limits::DEFAULT_MAX_KEY_BYTES;
use gregor::store::logged::LoggedStore;
use gregor::store::memory::MemoryEngine;
use gregor::store::metered::MeteredStore;
use gregor::store::rocks::{RocksEngine, RocksOptions};
use gregor::store::ttl::{TtlSettings, TtlStore};
use gregor::store::typed::Store;
use gregor::store::{
    Engine, Entry, KeyValueStore, KvIter, KvSnapshot, Limits, Mutation, StoreError,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Harness: how each combination is built.
// ---------------------------------------------------------------------------------------

/// The store name every combination uses; errors must mention it.
const NAME: &str = "orders";

#[derive(Clone, Copy, Debug)]
enum EngineKind {
    Memory,
    Rocks,
}

/// One combination of engine and layers.
#[derive(Clone, Copy, Debug)]
struct Spec {
    engine: EngineKind,
    /// Writes go through the logged layer into an in-memory changelog.
    logged: bool,
    /// `(object cache entries, write batch size)` (Samza's bounds), or `(0, bytes)` for a
    /// cache bounded in bytes only (the default kind), or no cache.
    cache: Option<(usize, usize)>,
    metered: bool,
    /// The TTL layer (`ttl.ms`, 1 hour on the system clock: nothing expires) between the
    /// metered layer and the cache; the layers below hold values 9 bytes longer.
    ttl: bool,
    /// A deliberately broken layer on top, to check that the suite catches it (see the
    /// `suite_catches` module at the end); `None` everywhere else.
    bug: Option<Bug>,
}

/// The TTL layer's settings: 1 hour on the system clock, so nothing expires during a test.
fn ttl_settings(limits: Limits) -> TtlSettings {
    TtlSettings {
        ttl_ms: 3_600_000,
        cleanup_entries: 10_000,
        limits,
        clock: gregor::store::ttl::Clock::System,
    }
}

/// Owns the data directory of one test so the stack can be dropped and reopened.
struct Harness {
    spec: Spec,
    limits: Limits,
    dir: TempDir,
    backend: MemoryBackend,
    sink: RefCell<Option<SharedSink>>,
}

const CHANGELOG: &str = "orders-changelog";

impl Harness {
    fn new(spec: Spec) -> Self {
        Self::with_limits(spec, Limits::default())
    }

    fn with_limits(spec: Spec, limits: Limits) -> Self {
        let backend = MemoryBackend::new();
        backend.create_topic(CHANGELOG, 1, true);
        Harness {
            spec,
            limits,
            dir: tempfile::tempdir().expect("tempdir"),
            backend,
            sink: RefCell::new(None),
        }
    }

    /// The limits of the layers below the TTL layer (values 9 bytes longer with it).
    fn stored_limits(&self) -> Limits {
        let mut l = self.limits;
        if self.spec.ttl {
            l.max_value_bytes += gregor::store::ttl::HEADER_BYTES;
        }
        l
    }

    /// Opens the bare engine (a fresh one for memory; the same directory for RocksDB).
    fn engine(&self) -> Box<dyn Engine> {
        let limits = self.stored_limits();
        match self.spec.engine {
            EngineKind::Memory => Box::new(MemoryEngine::new(NAME, limits)),
            EngineKind::Rocks => Box::new(
                RocksEngine::open(NAME, self.dir.path(), limits, &RocksOptions::default())
                    .expect("open RocksDB"),
            ),
        }
    }

    /// Opens the engine with the layers of this combination on top.
    fn open(&self) -> Box<dyn KeyValueStore> {
        let engine: Box<dyn Engine> = self.engine();
        let mut s: Box<dyn KeyValueStore> = engine;
        if self.spec.logged {
            let engine: Box<dyn Engine> = self.engine_again(s);
            let sink: SharedSink = Arc::new(Mutex::new(self.backend.open_sink("t").unwrap()));
            let tp = TopicPartition::new(CHANGELOG, 0);
            let end = self.backend.offsets(&tp).unwrap().end;
            let changelog = Arc::new(Mutex::new(Changelog::new(Arc::clone(&sink), tp, end)));
            *self.sink.borrow_mut() = Some(sink);
            s = Box::new(LoggedStore::new(engine, changelog, self.stored_limits()));
        }
        let ttl = self.spec.ttl.then(|| ttl_settings(self.limits));
        let cache = match self.spec.cache {
            Some((0, bytes)) => {
                let settings = gregor::store::cached::CacheSettings {
                    max_bytes: bytes,
                    ..Default::default()
                };
                let budget = gregor::store::cached::CacheBudget::new(usize::MAX);
                Ok(CachedStore::sized(
                    s,
                    self.stored_limits(),
                    settings,
                    budget,
                ))
            }
            Some((size, batch)) => {
                let size = NonZeroUsize::new(size).expect("cache size > 0");
                Ok(CachedStore::new(s, self.stored_limits(), size, batch))
            }
            None => Err(s),
        };
        // Over a cache, the TTL layer reads the cache's entries directly, as in the stack.
        let mut s: Box<dyn KeyValueStore> = match (cache, ttl) {
            (Ok(cache), Some(ttl)) => Box::new(TtlStore::over_cache(cache, ttl)),
            (Ok(cache), None) => Box::new(cache),
            (Err(s), Some(ttl)) => Box::new(TtlStore::new(s, ttl)),
            (Err(s), None) => s,
        };
        if self.spec.metered {
            s = Box::new(MeteredStore::new(s));
        }
        if let Some(bug) = self.spec.bug {
            s = Box::new(Buggy {
                inner: s,
                bug,
                pending_deletes: Vec::new(),
            });
        }
        s
    }
}

impl Harness {
    /// The engine just opened, as an engine (the logged layer needs one).
    fn engine_again(&self, opened: Box<dyn KeyValueStore>) -> Box<dyn Engine> {
        drop(opened);
        self.engine()
    }

    /// Makes every changelog record sent so far durable; returns the changelog's records.
    fn changelog(&self) -> Vec<gregor::backend::Record> {
        if let Some(sink) = &*self.sink.borrow() {
            sink.lock().unwrap().flush().unwrap();
        }
        self.backend.records(&TopicPartition::new(CHANGELOG, 0))
    }
}

/// The logged layer: after a flush, replaying the changelog from the start gives exactly
/// the store's contents (every put and delete was logged, in order, tombstones included).
fn logged_changelog_replays_to_contents(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    let model = write_mix(&mut *s);
    s.flush().unwrap();
    let mut replayed = BTreeMap::new();
    let records = h.changelog();
    assert!(!records.is_empty(), "nothing was logged");
    assert!(
        records.iter().any(|r| r.value.is_none()),
        "deletes travel as tombstones"
    );
    for r in records {
        match r.value {
            Some(v) => replayed.insert(r.key, v),
            None => replayed.remove(&r.key),
        };
    }
    assert_eq!(replayed, model);
    assert_eq!(all_of(&mut *s), model_entries(&model));
}

fn collect(it: KvIter<'_>) -> Vec<Entry> {
    it.map(|r| r.expect("iteration must not fail")).collect()
}

fn all_of(s: &mut dyn KeyValueStore) -> Vec<Entry> {
    collect(s.all().expect("all"))
}

fn range_of(s: &mut dyn KeyValueStore, from: &[u8], to: &[u8]) -> Vec<Entry> {
    collect(s.range(from, to).expect("range"))
}

fn prefix_of(s: &mut dyn KeyValueStore, p: &[u8]) -> Vec<Entry> {
    collect(s.prefix(p).expect("prefix"))
}

fn model_entries(m: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Entry> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn model_range(m: &BTreeMap<Vec<u8>, Vec<u8>>, from: &[u8], to: &[u8]) -> Vec<Entry> {
    m.iter()
        .filter(|(k, _)| from <= k.as_slice() && k.as_slice() < to)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Keys at the edges of unsigned byte order, deliberately not in sorted order.
const EDGE_KEYS: &[&[u8]] = &[
    &[0xFF],
    &[0x80],
    &[0x00],
    &[0xFF, 0xFF],
    &[0x7F],
    &[0x00, 0x00],
    &[0xFF, 0x00],
    &[0x01],
    &[0x00, 0xFF],
    &[0x80, 0x00],
    &[0xFE, 0xFF],
    &[0xFF, 0xFF, 0xFF],
    &[0x7F, 0xFF],
];

/// Range bounds: every edge key plus keys that are absent from the store.
const EXTRA_BOUNDS: &[&[u8]] = &[
    &[],
    &[0x00, 0x00, 0x00],
    &[0x00, 0x01],
    &[0x7E],
    &[0x81],
    &[0xFF, 0x01],
    &[0xFF, 0xFF, 0xFF, 0xFF],
];

/// Puts every edge key with a distinct value and returns the model.
fn load_edge_keys(s: &mut dyn KeyValueStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    for (i, k) in EDGE_KEYS.iter().enumerate() {
        let v = format!("value-{i}").into_bytes();
        s.put(k, &v).expect("put");
        model.insert(k.to_vec(), v);
    }
    model
}

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------
// Contract points on every combination.
// ---------------------------------------------------------------------------------------

/// get/put/overwrite/delete, including reading a missing key first (the cache remembers
/// misses, a later put must still be seen) and deleting a missing key.
fn get_put_overwrite_delete(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    assert_eq!(s.name(), NAME);
    assert_eq!(s.get(b"k").unwrap(), None);
    s.put(b"k", b"one").unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(v("one")));
    s.put(b"k", b"two").unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(v("two")));
    s.put(b"k", b"").unwrap();
    assert_eq!(
        s.get(b"k").unwrap(),
        Some(Vec::new()),
        "an empty value is a value, not a delete"
    );
    s.delete(b"k").unwrap();
    assert_eq!(s.get(b"k").unwrap(), None);
    s.delete(b"k").unwrap();
    s.delete(b"never-written").unwrap();
    assert_eq!(s.get(b"never-written").unwrap(), None);
    s.flush().unwrap();
    assert_eq!(s.get(b"k").unwrap(), None);
    assert!(all_of(&mut *s).is_empty());
}

/// `get_all` answers in the order asked, with `None` for missing keys.
fn get_all_order_and_missing_keys(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    s.put(b"b", b"2").unwrap();
    s.put(b"a", b"1").unwrap();
    s.put(&[0xFF], b"ff").unwrap();
    s.put(b"gone", b"x").unwrap();
    s.delete(b"gone").unwrap();
    let keys: Vec<&[u8]> = vec![&[0xFF], b"missing", b"b", b"gone", b"a", b"b"];
    let got = s.get_all(&keys).unwrap();
    assert_eq!(
        got,
        vec![
            Some(v("ff")),
            None,
            Some(v("2")),
            None,
            Some(v("1")),
            Some(v("2"))
        ]
    );
    s.flush().unwrap();
    assert_eq!(
        s.get_all(&keys).unwrap(),
        got,
        "same answer once flushed below the cache"
    );
    assert!(s.get_all(&[]).unwrap().is_empty());
}

/// `put_all` applies in order so a later duplicate wins; `delete_all` removes every key and
/// ignores missing ones.
fn put_all_later_duplicate_wins_and_delete_all(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    s.put_all(vec![
        (v("a"), v("first")),
        (v("b"), v("b")),
        (v("c"), v("c")),
        (v("a"), v("second")),
        (v("d"), v("d")),
        (v("a"), v("third")),
    ])
    .unwrap();
    assert_eq!(s.get(b"a").unwrap(), Some(v("third")));
    assert_eq!(
        all_of(&mut *s),
        vec![
            (v("a"), v("third")),
            (v("b"), v("b")),
            (v("c"), v("c")),
            (v("d"), v("d"))
        ]
    );
    s.delete_all(vec![v("a"), v("missing"), v("c"), v("a")])
        .unwrap();
    assert_eq!(s.get(b"a").unwrap(), None);
    assert_eq!(s.get(b"c").unwrap(), None);
    assert_eq!(all_of(&mut *s), vec![(v("b"), v("b")), (v("d"), v("d"))]);
    // A batch mixing puts and deletes applies in order too.
    s.write_batch(vec![
        Mutation::delete("b"),
        Mutation::put("b", "again"),
        Mutation::put("e", "e"),
        Mutation::delete("e"),
    ])
    .unwrap();
    s.flush().unwrap();
    assert_eq!(
        all_of(&mut *s),
        vec![(v("b"), v("again")), (v("d"), v("d"))]
    );
}

/// `range(from, to)` is `[from, to)` in unsigned byte order, checked against a model for
/// every pair of bounds among keys containing 0x00 and 0xFF bytes (and absent keys).
fn range_with_00_and_ff_keys(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    let model = load_edge_keys(&mut *s);
    // Spot checks that spell the contract out.
    let keys = |e: Vec<Entry>| e.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(range_of(&mut *s, &[0x00], &[0x80])),
        vec![
            vec![0x00],
            vec![0x00, 0x00],
            vec![0x00, 0xFF],
            vec![0x01],
            vec![0x7F],
            vec![0x7F, 0xFF]
        ]
    );
    assert_eq!(
        keys(range_of(&mut *s, &[0x7F], &[0x80])),
        vec![vec![0x7F], vec![0x7F, 0xFF]]
    );
    assert_eq!(
        keys(range_of(&mut *s, &[0xFF], &[0xFF, 0xFF])),
        vec![vec![0xFF], vec![0xFF, 0x00]],
        "upper bound is exclusive"
    );
    assert_eq!(
        keys(range_of(&mut *s, &[0x00, 0x00], &[0x00, 0xFF])),
        vec![vec![0x00, 0x00]]
    );
    let bounds: Vec<&[u8]> = EDGE_KEYS.iter().chain(EXTRA_BOUNDS).copied().collect();
    for from in &bounds {
        for to in &bounds {
            assert_eq!(
                range_of(&mut *s, from, to),
                model_range(&model, from, to),
                "range({from:02x?}, {to:02x?})"
            );
        }
    }
    // Same answers after everything is flushed below the cache.
    s.flush().unwrap();
    for from in &bounds {
        for to in &bounds {
            assert_eq!(range_of(&mut *s, from, to), model_range(&model, from, to));
        }
    }
}

/// `from == to` and `from > to` are empty ranges, not errors.
fn empty_ranges(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    load_edge_keys(&mut *s);
    assert!(range_of(&mut *s, &[0x7F], &[0x7F]).is_empty());
    assert!(range_of(&mut *s, &[0xFF], &[0x00]).is_empty());
    assert!(range_of(&mut *s, &[0xFF, 0xFF], &[0xFF]).is_empty());
    assert!(range_of(&mut *s, &[0x00, 0x00], &[0x00]).is_empty());
    assert!(range_of(&mut *s, b"zzz", b"aaa").is_empty());
    // And the store still works after them.
    assert_eq!(range_of(&mut *s, &[0x80], &[0x81]).len(), 2);
}

/// `prefix` returns exactly the keys starting with it, including prefixes of 0xFF bytes,
/// whose successor does not exist (they run to the end of the key space).
fn prefix_including_all_ff(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    let model = load_edge_keys(&mut *s);
    let prefixes: Vec<&[u8]> = EDGE_KEYS.iter().chain(EXTRA_BOUNDS).copied().collect();
    for p in prefixes {
        let expected: Vec<Entry> = model
            .iter()
            .filter(|(k, _)| k.starts_with(p))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(prefix_of(&mut *s, p), expected, "prefix({p:02x?})");
    }
    let ff: Vec<Vec<u8>> = prefix_of(&mut *s, &[0xFF])
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        ff,
        vec![
            vec![0xFF],
            vec![0xFF, 0x00],
            vec![0xFF, 0xFF],
            vec![0xFF, 0xFF, 0xFF]
        ]
    );
    let ffff: Vec<Vec<u8>> = prefix_of(&mut *s, &[0xFF, 0xFF])
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(ffff, vec![vec![0xFF, 0xFF], vec![0xFF, 0xFF, 0xFF]]);
    assert_eq!(
        prefix_of(&mut *s, &[]),
        model_entries(&model),
        "empty prefix is everything"
    );
}

/// `all` returns every entry once, in unsigned byte order.
fn all_in_unsigned_byte_order(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    let model = load_edge_keys(&mut *s);
    let got = all_of(&mut *s);
    assert_eq!(got, model_entries(&model));
    assert_eq!(got.first().unwrap().0, vec![0x00]);
    assert_eq!(got.last().unwrap().0, vec![0xFF, 0xFF, 0xFF]);
    s.flush().unwrap();
    assert_eq!(all_of(&mut *s), model_entries(&model));
}

/// A delete must hide the key from `range`, `prefix`, `all` and `get`, whether the key was
/// already below the cache (flushed) or only in it, and whether the delete is still dirty.
fn delete_then_range_and_all_hide_key(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    let mut model = load_edge_keys(&mut *s);
    s.flush().unwrap();
    // Deleted after a flush: the tombstone sits in the cache, the value below it.
    for k in [&[0x80][..], &[0xFF, 0xFF]] {
        s.delete(k).unwrap();
        model.remove(k);
    }
    assert_eq!(all_of(&mut *s), model_entries(&model));
    assert_eq!(
        range_of(&mut *s, &[0x7F], &[0xFF]),
        model_range(&model, &[0x7F], &[0xFF])
    );
    assert_eq!(
        prefix_of(&mut *s, &[0xFF, 0xFF]),
        vec![(vec![0xFF, 0xFF, 0xFF], v("value-11"))]
    );
    assert_eq!(s.get(&[0x80]).unwrap(), None);
    // Written and deleted without a flush in between, then read by range and all.
    s.put(b"fresh", b"1").unwrap();
    s.delete(b"fresh").unwrap();
    s.delete(&[0x00]).unwrap();
    model.remove(&[0x00][..]);
    assert_eq!(
        range_of(&mut *s, &[0x00], b"g"),
        model_range(&model, &[0x00], b"g")
    );
    assert_eq!(all_of(&mut *s), model_entries(&model));
    // Read (so the cache holds it clean), then delete, then range.
    assert_eq!(s.get(&[0x7F]).unwrap(), Some(v("value-4")));
    s.delete(&[0x7F]).unwrap();
    model.remove(&[0x7F][..]);
    assert_eq!(
        range_of(&mut *s, &[0x7F], &[0x80]),
        model_range(&model, &[0x7F], &[0x80])
    );
    assert_eq!(all_of(&mut *s), model_entries(&model));
    s.flush().unwrap();
    assert_eq!(all_of(&mut *s), model_entries(&model));
}

/// A snapshot keeps the view of when it was taken (gets, ranges, prefixes, all), including
/// writes still in the cache then; later puts, deletes and overwrites show only live.
fn snapshot_isolation(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    s.put(b"a", b"1").unwrap();
    s.put(b"b", b"2").unwrap();
    s.put(b"c", b"3").unwrap();
    s.put(&[0xFF], b"ff").unwrap();
    let before = vec![
        (v("a"), v("1")),
        (v("b"), v("2")),
        (v("c"), v("3")),
        (vec![0xFF], v("ff")),
    ];
    let snap = s.snapshot().unwrap();

    s.put(b"b", b"20").unwrap();
    s.delete(b"a").unwrap();
    s.put(b"d", b"4").unwrap();
    s.delete(&[0xFF]).unwrap();
    s.put(&[0xFF, 0xFF], b"new").unwrap();
    s.flush().unwrap();
    // More writes after the flush, to be sure flushing did not move the snapshot.
    s.put(b"c", b"30").unwrap();
    s.flush().unwrap();

    assert_eq!(snap.get(b"a").unwrap(), Some(v("1")));
    assert_eq!(snap.get(b"b").unwrap(), Some(v("2")));
    assert_eq!(snap.get(b"c").unwrap(), Some(v("3")));
    assert_eq!(snap.get(b"d").unwrap(), None);
    assert_eq!(snap.get(&[0xFF, 0xFF]).unwrap(), None);
    assert_eq!(collect(snap.all().unwrap()), before);
    assert_eq!(
        collect(snap.range(b"a", b"c").unwrap()),
        before[..2].to_vec()
    );
    assert!(collect(snap.range(b"c", b"a").unwrap()).is_empty());
    assert_eq!(
        collect(snap.prefix(&[0xFF]).unwrap()),
        vec![(vec![0xFF], v("ff"))]
    );
    assert_eq!(
        collect(snap.scan(b"b", None).unwrap()),
        before[1..].to_vec()
    );

    let after = vec![
        (v("b"), v("20")),
        (v("c"), v("30")),
        (v("d"), v("4")),
        (vec![0xFF, 0xFF], v("new")),
    ];
    assert_eq!(all_of(&mut *s), after);
    assert_eq!(s.get(b"a").unwrap(), None);
    // A second snapshot sees the new view while the first still sees the old one.
    let snap2 = s.snapshot().unwrap();
    assert_eq!(collect(snap2.all().unwrap()), after);
    assert_eq!(collect(snap.all().unwrap()), before);
    // Snapshots are owned and `Send`: readable from another thread.
    let from_thread = std::thread::spawn(move || collect(snap.all().unwrap()))
        .join()
        .unwrap();
    assert_eq!(from_thread, before);
}

fn small_limits() -> Limits {
    Limits {
        max_key_bytes: DEFAULT_MAX_KEY_BYTES,
        max_value_bytes: 100,
    }
}

/// Empty keys are refused for put, delete and in batches, with an error naming the store.
fn limits_empty_key_refused(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    let e = s.put(b"", b"v").unwrap_err();
    assert!(
        matches!(e, StoreError::EmptyKey { ref store } if store == NAME),
        "{e:?}"
    );
    assert!(e.to_string().contains(NAME), "{e}");
    assert!(matches!(
        s.delete(b"").unwrap_err(),
        StoreError::EmptyKey { .. }
    ));
    assert!(matches!(
        s.put_all(vec![(v("a"), v("1")), (vec![], v("2"))])
            .unwrap_err(),
        StoreError::EmptyKey { .. }
    ));
    assert!(matches!(
        s.delete_all(vec![v("a"), vec![]]).unwrap_err(),
        StoreError::EmptyKey { .. }
    ));
    s.flush().unwrap();
    assert!(
        all_of(&mut *s).is_empty(),
        "nothing of a refused batch is written"
    );
}

/// A 64 KiB key is accepted (and ranges/reads back), 64 KiB + 1 is refused naming store,
/// size and limit.
fn limits_key_at_64k_ok_and_over_refused(spec: Spec) {
    let h = Harness::new(spec);
    let mut s = h.open();
    let at_limit = vec![0xFF; DEFAULT_MAX_KEY_BYTES];
    let over = vec![0xAB; DEFAULT_MAX_KEY_BYTES + 1];
    s.put(&at_limit, b"big").unwrap();
    assert_eq!(s.get(&at_limit).unwrap(), Some(v("big")));
    let e = s.put(&over, b"x").unwrap_err();
    match &e {
        StoreError::KeyTooLarge { store, size, limit } => {
            assert_eq!((store.as_str(), *size, *limit), (NAME, 65537, 65536));
        }
        other => panic!("expected KeyTooLarge, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(NAME) && msg.contains("65537") && msg.contains("65536"),
        "{msg}"
    );
    assert!(matches!(
        s.delete(&over).unwrap_err(),
        StoreError::KeyTooLarge { .. }
    ));
    s.flush().unwrap();
    assert_eq!(s.get(&over).unwrap(), None);
    assert_eq!(all_of(&mut *s), vec![(at_limit.clone(), v("big"))]);
    assert_eq!(prefix_of(&mut *s, &[0xFF; 3]), vec![(at_limit, v("big"))]);
}

/// With `max_value_bytes = 100`, a 100-byte value is accepted and a 101-byte one refused
/// with an error naming store, size and limit.
fn limits_value_at_limit_ok_and_over_refused(spec: Spec) {
    let h = Harness::with_limits(spec, small_limits());
    let mut s = h.open();
    s.put(b"k", &[7; 100]).unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(vec![7; 100]));
    let e = s.put(b"k", &[8; 101]).unwrap_err();
    match &e {
        StoreError::ValueTooLarge { store, size, limit } => {
            assert_eq!((store.as_str(), *size, *limit), (NAME, 101, 100));
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(NAME) && msg.contains("101") && msg.contains("100"),
        "{msg}"
    );
    s.flush().unwrap();
    assert_eq!(
        s.get(b"k").unwrap(),
        Some(vec![7; 100]),
        "a refused overwrite keeps the old value"
    );
}

/// A `put_all` (or mixed batch) with one bad entry leaves nothing of the batch written,
/// neither in the cache nor below it, and earlier data is untouched.
fn limits_refused_batch_writes_nothing(spec: Spec) {
    let h = Harness::with_limits(spec, small_limits());
    let mut s = h.open();
    s.put(b"k1", b"old").unwrap();
    s.flush().unwrap();
    let batch = vec![
        (v("k1"), v("new")),
        (v("k2"), v("v2")),
        (v("k0"), v("v0")),
        (v("k3"), vec![0; 101]),
        (v("k4"), v("v4")),
    ];
    let e = s.put_all(batch).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::ValueTooLarge {
                size: 101,
                limit: 100,
                ..
            }
        ),
        "{e:?}"
    );
    let e = s
        .write_batch(vec![
            Mutation::delete("k1"),
            Mutation::put("k5", "v5"),
            Mutation::put(vec![1; 65537], "x"),
        ])
        .unwrap_err();
    assert!(matches!(e, StoreError::KeyTooLarge { .. }), "{e:?}");
    let expected = vec![(v("k1"), v("old"))];
    assert_eq!(s.get(b"k1").unwrap(), Some(v("old")));
    for k in ["k0", "k2", "k3", "k4", "k5"] {
        assert_eq!(s.get(k.as_bytes()).unwrap(), None, "{k}");
    }
    assert_eq!(all_of(&mut *s), expected);
    s.flush().unwrap();
    assert_eq!(all_of(&mut *s), expected);
    let snap = s.snapshot().unwrap();
    assert_eq!(collect(snap.all().unwrap()), expected);
}

// ---- typed facade on top of each combination ----

/// `u64` keys range and iterate in numeric order (their encoding sorts like the numbers).
fn typed_u64_keys_in_numeric_order(spec: Spec) {
    let h = Harness::new(spec);
    let mut s: Store<u64, String> =
        Store::new(h.open(), SerdeName::U64, SerdeName::String).unwrap();
    let keys = [u64::MAX, 256, 0, 1 << 32, 255, u64::MAX - 1, 1, 65_535];
    for k in keys {
        s.put(&k, &format!("n{k}")).unwrap();
    }
    let got: Vec<u64> = s.all().unwrap().map(|r| r.unwrap().0).collect();
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    assert_eq!(got, sorted);
    let r: Vec<(u64, String)> = s
        .range(&1, &(1 << 32))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        r,
        vec![
            (1, v_s("n1")),
            (255, v_s("n255")),
            (256, v_s("n256")),
            (65_535, v_s("n65535"))
        ]
    );
    assert_eq!(s.get(&(1 << 32)).unwrap(), Some(format!("n{}", 1u64 << 32)));
    assert_eq!(s.get_all(&[7, 0]).unwrap(), vec![None, Some(v_s("n0"))]);
    s.delete(&u64::MAX).unwrap();
    let r: Vec<u64> = s
        .range(&(u64::MAX - 1), &u64::MAX)
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(r, vec![u64::MAX - 1]);
    assert_eq!(s.all().unwrap().count(), keys.len() - 1);
}

fn v_s(s: &str) -> String {
    s.to_string()
}

/// `i64` keys range in numeric order, negatives first (the sign bit is flipped).
fn typed_i64_keys_in_numeric_order_with_negatives(spec: Spec) {
    let h = Harness::new(spec);
    let mut s: Store<i64, serde_json::Value> =
        Store::new(h.open(), SerdeName::I64, SerdeName::Json).unwrap();
    let keys = [0, i64::MAX, -1, 255, i64::MIN, -256, 1, 256, -1_000_000];
    for k in keys {
        s.put(&k, &serde_json::json!({ "k": k })).unwrap();
    }
    let got: Vec<i64> = s.all().unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(
        got,
        vec![i64::MIN, -1_000_000, -256, -1, 0, 1, 255, 256, i64::MAX]
    );
    let r: Vec<i64> = s
        .range(&-256, &256)
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(r, vec![-256, -1, 0, 1, 255]);
    let r: Vec<i64> = s
        .range(&i64::MIN, &0)
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(r, vec![i64::MIN, -1_000_000, -256, -1]);
    assert!(
        s.range(&5, &-5).unwrap().next().is_none(),
        "from > to is empty"
    );
    assert_eq!(
        s.get(&-256).unwrap(),
        Some(serde_json::json!({ "k": -256 }))
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    items: Vec<String>,
    note: Option<String>,
}
gregor::impl_codec!(Order);

/// String keys with JSON values round-trip through every layer, and string prefixes work.
fn typed_string_keys_json_values(spec: Spec) {
    let h = Harness::new(spec);
    let mut s: Store<String, Order> =
        Store::new(h.open(), SerdeName::String, SerdeName::Json).unwrap();
    let o = |id: u64| Order {
        id,
        items: vec![format!("item-{id}"), "ü".into()],
        note: None,
    };
    s.put_all(&[
        (v_s("order/2"), o(2)),
        (v_s("order/1"), o(1)),
        (v_s("user/1"), o(9)),
    ])
    .unwrap();
    assert_eq!(s.get(&v_s("order/1")).unwrap(), Some(o(1)));
    let orders: Vec<(String, Order)> = s.prefix(b"order/").unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(orders, vec![(v_s("order/1"), o(1)), (v_s("order/2"), o(2))]);
    s.delete_all(&[v_s("order/1")]).unwrap();
    s.flush().unwrap();
    let keys: Vec<String> = s.all().unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(keys, vec![v_s("order/2"), v_s("user/1")]);
}

/// Bytes that are not UTF-8, written underneath a `string` store, come back as a decode
/// error naming the store and serde; never a panic, and the store stays usable.
fn typed_string_serde_rejects_invalid_utf8(spec: Spec) {
    let h = Harness::new(spec);
    let mut s: Store<String, String> =
        Store::new(h.open(), SerdeName::String, SerdeName::String).unwrap();
    s.put(&v_s("good"), &v_s("fine")).unwrap();
    s.inner_mut()
        .put(b"bad-value", &[0xFF, 0xFE, 0x80])
        .unwrap();
    let e = s.get(&v_s("bad-value")).unwrap_err();
    match &e {
        StoreError::Serde {
            store,
            action,
            what,
            serde,
            ..
        } => {
            assert_eq!(
                (store.as_str(), *action, *what, *serde),
                (NAME, "decode", "value", "string")
            );
        }
        other => panic!("expected a serde error, got {other:?}"),
    }
    assert!(e.to_string().contains("UTF-8"), "{e}");
    s.inner_mut().delete(b"bad-value").unwrap();
    s.inner_mut().put(&[0xC3, 0x28], b"ok").unwrap();
    let results: Vec<_> = s.all().unwrap().collect();
    assert_eq!(results.len(), 2);
    assert!(
        matches!(
            &results[1],
            Err(StoreError::Serde {
                what: "key",
                action: "decode",
                ..
            })
        ),
        "the invalid key sorts after \"good\": {:?}",
        results[1].as_ref().err()
    );
    assert_eq!(results[0].as_ref().unwrap(), &(v_s("good"), v_s("fine")));
    assert_eq!(s.get(&v_s("good")).unwrap(), Some(v_s("fine")));
}

/// `Store::new` refuses a serde that cannot encode the Rust type, as a config error.
fn typed_mismatched_serde_is_config_error(spec: Spec) {
    let h = Harness::new(spec);
    let r: Result<Store<u64, String>, StoreError> =
        Store::new(h.open(), SerdeName::String, SerdeName::String);
    match r {
        Err(StoreError::Config { store, reason }) => {
            assert_eq!(store, NAME);
            assert!(
                reason.contains("key.serde") && reason.contains("string") && reason.contains("u64"),
                "{reason}"
            );
        }
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("u64 keys with the string serde must be refused"),
    }
    let r: Result<Store<String, i64>, StoreError> =
        Store::new(h.open(), SerdeName::String, SerdeName::U64);
    assert!(
        matches!(r, Err(StoreError::Config { ref reason, .. }) if reason.contains("value.serde"))
    );
}

// ---------------------------------------------------------------------------------------
// RocksDB combinations: persistence across reopen (through every layer).
// ---------------------------------------------------------------------------------------

/// Writes a mix of puts, overwrites and deletes (more keys than the tiny cache holds) and
/// returns the model of what the store must hold.
fn write_mix(s: &mut dyn KeyValueStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = load_edge_keys(s);
    for i in 0..50u32 {
        let k = format!("key-{:03}", i % 37).into_bytes();
        let val = format!("v{i}").into_bytes();
        s.put(&k, &val).unwrap();
        model.insert(k, val);
    }
    for i in (0..37u32).step_by(5) {
        let k = format!("key-{i:03}").into_bytes();
        s.delete(&k).unwrap();
        model.remove(&k);
    }
    s.delete(&[0xFF, 0xFF]).unwrap();
    model.remove(&[0xFF, 0xFF][..]);
    s.put(&[0x00], b"rewritten").unwrap();
    model.insert(vec![0x00], v("rewritten"));
    model
}

/// After `flush()` the stack can be dropped and the engine reopened from the same directory
/// with everything there (deletes included), through the cache as well.
fn reopen_after_flush_keeps_everything(spec: Spec) {
    let h = Harness::new(spec);
    let model = {
        let mut s = h.open();
        let model = write_mix(&mut *s);
        s.flush().unwrap();
        model
    };
    let mut s = h.open();
    assert_eq!(all_of(&mut *s), model_entries(&model));
    for (k, val) in &model {
        assert_eq!(s.get(k).unwrap().as_ref(), Some(val));
    }
    assert_eq!(s.get(&[0xFF, 0xFF]).unwrap(), None);
    assert_eq!(s.get(b"key-000").unwrap(), None);
}

/// `close()` flushes like `flush()`: a closed store reopens with all its data.
fn reopen_after_close_keeps_everything(spec: Spec) {
    let h = Harness::new(spec);
    let model = {
        let mut s = h.open();
        let model = write_mix(&mut *s);
        s.close().unwrap();
        model
    };
    let mut s = h.open();
    assert_eq!(all_of(&mut *s), model_entries(&model));
    // And again after a second round of writes on the reopened store.
    s.put(b"second", b"round").unwrap();
    s.delete(&[0x80]).unwrap();
    s.close().unwrap();
    drop(s);
    let mut model = model;
    model.insert(v("second"), v("round"));
    model.remove(&[0x80][..]);
    let mut s = h.open();
    assert_eq!(all_of(&mut *s), model_entries(&model));
}

/// A typed store over RocksDB: data written, flushed, the whole stack dropped, reopened.
fn typed_reopen_after_flush(spec: Spec) {
    let h = Harness::new(spec);
    {
        let mut s: Store<i64, String> =
            Store::new(h.open(), SerdeName::I64, SerdeName::String).unwrap();
        for k in -20..20i64 {
            s.put(&k, &format!("n{k}")).unwrap();
        }
        s.delete(&0).unwrap();
        s.flush().unwrap();
    }
    let mut s: Store<i64, String> =
        Store::new(h.open(), SerdeName::I64, SerdeName::String).unwrap();
    let keys: Vec<i64> = s.all().unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(keys, (-20..20).filter(|k| *k != 0).collect::<Vec<_>>());
    assert_eq!(s.get(&-20).unwrap(), Some(v_s("n-20")));
}

// ---------------------------------------------------------------------------------------
// Engine-only points (bare engines).
// ---------------------------------------------------------------------------------------

/// `write_logged` applies the batch and records the changelog end atomically with it;
/// plain writes leave the marker alone; a refused batch changes neither data nor marker.
fn engine_write_logged_records_changelog_end(spec: Spec) {
    let h = Harness::with_limits(spec, small_limits());
    let mut e = h.engine();
    assert_eq!(e.changelog_end().unwrap(), None);
    assert!(e.is_empty().unwrap());
    e.write_logged(
        vec![
            Mutation::put("a", "1"),
            Mutation::put("b", "2"),
            Mutation::delete("a"),
        ],
        3,
    )
    .unwrap();
    assert_eq!(e.changelog_end().unwrap(), Some(3));
    assert_eq!(all_of(&mut *e), vec![(v("b"), v("2"))]);
    assert!(!e.is_empty().unwrap());
    e.put(b"c", b"3").unwrap();
    assert_eq!(
        e.changelog_end().unwrap(),
        Some(3),
        "plain writes do not move the marker"
    );
    e.write_logged(vec![Mutation::put("d", "4")], 10).unwrap();
    assert_eq!(e.changelog_end().unwrap(), Some(10));
    let err = e
        .write_logged(
            vec![Mutation::put("x", "1"), Mutation::put("y", vec![0; 101])],
            20,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err:?}");
    assert_eq!(
        e.changelog_end().unwrap(),
        Some(10),
        "a refused batch does not move the marker"
    );
    assert_eq!(e.get(b"x").unwrap(), None);
    e.write_logged(Vec::new(), 11).unwrap();
    assert_eq!(
        e.changelog_end().unwrap(),
        Some(11),
        "an empty batch still records the end"
    );
}

/// Keys written to a tiny key space corner: 0x00, 0xFF runs up to the 64 KiB limit.
fn ff_keys() -> Vec<Vec<u8>> {
    vec![
        vec![0x00],
        vec![0x00; 3],
        vec![0x7F],
        vec![0xFF],
        vec![0xFF, 0x00],
        vec![0xFF, 0xFF],
        vec![0xFF, 0xFF, 0x01],
        vec![0xFF; 1000],
        vec![0xFF; DEFAULT_MAX_KEY_BYTES],
        {
            let mut k = vec![0xFF; DEFAULT_MAX_KEY_BYTES - 1];
            k.push(0xFE);
            k
        },
    ]
}

/// `wipe` removes every entry (keys starting with 0xFF bytes included, up to a 64 KiB run of
/// them) and the changelog end; the engine is usable afterwards.
fn engine_wipe_removes_everything(spec: Spec) {
    let h = Harness::new(spec);
    let mut e = h.engine();
    let keys = ff_keys();
    e.write_logged(
        keys.iter().map(|k| Mutation::put(k.clone(), "v")).collect(),
        42,
    )
    .unwrap();
    e.put(b"plain", b"p").unwrap();
    assert_eq!(all_of(&mut *e).len(), keys.len() + 1);
    e.wipe().unwrap();
    assert!(e.is_empty().unwrap());
    assert!(all_of(&mut *e).is_empty());
    assert_eq!(e.changelog_end().unwrap(), None);
    for k in &keys {
        assert_eq!(
            e.get(k).unwrap(),
            None,
            "{} bytes starting {:02x?}",
            k.len(),
            &k[..k.len().min(3)]
        );
    }
    e.put(&[0xFF], b"after").unwrap();
    assert_eq!(all_of(&mut *e), vec![(vec![0xFF], v("after"))]);
}

/// `bulk_load` (full restore) of sorted unique keys, a tombstone among them, lands over
/// existing data and records the changelog end; RocksDB keeps both across reopen. A batch
/// breaking a limit loads nothing and leaves the marker alone.
fn engine_bulk_load_records_changelog_end(spec: Spec) {
    let h = Harness::with_limits(spec, small_limits());
    let expected = vec![
        (vec![0x00], v("a")),
        (v("old"), v("1")),
        (vec![0x80], v("new80")),
        (vec![0xFF, 0xFF], v("ff")),
    ];
    {
        let mut e = h.engine();
        e.put(b"old", b"1").unwrap();
        e.put(&[0x80], b"old80").unwrap();
        e.put(b"gone", b"x").unwrap();
        let mut entries = vec![
            Mutation::put(vec![0xFF, 0xFF], "ff"),
            Mutation::put(vec![0x80], "new80"),
            Mutation::delete("gone"),
            Mutation::put(vec![0x00], "a"),
        ];
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        e.bulk_load(entries, 77).unwrap();
        assert_eq!(e.changelog_end().unwrap(), Some(77));
        assert_eq!(all_of(&mut *e), expected);
        let err = e
            .bulk_load(
                vec![Mutation::put("p", "1"), Mutation::put("q", vec![0; 101])],
                99,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err:?}");
        assert_eq!(e.changelog_end().unwrap(), Some(77));
        assert_eq!(e.get(b"p").unwrap(), None);
        e.flush().unwrap();
    }
    if matches!(spec.engine, EngineKind::Rocks) {
        let mut e = h.engine();
        assert_eq!(e.changelog_end().unwrap(), Some(77));
        assert_eq!(all_of(&mut *e), expected);
    }
}

/// RocksDB: the changelog end marker and its batch survive flush + reopen.
fn engine_changelog_end_survives_reopen(spec: Spec) {
    let h = Harness::new(spec);
    {
        let mut e = h.engine();
        e.write_logged(
            vec![Mutation::put("a", "1"), Mutation::put(vec![0xFF], "ff")],
            7,
        )
        .unwrap();
        e.write_logged(vec![Mutation::delete("a"), Mutation::put("b", "2")], 9)
            .unwrap();
        e.flush().unwrap();
    }
    let mut e = h.engine();
    assert_eq!(e.changelog_end().unwrap(), Some(9));
    assert_eq!(
        all_of(&mut *e),
        vec![(v("b"), v("2")), (vec![0xFF], v("ff"))]
    );
}

/// RocksDB: after `wipe` and reopen, nothing comes back (no entries, no marker).
fn engine_wipe_survives_reopen(spec: Spec) {
    let h = Harness::new(spec);
    {
        let mut e = h.engine();
        e.write_logged(
            ff_keys()
                .into_iter()
                .map(|k| Mutation::put(k, "v"))
                .collect(),
            5,
        )
        .unwrap();
        e.flush().unwrap();
        e.wipe().unwrap();
    }
    let mut e = h.engine();
    assert!(e.is_empty().unwrap());
    assert_eq!(e.changelog_end().unwrap(), None);
    for k in ff_keys() {
        assert_eq!(e.get(&k).unwrap(), None);
    }
}

// ---------------------------------------------------------------------------------------
// The matrix.
// ---------------------------------------------------------------------------------------

macro_rules! tests {
    ($spec:expr; $($t:ident),+ $(,)?) => {$(
        #[test]
        fn $t() {
            crate::$t($spec)
        }
    )+};
}

macro_rules! common_tests {
    ($spec:expr) => {
        tests!($spec;
            get_put_overwrite_delete,
            get_all_order_and_missing_keys,
            put_all_later_duplicate_wins_and_delete_all,
            range_with_00_and_ff_keys,
            empty_ranges,
            prefix_including_all_ff,
            all_in_unsigned_byte_order,
            delete_then_range_and_all_hide_key,
            snapshot_isolation,
            limits_empty_key_refused,
            limits_key_at_64k_ok_and_over_refused,
            limits_value_at_limit_ok_and_over_refused,
            limits_refused_batch_writes_nothing,
            typed_u64_keys_in_numeric_order,
            typed_i64_keys_in_numeric_order_with_negatives,
            typed_string_keys_json_values,
            typed_string_serde_rejects_invalid_utf8,
            typed_mismatched_serde_is_config_error,
        );
    };
}

macro_rules! combination {
    (memory $name:ident, $cache:expr, $metered:expr $(; $($extra:ident),+)?) => {
        mod $name {
            const SPEC: crate::Spec = crate::Spec { engine: crate::EngineKind::Memory, logged: false, cache: $cache, metered: $metered, ttl: false, bug: None };
            common_tests!(SPEC);
            $(tests!(SPEC; $($extra),+);)?
        }
    };
    (rocks $name:ident, $cache:expr, $metered:expr $(; $($extra:ident),+)?) => {
        mod $name {
            const SPEC: crate::Spec = crate::Spec { engine: crate::EngineKind::Rocks, logged: false, cache: $cache, metered: $metered, ttl: false, bug: None };
            common_tests!(SPEC);
            tests!(SPEC; reopen_after_flush_keeps_everything, reopen_after_close_keeps_everything, typed_reopen_after_flush);
            $(tests!(SPEC; $($extra),+);)?
        }
    };
}

macro_rules! logged_combination {
    ($engine:ident $name:ident, $cache:expr $(; $($extra:ident),+)?) => {
        mod $name {
            const SPEC: crate::Spec = crate::Spec { engine: crate::EngineKind::$engine, logged: true, cache: $cache, metered: true, ttl: false, bug: None };
            common_tests!(SPEC);
            tests!(SPEC; logged_changelog_replays_to_contents);
            $(tests!(SPEC; $($extra),+);)?
        }
    };
}

/// A store with `ttl.ms` (nothing expires during a test): the TTL layer keeps the whole
/// contract over the logged layer and the caches.
macro_rules! ttl_combination {
    ($engine:ident $name:ident, $cache:expr $(; $($extra:ident),+)?) => {
        mod $name {
            const SPEC: crate::Spec = crate::Spec { engine: crate::EngineKind::$engine, logged: true, cache: $cache, metered: true, ttl: true, bug: None };
            common_tests!(SPEC);
            $(tests!(SPEC; $($extra),+);)?
        }
    };
}

/// Samza's cache sizes (`object.cache.size` 1000, `write.batch.size` 500).
const DEFAULT_CACHE: Option<(usize, usize)> = Some((1000, 500));
/// The default kind of cache, bounded in bytes (`cache.max.bytes`), its dirty entries held
/// until the flush: the default size (holds everything a test writes).
const BYTE_CACHE: Option<(usize, usize)> =
    Some((0, gregor::store::cached::DEFAULT_CACHE_MAX_BYTES));
/// A byte-sized cache of a few entries: evictions and early dirty flushes all the time.
const TINY_BYTE_CACHE: Option<(usize, usize)> =
    Some((0, 4 * (gregor::store::cached::ENTRY_OVERHEAD + 16)));
/// A cache so small that dirty entries are evicted and batches flushed all the time.
const TINY_CACHE: Option<(usize, usize)> = Some((3, 2));

combination!(memory memory, None, false;
    engine_write_logged_records_changelog_end,
    engine_wipe_removes_everything,
    engine_bulk_load_records_changelog_end);
combination!(memory memory_metered, None, true);
combination!(memory memory_cached, crate::DEFAULT_CACHE, false);
combination!(memory memory_cached_metered, crate::DEFAULT_CACHE, true);
combination!(memory memory_tiny_cache, crate::TINY_CACHE, false);
combination!(memory memory_tiny_cache_metered, crate::TINY_CACHE, true);
combination!(memory memory_byte_cache, crate::BYTE_CACHE, false);
combination!(memory memory_tiny_byte_cache_metered, crate::TINY_BYTE_CACHE, true);
combination!(rocks rocks, None, false;
    engine_write_logged_records_changelog_end,
    engine_wipe_removes_everything,
    engine_changelog_end_survives_reopen,
    engine_wipe_survives_reopen,
    engine_bulk_load_records_changelog_end);
combination!(rocks rocks_metered, None, true);
combination!(rocks rocks_cached, crate::DEFAULT_CACHE, false);
combination!(rocks rocks_cached_metered, crate::DEFAULT_CACHE, true);
combination!(rocks rocks_tiny_cache, crate::TINY_CACHE, false);
combination!(rocks rocks_tiny_cache_metered, crate::TINY_CACHE, true);
combination!(rocks rocks_byte_cache_metered, crate::BYTE_CACHE, true);
combination!(rocks rocks_tiny_byte_cache, crate::TINY_BYTE_CACHE, false);
// The logged layer over the in-memory backend (a unit-test fake of the changelog; the real
// backends are proven by the restore, kill -9 and runtime tests).
logged_combination!(Memory memory_logged, None);
logged_combination!(Memory memory_logged_tiny_cache, crate::TINY_CACHE);
logged_combination!(Rocks rocks_logged, crate::DEFAULT_CACHE;
    reopen_after_flush_keeps_everything, reopen_after_close_keeps_everything);
logged_combination!(Rocks rocks_logged_tiny_cache, crate::TINY_CACHE);
logged_combination!(Rocks rocks_logged_byte_cache, crate::BYTE_CACHE;
    reopen_after_flush_keeps_everything, reopen_after_close_keeps_everything);
logged_combination!(Memory memory_logged_tiny_byte_cache, crate::TINY_BYTE_CACHE);
ttl_combination!(Memory memory_ttl, None);
ttl_combination!(Memory memory_ttl_tiny_cache, crate::TINY_CACHE);
ttl_combination!(Rocks rocks_ttl_byte_cache, crate::BYTE_CACHE;
    reopen_after_flush_keeps_everything, reopen_after_close_keeps_everything);
ttl_combination!(Rocks rocks_ttl_tiny_byte_cache, crate::TINY_BYTE_CACHE);

// ---------------------------------------------------------------------------------------
// The suite bites: each deliberately broken layer must make the matching test fail.
// ---------------------------------------------------------------------------------------

/// Ways the `Buggy` layer breaks the contract.
#[derive(Clone, Copy, Debug)]
enum Bug {
    /// Deletes are remembered and hidden from `get`, but ranges, `all` and snapshots still
    /// show the key until `flush` (a write-back cache that forgets its dirty deletes on scan).
    ScansMissPendingDeletes,
    /// Batches are applied entry by entry, so a bad entry leaves the ones before it written.
    NonAtomicBatches,
    /// Snapshots read the live store instead of a frozen view.
    LiveSnapshots,
}

struct Buggy {
    inner: Box<dyn KeyValueStore>,
    bug: Bug,
    pending_deletes: Vec<Vec<u8>>,
}

impl Buggy {
    fn apply_pending(&mut self) -> gregor::store::Result<()> {
        let keys = std::mem::take(&mut self.pending_deletes);
        if keys.is_empty() {
            Ok(())
        } else {
            self.inner.delete_all(keys)
        }
    }
}

impl KeyValueStore for Buggy {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn get(&mut self, key: &[u8]) -> gregor::store::Result<Option<Vec<u8>>> {
        if self.pending_deletes.iter().any(|k| k == key) {
            return Ok(None);
        }
        self.inner.get(key)
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> gregor::store::Result<()> {
        match self.bug {
            Bug::ScansMissPendingDeletes => {
                for m in batch {
                    match m.value {
                        Some(v) => {
                            self.pending_deletes.retain(|k| *k != m.key);
                            self.inner.put(&m.key, &v)?;
                        }
                        None => {
                            Limits::default().check_key(self.inner.name(), &m.key)?;
                            self.pending_deletes.push(m.key);
                        }
                    }
                }
                Ok(())
            }
            Bug::NonAtomicBatches => batch
                .into_iter()
                .try_for_each(|m| self.inner.write_batch(vec![m])),
            Bug::LiveSnapshots => self.inner.write_batch(batch),
        }
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> gregor::store::Result<KvIter<'_>> {
        self.inner.scan(from, to)
    }

    fn snapshot(&mut self) -> gregor::store::Result<Box<dyn KvSnapshot>> {
        match self.bug {
            Bug::LiveSnapshots => Ok(Box::new(LiveView)),
            _ => self.inner.snapshot(),
        }
    }

    fn flush(&mut self) -> gregor::store::Result<()> {
        self.apply_pending()?;
        self.inner.flush()
    }
}

/// A "snapshot" that does not keep the old view: it sees nothing at all, standing in for
/// one that sees later writes.
struct LiveView;

impl KvSnapshot for LiveView {
    fn get(&self, _key: &[u8]) -> gregor::store::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn scan(&self, _from: &[u8], _to: Option<&[u8]>) -> gregor::store::Result<KvIter<'_>> {
        Ok(Box::new(std::iter::empty()))
    }
}

mod suite_catches {
    use crate::{Bug, EngineKind, Spec};

    const fn buggy(bug: Bug) -> Spec {
        Spec {
            engine: EngineKind::Memory,
            logged: false,
            cache: None,
            metered: false,
            ttl: false,
            bug: Some(bug),
        }
    }

    /// Ranges and `all` that still show a deleted key fail the delete-then-range test.
    #[test]
    #[should_panic(expected = "assertion")]
    fn scans_that_miss_pending_deletes() {
        crate::delete_then_range_and_all_hide_key(buggy(Bug::ScansMissPendingDeletes));
    }

    /// A batch half-written before its bad entry fails the refused-batch test.
    #[test]
    #[should_panic(expected = "assertion")]
    fn non_atomic_batches() {
        crate::limits_refused_batch_writes_nothing(buggy(Bug::NonAtomicBatches));
    }

    /// A snapshot that does not keep its view fails the isolation test.
    #[test]
    #[should_panic(expected = "assertion")]
    fn snapshots_without_isolation() {
        crate::snapshot_isolation(buggy(Bug::LiveSnapshots));
    }
}
