//! Damage a power loss can leave (only what an fsync covered is certain), damage it cannot
//! (corruption of synced data), frames no writer produces (offset `u64::MAX`), and files
//! the log did not create (a stray file named like a newer segment). Every reader — open,
//! `partition_info` (`topic list`), `verify_partition` (`topic verify`), `PartitionReader` —
//! judges them the same way, and none panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gregor::log::record::{Record as Rec, encode_into};
use gregor::log::{
    LogError, NoHooks, Partition, PartitionReader, Record, TopicConfig, partition_info,
    verify_partition,
};

const PAGE: usize = 4096;

fn config(segment_bytes: u64, fsync: bool) -> TopicConfig {
    TopicConfig {
        segment_bytes,
        fsync,
        ..TopicConfig::default()
    }
}

fn open(
    dir: &Path,
    cfg: &TopicConfig,
) -> Result<(Partition, gregor::log::RecoveryReport), LogError> {
    Partition::open(dir, cfg.clone(), Arc::new(NoHooks))
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(100 + (i as usize % 50))).into_bytes()
}

/// Appends records `from..to` (key `k<i>`).
fn append(p: &mut Partition, from: u64, to: u64) {
    for i in from..to {
        assert_eq!(
            p.append(i as i64, format!("k{i}").as_bytes(), Some(&value(i)))
                .unwrap(),
            i
        );
    }
}

fn segment(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn zero(path: &Path, from: usize, len: usize) {
    let mut b = fs::read(path).unwrap();
    b[from..from + len].fill(0);
    fs::write(path, b).unwrap();
}

/// Record frame boundaries `(start, end, offset)` of a segment; stops at the first bad frame.
fn records(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut slot = Rec::default();
    while let Ok((kind, n)) = gregor::log::record::decode_frame(&bytes[pos..], &mut slot) {
        if kind == gregor::log::record::FrameKind::Record {
            out.push((pos, pos + n, slot.offset));
        }
        pos += n;
    }
    out
}

/// Every way to look at the partition agrees on its end; none modifies it.
fn all_readers_agree(dir: &Path, cfg: &TopicConfig, expect_end: u64) {
    let before = fs::read(segment(dir, 0)).unwrap();
    let info = partition_info(dir, 0).unwrap();
    assert_eq!(info.end_offset, expect_end, "partition_info");
    let v = verify_partition(dir).unwrap();
    assert_eq!(v.last_offset.map_or(0, |o| o + 1), expect_end, "verify");
    let (mut ro, _) = Partition::open_read_only(dir, cfg.clone()).unwrap();
    assert_eq!(ro.end_offset(), expect_end, "read-only open");
    let recs = ro.read(0, usize::MAX).unwrap();
    assert_eq!(recs.len() as u64, expect_end);
    assert_eq!(
        fs::read(segment(dir, 0)).unwrap(),
        before,
        "nothing was modified"
    );
}

/// Issue 11 #6: one zeroed 4 KiB page with intact pages after it, all after the last fsync,
/// is a torn tail: the synced records survive, everything from the damage on is cut.
#[test]
fn zeroed_page_after_the_last_fsync_is_a_torn_tail_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, true);
    let (mut p, _) = open(dir.path(), &cfg).unwrap();
    append(&mut p, 0, 100);
    assert_eq!(p.sync().unwrap(), 100);
    let synced_len = p.size_bytes();
    append(&mut p, 100, 300);
    p.flush_to_os().unwrap(); // reached the OS, never fsynced
    drop(p);
    let seg = segment(dir.path(), 0);
    let bytes = fs::read(&seg).unwrap();
    // The first whole page after the synced bytes (and after the sync marker).
    let page = (synced_len as usize).div_ceil(PAGE) * PAGE + PAGE;
    assert!(page + 3 * PAGE < bytes.len(), "intact pages follow");
    zero(&seg, page, PAGE);
    let recs = records(&bytes);
    let kept = recs.iter().filter(|r| r.1 <= page).count() as u64;
    let cut_at = recs.iter().find(|r| r.1 > page).unwrap().0;
    assert!(kept >= 100);

    all_readers_agree(dir.path(), &cfg, kept);
    let (mut p, report) = open(dir.path(), &cfg).expect("a torn tail, not corruption");
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!(torn.position as usize, cut_at);
    assert_eq!(torn.file, seg);
    assert_eq!(p.end_offset(), kept);
    let got = p.read(0, usize::MAX).unwrap();
    assert_eq!(got.len() as u64, kept);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.value.as_deref(), Some(&value(i as u64)[..]));
    }
    assert_eq!(fs::metadata(&seg).unwrap().len() as usize, cut_at);
    // Appends continue after the kept prefix.
    assert_eq!(p.append(0, b"new", Some(b"v")).unwrap(), kept);
}

/// The same damage inside fsynced data is corruption: an error naming file and position,
/// nothing cut — whether the proof (a sync marker) lies before or after the damage.
#[test]
fn zeroed_page_inside_synced_data_is_corruption_naming_file_and_position() {
    for unsynced_after in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1 << 20, true);
        let (mut p, _) = open(dir.path(), &cfg).unwrap();
        append(&mut p, 0, 200);
        p.sync().unwrap();
        if unsynced_after {
            append(&mut p, 200, 250);
            p.flush_to_os().unwrap();
        }
        drop(p);
        let seg = segment(dir.path(), 0);
        let bytes = fs::read(&seg).unwrap();
        let page = 2 * PAGE;
        zero(&seg, page, PAGE);
        let damaged = fs::read(&seg).unwrap();
        let bad_at = records(&bytes).iter().find(|r| r.1 > page).unwrap().0 as u64;
        let check = |e: LogError, what: &str| match e {
            LogError::Corrupt { file, position, .. } => {
                assert_eq!(file, seg, "{what}");
                assert_eq!(position, bad_at, "{what}");
            }
            other => panic!("{what}: expected Corrupt, got {other}"),
        };
        check(open(dir.path(), &cfg).err().expect("open fails"), "open");
        check(partition_info(dir.path(), 0).unwrap_err(), "partition_info");
        check(verify_partition(dir.path()).unwrap_err(), "verify");
        check(
            Partition::open_read_only(dir.path(), cfg.clone())
                .err()
                .unwrap(),
            "read-only open",
        );
        let msg = open(dir.path(), &cfg).err().unwrap().to_string();
        assert!(msg.contains("00000000000000000000.log"), "{msg}");
        assert!(msg.contains(&format!("byte position {bad_at}")), "{msg}");
        assert!(
            msg.contains("fsynced"),
            "says why it is not a torn tail: {msg}"
        );
        assert_eq!(fs::read(&seg).unwrap(), damaged, "nothing cut");
    }
}

/// A sync marker is written after every fsync that covered new records: a process crash
/// (no power loss) right after `sync` keeps it, and a second `sync` with nothing new writes
/// no second marker.
#[test]
fn sync_writes_one_marker_per_sync_with_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, true);
    let (mut p, _) = open(dir.path(), &cfg).unwrap();
    append(&mut p, 0, 10);
    p.sync().unwrap();
    let after_first = p.size_bytes();
    p.sync().unwrap();
    assert_eq!(p.size_bytes(), after_first, "nothing new: no marker");
    append(&mut p, 10, 20);
    p.sync().unwrap();
    std::mem::forget(p); // like kill -9: no Drop
    let bytes = fs::read(segment(dir.path(), 0)).unwrap();
    let mut slot = Rec::default();
    let mut pos = 0;
    let mut markers = Vec::new();
    // Up to the zeros preallocated after the last frame.
    while bytes[pos..].iter().any(|&b| b != 0) {
        let (kind, n) = gregor::log::record::decode_frame(&bytes[pos..], &mut slot).unwrap();
        if let gregor::log::record::FrameKind::SyncMarker(m) = kind {
            markers.push((pos, m));
        }
        pos += n;
    }
    assert_eq!(markers.len(), 2);
    assert_eq!(markers[0].1.end_offset, 10);
    assert_eq!(markers[0].1.synced_len, markers[0].0 as u64);
    assert_eq!(markers[1].1.end_offset, 20);
    assert_eq!(markers[1].1.synced_len, markers[1].0 as u64);
    // Readers never see markers.
    let (mut p, _) = open(dir.path(), &cfg).unwrap();
    let recs = p.read(0, usize::MAX).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
}

/// With fsync disabled nothing is ever proven durable: damage anywhere in the last segment
/// is a torn tail (closed segments stay strict: see `closed_segment_damage_stays_corruption`).
#[test]
fn without_fsync_damage_in_the_last_segment_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, false);
    let (mut p, _) = open(dir.path(), &cfg).unwrap();
    append(&mut p, 0, 200);
    p.sync().unwrap();
    drop(p);
    let seg = segment(dir.path(), 0);
    let bytes = fs::read(&seg).unwrap();
    zero(&seg, PAGE, PAGE);
    let kept = records(&bytes).iter().filter(|r| r.1 <= PAGE).count() as u64;
    let (p, report) = open(dir.path(), &cfg).unwrap();
    assert!(report.torn_tail.is_some());
    assert_eq!(p.end_offset(), kept);
}

#[test]
fn closed_segment_damage_stays_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(8 * PAGE as u64, true);
    let (mut p, _) = open(dir.path(), &cfg).unwrap();
    append(&mut p, 0, 600);
    p.sync().unwrap();
    assert!(p.segment_bases().len() > 2);
    drop(p);
    let seg = segment(dir.path(), 0);
    zero(&seg, PAGE, PAGE);
    let e = verify_partition(dir.path()).unwrap_err();
    assert!(
        matches!(e, LogError::Corrupt { ref file, .. } if *file == seg),
        "{e}"
    );
    let (mut p, _) = open(dir.path(), &cfg).unwrap();
    let e = p.read(0, usize::MAX).unwrap_err();
    assert!(
        matches!(e, LogError::Corrupt { ref file, .. } if *file == seg),
        "{e}"
    );
}

/// A complete frame with a valid CRC and offset `u64::MAX`.
fn max_offset_frame() -> Vec<u8> {
    let mut buf = Vec::new();
    encode_into(&mut buf, u64::MAX, 0, b"evil", Some(b"x"));
    buf
}

/// Issue 11 #8: a frame with offset `u64::MAX` made `topic list` / `consume` / `run` panic
/// (`offset + 1`) while `verify` said ok. It is an invalid frame for every reader: at the
/// unsynced tail a torn tail, everywhere else corruption; nobody panics, all agree.
#[test]
fn frame_with_offset_u64_max_is_rejected_by_every_reader_without_panicking() {
    // At the tail, after the last sync marker.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, true);
    let (mut p, _) = open(dir.path(), &cfg).unwrap();
    append(&mut p, 0, 5);
    p.sync().unwrap();
    drop(p);
    let seg = segment(dir.path(), 0);
    let mut bytes = fs::read(&seg).unwrap();
    let good = bytes.len() as u64;
    bytes.extend_from_slice(&max_offset_frame());
    fs::write(&seg, &bytes).unwrap();

    assert_eq!(partition_info(dir.path(), 0).unwrap().end_offset, 5);
    let v = verify_partition(dir.path()).unwrap();
    assert_eq!(v.last_offset, Some(4));
    let torn = v.torn_tail.expect("verify reports the frame");
    assert_eq!(torn.position, good);
    assert!(torn.reason.contains("leaves no room"), "{}", torn.reason);
    let mut r = PartitionReader::open(dir.path(), 0).unwrap();
    let e = r.read(usize::MAX).unwrap_err();
    assert!(
        matches!(e, LogError::Corrupt { position, .. } if position == good),
        "{e}"
    );
    let (mut p, report) = open(dir.path(), &cfg).unwrap();
    assert_eq!(report.torn_tail.unwrap().position, good);
    assert_eq!(p.end_offset(), 5);
    assert_eq!(p.read(0, usize::MAX).unwrap().len(), 5);
    drop(p);

    // In the middle of synced data: corruption for everyone.
    let dir = tempfile::tempdir().unwrap();
    let seg = segment(dir.path(), 0);
    let mut bytes = Vec::new();
    for i in 0..3u64 {
        encode_into(&mut bytes, i, 0, b"k", Some(b"v"));
    }
    let at = bytes.len() as u64;
    bytes.extend_from_slice(&max_offset_frame());
    encode_into(&mut bytes, 3, 0, b"k", Some(b"v"));
    let synced_len = bytes.len() as u64; // everything before the marker was fsynced
    gregor::log::record::encode_sync_marker(
        &mut bytes,
        gregor::log::SyncMarker {
            end_offset: 4,
            synced_len,
        },
    );
    fs::write(&seg, &bytes).unwrap();
    for e in [
        partition_info(dir.path(), 0).unwrap_err(),
        verify_partition(dir.path()).unwrap_err(),
        open(dir.path(), &cfg).err().unwrap(),
        Partition::open_read_only(dir.path(), cfg.clone())
            .err()
            .unwrap(),
    ] {
        assert!(
            matches!(e, LogError::Corrupt { position, .. } if position == at),
            "{e}"
        );
    }
}

/// A segment named `u64::MAX`: the end offset leaves no room for a record; `append` is an
/// error instead of an overflow.
#[test]
fn appending_at_offset_u64_max_is_an_error_not_an_overflow() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(segment(dir.path(), u64::MAX), b"").unwrap();
    let cfg = config(1 << 20, true);
    let (mut p, _) = open(dir.path(), &cfg).unwrap();
    assert_eq!(p.end_offset(), u64::MAX);
    let e = p.append(0, b"k", Some(b"v")).unwrap_err();
    assert!(e.to_string().contains("exhausted"), "{e}");
}

fn write_three_segments(dir: &Path) -> (TopicConfig, u64) {
    let cfg = config(2 * PAGE as u64, true);
    let (mut p, _) = open(dir, &cfg).unwrap();
    append(&mut p, 0, 200);
    p.sync().unwrap();
    assert!(p.segment_bases().len() >= 3);
    (cfg, p.end_offset())
}

/// Issue 11 (bad input): an empty or garbage file named like a newer segment was cut to zero
/// bytes and the offsets jumped to its name. It is an error naming the file, and the file
/// is left alone.
#[test]
fn stray_file_named_like_a_newer_segment_is_an_error_naming_it() {
    let stray_contents: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", (0..300u32).map(|i| (i * 7 + 3) as u8).collect()),
        ("zeros", vec![0; 100]),
        ("a copy of segment 0", Vec::new()),
    ];
    for (what, contents) in stray_contents {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, end) = write_three_segments(dir.path());
        let stray = segment(dir.path(), 99_999);
        let contents = if what.starts_with("a copy") {
            fs::read(segment(dir.path(), 0)).unwrap()
        } else {
            contents
        };
        fs::write(&stray, &contents).unwrap();
        let check = |e: LogError, how: &str| match e {
            LogError::Corrupt { ref file, .. } => {
                assert_eq!(file, &stray, "{what} / {how}: {e}")
            }
            other => panic!("{what} / {how}: expected Corrupt naming the stray file, got {other}"),
        };
        check(open(dir.path(), &cfg).err().expect("open refuses"), "open");
        check(partition_info(dir.path(), 0).unwrap_err(), "partition_info");
        check(verify_partition(dir.path()).unwrap_err(), "verify");
        check(
            Partition::open_read_only(dir.path(), cfg.clone())
                .err()
                .unwrap(),
            "read-only open",
        );
        assert_eq!(fs::read(&stray).unwrap(), contents, "{what}: not cut");
        // Removing it brings the log back.
        fs::remove_file(&stray).unwrap();
        let (p, _) = open(dir.path(), &cfg).unwrap();
        assert_eq!(p.end_offset(), end, "{what}");
    }
}

/// What a real roll leaves after a crash before the first record reached the disk — an
/// empty (or torn) segment whose name is exactly where the previous one ends — still opens.
#[test]
fn empty_or_torn_segment_at_the_end_of_the_previous_one_is_legitimate() {
    for contents in [&b""[..], &[0u8; 20][..], &[0xFFu8; 40][..]] {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, end) = write_three_segments(dir.path());
        fs::write(segment(dir.path(), end), contents).unwrap();
        let (mut p, report) = open(dir.path(), &cfg).unwrap();
        assert_eq!(p.end_offset(), end);
        // Zeros (space preallocated before the crash, or pages that never reached the
        // disk) are the end of the log, not a torn tail.
        assert_eq!(report.torn_tail.is_some(), contents.iter().any(|&b| b != 0));
        assert_eq!(p.active_segment_base(), end);
        assert_eq!(p.append(0, b"k", None).unwrap(), end);
        let all: Vec<Record> = p.read(0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, end + 1);
    }
}
