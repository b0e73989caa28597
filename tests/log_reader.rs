//! Sequential reads across segments, tailing, truncation, range errors.

use std::path::Path;
use std::sync::Arc;

use gregor::log::{LogError, NoHooks, Partition, PartitionReader, Record, TopicConfig};

fn open(dir: &Path, segment_bytes: u64) -> Partition {
    let config = TopicConfig {
        segment_bytes,
        ..TopicConfig::compacted()
    };
    Partition::open(dir, config, Arc::new(NoHooks)).unwrap().0
}

fn fill(p: &mut Partition, n: u64) -> Vec<Record> {
    (0..n)
        .map(|_| {
            let i = p.end_offset();
            let key = format!("key{}", i % 17).into_bytes();
            let value = Some(format!("value {i} {}", "#".repeat((i % 13) as usize)).into_bytes());
            let offset = p.append(i as i64, &key, value.as_deref()).unwrap();
            Record {
                offset,
                timestamp: i as i64,
                key,
                value,
            }
        })
        .collect()
}

#[test]
fn batches_cross_segments_from_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 500);
    let recs = fill(&mut p, 300);
    assert!(p.segment_bases().len() > 10);
    for from in (0..=300).step_by(7) {
        let mut r = p.reader(from).unwrap();
        let mut got = Vec::new();
        loop {
            let batch = r.next_batch(13).unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend_from_slice(batch);
        }
        assert_eq!(got, recs[from as usize..].to_vec(), "from {from}");
        assert_eq!(r.next_offset(), 300);
    }
}

#[test]
fn big_segment_reads_use_the_sparse_index_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 64 << 20);
    let recs = fill(&mut p, 30_000);
    p.sync().unwrap();
    drop(p);
    // Fresh open: the active segment's index comes from the open scan.
    let mut p = open(dir.path(), 64 << 20);
    for from in [0u64, 1, 4_999, 17_000, 29_999, 30_000] {
        for _ in 0..2 {
            let got = p.read(from, 10).unwrap();
            let want: Vec<Record> = recs.iter().skip(from as usize).take(10).cloned().collect();
            assert_eq!(got, want, "from {from}");
        }
    }
}

#[test]
fn closed_segment_index_is_built_lazily_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 1 << 20);
    let recs = fill(&mut p, 40_000);
    p.sync().unwrap();
    drop(p);
    let mut p = open(dir.path(), 1 << 20);
    assert!(p.segment_bases().len() >= 2);
    for from in [20_000u64, 100, 19_999, 20_001, 5, 39_999] {
        let got = p.read(from, 3).unwrap();
        let want: Vec<Record> = recs.iter().skip(from as usize).take(3).cloned().collect();
        assert_eq!(got, want, "from {from}");
    }
}

#[test]
fn reader_tails_a_live_partition() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 400);
    let first = fill(&mut p, 5);
    let mut r = p.reader(0).unwrap();
    assert_eq!(r.read(100).unwrap(), first);
    assert!(r.next_batch(10).unwrap().is_empty());
    // Unflushed appends are invisible; flushed ones (across rolls) appear.
    let more = fill(&mut p, 50);
    p.flush_to_os().unwrap();
    assert_eq!(r.read(1000).unwrap(), more);
    // A standalone reader (no Partition) sees the same.
    let mut standalone = PartitionReader::open(dir.path(), 3).unwrap();
    let all: Vec<Record> = first.iter().chain(&more).skip(3).cloned().collect();
    assert_eq!(standalone.read(1000).unwrap(), all);
}

#[test]
fn truncate_in_closed_segment_active_segment_and_start() {
    for to in [0u64, 1, 37, 100, 149, 150] {
        let dir = tempfile::tempdir().unwrap();
        let mut p = open(dir.path(), 600);
        let recs = fill(&mut p, 150);
        p.sync().unwrap();
        p.truncate(to).unwrap();
        assert_eq!(p.end_offset(), to);
        assert_eq!(p.read(0, usize::MAX).unwrap(), recs[..to as usize].to_vec());
        drop(p);
        let mut p = open(dir.path(), 600);
        assert_eq!(p.end_offset(), to, "durable across reopen");
        assert_eq!(p.start_offset(), 0);
        assert_eq!(p.append(0, b"x", Some(b"y")).unwrap(), to);
        assert_eq!(p.read(0, usize::MAX).unwrap().len() as u64, to + 1);
    }
}

#[test]
fn truncate_into_a_compaction_gap_keeps_the_end_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 300);
    // Same key everywhere: compaction empties all closed segments but the newest record.
    for i in 0..60 {
        p.append(i, b"k", Some(b"some value")).unwrap();
    }
    p.compact(0).unwrap();
    let survivors: Vec<u64> = p
        .read(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert!(survivors[0] >= p.active_segment_base());
    let to = 20; // inside an emptied closed segment
    assert!(to < p.active_segment_base());
    p.truncate(to).unwrap();
    assert_eq!(p.end_offset(), to);
    drop(p);
    let mut p = open(dir.path(), 300);
    assert_eq!(p.end_offset(), to);
    assert_eq!(p.append(1, b"k", None).unwrap(), to);
    assert_eq!(p.read(0, usize::MAX).unwrap().len(), 1);
}

#[test]
fn range_and_size_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 1 << 20);
    fill(&mut p, 10);
    assert!(matches!(
        p.read(11, 1),
        Err(LogError::OffsetOutOfRange {
            offset: 11,
            end: 10,
            ..
        })
    ));
    assert!(matches!(
        p.truncate(11),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(p.read(10, 5).unwrap().is_empty());
    let huge = vec![0u8; (64 << 20) + 1];
    let e = p.append(0, b"k", Some(&huge)).unwrap_err();
    assert!(matches!(e, LogError::RecordTooLarge { .. }), "{e}");
    // The partition is still usable after a rejected record.
    assert_eq!(p.append(0, b"k", Some(b"v")).unwrap(), 10);
}

#[test]
fn large_records_roll_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 1 << 20);
    let big = vec![7u8; 3 << 20]; // bigger than a segment and than the read chunk
    p.append(1, b"big", Some(&big)).unwrap();
    p.append(2, b"small", Some(b"s")).unwrap();
    p.append(3, b"big2", Some(&big)).unwrap();
    p.sync().unwrap();
    drop(p);
    let mut p = open(dir.path(), 1 << 20);
    let got = p.read(0, 10).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].value.as_deref(), Some(&big[..]));
    assert_eq!(got[2].value.as_deref(), Some(&big[..]));
}

#[test]
fn concurrent_reader_during_appends_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 2000);
    // Readers of a partition a writer has open share it (how far the writer has written the
    // active segment: the rest is preallocated zeros); `reopen` keeps that.
    let first = p.reader(0).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let tailer = std::thread::spawn(move || {
        let mut seen = 0u64;
        let mut last: Option<u64> = None;
        loop {
            // Read once more after the writer is done, so the last round sees everything.
            let finished = done2.load(std::sync::atomic::Ordering::SeqCst);
            // A fresh reader each round (no index entries, no buffer); offsets must rise.
            let mut r = first.reopen(last.map_or(0, |o| o + 1)).unwrap();
            loop {
                let batch = r.next_batch(100).unwrap();
                if batch.is_empty() {
                    break;
                }
                for rec in batch {
                    assert!(last.is_none_or(|l| rec.offset > l), "offsets rise");
                    last = Some(rec.offset);
                    seen += 1;
                }
            }
            if finished {
                return (seen, last);
            }
        }
    });
    for round in 0..50 {
        fill(&mut p, 100);
        p.flush_to_os().unwrap();
        if round % 5 == 4 {
            p.compact(0).unwrap();
        }
    }
    // Readers through the partition share its index while it compacts.
    for from in [0, 1000, 2500, 4999] {
        let got = p.read(from, 5).unwrap();
        assert!(got.iter().all(|r| r.offset >= from));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, last) = tailer.join().unwrap();
    assert!(seen > 0);
    assert_eq!(last, Some(4999));
}

/// A reader can see an append half written (the file's length grows page by page while the
/// writer copies a batch in): it stops before the partial frame, and reads it once the write
/// is complete. (It used to stop there for good: a `gregor serve` task stopped applying
/// writes under sustained concurrent load.)
#[test]
fn reader_reads_on_after_seeing_a_half_written_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 64 << 20);
    let first = fill(&mut p, 3);
    p.sync().unwrap();
    let seg = dir.path().join(format!("{:020}.log", 0));
    // (The file is longer: zeros preallocated after the frames.)
    let synced = p.size_bytes();
    let second = fill(&mut p, 2);
    p.sync().unwrap();
    drop(p);
    let full = std::fs::read(&seg).unwrap();
    // Cut inside the next frame's header, then inside its payload.
    for cut in [synced + 3, synced + 20] {
        std::fs::write(&seg, &full[..cut as usize]).unwrap();
        let mut r = PartitionReader::open(dir.path(), 0).unwrap();
        assert_eq!(r.read(100).unwrap(), first, "cut at {cut}");
        assert!(r.read(100).unwrap().is_empty(), "cut at {cut}");
        std::fs::write(&seg, &full).unwrap();
        assert_eq!(
            r.read(100).unwrap(),
            second,
            "cut at {cut}: the rest once written"
        );
    }
}

/// Reads everything left in `r`, `step` records at a time.
fn read_rest(r: &mut PartitionReader, step: usize) -> Vec<Record> {
    let mut got = Vec::new();
    loop {
        let batch = r.next_batch(step).unwrap();
        if batch.is_empty() {
            return got;
        }
        got.extend_from_slice(batch);
    }
}

/// `rewind` goes back to any record of the last batch (also after an empty read at the end,
/// across a segment roll, and past the read buffer), then reads exactly what a fresh reader
/// would from there; an offset outside the last batch is refused and changes nothing.
#[test]
fn rewind_goes_back_within_the_last_batch_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = open(dir.path(), 64 << 20);
    let mut recs = fill(&mut p, 100);
    p.flush_to_os().unwrap();
    let mut r = p.reader(0).unwrap();
    assert_eq!(r.next_batch(30).unwrap().len(), 30);
    let batch: Vec<u64> = r.next_batch(30).unwrap().iter().map(|x| x.offset).collect();
    assert_eq!(batch, (30..60).collect::<Vec<_>>());
    // Not in the last batch: refused, nothing moves.
    for o in [0, 29, 60, 1000] {
        assert!(!r.rewind(o), "{o}");
        assert_eq!(r.next_offset(), 60);
    }
    for o in [59, 45, 30] {
        let mut r = p.reader(0).unwrap();
        assert_eq!(r.next_batch(30).unwrap().len(), 30);
        assert_eq!(r.next_batch(30).unwrap().len(), 30);
        assert!(r.rewind(o), "{o}");
        assert_eq!(r.next_offset(), o);
        let again = r.next_batch(30).unwrap().to_vec();
        assert_eq!(again, recs[o as usize..o as usize + 30].to_vec(), "{o}");
    }
    // At the end of the log: an empty read keeps the last batch; records appended after the
    // rewind are read on.
    assert_eq!(read_rest(&mut r, 1000), recs[60..].to_vec());
    assert!(r.next_batch(10).unwrap().is_empty());
    assert!(r.rewind(70));
    recs.extend(fill(&mut p, 20));
    p.flush_to_os().unwrap();
    assert_eq!(read_rest(&mut r, 7), recs[70..].to_vec());

    // Records far apart in a big segment (the frames behind the read buffer): read again.
    let big = tempfile::tempdir().unwrap();
    let mut q = open(big.path(), 64 << 20);
    let value = vec![b'x'; 200 << 10];
    for i in 0..20u64 {
        q.append(i as i64, format!("k{i}").as_bytes(), Some(&value))
            .unwrap();
    }
    q.flush_to_os().unwrap();
    let mut r = q.reader(0).unwrap();
    let first: Vec<Record> = r.next_batch(20).unwrap().to_vec();
    assert_eq!(first.len(), 20);
    assert!(r.rewind(1));
    assert_eq!(read_rest(&mut r, 3), first[1..].to_vec());

    // A roll between: the last batch's records of the earlier segment are not rewound to.
    let rolled = tempfile::tempdir().unwrap();
    let mut s = open(rolled.path(), 500);
    let recs = fill(&mut s, 60);
    assert!(s.segment_bases().len() > 2);
    let mut r = s.reader(0).unwrap();
    let got = r.next_batch(60).unwrap().to_vec();
    assert_eq!(got, recs);
    let last_base = *s.segment_bases().last().unwrap();
    assert!(!r.rewind(last_base - 1), "a record of an earlier segment");
    assert!(r.rewind(last_base));
    assert_eq!(read_rest(&mut r, 5), recs[last_base as usize..].to_vec());
}
