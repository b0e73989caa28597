//! Restore and changelog-overhead benchmark (issue 3).
//!
//! 1. Restore of a changelog of 1M records (16 B random keys, 100 B values, ~120 MB) into an
//!    empty RocksDB store (a full restore through `TaskStorage::open`), vs reading the same segment
//!    files raw with CRC32C checks, in the same run. The page cache is dropped before each
//!    read when possible (root: `/proc/sys/vm/drop_caches`); the output says if it was.
//! 2. Puts through the store stack with the changelog vs without (same engine and cache).
//! 3. Restore of 4 tasks (the records of 1. split in 4 changelog partitions) at start-up by
//!    the container (`Container::open_tasks`), one at a time (`job.container.thread.pool.size
//!    = 1`) vs in parallel (4), vs the raw read of the same segments.
//!
//! `cargo bench --bench restore` (1M records) or `cargo bench --bench restore -- --quick`
//! (200k records). `RESTORE_BENCH_ROUNDS=N` repeats the raw read and the full restore of 1.
//! N times, alternated (a shared machine's noise shows); `RESTORE_BENCH_PARALLEL=0` skips 3.;
//! `RUST_LOG=gregor::restore=debug` prints the full restore's stage times.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::log::{LogDir, TopicConfig};
use gregor::restore::NoProgress;
use gregor::statedir::StateDir;
use gregor::store::config::StoreConfig;
use gregor::task_storage::{TaskStorage, TaskStorageContext};
use rand::{Rng, SeedableRng};

fn drop_caches() -> bool {
    // SAFETY-free best effort: needs root; sync first so dirty pages can be dropped.
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// CPU seconds (user + system) the process has used so far, all threads (RocksDB's
/// background threads too), from `/proc/self/stat` (10 ms ticks); 0 where it is missing.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime and stime are the
    // 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Reads every segment file of a partition directory and checks every frame's CRC32C:
/// the raw ceiling restore is compared against. Returns frames (records and sync markers)
/// and bytes.
fn raw_read(dir: &Path) -> (u64, u64) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut buf = Vec::new();
    for f in files {
        buf.clear();
        std::fs::File::open(&f)
            .unwrap()
            .read_to_end(&mut buf)
            .unwrap();
        bytes += buf.len() as u64;
        let mut pos = 0;
        while pos + 8 <= buf.len() {
            let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap());
            let payload = &buf[pos + 8..pos + 8 + len];
            assert_eq!(crc32c::crc32c(payload), crc, "bad CRC in {}", f.display());
            records += 1;
            pos += 8 + len;
        }
    }
    (records, bytes)
}

/// Opens store `s` of `task` through the production open (restoring it).
fn open(
    state: &StateDir,
    logs: &LogDir,
    task: &str,
    config: &StoreConfig,
) -> (TaskStorage, Option<gregor::restore::RestoreStats>) {
    let backend =
        EmbeddedBackend::with_log_dir(state.root(), logs.clone(), EmbeddedSettings::default());
    let ctx = TaskStorageContext {
        backend: Arc::new(backend),
        state,
        task,
        changelog_partition: 0,
    };
    let configs = BTreeMap::from([("s".to_string(), config.clone())]);
    let (storage, stats) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
    (storage, stats.into_iter().next())
}

fn store_config(changelog: Option<&str>) -> StoreConfig {
    StoreConfig {
        changelog: changelog.map(str::to_string),
        ..StoreConfig::default()
    }
}

/// Puts `n` random 16-byte keys with 100-byte values (seeded, so every call writes the same
/// entries) into store `s` of `task`, commits it and records the checkpoint; returns puts/s.
fn fill(state: &StateDir, logs: &LogDir, task: &str, config: &StoreConfig, n: u64) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (mut key, mut value) = ([0u8; 16], [0u8; 100]);
    let t = Instant::now();
    let (mut storage, _) = open(state, logs, task, config);
    let store = storage.store("s").unwrap();
    for _ in 0..n {
        rng.fill(&mut key);
        rng.fill(&mut value[..]);
        store.stack().put(&key, &value).unwrap();
    }
    storage.commit(&BTreeMap::new(), Vec::new()).unwrap();
    storage.close().unwrap();
    n as f64 / t.elapsed().as_secs_f64()
}

/// CPU seconds this thread has run (`/proc/thread-self/schedstat`, ns): unlike wall time,
/// barely moved by other processes on a shared machine.
fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// SST writer settings for a restore's files, compared on one thread: `n` sorted entries
/// (16-byte keys, 100-byte values) written by RocksDB's `SstFileWriter` with each variant,
/// thread CPU time (`RESTORE_BENCH_SST=1`).
fn sst_variants(dir: &Path, n: u64) {
    use rocksdb::{BlockBasedOptions, DBCompressionType, Options, SstFileWriter};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut entries: Vec<([u8; 16], [u8; 100])> = (0..n)
        .map(|_| {
            let (mut k, mut v) = ([0u8; 16], [0u8; 100]);
            rng.fill(&mut k);
            rng.fill(&mut v[..]);
            (k, v)
        })
        .collect();
    entries.sort_unstable_by_key(|a| a.0);
    entries.dedup_by(|a, b| a.0 == b.0);
    let variants: [(&str, DBCompressionType, f64, usize); 6] = [
        (
            "no compression, bloom 10, 4 KiB blocks (today)",
            DBCompressionType::None,
            10.0,
            4096,
        ),
        (
            "no compression, no bloom, 4 KiB",
            DBCompressionType::None,
            0.0,
            4096,
        ),
        (
            "no compression, bloom 10, 16 KiB",
            DBCompressionType::None,
            10.0,
            16384,
        ),
        (
            "no compression, bloom 10, 64 KiB",
            DBCompressionType::None,
            10.0,
            65536,
        ),
        (
            "no compression, no bloom, 64 KiB",
            DBCompressionType::None,
            0.0,
            65536,
        ),
        (
            "LZ4, bloom 10, 4 KiB (the store's settings)",
            DBCompressionType::Lz4,
            10.0,
            4096,
        ),
    ];
    println!();
    println!(
        "SstFileWriter, {} entries, one thread, 3 runs each",
        entries.len()
    );
    println!("| settings | thread CPU (min of 3) | wall (min of 3) | file |");
    println!("|---|---|---|---|");
    for (name, compression, bloom, block) in variants {
        let mut o = Options::default();
        o.set_compression_type(compression);
        let mut t = BlockBasedOptions::default();
        if bloom > 0.0 {
            t.set_bloom_filter(bloom, false);
        }
        t.set_block_size(block);
        o.set_block_based_table_factory(&t);
        let (mut cpu, mut wall, mut size) = (f64::MAX, f64::MAX, 0);
        for _ in 0..3 {
            let path = dir.join("variant.sst");
            let (w, c) = (Instant::now(), thread_cpu_secs());
            let mut writer = SstFileWriter::create(&o);
            writer.open(&path).unwrap();
            for (k, v) in &entries {
                writer.put(k, v).unwrap();
            }
            writer.finish().unwrap();
            cpu = cpu.min(thread_cpu_secs() - c);
            wall = wall.min(w.elapsed().as_secs_f64());
            size = std::fs::metadata(&path).unwrap().len();
            std::fs::remove_file(&path).unwrap();
        }
        println!(
            "| {name} | {cpu:.3} s | {wall:.3} s | {:.1} MB |",
            size as f64 / 1e6
        );
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u64 = if quick { 200_000 } else { 1_000_000 };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}; mode: {}; {n} records",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick { "quick" } else { "full" }
    );

    let tmp =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    if std::env::var("RESTORE_BENCH_SST").as_deref() == Ok("1") {
        sst_variants(tmp.path(), n);
        return;
    }
    let state = StateDir::open(tmp.path()).unwrap();
    let logs = LogDir::open(state.root()).unwrap();
    // Write the changelog through the stack (this is also the "with changelog" put figure),
    // then the same puts into a store without a changelog.
    let config = store_config(Some("bench-changelog"));
    let logged_put = fill(&state, &logs, "t", &config, n);
    let plain_put = fill(&state, &logs, "plain", &store_config(None), n);
    eprintln!("changelog written; restores follow");

    let part_dir = logs
        .topic("bench-changelog")
        .unwrap()
        .partition_dir(0)
        .unwrap();
    let rounds: usize = std::env::var("RESTORE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut storage = None;
    for round in 0..rounds {
        if round > 0 {
            println!();
        }
        drop(storage.take());
        storage = Some(restore_round(&state, &logs, &part_dir, &config, n));
    }
    println!("| stack puts without changelog | | {plain_put:.0} puts/s | 1.00 |");
    println!(
        "| stack puts with changelog | | {logged_put:.0} puts/s | {:.2} (target >= 0.7) |",
        logged_put / plain_put
    );
    let _ = TopicConfig::default();
    drop(storage);
    if std::env::var("RESTORE_BENCH_PARALLEL").as_deref() != Ok("0") {
        parallel_restore(&state, &logs, n);
    }
}

/// Part 1, one round: the raw read, the log reader alone and a full restore of `n` records
/// from `part_dir`; prints their table and returns the restored storage.
fn restore_round(
    state: &StateDir,
    logs: &LogDir,
    part_dir: &Path,
    config: &StoreConfig,
    n: u64,
) -> TaskStorage {
    // Raw read of the changelog segments with CRC checks.
    let dropped = drop_caches();
    let (t, cpu) = (Instant::now(), cpu_secs());
    let (records, bytes) = raw_read(part_dir);
    let raw_secs = t.elapsed().as_secs_f64();
    let raw_cpu = cpu_secs() - cpu;
    // Frames: the records plus a sync marker per fsync.
    assert!(records >= n, "{records} frames for {n} records");

    // The log reader alone (decode + CRC, no engine): the read half of a restore.
    let dropped_r = drop_caches();
    let t = Instant::now();
    let mut reader = gregor::log::PartitionReader::open(part_dir, 0).unwrap();
    let mut seen = 0u64;
    loop {
        let b = reader.next_batch(8192).unwrap();
        if b.is_empty() {
            break;
        }
        seen += b.len() as u64;
    }
    let reader_secs = t.elapsed().as_secs_f64();
    assert_eq!(seen, n);

    // Full restore: delete the local store, reopen (restores from the changelog).
    std::fs::remove_dir_all(state.store_dir("t", "s").join("data")).unwrap();
    let dropped2 = drop_caches();
    let (t, cpu) = (Instant::now(), cpu_secs());
    let (mut storage, stats) = open(state, logs, "t", config);
    let restore_secs = t.elapsed().as_secs_f64();
    let restore_cpu = cpu_secs() - cpu;
    let stats = stats.unwrap();
    let store = storage.store("s").unwrap();
    assert_eq!(stats.records, n);
    let restored = store.stack().all().unwrap().count() as u64;
    assert!(
        restored <= n && restored > n * 99 / 100,
        "restored {restored} of {n} keys"
    );

    let mb = bytes as f64 / 1e6;
    println!(
        "page cache dropped before reads: {}",
        dropped && dropped2 && dropped_r
    );
    println!("changelog: {records} records, {mb:.1} MB");
    println!("| what | time | rate | ratio | CPU time (all threads) |");
    println!("|---|---|---|---|---|");
    println!(
        "| raw segment read + CRC32C | {raw_secs:.2} s | {:.0} MB/s | 1.00 | {raw_cpu:.2} s |",
        mb / raw_secs
    );
    println!(
        "| gregor log reader (decode + CRC) | {reader_secs:.2} s | {:.0} MB/s | {:.2} | |",
        mb / reader_secs,
        raw_secs / reader_secs
    );
    println!(
        "| full restore into RocksDB | {restore_secs:.2} s | {:.0} MB/s | {:.2} (target >= 0.5) | {restore_cpu:.2} s |",
        mb / restore_secs,
        raw_secs / restore_secs
    );
    storage
}

/// Part 3: 4 tasks' changelogs of `n / 4` records each, restored by the container serially
/// and in parallel.
fn parallel_restore(state: &StateDir, logs: &LogDir, n: u64) {
    use gregor::runtime::{Container, JobConfig, task_name};
    logs.create_topic("par-in", 4, TopicConfig::default())
        .unwrap();
    let job = |threads: usize| {
        JobConfig::from_toml_str(
            "<bench>",
            &format!(
                "[job]\nname = \"par\"\ntask = \"count\"\ninputs = [\"par-in\"]\n\
                 container.thread.pool.size = {threads}\n\n[stores.s]\nchangelog = \"par-changelog\"\n"
            ),
        )
        .unwrap()
    };
    let backend = || -> Arc<dyn gregor::backend::Backend> {
        Arc::new(EmbeddedBackend::with_log_dir(
            state.root(),
            logs.clone(),
            EmbeddedSettings::default(),
        ))
    };
    // Fill: each task's store through its own changelog partition.
    logs.create_topic("par-changelog", 4, TopicConfig::compacted())
        .unwrap();
    let config = job(1).stores["s"].clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut key, mut value) = ([0u8; 16], [0u8; 100]);
    for p in 0..4 {
        let task = task_name("par", p);
        let ctx = TaskStorageContext {
            backend: backend(),
            state,
            task: &task,
            changelog_partition: p,
        };
        let configs = BTreeMap::from([("s".to_string(), config.clone())]);
        let (mut storage, _) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
        for _ in 0..n / 4 {
            rng.fill(&mut key);
            rng.fill(&mut value[..]);
            storage
                .store("s")
                .unwrap()
                .stack()
                .put(&key, &value)
                .unwrap();
        }
        storage.commit(&BTreeMap::new(), Vec::new()).unwrap();
        storage.close().unwrap();
    }
    let dirs: Vec<_> = (0..4)
        .map(|p| {
            logs.topic("par-changelog")
                .unwrap()
                .partition_dir(p)
                .unwrap()
        })
        .collect();
    drop_caches();
    let t = Instant::now();
    let (mut records, mut bytes) = (0, 0);
    for d in &dirs {
        let (r, b) = raw_read(d);
        records += r;
        bytes += b;
    }
    let raw_secs = t.elapsed().as_secs_f64();
    assert!(records >= n / 4 * 4);
    let mb = bytes as f64 / 1e6;
    let factory = gregor::runtime::builtin::factory("count").unwrap();
    let mut rows = Vec::new();
    for threads in [1usize, 4] {
        for p in 0..4 {
            std::fs::remove_dir_all(state.store_dir(&task_name("par", p), "s")).unwrap();
        }
        let j = job(threads);
        drop_caches();
        let t = Instant::now();
        let mut c = Container::start(backend(), state, &j, &factory).unwrap();
        let stats = c.open_tasks(&[0, 1, 2, 3], &mut NoProgress).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(stats.iter().map(|s| s.records).sum::<u64>(), n / 4 * 4);
        for p in 0..4 {
            c.close_task(p).unwrap();
        }
        rows.push((threads, secs));
    }
    println!();
    println!("4 tasks x {} records, {mb:.1} MB", n / 4);
    println!("| what | time | rate | ratio to raw read |");
    println!("|---|---|---|---|");
    println!(
        "| raw segment read + CRC32C (4 partitions) | {raw_secs:.2} s | {:.0} MB/s | 1.00 |",
        mb / raw_secs
    );
    for (threads, secs) in &rows {
        println!(
            "| container restore, {} | {secs:.2} s | {:.0} MB/s | {:.2} |",
            if *threads == 1 {
                "serial (pool 1)".to_string()
            } else {
                format!("parallel (pool {threads})")
            },
            mb / secs,
            raw_secs / secs
        );
    }
    println!("parallel vs serial: {:.2}x", rows[0].1 / rows[1].1);
}
