//! A full disk part-way through a write (ENOSPC after a short write) and at a segment roll:
//! the partition is poisoned, and reopening recovers exactly the prefix of complete frames
//! that reached the file — nothing more, nothing less.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gregor::log::record::encode_into;
use gregor::log::{IoHooks, LogError, NoHooks, Partition, Record, TopicConfig};

/// Lets the next write to a `.log` file through only up to `limit` bytes once armed; or
/// fails the creation of `fail_create`.
#[derive(Default)]
struct DiskFull {
    armed: AtomicBool,
    limit: Mutex<usize>,
    fail_create: Mutex<Option<PathBuf>>,
}

impl IoHooks for DiskFull {
    fn before_write(&self, path: &Path) -> io::Result<()> {
        if self.fail_create.lock().unwrap().as_deref() == Some(path) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"));
        }
        Ok(())
    }
    fn write_limit(&self, path: &Path, len: usize) -> Option<usize> {
        if path.extension().is_some_and(|e| e == "log") && self.armed.swap(false, Ordering::SeqCst)
        {
            return Some((*self.limit.lock().unwrap()).min(len));
        }
        None
    }
}

fn cfg(segment_bytes: u64) -> TopicConfig {
    TopicConfig {
        segment_bytes,
        ..TopicConfig::default()
    }
}

fn rec(i: u64) -> Record {
    Record {
        offset: i,
        timestamp: i as i64,
        key: format!("key-{i}").into_bytes(),
        value: (i % 4 != 1)
            .then(|| format!("value-{i}-{}", "y".repeat(i as usize % 13)).into_bytes()),
    }
}

fn append(p: &mut Partition, from: u64, to: u64) {
    for i in from..to {
        let r = rec(i);
        assert_eq!(
            p.append(r.timestamp, &r.key, r.value.as_deref()).unwrap(),
            i
        );
    }
}

/// Frame ends of records `from..to` encoded back to back.
fn frame_ends(from: u64, to: u64) -> Vec<usize> {
    let mut buf = Vec::new();
    (from..to)
        .map(|i| {
            let r = rec(i);
            encode_into(&mut buf, i, r.timestamp, &r.key, r.value.as_deref());
            buf.len()
        })
        .collect()
}

fn assert_poisoned(p: &mut Partition) {
    assert!(p.poisoned().is_some());
    assert!(matches!(
        p.append(0, b"k", None),
        Err(LogError::Poisoned { .. })
    ));
}

#[test]
fn short_write_part_way_through_records_poisons_and_reopen_keeps_the_exact_prefix() {
    let ends = frame_ends(10, 15);
    let total = *ends.last().unwrap();
    for limit in 0..=total {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Arc::new(DiskFull::default());
        let (mut p, _) = Partition::open(dir.path(), cfg(1 << 20), hooks.clone()).unwrap();
        append(&mut p, 0, 10);
        p.sync().unwrap();
        append(&mut p, 10, 15);
        *hooks.limit.lock().unwrap() = limit;
        hooks.armed.store(true, Ordering::SeqCst);
        let r = p.flush_to_os();
        if limit == total {
            r.unwrap();
            continue;
        }
        let e = r.unwrap_err();
        assert!(e.to_string().contains("00000000000000000000.log"), "{e}");
        assert_poisoned(&mut p);
        drop(p);
        let complete = ends.iter().filter(|&&e| e <= limit).count() as u64;
        let (mut p, report) = Partition::open(dir.path(), cfg(1 << 20), Arc::new(NoHooks))
            .unwrap_or_else(|e| panic!("limit {limit}: {e}"));
        assert_eq!(p.end_offset(), 10 + complete, "limit {limit}");
        let boundary = ends
            .iter()
            .copied()
            .filter(|&e| e <= limit)
            .max()
            .unwrap_or(0);
        assert_eq!(
            report.torn_tail.is_some(),
            limit > boundary,
            "limit {limit}"
        );
        let got = p.read(0, usize::MAX).unwrap();
        let want: Vec<Record> = (0..10 + complete).map(rec).collect();
        assert_eq!(got, want, "limit {limit}");
        assert_eq!(p.append(0, b"after", None).unwrap(), 10 + complete);
    }
}

/// The short write hits the sync marker written right after an fsync: the records it
/// followed were fsynced and stay; the torn marker is cut.
#[test]
fn short_write_of_a_sync_marker_keeps_the_synced_records() {
    for limit in [0, 1, 8, 31] {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Arc::new(DiskFull::default());
        let (mut p, _) = Partition::open(dir.path(), cfg(1 << 20), hooks.clone()).unwrap();
        append(&mut p, 0, 10);
        p.flush_to_os().unwrap();
        *hooks.limit.lock().unwrap() = limit;
        hooks.armed.store(true, Ordering::SeqCst);
        assert!(p.sync().is_err(), "the marker write failed");
        assert_poisoned(&mut p);
        drop(p);
        let (mut p, _) = Partition::open(dir.path(), cfg(1 << 20), Arc::new(NoHooks)).unwrap();
        assert_eq!(p.end_offset(), 10);
        assert_eq!(
            p.read(0, usize::MAX).unwrap(),
            (0..10).map(rec).collect::<Vec<_>>()
        );
    }
}

/// ENOSPC in the flush a roll does before closing the segment, and at the creation of the
/// new segment.
#[test]
fn disk_full_during_a_segment_roll() {
    let seg_bytes = 400;
    // Find how many records fit before the first roll.
    let ends = frame_ends(0, 100);
    let fit = ends.iter().filter(|&&e| e as u64 <= seg_bytes).count() as u64;
    assert!(fit >= 3);
    for limit in [0usize, 5, ends[0], ends[1] + 3] {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Arc::new(DiskFull::default());
        let (mut p, _) = Partition::open(dir.path(), cfg(seg_bytes), hooks.clone()).unwrap();
        append(&mut p, 0, fit); // all buffered, no roll yet
        *hooks.limit.lock().unwrap() = limit;
        hooks.armed.store(true, Ordering::SeqCst);
        let r = rec(fit);
        let e = p
            .append(r.timestamp, &r.key, r.value.as_deref())
            .unwrap_err();
        assert!(matches!(e, LogError::Io { op: "write", .. }), "{e}");
        assert_poisoned(&mut p);
        drop(p);
        let complete = ends.iter().filter(|&&e| e <= limit).count() as u64;
        let (mut p, _) = Partition::open(dir.path(), cfg(seg_bytes), Arc::new(NoHooks)).unwrap();
        assert_eq!(p.end_offset(), complete, "limit {limit}");
        assert_eq!(p.segment_bases(), vec![0], "no new segment");
        assert_eq!(
            p.read(0, usize::MAX).unwrap(),
            (0..complete).map(rec).collect::<Vec<_>>()
        );
    }
    // The old segment is complete and fsynced; creating the new one fails.
    let dir = tempfile::tempdir().unwrap();
    let hooks = Arc::new(DiskFull::default());
    let (mut p, _) = Partition::open(dir.path(), cfg(seg_bytes), hooks.clone()).unwrap();
    append(&mut p, 0, fit);
    *hooks.fail_create.lock().unwrap() = Some(dir.path().join(format!("{fit:020}.log")));
    let r = rec(fit);
    let e = p
        .append(r.timestamp, &r.key, r.value.as_deref())
        .unwrap_err();
    assert!(matches!(e, LogError::Io { op: "create", .. }), "{e}");
    assert_poisoned(&mut p);
    drop(p);
    let (mut p, _) = Partition::open(dir.path(), cfg(seg_bytes), Arc::new(NoHooks)).unwrap();
    assert_eq!(p.end_offset(), fit);
    assert_eq!(
        p.read(0, usize::MAX).unwrap(),
        (0..fit).map(rec).collect::<Vec<_>>()
    );
    let r = rec(fit);
    assert_eq!(
        p.append(r.timestamp, &r.key, r.value.as_deref()).unwrap(),
        fit
    );
    p.sync().unwrap();
    assert_eq!(p.segment_bases(), vec![0, fit], "the roll succeeds now");
}
