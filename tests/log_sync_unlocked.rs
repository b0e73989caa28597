//! Syncs whose fsync runs without the partition: `Partition::start_sync` (under the lock),
//! `SyncTicket::fsync` (outside it), `Partition::finish_sync` (under it again), as the
//! embedded backend's sinks do. While an fsync is in flight the partition's appends, reads,
//! `readable_end` and other syncs go on; a finished sync reports exactly what its ticket
//! covered; a failed fsync poisons as before; rolls and truncations in between are safe.
//! Real files, real fsyncs; the I/O hooks hold an fsync in flight or fail it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::backend::{Backend, TopicPartition};
use gregor::log::segment::{list_segments, scan_segment, segment_path};
use gregor::log::{IoHooks, LogDir, LogError, NoHooks, Partition, TopicConfig, verify_partition};

/// How long a held fsync waits for its release before going on by itself: a test whose
/// other thread wrongly waits for the fsync then fails (too slow, wrong values) instead of
/// hanging.
const HOLD_LIMIT: Duration = Duration::from_secs(20);

/// Holds the next fsync of a segment (`.log`) once armed: reports it entered on a channel,
/// waits for a release, then lets it go on or fails it.
struct Hold {
    armed: AtomicBool,
    fail: AtomicBool,
    entered: Mutex<mpsc::Sender<PathBuf>>,
    release: Mutex<mpsc::Receiver<()>>,
    segment_syncs: AtomicUsize,
}

struct HoldHandle {
    hooks: Arc<Hold>,
    entered: mpsc::Receiver<PathBuf>,
    release: mpsc::Sender<()>,
}

impl HoldHandle {
    fn new() -> HoldHandle {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        HoldHandle {
            hooks: Arc::new(Hold {
                armed: AtomicBool::new(false),
                fail: AtomicBool::new(false),
                entered: Mutex::new(entered_tx),
                release: Mutex::new(release_rx),
                segment_syncs: AtomicUsize::new(0),
            }),
            entered,
            release,
        }
    }

    /// Holds the next segment fsync; with `fail` it then fails.
    fn arm(&self, fail: bool) {
        self.hooks.fail.store(fail, Ordering::SeqCst);
        self.hooks.armed.store(true, Ordering::SeqCst);
    }
    /// Waits until the held fsync is in flight; returns its file.
    fn wait_entered(&self) -> PathBuf {
        self.entered
            .recv_timeout(HOLD_LIMIT)
            .expect("no fsync held")
    }
    fn release(&self) {
        self.release.send(()).unwrap();
    }
}

impl IoHooks for Hold {
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        if path.extension().is_none_or(|e| e != "log") {
            return Ok(());
        }
        self.segment_syncs.fetch_add(1, Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered
                .lock()
                .unwrap()
                .send(path.to_path_buf())
                .unwrap();
            // A test that never releases (it failed) lets the fsync go on after the limit.
            let _ = self.release.lock().unwrap().recv_timeout(HOLD_LIMIT);
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected fsync failure"));
            }
        }
        Ok(())
    }
}

fn config(segment_bytes: u64) -> TopicConfig {
    TopicConfig {
        segment_bytes,
        ..TopicConfig::default()
    }
}

fn append(p: &mut Partition, n: u64) {
    for _ in 0..n {
        let i = p.end_offset();
        let value = format!("value {i} {}", "#".repeat((i % 13) as usize));
        p.append(i as i64, format!("k{i}").as_bytes(), Some(value.as_bytes()))
            .unwrap();
    }
}

fn offsets(p: &mut Partition) -> Vec<u64> {
    let start = p.start_offset();
    p.read(start, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect()
}

/// The scan (sync markers included) of segment `base` of the partition in `dir`.
fn scan(dir: &Path, base: u64) -> gregor::log::segment::SegmentScan {
    let path = segment_path(dir, base);
    let file = File::open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    scan_segment(&file, len, &path, base, true).unwrap()
}

/// Bytes of the frames of a segment: its length without the zeros preallocated after them
/// (every frame here ends in a non-zero byte: text values, or a marker's value length).
fn file_len(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// While the key-value service's sink is inside the fsync of partition P, the run loop's
/// `readable_end(P)` answers at once with the end of the previous sync (not the records
/// being synced), another writer appends to P and a reader reads P. When the fsync is done,
/// `readable_end` is exactly the end the sync covered, not the records appended meanwhile.
#[test]
fn readable_end_appends_and_reads_go_on_while_a_sink_fsyncs() {
    let root = tempfile::tempdir().unwrap();
    let hold = HoldHandle::new();
    let logs = LogDir::open_with_hooks(root.path(), hold.hooks.clone()).unwrap();
    logs.create_topic("in", 1, config(128 << 20)).unwrap();
    let backend = EmbeddedBackend::with_log_dir(root.path(), logs, EmbeddedSettings::default());
    let tp = TopicPartition::new("in", 0);
    let mut writer = backend.open_sink("kv-writer").unwrap();
    for i in 0..10i64 {
        writer.send(&tp, i, b"k", Some(b"before")).unwrap();
    }
    assert_eq!(writer.flush().unwrap()[&tp], 10);
    assert_eq!(backend.readable_end(&tp).unwrap(), 10);
    for i in 10..20i64 {
        writer.send(&tp, i, b"k", Some(b"synced")).unwrap();
    }
    hold.arm(false);
    let syncing = thread::spawn(move || writer.flush());
    let held = hold.wait_entered();
    assert!(held.ends_with("in/0/00000000000000000000.log"), "{held:?}");

    // The fsync of records 10..20 is in flight.
    let t0 = Instant::now();
    assert_eq!(
        backend.readable_end(&tp).unwrap(),
        10,
        "the records being synced are not readable yet"
    );
    let mut other = backend.open_sink("other").unwrap();
    for i in 20..25i64 {
        other.send(&tp, i, b"k", Some(b"during")).unwrap();
    }
    other.flush_to_os().unwrap();
    assert_eq!(backend.offsets(&tp).unwrap().end, 25);
    let mut reader = backend.open_reader(&tp, 0).unwrap();
    let mut read = Vec::new();
    loop {
        let batch = reader.next_batch(7).unwrap();
        if batch.is_empty() {
            break;
        }
        read.extend(batch.into_iter().map(|r| r.offset));
    }
    assert_eq!(read, (0..25).collect::<Vec<_>>());
    assert_eq!(backend.readable_end(&tp).unwrap(), 10);
    let waited = t0.elapsed();
    assert!(
        waited < HOLD_LIMIT / 2,
        "the partition's users waited for the fsync ({waited:?})"
    );
    assert!(!syncing.is_finished(), "the fsync is still held");

    hold.release();
    let ends = syncing.join().unwrap().unwrap();
    assert_eq!(ends[&tp], 20, "the sync covers what was written before it");
    assert_eq!(
        backend.readable_end(&tp).unwrap(),
        20,
        "not the records appended during the fsync"
    );
    assert_eq!(other.flush().unwrap()[&tp], 25);
    assert_eq!(backend.readable_end(&tp).unwrap(), 25);
    drop((other, reader, backend));

    // On disk: every record, and sync markers recovery accepts.
    let dir = root.path().join("logs").join("in").join("0");
    let report = verify_partition(&dir).unwrap();
    assert_eq!((report.records, report.torn_tail), (25, None));
    let (mut p, report) = Partition::open(&dir, config(128 << 20), Arc::new(NoHooks)).unwrap();
    assert_eq!((report.end_offset, report.torn_tail), (25, None));
    assert_eq!(offsets(&mut p), (0..25).collect::<Vec<_>>());
}

/// A failed fsync of a ticket poisons the partition as `sync` does: it is never retried,
/// and no sync reports anything appended durable afterwards — also not a second sync whose
/// fsync was waiting behind the failed one (the kernel may report a lost write to only one
/// fsync of a file; that one fails without an fsync).
#[test]
fn failed_ticket_fsync_poisons_and_fails_the_syncs_behind_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("t").join("0");
    let hold = HoldHandle::new();
    let (mut p, _) = Partition::open(&dir, config(128 << 20), hold.hooks.clone()).unwrap();
    append(&mut p, 5);
    assert_eq!(p.sync().unwrap(), 5);
    append(&mut p, 5);
    let p = Arc::new(Mutex::new(p));

    let a = p.lock().unwrap().start_sync().unwrap();
    assert_eq!(a.end_offset(), 10);
    hold.arm(true);
    let first = thread::spawn(move || a.fsync());
    hold.wait_entered();
    // While A's fsync is in flight: more records, and sync B of them, whose fsync waits.
    append(&mut p.lock().unwrap(), 3);
    let b = p.lock().unwrap().start_sync().unwrap();
    assert_eq!(b.end_offset(), 13);
    let second = thread::spawn(move || b.fsync());
    assert_eq!(p.lock().unwrap().synced_end(), 5);
    let syncs_before = hold.hooks.segment_syncs.load(Ordering::SeqCst);
    hold.release();
    let a = first.join().unwrap();
    let b = second.join().unwrap();
    assert!(
        matches!(a.error(), Some(LogError::Io { op: "fsync", .. })),
        "{:?}",
        a.error()
    );
    assert!(
        matches!(b.error(), Some(LogError::Poisoned { .. })),
        "{:?}",
        b.error()
    );
    assert_eq!(
        hold.hooks.segment_syncs.load(Ordering::SeqCst),
        syncs_before,
        "the second fsync was not attempted"
    );

    let mut p = p.lock().unwrap();
    // B finishes first: it poisons with A's failure.
    let e = p.finish_sync(b).unwrap_err();
    assert!(matches!(e, LogError::Poisoned { .. }), "{e}");
    assert!(e.to_string().contains("injected fsync failure"), "{e}");
    assert!(p.poisoned().unwrap().contains("injected fsync failure"));
    let e = p.finish_sync(a).unwrap_err();
    assert!(e.to_string().contains("injected fsync failure"), "{e}");
    assert_eq!(p.synced_end(), 5, "nothing appended is reported durable");
    let syncs = hold.hooks.segment_syncs.load(Ordering::SeqCst);
    assert!(matches!(p.start_sync(), Err(LogError::Poisoned { .. })));
    assert!(matches!(p.sync(), Err(LogError::Poisoned { .. })));
    assert!(matches!(
        p.append(0, b"k", None),
        Err(LogError::Poisoned { .. })
    ));
    assert_eq!(p.synced_end(), 5);
    assert_eq!(hold.hooks.segment_syncs.load(Ordering::SeqCst), syncs);
    drop(p);

    // The same through the backend: the sink's flush fails, `readable_end` never included
    // the records.
    let root = tempfile::tempdir().unwrap();
    let hold = HoldHandle::new();
    let logs = LogDir::open_with_hooks(root.path(), hold.hooks.clone()).unwrap();
    logs.create_topic("in", 1, config(128 << 20)).unwrap();
    let backend = EmbeddedBackend::with_log_dir(root.path(), logs, EmbeddedSettings::default());
    let tp = TopicPartition::new("in", 0);
    let mut sink = backend.open_sink("w").unwrap();
    sink.send(&tp, 0, b"k", Some(b"v")).unwrap();
    assert_eq!(sink.flush().unwrap()[&tp], 1);
    sink.send(&tp, 1, b"k", Some(b"v")).unwrap();
    hold.arm(true);
    let syncing = thread::spawn(move || sink.flush());
    hold.wait_entered();
    assert_eq!(backend.readable_end(&tp).unwrap(), 1);
    hold.release();
    let e = syncing.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("injected fsync failure"), "{e}");
}

/// A roll between a ticket and its completion: the roll fsyncs the ticket's segment in full
/// before closing it, so the sync finishes with the ticket's end and writes no marker — one
/// would land in the new segment, claiming the old segment's length. Also with the roll
/// between the fsync and the completion.
#[test]
fn roll_between_ticket_and_completion_writes_no_marker_into_the_new_segment() {
    for roll_before_fsync in [true, false] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t").join("0");
        let (mut p, _) = Partition::open(&dir, config(2000), Arc::new(NoHooks)).unwrap();
        append(&mut p, 10);
        let ticket = p.start_sync().unwrap();
        let (end, len) = (ticket.end_offset(), ticket.synced_len());
        assert_eq!((end, p.segment_bases()), (10, vec![0]));
        let ticket = if roll_before_fsync {
            append(&mut p, 40);
            ticket.fsync()
        } else {
            let t = ticket.fsync();
            append(&mut p, 40);
            t
        };
        let bases = p.segment_bases();
        assert!(bases.len() >= 2, "rolled: {bases:?}");
        let active = *bases.last().unwrap();
        p.flush_to_os().unwrap();
        let sizes: Vec<u64> = bases
            .iter()
            .map(|&b| file_len(&segment_path(&dir, b)))
            .collect();
        assert_eq!(p.finish_sync(ticket).unwrap(), end);
        assert_eq!(p.synced_end(), end);
        assert!(p.poisoned().is_none());
        // No marker anywhere: the closed segments are unchanged, the active one has none.
        let after: Vec<u64> = bases
            .iter()
            .map(|&b| file_len(&segment_path(&dir, b)))
            .collect();
        assert_eq!(after, sizes);
        let s = scan(&dir, active);
        assert_eq!((s.marker_end, s.synced_len), (None, 0));
        assert!(file_len(&segment_path(&dir, 0)) > len);
        // The next sync marks the new segment as usual.
        assert_eq!(p.sync().unwrap(), 50);
        let s = scan(&dir, active);
        assert_eq!(s.marker_end, Some(50));
        assert_eq!(s.synced_len + 32, file_len(&segment_path(&dir, active)));
        drop(p);
        let (mut p, report) = Partition::open(&dir, config(2000), Arc::new(NoHooks)).unwrap();
        assert_eq!((report.end_offset, report.torn_tail), (50, None));
        assert_eq!(offsets(&mut p), (0..50).collect::<Vec<_>>());
    }
}

/// A truncation between a ticket and its completion: the records the ticket covered may be
/// gone (or replaced), so the completion is an error and writes no marker; the partition
/// is not poisoned and goes on from the truncation (which made what it kept durable). The
/// same, conservatively, when the truncation kept every record of the ticket.
#[test]
fn truncation_between_ticket_and_completion_fails_the_sync_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("t").join("0");
    let seg = segment_path(&dir, 0);
    let (mut p, _) = Partition::open(&dir, config(128 << 20), Arc::new(NoHooks)).unwrap();
    append(&mut p, 10);
    let ticket = p.start_sync().unwrap();
    p.truncate(6).unwrap();
    // Re-appended records at offsets the ticket covered: not what it covered.
    append(&mut p, 2);
    p.flush_to_os().unwrap();
    let len = file_len(&seg);
    let fsynced = ticket.fsync();
    assert!(fsynced.error().is_none());
    let e = p.finish_sync(fsynced).unwrap_err();
    assert!(matches!(e, LogError::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(p.poisoned().is_none());
    assert_eq!((p.synced_end(), p.end_offset()), (6, 8));
    assert_eq!(file_len(&seg), len, "no marker written");
    assert_eq!(p.sync().unwrap(), 8);
    append(&mut p, 4);

    // A truncation above the ticket's end: refused the same way.
    let ticket = p.start_sync().unwrap();
    assert_eq!(ticket.end_offset(), 12);
    append(&mut p, 5);
    p.truncate(14).unwrap();
    let e = p.finish_sync(ticket.fsync()).unwrap_err();
    assert!(matches!(e, LogError::InvalidArgument(_)), "{e}");
    assert_eq!((p.synced_end(), p.end_offset()), (14, 14));
    assert_eq!(p.sync().unwrap(), 14);
    drop(p);
    let (mut p, report) = Partition::open(&dir, config(128 << 20), Arc::new(NoHooks)).unwrap();
    assert_eq!((report.end_offset, report.torn_tail), (14, None));
    assert_eq!(offsets(&mut p), (0..14).collect::<Vec<_>>());
}

/// A ticket's marker is written after the records appended while its fsync ran, naming the
/// bytes the fsync covered (its `synced_len`) and the current end offset (a marker's end
/// offset only bounds the next record's offset; recovery checks it against the records
/// before it). Recovery takes it as proof of exactly the bytes it names: damage below them
/// is corruption, damage in the records after them is a torn tail.
#[test]
fn a_marker_after_later_records_proves_only_what_its_fsync_covered() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("t").join("0");
    let seg = segment_path(&dir, 0);
    let (mut p, _) = Partition::open(&dir, config(128 << 20), Arc::new(NoHooks)).unwrap();
    append(&mut p, 5);
    let ticket = p.start_sync().unwrap();
    let synced_len = ticket.synced_len();
    append(&mut p, 5);
    p.flush_to_os().unwrap();
    let records_len = file_len(&seg);
    assert!(records_len > synced_len);
    assert_eq!(p.finish_sync(ticket.fsync()).unwrap(), 5);
    assert_eq!(p.synced_end(), 5);
    assert_eq!(
        file_len(&seg),
        records_len + 32,
        "one marker, after the records"
    );
    let s = scan(&dir, 0);
    assert_eq!(
        (s.synced_len, s.marker_end, s.proven_end, s.torn),
        (synced_len, Some(10), None, None)
    );
    // Finishing out of order: B (end 12) before A (end 11); A adds no marker.
    append(&mut p, 1);
    let a = p.start_sync().unwrap().fsync();
    append(&mut p, 1);
    let b = p.start_sync().unwrap().fsync();
    let b_len = file_len(&seg);
    assert_eq!(p.finish_sync(b).unwrap(), 12);
    assert_eq!(p.finish_sync(a).unwrap(), 11);
    assert_eq!(p.synced_end(), 12);
    assert_eq!(file_len(&seg), b_len + 32, "only B's marker");
    let s = scan(&dir, 0);
    assert_eq!((s.synced_len, s.proven_end), (b_len, Some(12)));
    drop(p);

    // Damage in the records written during the first fsync (after its synced_len, before
    // B's): B's marker proves them, so that is corruption too; cut B's marker off first to
    // see the first marker's proof alone.
    let copy = |name: &str| {
        let d = root.path().join(name);
        fs::create_dir_all(&d).unwrap();
        fs::copy(&seg, segment_path(&d, 0)).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(&d, 0))
            .unwrap();
        f.set_len(records_len + 32).unwrap();
        (d, f)
    };
    // Below the first marker's synced_len: corruption.
    let (d, f) = copy("below");
    f.write_all_at(&[0xAB; 4], synced_len - 10).unwrap();
    let e = Partition::open(&d, config(128 << 20), Arc::new(NoHooks))
        .err()
        .unwrap();
    assert!(matches!(e, LogError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("not a torn tail"), "{e}");
    // In the records appended during the fsync: a torn tail, cut; the synced records stay.
    let (d, f) = copy("after");
    f.write_all_at(&[0xAB; 4], synced_len + 10).unwrap();
    let (mut q, report) = Partition::open(&d, config(128 << 20), Arc::new(NoHooks)).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!(torn.position, synced_len);
    assert_eq!(q.end_offset(), 5);
    assert_eq!(offsets(&mut q), (0..5).collect::<Vec<_>>());
    // Undamaged: everything, and the reopened partition marks its next sync.
    let (d, _f) = copy("intact");
    let (mut q, report) = Partition::open(&d, config(128 << 20), Arc::new(NoHooks)).unwrap();
    assert_eq!((report.end_offset, report.torn_tail), (10, None));
    let len = file_len(&segment_path(&d, 0));
    assert_eq!(q.sync().unwrap(), 10);
    assert_eq!(
        file_len(&segment_path(&d, 0)),
        len + 32,
        "the first marker did not prove records 5..10: the next sync marks them"
    );
    assert_eq!(scan(&d, 0).synced_len, len);
}

/// Several threads append to one shared partition and sync it through tickets (two sinks
/// and more), while another reads `synced_end`: every sync returns an end covering the
/// thread's own records, `synced_end` never goes down and never passes the end, and the
/// log reopens whole, with sync markers recovery accepts.
#[test]
fn concurrent_ticket_syncs_of_one_partition() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("t").join("0");
    let (p, _) = Partition::open(&dir, config(64 << 10), Arc::new(NoHooks)).unwrap();
    let p = Arc::new(Mutex::new(p));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (p, stop) = (p.clone(), stop.clone());
        thread::spawn(move || {
            let mut last = 0;
            let mut checks = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let p = p.lock().unwrap();
                let s = p.synced_end();
                assert!(s >= last && s <= p.end_offset(), "{s} after {last}");
                last = s;
                checks += 1;
            }
            checks
        })
    };
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let p = p.clone();
            thread::spawn(move || {
                for round in 0..150u64 {
                    let mine = {
                        let mut p = p.lock().unwrap();
                        let mut last = 0;
                        for i in 0..(1 + (w + round) % 5) {
                            let v = format!("w{w} r{round} i{i}");
                            last = p.append(0, b"k", Some(v.as_bytes())).unwrap();
                        }
                        last
                    };
                    let ticket = p.lock().unwrap().start_sync().unwrap();
                    let fsynced = ticket.fsync();
                    let end = p.lock().unwrap().finish_sync(fsynced).unwrap();
                    assert!(end > mine);
                    assert!(p.lock().unwrap().synced_end() >= end);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(watcher.join().unwrap() > 0);
    let total = {
        let mut p = p.lock().unwrap();
        assert_eq!(p.sync().unwrap(), p.end_offset());
        p.end_offset()
    };
    let expected: u64 = (0..4u64)
        .flat_map(|w| (0..150u64).map(move |r| 1 + (w + r) % 5))
        .sum();
    assert_eq!(total, expected);
    drop(p);
    let report = verify_partition(&dir).unwrap();
    assert_eq!((report.records, report.torn_tail), (total, None));
    let (_, report) = Partition::open(&dir, config(64 << 10), Arc::new(NoHooks)).unwrap();
    assert_eq!((report.end_offset, report.torn_tail), (total, None));
    assert!(
        list_segments(&dir).unwrap().len() > 1,
        "rolled while syncing"
    );
}

/// Not a correctness test: how long a user of a shared partition (the run loop's
/// `readable_end`) waits for its lock while a writer syncs it in a loop, with the whole
/// sync under the lock (as before) and with the fsync outside it. Real fsyncs in the
/// temporary directory. `cargo test --release --test log_sync_unlocked -- --ignored
/// --nocapture lock_wait`.
#[test]
#[ignore]
fn lock_wait_while_syncing() {
    for split in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t").join("0");
        let (p, _) = Partition::open(&dir, config(128 << 20), Arc::new(NoHooks)).unwrap();
        let p = Arc::new(Mutex::new(p));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (p, stop) = (p.clone(), stop.clone());
            thread::spawn(move || {
                let mut syncs = 0u64;
                let value = vec![b'v'; 100];
                while !stop.load(Ordering::SeqCst) {
                    let mut g = p.lock().unwrap();
                    for _ in 0..20 {
                        g.append(0, b"key", Some(&value)).unwrap();
                    }
                    if split {
                        let t = g.start_sync().unwrap();
                        drop(g);
                        let f = t.fsync();
                        p.lock().unwrap().finish_sync(f).unwrap();
                    } else {
                        g.sync().unwrap();
                        drop(g);
                    }
                    syncs += 1;
                }
                syncs
            })
        };
        let mut waits = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let t = Instant::now();
            let s = p.lock().unwrap().synced_end();
            waits.push(t.elapsed());
            std::hint::black_box(s);
            thread::sleep(Duration::from_micros(100));
        }
        stop.store(true, Ordering::SeqCst);
        let syncs = writer.join().unwrap();
        waits.sort();
        let q = |f: f64| waits[((waits.len() - 1) as f64 * f) as usize];
        eprintln!(
            "{}: {} lock waits: p50 {:?} p90 {:?} p99 {:?} max {:?}; {} syncs in 3 s ({:?} per sync)",
            if split {
                "fsync outside the lock"
            } else {
                "sync under the lock   "
            },
            waits.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            syncs,
            Duration::from_secs(3) / syncs.max(1) as u32,
        );
    }
}
