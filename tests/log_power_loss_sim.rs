//! Simulated power loss. The I/O hooks see every fsync before it happens, so a recorder
//! knows exactly what each fsync made durable: a file's bytes at its fsync, a directory's
//! entries at its fsync. A crash image keeps that, plus an arbitrary subset of what was
//! never fsynced: each unsynced 4 KiB page is kept, zeroed or lost, the file length lands
//! anywhere between the durable and the current one, and directory entries created or
//! removed since the directory's last fsync may or may not be there.
//!
//! Over random workloads (appends, flushes, syncs, rolls, truncations) and many crash
//! images: reopening never fails, every record a `sync` (or `truncate`) returned as durable
//! is there, and what follows is a prefix of what was appended — nothing else.
//! `GREGOR_POWER_LOSS_TRIALS` sets the number of crash images (default 1000).
//!
//! The same with syncs split into their three steps (`start_sync`, `SyncTicket::fsync`,
//! `finish_sync`) with other operations in between, up to two syncs in flight at once: the
//! records appended (and written) while a sync is in flight are not covered by it, its sync
//! marker lands after them, and a roll or truncation may come between the steps.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gregor::log::{
    FsyncedTicket, IoHooks, LogError, NoHooks, Partition, Record, SyncTicket, TRUNCATE_INTENT_FILE,
    TopicConfig,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[path = "support/crash_image.rs"]
mod crash_image;

#[derive(Default)]
struct Durable {
    /// File name -> bytes made durable by its last fsync.
    files: BTreeMap<String, Vec<u8>>,
    /// Entries of the directory at its last fsync (`None`: never fsynced).
    entries: Option<BTreeSet<String>>,
}

/// Records what every fsync of the partition directory and its files makes durable.
struct Recorder {
    dir: PathBuf,
    state: Mutex<Durable>,
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

impl IoHooks for Recorder {
    fn before_write(&self, path: &Path) -> io::Result<()> {
        // A file created anew (a segment name reused after a truncation deleted it) starts
        // empty: nothing of the deleted file's fsynced bytes belongs to it.
        if path.parent() == Some(self.dir.as_path()) && !path.exists() {
            self.state.lock().unwrap().files.remove(&name(path));
        }
        // The intent file is published by renaming its fsynced temp file.
        if path.parent() == Some(self.dir.as_path()) && name(path) == TRUNCATE_INTENT_FILE {
            let mut s = self.state.lock().unwrap();
            let tmp = s.files.get(&format!("{TRUNCATE_INTENT_FILE}.tmp")).cloned();
            if let Some(bytes) = tmp {
                s.files.insert(TRUNCATE_INTENT_FILE.to_string(), bytes);
            }
        }
        Ok(())
    }
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if path == self.dir {
            s.entries = Some(
                fs::read_dir(path)?
                    .map(|e| name(&e.unwrap().path()))
                    .collect(),
            );
        } else if path.parent() == Some(self.dir.as_path()) {
            match fs::read(path) {
                Ok(bytes) => {
                    s.files.insert(name(path), bytes);
                }
                // A sync in flight fsyncs a segment a truncation has deleted since: nothing
                // of it remains. (Had a later roll reused its name, this would record the new
                // file as fsynced: more durable than it is, which can only hide a loss.)
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Builds a crash image of `dir` in `out`.
fn crash_image(dir: &Path, durable: &Durable, out: &Path, rng: &mut StdRng) {
    let entries = durable.entries.clone().unwrap_or_default();
    crash_image::dir_image(dir, out, &|n| durable.files.get(n).cloned(), &entries, rng);
}

fn cfg(preallocate: bool) -> TopicConfig {
    TopicConfig {
        segment_bytes: 3000,
        preallocate,
        ..TopicConfig::compacted()
    }
}

fn rec(i: u64, salt: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let key = format!("k{}", (i * 7 + salt) % 23).into_bytes();
    let value = (i % 9 != 4)
        .then(|| format!("v{i}-{salt}-{}", "z".repeat(((i + salt) % 90) as usize)).into_bytes());
    (key, value)
}

/// A sync in flight: started, or fsynced and waiting to finish; `truncated` once a
/// truncation removed records after it started (its finish must then fail).
enum InFlight {
    Started(SyncTicket, bool),
    Fsynced(FsyncedTicket, bool),
}

#[test]
fn power_loss_keeps_every_synced_record_and_only_a_prefix_of_the_rest() {
    simulate(false, false);
}

/// The same with segments preallocated ahead of their appends: the unsynced appends were
/// written over zeros that were (or were not) fsynced, so a lost page leaves zeros or the
/// zeros' old content in the middle of the file length, not only at its end.
#[test]
fn power_loss_in_preallocated_segments_keeps_every_synced_record_and_a_prefix() {
    simulate(false, true);
}

#[test]
fn power_loss_with_syncs_in_flight_keeps_what_each_finished_sync_covered() {
    simulate(true, true);
}

/// With `split`, syncs go through their three steps with other operations in between; with
/// `preallocate`, segments are preallocated (`TopicConfig::preallocate`).
fn simulate(split: bool, preallocate: bool) {
    let trials: u64 = std::env::var("GREGOR_POWER_LOSS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let shm = Path::new("/dev/shm");
    let tmp_root = if shm.is_dir() { shm } else { Path::new("/tmp") };
    let mut images = 0u64;
    let mut torn = 0u64;
    let mut beyond_synced = 0u64;
    let mut lost = 0u64;
    let mut seed = 0u64;
    while images < trials {
        seed += 1;
        let mut rng = StdRng::seed_from_u64(seed);
        let work = tempfile::tempdir_in(tmp_root).unwrap();
        let dir = work.path().join("p");
        let recorder = Arc::new(Recorder {
            dir: dir.clone(),
            state: Mutex::new(Durable::default()),
        });
        let (mut p, _) = Partition::open(&dir, cfg(preallocate), recorder.clone()).unwrap();
        // The model: every record appended (in offset order) and how many are durable.
        let mut model: Vec<Record> = Vec::new();
        let mut synced = 0u64;
        let ops = rng.gen_range(1..40);
        let mut trace = Vec::new();
        let mut in_flight: Vec<InFlight> = Vec::new();
        for _ in 0..ops {
            let op = rng.gen_range(0..10);
            trace.push(format!("{op}@{}", p.end_offset()));
            match op {
                0..=4 => {
                    for _ in 0..rng.gen_range(1..15) {
                        let i = model.len() as u64;
                        let (key, value) = rec(i, seed);
                        let off = p.append(i as i64, &key, value.as_deref()).unwrap();
                        assert_eq!(off, i);
                        model.push(Record {
                            offset: off,
                            timestamp: i as i64,
                            key,
                            value,
                        });
                    }
                }
                5 | 6 => p.flush_to_os().unwrap(),
                7 | 8 if !split => synced = p.sync().unwrap(),
                7 if in_flight.len() < 2 => {
                    in_flight.push(InFlight::Started(p.start_sync().unwrap(), false));
                }
                7 | 8 if !in_flight.is_empty() => {
                    let i = rng.gen_range(0..in_flight.len());
                    match in_flight.remove(i) {
                        InFlight::Started(t, truncated) => {
                            in_flight.insert(i, InFlight::Fsynced(t.fsync(), truncated));
                        }
                        InFlight::Fsynced(t, truncated) => {
                            let end = t.end_offset();
                            match p.finish_sync(t) {
                                Ok(e) => {
                                    assert!(!truncated, "seed {seed}: {trace:?}");
                                    assert_eq!(e, end);
                                    synced = synced.max(end);
                                }
                                Err(LogError::InvalidArgument(_)) if truncated => {}
                                Err(e) => panic!("seed {seed}: {trace:?}: {e}"),
                            }
                        }
                    }
                }
                7 | 8 => synced = p.sync().unwrap(),
                _ => {
                    let to = rng.gen_range(p.start_offset()..=p.end_offset());
                    // Removing records makes the new end durable; truncating to the end
                    // is a no-op (it fsyncs nothing).
                    synced = if to < p.end_offset() {
                        to
                    } else {
                        synced.min(to)
                    };
                    if to < p.end_offset() {
                        for f in &mut in_flight {
                            let (InFlight::Started(_, t) | InFlight::Fsynced(_, t)) = f;
                            *t = true;
                        }
                    }
                    p.truncate(to).unwrap();
                    model.truncate(to as usize);
                }
            }
        }
        // Power loss now: no Drop, nothing more reaches the disk.
        let durable = std::mem::take(&mut *recorder.state.lock().unwrap());
        std::mem::forget(p);
        drop(in_flight);
        for _ in 0..5 {
            let img_dir = tempfile::tempdir_in(tmp_root).unwrap();
            crash_image(&dir, &durable, img_dir.path(), &mut rng);
            images += 1;
            let listing: Vec<String> = fs::read_dir(img_dir.path())
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    format!("{}:{}", name(&e.path()), e.metadata().unwrap().len())
                })
                .collect();
            let ctx = format!(
                "seed {seed}, image {images}, {synced} synced of {}; ops {trace:?}; image {listing:?}",
                model.len()
            );
            let (mut q, report) =
                Partition::open(img_dir.path(), cfg(preallocate), Arc::new(NoHooks))
                    .unwrap_or_else(|e| panic!("{ctx}: reopen after power loss failed: {e}"));
            torn += u64::from(report.torn_tail.is_some());
            let end = q.end_offset();
            assert!(end >= synced, "{ctx}: lost synced records (end {end})");
            assert!(
                end <= model.len() as u64,
                "{ctx}: end {end} beyond what was appended"
            );
            beyond_synced += u64::from(end > synced);
            lost += u64::from(end < model.len() as u64);
            let got = q
                .read(q.start_offset(), usize::MAX)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(got, model[..end as usize].to_vec(), "{ctx}: not a prefix");
            // And the log goes on from there.
            assert_eq!(q.append(0, b"after", None).unwrap(), end, "{ctx}");
            q.sync().unwrap();
        }
    }
    eprintln!(
        "{images} crash images: {torn} with a torn tail, {lost} lost unsynced records, \
         {beyond_synced} kept unsynced records"
    );
    // Preallocated, most lost appends leave zeros (the end of the log, no torn tail).
    let min_torn = if preallocate {
        images / 100
    } else {
        images / 20
    };
    assert!(torn > min_torn, "the images exercise torn tails ({torn})");
    assert!(
        lost > images / 10,
        "the images exercise lost appends ({lost})"
    );
    assert!(beyond_synced > 0);
}
