//! Preallocated segments (`TopicConfig::preallocate`): the active segment is extended with
//! zeros ahead of its appends, and the zeros after the last frame are the end of the log to
//! every reader, to recovery (after a crash that left them), to truncation and to the
//! read-only tools; a roll and a clean close cut them off.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gregor::log::partition::PREALLOCATE_BYTES;
use gregor::log::{
    NoHooks, Partition, PartitionReader, Record, TopicConfig, partition_info, verify_partition,
};

fn config(segment_bytes: u64) -> TopicConfig {
    TopicConfig {
        segment_bytes,
        ..TopicConfig::default()
    }
}

fn open(dir: &Path, config: TopicConfig) -> Partition {
    let (p, report) = Partition::open(dir, config, Arc::new(NoHooks)).unwrap();
    assert_eq!(report.torn_tail, None, "a zero tail is no torn tail");
    p
}

fn rec(i: u64) -> Record {
    Record {
        offset: i,
        timestamp: i as i64,
        key: format!("key-{i}").into_bytes(),
        value: (i % 5 != 3)
            .then(|| format!("value-{i}-{}", "x".repeat(i as usize % 40)).into_bytes()),
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

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Where the frames of `path` end: the first zero byte run reaching the end of the file.
fn data_len(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    let nonzero = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    nonzero as u64
}

/// Appends records `0..synced` and syncs, appends `synced..written` and writes them to the
/// OS, then crashes (no `Drop`: the zeros stay). Returns the segment.
fn crash_after(dir: &Path, synced: u64, written: u64) -> PathBuf {
    let mut p = open(dir, config(128 << 20));
    append(&mut p, 0, synced);
    p.sync().unwrap();
    append(&mut p, synced, written);
    p.flush_to_os().unwrap();
    std::mem::forget(p);
    segments(dir)[0].clone()
}

fn read_all(reader: &mut PartitionReader) -> Vec<Record> {
    reader.read(usize::MAX).unwrap()
}

fn expected(from: u64, to: u64) -> Vec<Record> {
    (from..to).map(rec).collect()
}

#[test]
fn appends_overwrite_preallocated_zeros_and_readers_stop_at_the_last_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t/0");
    let mut p = open(&dir, config(128 << 20));
    let mut tail = p.reader(0).unwrap();
    append(&mut p, 0, 100);
    p.sync().unwrap();
    let seg = segments(&dir)[0].clone();
    let data = data_len(&seg);
    let preallocated = file_len(&seg);
    // The first flush preallocates PREALLOCATE_BYTES beyond its records; the sync marker
    // after them lands in that space.
    assert!(
        preallocated > data + PREALLOCATE_BYTES - 64 && preallocated <= data + PREALLOCATE_BYTES,
        "{preallocated} bytes for {data} bytes of frames"
    );
    // A tailing reader of the same process reads up to the last frame, never into zeros.
    assert_eq!(read_all(&mut tail), expected(0, 100));
    append(&mut p, 100, 150);
    p.sync().unwrap();
    assert_eq!(
        file_len(&seg),
        preallocated,
        "appends did not grow the file"
    );
    assert_eq!(read_all(&mut tail), expected(100, 150));
    assert_eq!(read_all(&mut tail), vec![]);
    // A seek (a reader reopened from the first) shares the writer's view too.
    let mut again = tail.reopen(120).unwrap();
    assert_eq!(read_all(&mut again), expected(120, 150));
    // Appends past the preallocated space extend it again.
    let big = vec![7u8; (PREALLOCATE_BYTES / 2) as usize];
    p.append(0, b"big-1", Some(&big)).unwrap();
    p.append(0, b"big-2", Some(&big)).unwrap();
    p.append(0, b"big-3", Some(&big)).unwrap();
    p.sync().unwrap();
    let data = data_len(&seg);
    assert!(
        file_len(&seg) > data,
        "still preallocated ahead of the data"
    );
    assert!(file_len(&seg) <= data + PREALLOCATE_BYTES);
    let got = read_all(&mut tail);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].key, b"big-3");
    // A clean close cuts the zeros.
    drop(p);
    assert_eq!(file_len(&seg), data_len(&seg));
    let mut p = open(&dir, config(128 << 20));
    assert_eq!(p.end_offset(), 153);
    assert_eq!(p.read(0, 150).unwrap(), expected(0, 150));
}

#[test]
fn a_crash_leaves_the_zeros_and_recovery_accepts_them_as_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t/0");
    let seg = crash_after(&dir, 200, 210);
    let crashed_len = file_len(&seg);
    assert!(crashed_len > data_len(&seg));

    // The read-only tools see the records and not the zeros.
    let info = partition_info(&dir, 0).unwrap();
    assert_eq!((info.start_offset, info.end_offset), (0, 210));
    assert_eq!(
        info.bytes,
        data_len(&seg),
        "zeros are not counted as log bytes"
    );
    let verified = verify_partition(&dir).unwrap();
    assert_eq!((verified.records, verified.torn_tail), (210, None));
    let (mut ro, report) = Partition::open_read_only(&dir, config(128 << 20)).unwrap();
    assert_eq!((report.end_offset, report.torn_tail), (210, None));
    assert_eq!(ro.read(0, 1000).unwrap(), expected(0, 210));
    // A reader of no writer in this process stops at the zeros, and reads on once a writer
    // has written over them.
    let mut standalone = PartitionReader::open(&dir, 0).unwrap();
    assert_eq!(read_all(&mut standalone), expected(0, 210));
    assert_eq!(read_all(&mut standalone), vec![]);

    // A writable open keeps the zeros for its appends.
    let mut p = open(&dir, config(128 << 20));
    assert_eq!(p.end_offset(), 210);
    assert_eq!(
        file_len(&seg),
        crashed_len,
        "the preallocated space is reused"
    );
    append(&mut p, 210, 260);
    p.sync().unwrap();
    assert_eq!(file_len(&seg), crashed_len);
    assert_eq!(p.read(0, 1000).unwrap(), expected(0, 260));
    assert_eq!(read_all(&mut standalone), expected(210, 260));
    drop(p);

    // Another crash after more appends; then a truncation into the zero-tailed segment.
    let mut p = open(&dir, config(128 << 20));
    append(&mut p, 260, 300);
    p.sync().unwrap();
    std::mem::forget(p);
    let mut p = open(&dir, config(128 << 20));
    assert_eq!(p.end_offset(), 300);
    p.truncate(250).unwrap();
    assert_eq!(p.end_offset(), 250);
    assert_eq!(p.read(0, 1000).unwrap(), expected(0, 250));
    append(&mut p, 250, 270);
    p.sync().unwrap();
    drop(p);
    let mut p = open(&dir, config(128 << 20));
    assert_eq!(p.read(0, 1000).unwrap(), expected(0, 270));
}

#[test]
fn a_roll_cuts_the_zeros_off_the_segment_it_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t/0");
    let mut p = open(&dir, config(64 << 10));
    let mut tail = p.reader(0).unwrap();
    for round in 0..40 {
        append(&mut p, round * 100, (round + 1) * 100);
        p.sync().unwrap();
        assert_eq!(
            read_all(&mut tail),
            expected(round * 100, (round + 1) * 100)
        );
    }
    let segs = segments(&dir);
    assert!(segs.len() > 3, "{} segments", segs.len());
    for seg in &segs[..segs.len() - 1] {
        assert_eq!(
            file_len(seg),
            data_len(seg),
            "{} closed with zeros",
            seg.display()
        );
        assert!(file_len(seg) <= 64 << 10);
    }
    let last = segs.last().unwrap();
    assert!(
        file_len(last) <= 64 << 10,
        "never preallocated beyond segment.bytes"
    );
    assert!(file_len(last) > data_len(last));
    std::mem::forget(p);
    let verified = verify_partition(&dir).unwrap();
    assert_eq!((verified.records, verified.torn_tail), (4000, None));
    let mut p = open(&dir, config(64 << 10));
    assert_eq!(p.read(0, 10_000).unwrap(), expected(0, 4000));
}

#[test]
fn damage_before_the_zeros_is_still_a_torn_tail_or_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t/0");
    let seg = crash_after(&dir, 50, 60);
    let end = data_len(&seg);
    // A half-written last frame (its last bytes still zero): a torn tail, cut.
    let mut bytes = fs::read(&seg).unwrap();
    let cut_from = end - 5;
    bytes[cut_from as usize..end as usize].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let (mut p, report) = Partition::open(&dir, config(128 << 20), Arc::new(NoHooks)).unwrap();
    let torn = report
        .torn_tail
        .expect("a half-written frame is a torn tail");
    assert_eq!(torn.last_good_offset, Some(58));
    assert_eq!(p.read(0, 100).unwrap(), expected(0, 59));
    append(&mut p, 59, 70);
    p.sync().unwrap();
    std::mem::forget(p);
    // Zeros over records an fsync proved (a sync marker follows them): corruption.
    let mut bytes = fs::read(&seg).unwrap();
    bytes[100..200].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let err = Partition::open(&dir, config(128 << 20), Arc::new(NoHooks))
        .err()
        .expect("zeroed synced records are corruption");
    assert!(err.to_string().contains("not a torn tail"), "{err}");
}

#[test]
fn without_fsync_or_with_preallocate_off_nothing_is_preallocated() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, cfg) in [
        (
            "nofsync",
            TopicConfig {
                fsync: false,
                ..config(128 << 20)
            },
        ),
        (
            "off",
            TopicConfig {
                preallocate: false,
                ..config(128 << 20)
            },
        ),
    ] {
        let dir = tmp.path().join(name).join("0");
        let mut p = open(&dir, cfg);
        append(&mut p, 0, 100);
        p.sync().unwrap();
        let seg = segments(&dir)[0].clone();
        assert_eq!(file_len(&seg), data_len(&seg), "{name}");
    }
}

/// A reader sharing nothing with the writer (`PartitionReader::open`, as a tool or test
/// reading another process's log) tails a partition while a writer appends over the
/// preallocated zeros and rolls: every read returns a gap-free prefix of what was written
/// and never an error, however the reader's buffered view and the writer's copies
/// interleave (a frame buffered half copied, then found complete with more after it).
#[test]
fn a_reader_sharing_nothing_tails_a_live_writer_without_false_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t/0");
    let total: u64 = 60_000;
    let mut p = open(&dir, config(256 << 10));
    let done = std::sync::atomic::AtomicBool::new(false);
    // Reads finished so far: the writer waits for one per 1,000 records, so reads race every
    // part of the log however the scheduler runs the two threads.
    let reads_done = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut i = 0;
            while i < total {
                while reads_done.load(std::sync::atomic::Ordering::SeqCst) < i / 1000 {
                    std::thread::yield_now();
                }
                let n = (i % 7 + 1).min(total - i);
                append(&mut p, i, i + n);
                p.flush_to_os().unwrap();
                if i % 500 < 7 {
                    p.sync().unwrap();
                }
                i += n;
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let (mut reads, mut seen) = (0u64, 0u64);
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            // Fresh readers from the start and from where the last one ended, as a poller
            // that reopens each time would.
            for from in [0, seen.saturating_sub(3)] {
                let got = PartitionReader::open(&dir, from)
                    .and_then(|mut r| r.read(usize::MAX))
                    .unwrap_or_else(|e| panic!("read {reads} from {from}: {e}"));
                for (k, r) in got.iter().enumerate() {
                    assert_eq!(r, &rec(from + k as u64), "read {reads} from {from}");
                }
                if from == 0 {
                    seen = seen.max(got.len() as u64);
                }
                reads += 1;
                reads_done.store(reads / 2, std::sync::atomic::Ordering::SeqCst);
            }
            if finished {
                break;
            }
        }
        writer.join().unwrap();
        assert_eq!(
            seen, total,
            "the last read after the writer finished saw everything"
        );
        assert!(
            reads >= 2 * (total / 1000),
            "{reads} reads raced the writer"
        );
    });
}
