//! Crash points inside `Partition::truncate`, chosen deterministically: the n-th write or
//! fsync the truncation asks the I/O hooks for fails (the process "dies" there: nothing after
//! it happens, what was written stays). Reopening must give either the untouched log or the
//! truncated one — never a log ending below the truncation point (issue 11 #8: "checkpoint
//! says the changelog reached offset 15, but it ends at 14") — and a retried truncation
//! (what a restore does) must end exactly at the target with every record below it intact.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gregor::log::{IoHooks, NoHooks, Partition, Record, TRUNCATE_INTENT_FILE, TopicConfig};

/// Fails the `fail_at`-th hooked call (counting writes and fsyncs) once armed.
#[derive(Default)]
struct Failpoint {
    armed: AtomicBool,
    calls: AtomicUsize,
    fail_at: usize,
    log: Mutex<Vec<String>>,
}

impl Failpoint {
    fn check(&self, what: &str, path: &Path) -> io::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.log
            .lock()
            .unwrap()
            .push(format!("{n}: {what} {}", path.display()));
        if n == self.fail_at {
            return Err(io::Error::other(format!("crash point {n}")));
        }
        Ok(())
    }
}

impl IoHooks for Failpoint {
    fn before_write(&self, path: &Path) -> io::Result<()> {
        self.check("write", path)
    }
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        self.check("sync", path)
    }
}

fn config() -> TopicConfig {
    TopicConfig {
        segment_bytes: 300,
        ..TopicConfig::compacted()
    }
}

type Snapshot = BTreeMap<PathBuf, Vec<u8>>;

fn snapshot(dir: &Path) -> Snapshot {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = fs::read(&p).unwrap();
            (p.file_name().unwrap().into(), b)
        })
        .collect()
}

fn restore(dir: &Path, snap: &Snapshot) {
    for (name, bytes) in snap {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A compacted partition with gaps: returns (records, end offset, segment bases).
fn template(dir: &Path) -> (Vec<Record>, u64, Vec<u64>) {
    let (mut p, _) = Partition::open(dir, config(), Arc::new(NoHooks)).unwrap();
    for i in 0..80u64 {
        let key = format!("k{}", i % 5);
        let value = format!("value-{i}");
        p.append(i as i64, key.as_bytes(), Some(value.as_bytes()))
            .unwrap();
    }
    p.sync().unwrap();
    p.compact(0).unwrap();
    p.sync().unwrap();
    let recs = p.read(0, usize::MAX).unwrap();
    (recs, p.end_offset(), p.segment_bases())
}

fn check_truncation(to: u64, what: &str) -> usize {
    let template_dir = tempfile::tempdir().unwrap();
    let (recs, end, _) = template(template_dir.path());
    let snap = snapshot(template_dir.path());
    let expected: Vec<Record> = recs.iter().filter(|r| r.offset < to).cloned().collect();
    let mut crash_points = 0;
    for fail_at in 0.. {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        restore(dir, &snap);
        let hooks = Arc::new(Failpoint {
            fail_at,
            ..Default::default()
        });
        let (mut p, _) = Partition::open(dir, config(), hooks.clone()).unwrap();
        hooks.armed.store(true, Ordering::SeqCst);
        let result = p.truncate(to);
        drop(p);
        let ops = hooks.log.lock().unwrap().join("\n");
        if result.is_ok() {
            assert!(fail_at > 0, "{what}: truncate does I/O");
            let (mut p, _) = Partition::open(dir, config(), Arc::new(NoHooks)).unwrap();
            assert_eq!(p.end_offset(), to, "{what}");
            assert_eq!(p.read(0, usize::MAX).unwrap(), expected, "{what}");
            break;
        }
        crash_points += 1;
        let ctx = format!("{what}: crash at point {fail_at} of\n{ops}");

        // A read-only look first: it must predict what the recovering open finds, and
        // change nothing.
        let before = snapshot(dir);
        let (mut ro, _) = Partition::open_read_only(dir, config()).unwrap();
        let ro_end = ro.end_offset();
        let ro_recs = ro.read(ro.start_offset(), usize::MAX).unwrap();
        drop(ro);
        assert_eq!(
            snapshot(dir),
            before,
            "{ctx}\nread-only open modified files"
        );

        let (mut p, report) = Partition::open(dir, config(), Arc::new(NoHooks))
            .unwrap_or_else(|e| panic!("{ctx}\nreopen failed: {e}"));
        let reopened_end = p.end_offset();
        assert!(
            reopened_end == end || reopened_end == to,
            "{ctx}\nreopened log ends at {reopened_end}, neither the old end {end} nor the \
             target {to} (report {report:?})"
        );
        assert_eq!(ro_end, reopened_end, "{ctx}\nread-only view disagrees");
        let got = p.read(p.start_offset(), usize::MAX).unwrap();
        assert_eq!(ro_recs, got, "{ctx}\nread-only view disagrees");
        let below: Vec<Record> = got.iter().filter(|r| r.offset < to).cloned().collect();
        assert_eq!(below, expected, "{ctx}\nrecords below the target changed");
        assert!(
            !dir.join(TRUNCATE_INTENT_FILE).exists(),
            "{ctx}\nthe open finished the truncation"
        );
        // What a restore does next: truncate to its checkpoint again.
        p.truncate(to)
            .unwrap_or_else(|e| panic!("{ctx}\nretry failed: {e}"));
        assert_eq!(p.end_offset(), to, "{ctx}");
        drop(p);
        let (mut p, _) = Partition::open(dir, config(), Arc::new(NoHooks)).unwrap();
        assert_eq!(p.end_offset(), to, "{ctx}");
        assert_eq!(p.read(0, usize::MAX).unwrap(), expected, "{ctx}");
        assert_eq!(p.append(0, b"new", Some(b"v")).unwrap(), to, "{ctx}");
        let names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".log"))
            .collect();
        assert!(names.is_empty(), "{ctx}\nleftover files {names:?}");
    }
    crash_points
}

/// The case: the target lies in a gap compaction left, so the kept records end below
/// it and the end must be recorded explicitly.
#[test]
fn crash_at_every_point_of_a_truncation_into_a_compaction_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, _, bases) = template(dir.path());
    let present: Vec<u64> = recs.iter().map(|r| r.offset).collect();
    let active = *bases.last().unwrap();
    // An offset in a closed segment, absent, right after another absent one and not a
    // segment base: the kept records of its segment end below it.
    let to = (1..active)
        .find(|&t| {
            !present.contains(&t)
                && !present.contains(&(t - 1))
                && !bases.contains(&t)
                && bases.iter().any(|&b| b < t)
        })
        .expect("a gap");
    let points = check_truncation(to, "into a gap");
    assert!(points >= 6, "{points} crash points");
}

#[test]
fn crash_at_every_point_of_a_truncation_in_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (_, end, _) = template(dir.path());
    check_truncation(end - 2, "active segment");
}

#[test]
fn crash_at_every_point_of_a_truncation_to_a_segment_base() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, bases) = template(dir.path());
    check_truncation(bases[2], "segment base");
    check_truncation(bases[0], "start offset");
}

/// A truncation into a gap leaves no extra segment file, and its end survives reopening
/// with nothing appended after it.
#[test]
fn truncation_into_a_gap_records_its_end_in_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (recs, _, bases) = template(dir.path());
    let present: Vec<u64> = recs.iter().map(|r| r.offset).collect();
    let to = (1..*bases.last().unwrap())
        .find(|&t| !present.contains(&t) && !present.contains(&(t - 1)) && !bases.contains(&t))
        .unwrap();
    let (mut p, _) = Partition::open(dir.path(), config(), Arc::new(NoHooks)).unwrap();
    p.truncate(to).unwrap();
    let bases_after = p.segment_bases();
    assert!(bases_after.iter().all(|&b| b < to), "{bases_after:?}");
    drop(p);
    let (p, report) = Partition::open(dir.path(), config(), Arc::new(NoHooks)).unwrap();
    assert_eq!(p.end_offset(), to);
    assert!(report.torn_tail.is_none());
    assert_eq!(
        gregor::log::partition_info(dir.path(), 0)
            .unwrap()
            .end_offset,
        to
    );
    let v = gregor::log::verify_partition(dir.path()).unwrap();
    assert!(v.torn_tail.is_none());
}

/// Crash points inside `Partition::compact_committed` (issue 11, "crash points inside
/// compaction"): the n-th write or fsync of a compaction fails and nothing after it happens.
/// Each segment is rewritten to a temp file, fsynced and renamed over the original, so a
/// reopened log must hold every record compaction keeps, only records it had, the same
/// newest value per key, and a clean end; a retried compaction gives exactly the result of an
/// uninterrupted one, and no temp file is left behind.
#[test]
fn crash_at_every_point_of_a_compaction() {
    let template_dir = tempfile::tempdir().unwrap();
    let (mut p, _) = Partition::open(template_dir.path(), config(), Arc::new(NoHooks)).unwrap();
    for i in 0..90u64 {
        let key = format!("k{}", i % 7);
        let value = (i % 11 != 3).then(|| format!("value-{i}"));
        p.append(
            i as i64,
            key.as_bytes(),
            value.as_deref().map(str::as_bytes),
        )
        .unwrap();
    }
    p.sync().unwrap();
    let original = p.read(0, usize::MAX).unwrap();
    let end = p.end_offset();
    // Compaction with part of the log uncommitted: records past it shadow nothing.
    let committed = 70;
    drop(p);
    let snap = snapshot(template_dir.path());
    let compacted = {
        let work = tempfile::tempdir().unwrap();
        restore(work.path(), &snap);
        let (mut p, _) = Partition::open(work.path(), config(), Arc::new(NoHooks)).unwrap();
        p.compact_committed(i64::MAX, committed).unwrap();
        p.read(0, usize::MAX).unwrap()
    };
    assert!(compacted.len() < original.len(), "the template compacts");
    let newest = |recs: &[Record]| -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        recs.iter()
            .map(|r| (r.key.clone(), r.value.clone()))
            .collect()
    };
    let mut crash_points = 0;
    for fail_at in 0.. {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        restore(dir, &snap);
        let hooks = Arc::new(Failpoint {
            fail_at,
            ..Default::default()
        });
        let (mut p, _) = Partition::open(dir, config(), hooks.clone()).unwrap();
        hooks.armed.store(true, Ordering::SeqCst);
        let result = p.compact_committed(i64::MAX, committed);
        drop(p);
        if result.is_ok() {
            assert!(fail_at > 0, "compaction does I/O");
            break;
        }
        crash_points += 1;
        let ops = hooks.log.lock().unwrap().join("\n");
        let ctx = format!("crash at point {fail_at} of\n{ops}");
        let (mut p, _) = Partition::open(dir, config(), Arc::new(NoHooks))
            .unwrap_or_else(|e| panic!("{ctx}\nreopen failed: {e}"));
        assert_eq!(p.end_offset(), end, "{ctx}");
        let got = p.read(0, usize::MAX).unwrap();
        for r in &compacted {
            assert!(
                got.contains(r),
                "{ctx}\nlost a record compaction keeps: {r:?}"
            );
        }
        for r in &got {
            assert!(original.contains(r), "{ctx}\na record never written: {r:?}");
        }
        assert_eq!(newest(&got), newest(&original), "{ctx}\nnewest values");
        p.compact_committed(i64::MAX, committed)
            .unwrap_or_else(|e| panic!("{ctx}\nretry failed: {e}"));
        assert_eq!(p.read(0, usize::MAX).unwrap(), compacted, "{ctx}");
        drop(p);
        let leftovers: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".log"))
            .collect();
        assert!(leftovers.is_empty(), "{ctx}\nleftover files {leftovers:?}");
    }
    assert!(crash_points >= 6, "only {crash_points} crash points");
}
