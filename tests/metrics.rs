//! The metered layer really counts: each test builds a stack inside
//! `metrics::with_local_recorder` with a `DebuggingRecorder`, runs a known sequence of
//! operations and checks the `gregor_store_*` counters and histograms it recorded, by
//! their `store` and `operation` labels (names in `gregor::telemetry`).

use std::collections::HashMap;
use std::num::NonZeroUsize;

use gregor::store::cached::CachedStore;
use gregor::store::config::StoreConfig;
use gregor::store::memory::MemoryEngine;
use gregor::store::metered::MeteredStore;
use gregor::store::rocks::{RocksEngine, RocksOptions};
use gregor::store::stack::add_layers;
use gregor::store::{KeyValueStore, Limits};
use gregor::telemetry::{self as t, StoreLabels};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// A metric's name and labels as `name{k=v,...}`, labels sorted.
fn key_of(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

/// What a recorder saw: counters by name and labels, and the samples of each histogram.
#[derive(Debug, Default)]
struct Seen {
    counters: HashMap<String, u64>,
    histogram_samples: HashMap<String, usize>,
}

/// `<store>.<what>` as the test names it, mapped to a metric name and labels: `gets`, `puts`,
/// `deletes`, `ranges`, `alls`, `flushes`, `snapshots` are operations; `bytes-read` and
/// `bytes-written` the byte counters; `<op>-seconds` the latency histograms.
fn metric(name: &str) -> String {
    let (store, what) = name.split_once('.').expect("store.what");
    let op = |op| key_of(t::STORE_OPERATIONS, &[("store", store), ("operation", op)]);
    match what {
        "gets" => op("get"),
        "puts" => op("put"),
        "deletes" => op("delete"),
        "ranges" => op("range"),
        "alls" => op("all"),
        "flushes" => op("flush"),
        "snapshots" => op("snapshot"),
        "bytes-read" => key_of(t::STORE_READ_BYTES, &[("store", store)]),
        "bytes-written" => key_of(t::STORE_WRITTEN_BYTES, &[("store", store)]),
        w => {
            let op = w.strip_suffix("-seconds").expect("a latency histogram");
            key_of(
                t::STORE_OPERATION_DURATION,
                &[("store", store), ("operation", op)],
            )
        }
    }
}

impl Seen {
    fn counter(&self, name: &str) -> u64 {
        let key = metric(name);
        *self.counters.get(&key).unwrap_or_else(|| {
            panic!(
                "counter {key} was never registered; saw {:?}",
                self.counters
            )
        })
    }

    fn samples(&self, name: &str) -> usize {
        let key = metric(name);
        *self
            .histogram_samples
            .get(&key)
            .unwrap_or_else(|| panic!("histogram {key} was never registered"))
    }
}

/// Runs `f` with a fresh local debugging recorder and returns what it recorded.
fn record(f: impl FnOnce()) -> Seen {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, f);
    let mut seen = Seen::default();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<(&str, &str)> = key.key().labels().map(|l| (l.key(), l.value())).collect();
        let name = key_of(key.key().name(), &labels);
        match (key.kind(), value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => {
                seen.counters.insert(name, n);
            }
            (MetricKind::Histogram, DebugValue::Histogram(samples)) => {
                seen.histogram_samples.insert(name, samples.len());
            }
            _ => {}
        }
    }
    seen
}

/// A metered memory store with latency histograms on (`metrics.recording.level = debug`).
fn metered_memory(name: &str) -> Box<dyn KeyValueStore> {
    Box::new(MeteredStore::with_labels(
        Box::new(MemoryEngine::new(name, Limits::default())),
        &StoreLabels::store(name),
        true,
    ))
}

/// Single-key operations: each get/put/delete counts once; bytes written are key + value of
/// each put; bytes read are key + value of each get (key only when missing) plus every
/// entry a range or `all` yields; latency histograms get one sample per operation.
#[test]
fn single_operations_are_counted() {
    let seen = record(|| {
        let mut s = metered_memory("clicks");
        s.put(b"k1", b"0123456789").unwrap(); // 2 + 10
        s.put(b"k2", b"abc").unwrap(); // 2 + 3
        s.put(b"k1", b"xy").unwrap(); // 2 + 2 (overwrite counts as a put)
        assert_eq!(s.get(b"k1").unwrap(), Some(b"xy".to_vec())); // read 2 + 2
        assert_eq!(s.get(b"nope").unwrap(), None); // read 4
        s.delete(b"k2").unwrap();
        s.delete(b"missing").unwrap();
        let n = s.range(b"k", b"l").unwrap().count(); // reads k1 = 2 + 2
        assert_eq!(n, 1);
        let n = s.all().unwrap().count(); // reads k1 = 2 + 2
        assert_eq!(n, 1);
        s.flush().unwrap();
        let _snap = s.snapshot().unwrap();
    });
    assert_eq!(seen.counter("clicks.puts"), 3);
    assert_eq!(seen.counter("clicks.gets"), 2);
    assert_eq!(seen.counter("clicks.deletes"), 2);
    assert_eq!(seen.counter("clicks.bytes-written"), 12 + 5 + 4);
    assert_eq!(seen.counter("clicks.bytes-read"), 4 + 4 + 4 + 4);
    assert_eq!(seen.counter("clicks.ranges"), 1);
    assert_eq!(seen.counter("clicks.alls"), 1);
    assert_eq!(seen.counter("clicks.flushes"), 1);
    assert_eq!(seen.counter("clicks.snapshots"), 1);
    assert_eq!(seen.samples("clicks.put-seconds"), 3);
    assert_eq!(seen.samples("clicks.get-seconds"), 2);
    assert_eq!(seen.samples("clicks.delete-seconds"), 2);
    assert_eq!(seen.samples("clicks.flush-seconds"), 1);
}

/// Batches count per entry: `put_all` of 3 entries is 3 puts, `delete_all` of 2 keys is 2
/// deletes, `get_all` of 3 keys is 3 gets. Deletes write no value bytes, the same whether
/// made one by one or in a batch.
#[test]
fn batches_count_each_entry() {
    let seen = record(|| {
        let mut s = metered_memory("batches");
        s.put_all(vec![
            (b"a".to_vec(), b"1111".to_vec()),
            (b"bb".to_vec(), b"22".to_vec()),
            (b"a".to_vec(), b"3".to_vec()),
        ])
        .unwrap(); // (1+4) + (2+2) + (1+1) = 11
        let got = s.get_all(&[b"a", b"bb", b"zz"]).unwrap(); // keys 1+2+2, values 1+2
        assert_eq!(got, vec![Some(b"3".to_vec()), Some(b"22".to_vec()), None]);
        s.delete_all(vec![b"a".to_vec(), b"zz".to_vec()]).unwrap();
    });
    assert_eq!(seen.counter("batches.puts"), 3);
    assert_eq!(seen.counter("batches.gets"), 3);
    assert_eq!(seen.counter("batches.deletes"), 2);
    assert_eq!(seen.counter("batches.bytes-written"), 11);
    assert_eq!(seen.counter("batches.bytes-read"), 5 + 3);
}

/// Deleting one key or the same key in a batch changes `bytes-written` the same way
/// (neither writes bytes), and `get` and `get_all` count bytes read the same way.
#[test]
fn single_and_batch_forms_count_bytes_alike() {
    let seen = record(|| {
        let mut single = metered_memory("single");
        let mut batch = metered_memory("batch");
        for s in [&mut single, &mut batch] {
            s.put(b"key", b"value").unwrap();
        }
        single.delete(b"key").unwrap();
        batch.delete_all(vec![b"key".to_vec()]).unwrap();
        for s in [&mut single, &mut batch] {
            s.put(b"key", b"value").unwrap();
        }
        assert_eq!(single.get(b"key").unwrap(), Some(b"value".to_vec()));
        assert_eq!(
            batch.get_all(&[b"key"]).unwrap(),
            vec![Some(b"value".to_vec())]
        );
    });
    assert_eq!(
        seen.counter("single.bytes-written"),
        seen.counter("batch.bytes-written")
    );
    assert_eq!(seen.counter("single.bytes-written"), 16);
    assert_eq!(
        seen.counter("single.bytes-read"),
        seen.counter("batch.bytes-read")
    );
    assert_eq!(seen.counter("single.bytes-read"), 8);
    assert_eq!(
        seen.counter("single.deletes"),
        seen.counter("batch.deletes")
    );
}

/// Refused writes (limits) are not counted: only acknowledged operations are.
#[test]
fn refused_writes_are_not_counted() {
    let seen = record(|| {
        let limits = Limits {
            max_value_bytes: 4,
            ..Limits::default()
        };
        let mut s: Box<dyn KeyValueStore> = Box::new(MeteredStore::with_labels(
            Box::new(MemoryEngine::new("strict", limits)),
            &StoreLabels::store("strict"),
            true,
        ));
        s.put(b"ok", b"1234").unwrap();
        assert!(s.put(b"", b"x").is_err());
        assert!(s.put(b"big", b"12345").is_err());
        assert!(
            s.put_all(vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"12345".to_vec())
            ])
            .is_err()
        );
        assert!(s.delete(b"").is_err());
    });
    assert_eq!(seen.counter("strict.puts"), 1);
    assert_eq!(seen.counter("strict.deletes"), 0);
    assert_eq!(seen.counter("strict.bytes-written"), 6);
    assert_eq!(seen.samples("strict.put-seconds"), 1);
}

/// The metered layer sits on top of the cache: every call is counted even when the cache
/// answers it, and the counts are those of the calls, not of the batches written below.
/// Uses the stack as config assembles it (RocksDB + cache + metered).
#[test]
fn counts_through_config_built_stack_over_cache_and_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let seen = record(|| {
        let config = StoreConfig {
            object_cache_size: Some(10),
            write_batch_size: Some(4),
            ..StoreConfig::default()
        };
        let engine =
            RocksEngine::open("views", dir.path(), config.limits, &RocksOptions::default())
                .unwrap();
        let mut s = add_layers(Box::new(engine), &config);
        for i in 0..20u32 {
            s.put(format!("page-{i:02}").as_bytes(), &i.to_be_bytes())
                .unwrap(); // 7 + 4 each
        }
        for i in 0..20u32 {
            // The last 10 come from the cache, the first 10 from RocksDB.
            assert_eq!(
                s.get(format!("page-{i:02}").as_bytes()).unwrap(),
                Some(i.to_be_bytes().to_vec())
            );
        }
        for i in 0..5u32 {
            s.delete(format!("page-{i:02}").as_bytes()).unwrap();
        }
        assert_eq!(s.all().unwrap().count(), 15);
        s.flush().unwrap();
    });
    assert_eq!(seen.counter("views.puts"), 20);
    assert_eq!(seen.counter("views.gets"), 20);
    assert_eq!(seen.counter("views.deletes"), 5);
    assert_eq!(seen.counter("views.bytes-written"), 20 * 11);
    assert_eq!(seen.counter("views.bytes-read"), 20 * 11 + 15 * 11);
    assert_eq!(seen.counter("views.alls"), 1);
    assert_eq!(seen.counter("views.flushes"), 1);
}

/// Two stores count separately under their own names.
#[test]
fn each_store_has_its_own_counters() {
    let seen = record(|| {
        let mut a = metered_memory("alpha");
        let cache = CachedStore::new(
            Box::new(MemoryEngine::new("beta", Limits::default())),
            Limits::default(),
            NonZeroUsize::new(2).unwrap(),
            1,
        );
        let mut b: Box<dyn KeyValueStore> = Box::new(MeteredStore::new(Box::new(cache)));
        a.put(b"x", b"1").unwrap();
        for i in 0..4u8 {
            b.put(&[i + 1], b"22").unwrap();
        }
        b.get(b"x").unwrap();
    });
    assert_eq!(seen.counter("alpha.puts"), 1);
    assert_eq!(seen.counter("beta.puts"), 4);
    assert_eq!(seen.counter("alpha.gets"), 0);
    assert_eq!(seen.counter("beta.gets"), 1);
    assert_eq!(seen.counter("beta.bytes-written"), 4 * 3);
}

/// Without `metrics.recording.level = debug` no latency histogram is registered (and no clock
/// is read per operation); the counters are the same.
#[test]
fn latency_histograms_are_off_by_default() {
    let seen = record(|| {
        let mut s: Box<dyn KeyValueStore> = Box::new(MeteredStore::new(Box::new(
            MemoryEngine::new("plain", Limits::default()),
        )));
        s.put(b"k", b"v").unwrap();
        s.get(b"k").unwrap();
        s.flush().unwrap();
    });
    assert_eq!(seen.counter("plain.puts"), 1);
    assert_eq!(seen.counter("plain.gets"), 1);
    assert!(
        seen.histogram_samples.is_empty(),
        "histograms registered: {:?}",
        seen.histogram_samples
    );
}

/// The cache's hits and misses are exported (at the flush), labelled with the store, and a
/// task's store is labelled with its job and task.
#[test]
fn cache_hits_and_misses_are_exported_with_job_and_task() {
    let seen = record(|| {
        let config = StoreConfig::default();
        let labels = StoreLabels::of_task("clicks.partition-2", "views");
        let mut s = gregor::store::stack::add_layers_labelled(
            Box::new(MemoryEngine::new("views", Limits::default())),
            &config,
            &labels,
        );
        s.put(b"a", b"1").unwrap();
        s.get(b"a").unwrap(); // hit
        s.get(b"b").unwrap(); // miss
        s.get(b"b").unwrap(); // hit (a cached miss)
        s.flush().unwrap();
    });
    let l = [
        ("job", "clicks"),
        ("task", "clicks.partition-2"),
        ("store", "views"),
    ];
    assert_eq!(seen.counters[&key_of(t::STORE_CACHE_HITS, &l)], 2);
    assert_eq!(seen.counters[&key_of(t::STORE_CACHE_MISSES, &l)], 1);
    let mut gets = l.to_vec();
    gets.push(("operation", "get"));
    assert_eq!(seen.counters[&key_of(t::STORE_OPERATIONS, &gets)], 3);
}
