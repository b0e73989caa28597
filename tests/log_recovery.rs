//! Recovery on open: torn tails are cut exactly, corruption anywhere else is an error that
//! names the file and position.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gregor::log::{LogError, NoHooks, Partition, Record, TopicConfig};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn config(segment_bytes: u64) -> TopicConfig {
    TopicConfig {
        segment_bytes,
        ..TopicConfig::default()
    }
}

fn open(
    dir: &Path,
    segment_bytes: u64,
) -> Result<(Partition, gregor::log::RecoveryReport), LogError> {
    Partition::open(dir, config(segment_bytes), Arc::new(NoHooks))
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Writes `n` records and returns them plus the frame boundaries of the last segment.
fn write_log(dir: &Path, n: u64, segment_bytes: u64) -> Vec<Record> {
    let (mut p, _) = open(dir, segment_bytes).unwrap();
    let mut recs = Vec::new();
    for i in 0..n {
        let key = format!("key-{i}").into_bytes();
        let value = if i % 5 == 3 {
            None
        } else {
            Some(format!("value-{i}-{}", "x".repeat(i as usize % 7)).into_bytes())
        };
        let off = p.append(1000 + i as i64, &key, value.as_deref()).unwrap();
        assert_eq!(off, i);
        recs.push(Record {
            offset: off,
            timestamp: 1000 + i as i64,
            key,
            value,
        });
    }
    p.sync().unwrap();
    recs
}

fn read_all(p: &mut Partition) -> Vec<Record> {
    let start = p.start_offset();
    p.read(start, usize::MAX).unwrap()
}

/// Frames of a segment file (via the public decoder): `(start, end, is_record)`; the
/// others are sync markers.
fn frames(bytes: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut pos = 0;
    let mut out = Vec::new();
    let mut slot = Record::default();
    while pos < bytes.len() {
        let (kind, n) = gregor::log::record::decode_frame(&bytes[pos..], &mut slot).unwrap();
        out.push((pos, pos + n, kind == gregor::log::record::FrameKind::Record));
        pos += n;
    }
    out
}

/// Start positions of the record frames of a segment file.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    frames(bytes)
        .into_iter()
        .filter(|f| f.2)
        .map(|f| f.0)
        .collect()
}

fn check_torn_tails(segment_bytes: u64, n: u64) {
    let template = tempfile::tempdir().unwrap();
    let recs = write_log(template.path(), n, segment_bytes);
    let files = segment_files(template.path());
    let last = files.last().unwrap().clone();
    let last_name = last.file_name().unwrap().to_owned();
    let original = fs::read(&last).unwrap();
    let all_frames = frames(&original);
    let starts = frame_starts(&original);
    assert!(starts.len() >= 2, "need two records in the last segment");
    assert!(
        !all_frames.last().unwrap().2,
        "the final sync left a sync marker at the end"
    );
    let in_last = starts.len() as u64;
    let first_in_last = n - in_last;
    let mut rng = StdRng::seed_from_u64(segment_bytes);
    // Every cut position inside the last two records and the sync marker after them, with
    // and without garbage after it. (The cut removes the marker, the only proof that those
    // records were fsynced, so damage there is a torn tail.)
    let from = starts[starts.len() - 2];
    for cut in from..=original.len() {
        for garbage_len in [0usize, 1, 7, 50] {
            if cut == original.len() && garbage_len == 0 {
                continue;
            }
            let work = tempfile::tempdir().unwrap();
            for f in &files {
                fs::copy(f, work.path().join(f.file_name().unwrap())).unwrap();
            }
            let mut bytes = original[..cut].to_vec();
            bytes.extend((0..garbage_len).map(|_| rng.r#gen::<u8>()));
            fs::write(work.path().join(&last_name), &bytes).unwrap();

            // Records complete in the prefix, and where the first incomplete frame starts.
            let complete = all_frames.iter().filter(|f| f.2 && f.1 <= cut).count();
            let boundary = all_frames
                .iter()
                .map(|f| f.1)
                .filter(|&e| e <= cut)
                .max()
                .unwrap_or(0);
            let expect_end = first_in_last + complete as u64;

            let (mut p, report) = open(work.path(), segment_bytes)
                .unwrap_or_else(|e| panic!("cut {cut} garbage {garbage_len}: {e}"));
            if bytes.len() > boundary {
                let torn = report.torn_tail.clone().expect("torn tail reported");
                assert_eq!(
                    torn.position as usize, boundary,
                    "cut {cut} garbage {garbage_len}"
                );
                assert_eq!(torn.bytes_cut as usize, bytes.len() - boundary);
                assert_eq!(torn.last_good_offset, expect_end.checked_sub(1));
            } else {
                assert_eq!(report.torn_tail, None, "cut {cut} garbage {garbage_len}");
            }
            assert_eq!(
                p.end_offset(),
                expect_end,
                "cut {cut} garbage {garbage_len}"
            );
            assert_eq!(
                fs::metadata(work.path().join(&last_name)).unwrap().len() as usize,
                boundary
            );
            assert_eq!(read_all(&mut p), recs[..expect_end as usize].to_vec());
            // Appending afterwards continues the offsets.
            assert_eq!(p.append(5, b"new", Some(b"v")).unwrap(), expect_end);
            assert_eq!(p.append(6, b"new2", None).unwrap(), expect_end + 1);
            p.sync().unwrap();
            drop(p);
            let (mut p, report) = open(work.path(), segment_bytes).unwrap();
            assert!(report.torn_tail.is_none());
            let all = read_all(&mut p);
            assert_eq!(all.len() as u64, expect_end + 2);
            assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as u64));
        }
    }
}

#[test]
fn torn_tail_single_segment_every_cut_position() {
    check_torn_tails(1 << 20, 20);
}

#[test]
fn torn_tail_in_last_of_several_segments() {
    check_torn_tails(200, 23);
}

#[test]
fn clean_reopen_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let recs = write_log(dir.path(), 50, 300);
    let (mut p, report) = open(dir.path(), 300).unwrap();
    assert!(report.torn_tail.is_none());
    assert!(report.segments > 3);
    assert_eq!(report.end_offset, 50);
    assert_eq!(read_all(&mut p), recs);
}

fn flip(path: &Path, pos: usize) {
    let mut b = fs::read(path).unwrap();
    b[pos] ^= 0x40;
    fs::write(path, b).unwrap();
}

#[test]
fn flipped_byte_in_middle_of_active_segment_fails_open_naming_file_and_position() {
    let template = tempfile::tempdir().unwrap();
    write_log(template.path(), 10, 1 << 20);
    let seg = segment_files(template.path()).pop().unwrap();
    let original = fs::read(&seg).unwrap();
    let starts = frame_starts(&original);
    // Every byte of record 4 (records after it are intact, so this is not a tail).
    for pos in starts[4]..starts[5] {
        let work = tempfile::tempdir().unwrap();
        let target = work.path().join(seg.file_name().unwrap());
        fs::write(&target, &original).unwrap();
        flip(&target, pos);
        let err = match open(work.path(), 1 << 20) {
            Err(e) => e,
            Ok(_) => panic!("flip at {pos} was not detected"),
        };
        match &err {
            LogError::Corrupt {
                file,
                position,
                last_good_offset,
                ..
            } => {
                assert_eq!(file, &target);
                assert_eq!(*position as usize, starts[4], "flip at {pos}");
                assert_eq!(*last_good_offset, Some(3));
            }
            other => panic!("flip at {pos}: expected Corrupt, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("00000000000000000000.log"), "{msg}");
        assert!(msg.contains(&format!("position {}", starts[4])), "{msg}");
        // The file was not modified.
        let mut expect = original.clone();
        expect[pos] ^= 0x40;
        assert_eq!(fs::read(&target).unwrap(), expect);
    }
}

#[test]
fn flipped_byte_in_closed_segment_is_corrupt_on_read() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 40, 300);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    // Flip inside the LAST record of the first (closed) segment: never a "tail".
    let bytes = fs::read(&files[0]).unwrap();
    let starts = frame_starts(&bytes);
    let pos = *starts.last().unwrap() + 20;
    flip(&files[0], pos);
    let (mut p, report) = open(dir.path(), 300).unwrap();
    assert!(report.torn_tail.is_none());
    let err = p.read(0, usize::MAX).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LogError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&files[0].display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("position {}", starts.last().unwrap())),
        "{msg}"
    );
    // Reading from a later segment still works.
    let second_base: u64 = files[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let recs = p.read(second_base, usize::MAX).unwrap();
    assert_eq!(recs.first().unwrap().offset, second_base);
    assert_eq!(recs.last().unwrap().offset, 39);
    // verify finds it too.
    let err = gregor::log::verify_partition(dir.path()).unwrap_err();
    assert!(err.to_string().contains(&files[0].display().to_string()));
}

#[test]
fn truncated_closed_segment_is_corrupt_not_torn() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 40, 300);
    let files = segment_files(dir.path());
    let len = fs::metadata(&files[0]).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (mut p, _) = open(dir.path(), 300).unwrap();
    let err = p.read(0, usize::MAX).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
}

#[test]
fn huge_length_fields_at_tail_are_torn() {
    for claimed in [u32::MAX, 60 << 20, (64 << 20) + 1, 1 << 31] {
        let dir = tempfile::tempdir().unwrap();
        let recs = write_log(dir.path(), 5, 1 << 20);
        let seg = segment_files(dir.path()).pop().unwrap();
        let good = fs::metadata(&seg).unwrap().len();
        let mut b = fs::read(&seg).unwrap();
        b.extend_from_slice(&claimed.to_le_bytes());
        b.extend_from_slice(&[0u8; 4]);
        b.extend_from_slice(&[0x11; 64]);
        fs::write(&seg, b).unwrap();
        let (mut p, report) = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.torn_tail.unwrap().position, good);
        assert_eq!(read_all(&mut p), recs);
    }
}

#[test]
fn leftover_compaction_temp_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, 1 << 20);
    let tmp = dir.path().join("00000000000000000000.log.compacting");
    fs::write(&tmp, b"partial").unwrap();
    let (_, report) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.removed_temp_files, vec![tmp.clone()]);
    assert!(!tmp.exists());
}
