//! Compaction against a model, and retention by size and time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use gregor::log::{CleanupPolicy, NoHooks, Partition, Record, TopicConfig};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn open(dir: &Path, config: &TopicConfig) -> Partition {
    Partition::open(dir, config.clone(), Arc::new(NoHooks))
        .unwrap()
        .0
}

/// The model: survivors of every compaction so far. A compaction with active segment base
/// `a`, horizon `h` and committed end `c` drops every record below `a` and `c` that is not
/// the newest of its key below `c`, or is a tombstone older than `h`.
fn model_compact(model: &mut Vec<Record>, active_base: u64, horizon: i64, committed_end: u64) {
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    for r in model.iter().filter(|r| r.offset < committed_end) {
        latest.insert(r.key.clone(), r.offset);
    }
    model.retain(|r| {
        r.offset >= active_base
            || r.offset >= committed_end
            || (latest[&r.key] == r.offset && (r.value.is_some() || r.timestamp >= horizon))
    });
}

#[test]
fn random_workloads_match_model() {
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let config = TopicConfig {
            segment_bytes: rng.gen_range(100..600),
            delete_retention_ms: rng.gen_range(0..50),
            ..TopicConfig::compacted()
        };
        let mut p = open(dir.path(), &config);
        let mut model: Vec<Record> = Vec::new();
        let keys = rng.gen_range(1..12);
        let mut now = 0i64;
        let mut removed = 0;
        for step in 0..400 {
            now += rng.gen_range(0..3);
            let key = format!("k{}", rng.gen_range(0..keys)).into_bytes();
            let value = if rng.gen_bool(0.2) {
                None
            } else {
                Some(vec![b'v'; rng.gen_range(0..30)])
            };
            let off = p.append(now, &key, value.as_deref()).unwrap();
            model.push(Record {
                offset: off,
                timestamp: now,
                key,
                value,
            });
            if rng.gen_bool(0.03) || step == 399 {
                let at = now + rng.gen_range(0..60);
                let horizon = at - config.delete_retention_ms;
                let active = p.active_segment_base();
                // Half the time everything is committed; otherwise a random committed end
                // (records past it may be truncated later and must shadow nothing).
                let committed_end = if rng.gen_bool(0.5) {
                    u64::MAX
                } else {
                    rng.gen_range(0..=p.end_offset())
                };
                removed += p
                    .compact_committed(at, committed_end)
                    .unwrap()
                    .records_removed;
                model_compact(&mut model, active, horizon, committed_end);
                assert_eq!(
                    p.start_offset(),
                    0,
                    "compaction never moves the start offset"
                );
                assert_eq!(
                    p.read(0, usize::MAX).unwrap(),
                    model,
                    "seed {seed} step {step}"
                );
            }
            if rng.gen_bool(0.02) {
                p.sync().unwrap();
                drop(p);
                p = open(dir.path(), &config);
                assert_eq!(p.end_offset(), model.last().unwrap().offset + 1);
            }
        }
        assert!(removed > 0, "seed {seed}: the workload compacted something");
        // Reads from arbitrary offsets return the survivors at or after it.
        let end = p.end_offset();
        for _ in 0..30 {
            let from = rng.gen_range(0..=end);
            let max = rng.gen_range(1..50);
            let want: Vec<Record> = model
                .iter()
                .filter(|r| r.offset >= from)
                .take(max)
                .cloned()
                .collect();
            assert_eq!(p.read(from, max).unwrap(), want, "seed {seed} from {from}");
        }
        // Everything committed: a last compaction catches up with the model, and compacting
        // again with nothing new is a no-op.
        let active = p.active_segment_base();
        p.compact(now).unwrap();
        model_compact(
            &mut model,
            active,
            now - config.delete_retention_ms,
            u64::MAX,
        );
        let report = p.compact(now).unwrap();
        assert!(report.segments_examined > 0);
        assert_eq!(report.records_removed, 0, "seed {seed}");
        p.sync().unwrap();
        drop(p);
        let mut p = open(dir.path(), &config);
        assert_eq!(
            p.read(0, usize::MAX).unwrap(),
            model,
            "after reopen, seed {seed}"
        );
        let v = gregor::log::verify_partition(dir.path()).unwrap();
        assert_eq!(v.records, model.len() as u64);
    }
}

#[test]
fn compaction_keeps_newest_value_and_fresh_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let config = TopicConfig {
        segment_bytes: 150,
        delete_retention_ms: 100,
        ..TopicConfig::compacted()
    };
    let mut p = open(dir.path(), &config);
    p.append(0, b"a", Some(b"1")).unwrap(); // 0
    p.append(0, b"b", Some(b"1")).unwrap(); // 1
    p.append(0, b"a", Some(b"2")).unwrap(); // 2
    p.append(10, b"b", None).unwrap(); // 3: tombstone at t=10
    p.append(500, b"c", None).unwrap(); // 4: tombstone at t=500
    for i in 0..10 {
        p.append(600, b"filler", Some(format!("{i}").as_bytes()))
            .unwrap();
    }
    assert!(
        p.active_segment_base() > 5,
        "first records are in closed segments"
    );
    let report = p.compact(550).unwrap(); // horizon 450: b's tombstone goes, c's stays
    assert!(report.records_removed >= 3);
    let got = p.read(0, 3).unwrap();
    assert_eq!(
        (got[0].offset, got[0].value.as_deref()),
        (2, Some(&b"2"[..]))
    );
    assert_eq!((got[1].offset, got[1].value.as_deref()), (4, None));
    assert!(got[2].offset >= 5);
    assert_eq!(p.read(0, 1).unwrap()[0].offset, 2, "gap: offsets unchanged");
}

/// Issue 11 #5, at the log level: a committed record shadowed only by records past the
/// committed end survives, so truncating those records afterwards leaves the committed value.
#[test]
fn records_past_the_committed_end_shadow_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = TopicConfig {
        segment_bytes: 100,
        ..TopicConfig::compacted()
    };
    let mut p = open(dir.path(), &config);
    p.append(0, b"a", Some(b"1")).unwrap(); // 0: shadowed by 2 (committed)
    p.append(0, b"b", Some(b"1")).unwrap(); // 1: committed, shadowed only by 4
    p.append(0, b"a", Some(b"2")).unwrap(); // 2: committed
    let committed = p.end_offset(); // 3
    for i in 0..6 {
        p.append(0, b"b", Some(format!("u{i}").as_bytes())).unwrap(); // 3..: uncommitted
    }
    assert!(
        p.active_segment_base() > committed + 1,
        "uncommitted records in closed segments too"
    );
    let report = p.compact_committed(0, committed).unwrap();
    assert_eq!(report.records_removed, 1, "only a@0 goes");
    p.truncate(committed).unwrap();
    let got: Vec<(u64, Vec<u8>)> = p
        .read(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.value.unwrap()))
        .collect();
    assert_eq!(got, vec![(1, b"1".to_vec()), (2, b"2".to_vec())]);
}

#[test]
fn retention_by_size_deletes_whole_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::Delete,
        segment_bytes: 300,
        retention_bytes: Some(1000),
        retention_ms: None,
        ..TopicConfig::default()
    };
    let mut p = open(dir.path(), &config);
    for i in 0..200 {
        p.append(i, format!("k{i}").as_bytes(), Some(b"0123456789"))
            .unwrap();
    }
    let bases = p.segment_bases();
    let report = p.apply_retention(0).unwrap();
    assert!(report.segments_deleted > 0);
    assert!(p.size_bytes() >= 1000);
    assert_eq!(p.start_offset(), bases[report.segments_deleted]);
    assert_eq!(report.start_offset, p.start_offset());
    assert_eq!(p.segment_bases(), bases[report.segments_deleted..].to_vec());
    let recs = p.read(p.start_offset(), usize::MAX).unwrap();
    assert_eq!(recs.first().unwrap().offset, p.start_offset());
    assert!(
        recs.windows(2).all(|w| w[1].offset == w[0].offset + 1),
        "contiguous"
    );
    assert_eq!(recs.last().unwrap().offset, 199);
    // Reading below the start is out of range.
    assert!(p.read(0, 1).is_err());
    drop(p);
    let p = open(dir.path(), &config);
    assert_eq!(p.start_offset(), bases[report.segments_deleted]);
    assert_eq!(p.end_offset(), 200);
}

#[test]
fn retention_by_time_uses_newest_record_of_each_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::Delete,
        segment_bytes: 300,
        retention_bytes: None,
        retention_ms: Some(1000),
        ..TopicConfig::default()
    };
    let mut p = open(dir.path(), &config);
    for i in 0..100 {
        p.append(i * 100, b"k", Some(b"0123456789")).unwrap();
    }
    p.sync().unwrap();
    drop(p);
    // Reopen so closed segments' timestamps are unknown and must be scanned.
    let mut p = open(dir.path(), &config);
    let report = p.apply_retention(5000).unwrap(); // horizon 4000: segments whose newest record < 4000 go
    assert!(report.segments_deleted > 0);
    let first = p.read(p.start_offset(), 1).unwrap()[0].clone();
    assert!(first.timestamp < 4000 + 100 * 20, "deleted too much");
    // The last deleted segment's records are all older than the horizon; the first kept
    // segment holds a record at or after it.
    let kept = p.read(p.start_offset(), usize::MAX).unwrap();
    let base = p.segment_bases()[1];
    assert!(
        kept.iter()
            .filter(|r| r.offset < base)
            .any(|r| r.timestamp >= 4000)
    );
    assert!(first.offset > 0);
    // Everything is eventually deleted except the active segment.
    let r = p.apply_retention(1_000_000).unwrap();
    assert!(r.segments_deleted > 0);
    assert_eq!(p.segment_bases().len(), 1);
    assert_eq!(p.start_offset(), p.active_segment_base());
}
