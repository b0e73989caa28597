//! Reads must not write: a read-only open (`Partition::open_read_only`,
//! `LogDir::open_read_only`) creates, cuts, deletes and writes nothing, yet sees exactly the
//! records a recovering open keeps.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gregor::log::{LogDir, LogError, NoHooks, Partition, TopicConfig};

type Snapshot = BTreeMap<PathBuf, Option<Vec<u8>>>;

/// Every file and directory under `root`, with file contents.
fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), None);
                stack.push(p);
            } else {
                out.insert(p.clone(), Some(fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn cfg() -> TopicConfig {
    TopicConfig {
        segment_bytes: 400,
        ..TopicConfig::default()
    }
}

#[test]
fn read_only_open_leaves_a_torn_tail_in_place_and_reads_the_valid_prefix() {
    let state = tempfile::tempdir().unwrap();
    let logs = LogDir::open(state.path()).unwrap();
    let topic = logs.create_topic("t", 1, cfg()).unwrap();
    let (mut p, _) = topic.open_partition(0).unwrap();
    for i in 0..40u64 {
        p.append(i as i64, format!("k{i}").as_bytes(), Some(b"value"))
            .unwrap();
    }
    p.sync().unwrap();
    let last = p.active_segment_base();
    drop(p);
    let seg = topic
        .partition_dir(0)
        .unwrap()
        .join(format!("{last:020}.log"));
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0xAB; 13]);
    fs::write(&seg, &bytes).unwrap();
    // A leftover compaction temp file, which a writable open deletes.
    let tmp = topic
        .partition_dir(0)
        .unwrap()
        .join("00000000000000000000.log.compacting");
    fs::write(&tmp, b"partial").unwrap();

    let before = snapshot(state.path());
    let ro_logs = LogDir::open_read_only(state.path()).unwrap();
    assert!(ro_logs.is_read_only());
    let ro_topic = ro_logs.topic("t").unwrap();
    let (mut ro, report) = ro_topic.open_partition(0).unwrap();
    assert!(ro.is_read_only());
    let torn = report.torn_tail.expect("the torn tail is reported");
    assert_eq!(torn.bytes_cut, 13);
    assert_eq!(ro.end_offset(), 40);
    let recs = ro.read(0, usize::MAX).unwrap();
    assert_eq!(recs.len(), 40);
    let mut reader = ro.reader(35).unwrap();
    assert_eq!(reader.read(usize::MAX).unwrap().len(), 5);
    // Every write is refused, and nothing was touched.
    assert!(matches!(
        ro.append(0, b"k", None),
        Err(LogError::ReadOnly { .. })
    ));
    assert!(matches!(ro.sync(), Err(LogError::ReadOnly { .. })));
    assert!(matches!(ro.truncate(3), Err(LogError::ReadOnly { .. })));
    assert!(matches!(ro.compact(0), Err(LogError::ReadOnly { .. })));
    assert!(matches!(ro.clean(0), Err(LogError::ReadOnly { .. })));
    assert!(matches!(
        ro_logs.create_topic("u", 1, cfg()),
        Err(LogError::ReadOnly { .. })
    ));
    drop(ro);
    assert_eq!(
        ro_logs.list_topics().unwrap()[0].partitions[0].end_offset,
        40
    );
    assert_eq!(
        snapshot(state.path()),
        before,
        "a read-only open modified files"
    );

    // The writable open keeps the same records and cuts the tail.
    let (mut p, report) = topic.open_partition(0).unwrap();
    assert_eq!(report.torn_tail.unwrap().position, torn.position);
    assert_eq!(p.read(0, usize::MAX).unwrap(), recs);
    assert!(!tmp.exists());
}

#[test]
fn read_only_log_dir_creates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let logs = LogDir::open_read_only(&state).unwrap();
    assert!(logs.topic_names().unwrap().is_empty());
    assert!(logs.list_topics().unwrap().is_empty());
    assert!(matches!(logs.topic("t"), Err(LogError::TopicNotFound(_))));
    assert!(!state.exists());
    let e = Partition::open_read_only(&state.join("logs/t/0"), cfg())
        .err()
        .unwrap();
    assert!(e.to_string().contains("logs/t/0"), "{e}");
    assert!(!state.exists());
}

#[test]
fn read_only_reader_does_not_follow_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = Partition::open(dir.path(), cfg(), Arc::new(NoHooks)).unwrap();
    for i in 0..10 {
        p.append(i, b"k", Some(b"v")).unwrap();
    }
    p.flush_to_os().unwrap();
    let (mut ro, _) = Partition::open_read_only(dir.path(), cfg()).unwrap();
    let mut r = ro.reader(0).unwrap();
    for i in 10..30 {
        p.append(i, b"k", Some(b"v")).unwrap();
    }
    p.flush_to_os().unwrap();
    assert_eq!(r.read(usize::MAX).unwrap().len(), 10);
    assert_eq!(ro.read(0, usize::MAX).unwrap().len(), 10);
}
