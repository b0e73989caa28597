//! Every directory entry the log creates, renames or removes is made durable by an fsync of
//! its parent directory, and a rename is ordered after the fsync of the data it publishes —
//! also for topics with fsync disabled where the alternative is losing old, durable data.
//! Checked through the I/O hooks, which see every write and fsync in order.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gregor::log::{IoHooks, LogDir, Partition, TopicConfig};

#[derive(Default)]
struct Recorder {
    ops: Mutex<Vec<(&'static str, PathBuf)>>,
}

impl IoHooks for Recorder {
    fn before_write(&self, path: &Path) -> io::Result<()> {
        self.ops.lock().unwrap().push(("write", path.to_path_buf()));
        Ok(())
    }
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        self.ops.lock().unwrap().push(("sync", path.to_path_buf()));
        Ok(())
    }
}

impl Recorder {
    fn ops(&self) -> Vec<(&'static str, PathBuf)> {
        self.ops.lock().unwrap().clone()
    }
    /// Index of the first `(kind, path)` at or after `from`.
    fn find(&self, from: usize, kind: &str, path: &Path) -> Option<usize> {
        self.ops()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, (k, p))| *k == kind && p == path)
            .map(|(i, _)| i)
    }
    fn dump(&self) -> String {
        self.ops()
            .iter()
            .map(|(k, p)| format!("{k} {}", p.display()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `created` was created (a write on it) and later its parent was fsynced.
fn assert_created_durably(rec: &Recorder, created: &Path) {
    let w = rec
        .find(0, "write", created)
        .unwrap_or_else(|| panic!("no creation of {}:\n{}", created.display(), rec.dump()));
    assert!(
        rec.find(w, "sync", created.parent().unwrap()).is_some(),
        "parent of {} not fsynced after its creation:\n{}",
        created.display(),
        rec.dump()
    );
}

#[test]
fn new_partition_directories_and_first_segment_are_durable() {
    let root = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let dir = root.path().join("t").join("0");
    Partition::open(&dir, TopicConfig::default(), rec.clone()).unwrap();
    assert_created_durably(&rec, &root.path().join("t"));
    assert_created_durably(&rec, &dir);
    assert_created_durably(&rec, &dir.join("00000000000000000000.log"));
}

#[test]
fn log_dir_and_topic_directories_are_durable() {
    let root = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let logs = LogDir::open_with_hooks(root.path(), rec.clone()).unwrap();
    assert_created_durably(&rec, &root.path().join("logs"));
    logs.create_topic("t", 2, TopicConfig::default()).unwrap();
    assert_created_durably(&rec, &root.path().join("logs/t"));
    assert_created_durably(&rec, &root.path().join("logs/t/0"));
    assert_created_durably(&rec, &root.path().join("logs/t/1"));
}

/// Compaction of a topic with fsync disabled: the rewritten segment is fsynced before it is
/// renamed over the old one, and the directory after.
#[test]
fn compaction_orders_rename_after_data_fsync_even_without_fsync() {
    let root = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let cfg = TopicConfig {
        segment_bytes: 200,
        fsync: false,
        ..TopicConfig::compacted()
    };
    let dir = root.path().join("t").join("0");
    let (mut p, _) = Partition::open(&dir, cfg, rec.clone()).unwrap();
    for i in 0..40 {
        p.append(i, format!("k{}", i % 3).as_bytes(), Some(b"value"))
            .unwrap();
    }
    p.flush_to_os().unwrap();
    let start = rec.ops().len();
    let report = p.compact(1000).unwrap();
    assert!(report.segments_rewritten > 0);
    let seg = dir.join("00000000000000000000.log");
    let tmp = dir.join("00000000000000000000.log.compacting");
    let synced = rec
        .find(start, "sync", &tmp)
        .unwrap_or_else(|| panic!("temp file not fsynced:\n{}", rec.dump()));
    let renamed = rec
        .find(synced, "write", &seg)
        .unwrap_or_else(|| panic!("no rename after the fsync:\n{}", rec.dump()));
    assert!(
        rec.find(renamed, "sync", &dir).is_some(),
        "directory not fsynced after the rename:\n{}",
        rec.dump()
    );
}
