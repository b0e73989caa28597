//! Injected write/fsync failures poison the partition; nothing is retried.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gregor::log::{IoHooks, LogError, NoHooks, Partition, TopicConfig};

/// Fails the first write or sync whose path ends with `suffix`, once armed.
#[derive(Default)]
struct Faulty {
    armed: AtomicBool,
    fail_writes: bool,
    suffix: Mutex<String>,
    calls: AtomicUsize,
    failed: Mutex<Vec<PathBuf>>,
}

impl Faulty {
    fn new(fail_writes: bool, suffix: &str) -> Arc<Self> {
        Arc::new(Faulty {
            fail_writes,
            suffix: Mutex::new(suffix.to_string()),
            ..Default::default()
        })
    }
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
    fn check(&self, path: &Path, is_write: bool) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if is_write == self.fail_writes
            && self.armed.load(Ordering::SeqCst)
            && path
                .to_string_lossy()
                .ends_with(self.suffix.lock().unwrap().as_str())
        {
            self.armed.store(false, Ordering::SeqCst);
            self.failed.lock().unwrap().push(path.to_path_buf());
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
}

impl IoHooks for Faulty {
    fn before_write(&self, path: &Path) -> io::Result<()> {
        self.check(path, true)
    }
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        self.check(path, false)
    }
}

fn config(segment_bytes: u64) -> TopicConfig {
    TopicConfig {
        segment_bytes,
        ..TopicConfig::compacted()
    }
}

fn assert_poisoned(p: &mut Partition) {
    let e = p.append(0, b"k", Some(b"v")).unwrap_err();
    assert!(matches!(e, LogError::Poisoned { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("injected failure"), "{msg}");
    assert!(msg.contains("t/0"), "names the partition: {msg}");
    assert!(matches!(p.sync(), Err(LogError::Poisoned { .. })));
    assert!(matches!(p.flush_to_os(), Err(LogError::Poisoned { .. })));
    assert!(matches!(p.truncate(0), Err(LogError::Poisoned { .. })));
    assert!(matches!(p.compact(0), Err(LogError::Poisoned { .. })));
    assert!(p.poisoned().is_some());
}

fn partition_dir(root: &Path) -> PathBuf {
    root.join("t").join("0")
}

#[test]
fn fsync_failure_poisons_and_is_not_retried() {
    let root = tempfile::tempdir().unwrap();
    let dir = partition_dir(root.path());
    let hooks = Faulty::new(false, ".log");
    let (mut p, _) = Partition::open(&dir, config(1 << 20), hooks.clone()).unwrap();
    p.append(1, b"a", Some(b"1")).unwrap();
    p.sync().unwrap();
    p.append(2, b"b", Some(b"2")).unwrap();
    hooks.arm();
    let e = p.sync().unwrap_err();
    assert!(matches!(e, LogError::Io { op: "fsync", .. }), "{e}");
    assert!(e.to_string().contains("00000000000000000000.log"), "{e}");
    let calls = hooks.calls.load(Ordering::SeqCst);
    assert_poisoned(&mut p);
    // No further I/O was attempted after poisoning.
    assert_eq!(hooks.calls.load(Ordering::SeqCst), calls);
    drop(p);
    // Reopening reads what reached the OS.
    let (mut p, _) = Partition::open(&dir, config(1 << 20), Arc::new(NoHooks)).unwrap();
    assert_eq!(p.end_offset(), 2);
    assert_eq!(p.append(3, b"c", None).unwrap(), 2);
}

#[test]
fn write_failure_poisons() {
    // With preallocation the zeros are written first: their write is the one that fails.
    for (preallocate, op) in [(false, "write"), (true, "preallocate")] {
        let root = tempfile::tempdir().unwrap();
        let dir = partition_dir(root.path());
        let hooks = Faulty::new(true, ".log");
        let cfg = TopicConfig {
            preallocate,
            ..config(1 << 20)
        };
        let (mut p, _) = Partition::open(&dir, cfg.clone(), hooks.clone()).unwrap();
        p.append(1, b"a", Some(b"1")).unwrap();
        hooks.arm();
        let e = p.flush_to_os().unwrap_err();
        assert!(matches!(&e, LogError::Io { op: o, .. } if *o == op), "{e}");
        assert_poisoned(&mut p);
        // The record never reached the file.
        drop(p);
        let (p, _) = Partition::open(&dir, cfg, Arc::new(NoHooks)).unwrap();
        assert_eq!(p.end_offset(), 0);
    }
}

#[test]
fn failure_while_rolling_a_segment_poisons() {
    let root = tempfile::tempdir().unwrap();
    let dir = partition_dir(root.path());
    let hooks = Faulty::new(false, "00000000000000000000.log");
    let (mut p, _) = Partition::open(&dir, config(200), hooks.clone()).unwrap();
    hooks.arm();
    let mut failed = None;
    for i in 0..50 {
        match p.append(i, b"key", Some(b"some value bytes")) {
            Ok(_) => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("roll fsync failure surfaces from append");
    assert!(matches!(e, LogError::Io { op: "fsync", .. }), "{e}");
    assert_poisoned(&mut p);
}

#[test]
fn directory_fsync_failure_poisons() {
    let root = tempfile::tempdir().unwrap();
    let dir = partition_dir(root.path());
    let hooks = Faulty::new(false, "/t/0");
    let (mut p, _) = Partition::open(&dir, config(200), hooks.clone()).unwrap();
    hooks.arm();
    let mut failed = None;
    for i in 0..50 {
        if let Err(e) = p.append(i, b"key", Some(b"some value bytes")) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("dir fsync failure on roll");
    assert!(
        matches!(
            e,
            LogError::Io {
                op: "fsync directory",
                ..
            }
        ),
        "{e}"
    );
    assert_poisoned(&mut p);
}

#[test]
fn compaction_write_failure_poisons_and_keeps_data() {
    let root = tempfile::tempdir().unwrap();
    let dir = partition_dir(root.path());
    let hooks = Faulty::new(true, ".compacting");
    let (mut p, _) = Partition::open(&dir, config(200), hooks.clone()).unwrap();
    for i in 0..40 {
        p.append(i, format!("k{}", i % 3).as_bytes(), Some(b"value"))
            .unwrap();
    }
    p.sync().unwrap();
    let before = p.read(0, usize::MAX).unwrap();
    hooks.arm();
    let e = p.compact(1000).unwrap_err();
    assert!(matches!(e, LogError::Io { .. }), "{e}");
    assert!(e.to_string().contains(".compacting"), "{e}");
    assert_poisoned(&mut p);
    drop(p);
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".compacting")),
        "temp file removed"
    );
    let (mut p, _) = Partition::open(&dir, config(200), Arc::new(NoHooks)).unwrap();
    assert_eq!(p.read(0, usize::MAX).unwrap(), before);
}

#[test]
fn truncate_fsync_failure_poisons() {
    let root = tempfile::tempdir().unwrap();
    let dir = partition_dir(root.path());
    let hooks = Faulty::new(false, ".log");
    let (mut p, _) = Partition::open(&dir, config(1 << 20), hooks.clone()).unwrap();
    for i in 0..10 {
        p.append(i, b"k", Some(b"v")).unwrap();
    }
    p.sync().unwrap();
    hooks.arm();
    let e = p.truncate(5).unwrap_err();
    assert!(matches!(e, LogError::Io { op: "fsync", .. }), "{e}");
    assert_poisoned(&mut p);
}
