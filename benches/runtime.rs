//! Runtime benchmark (issues 4 and 12): events/s of the built-in `count` job (RocksDB store
//! with a changelog, `commit.ms = 1000`) vs a plain `HashMap<String, u64>` counter over the
//! same input read from the same log (a `PartitionReader` per partition), in the same run.
//!
//! Input: 1M events, 4 partitions placed with murmur2, keys per configuration: 100k keys
//! uniform (the default job), 1M distinct keys (every event a new key), 100k keys with a Zipf
//! distribution (s = 1.1). Each runs with the default store config (the byte-sized cache
//! flushed at commit); the first input also with Samza's old cache settings
//! (`object.cache.size = 1000`, `write.batch.size = 500`) for comparison, and the distinct
//! keys with a 4 MiB cache per store (state larger than the cache), and the first input
//! with `ttl.ms` on the store (issue 13: the cost of expiry headers, deadline checks and the
//! expiry pass at each commit). Events/s of the job
//! count processing only (after stores are opened), as `RunStats::elapsed` does.
//!
//! A counting global allocator reports allocations per event of the whole `run_job` (open,
//! processing, commits, close) and of the HashMap counter; peak RSS (`VmHWM`, reset through
//! `/proc/self/clear_refs` before each job) is reported per run, with the most bytes the
//! store caches held at once (`CacheBudget::peak`), checked against their bound.
//!
//! `cargo bench --bench runtime` (1M events, best of 3 rounds) or
//! `cargo bench --bench runtime -- --quick` (200k events, one round). `RUNTIME_BENCH_POOL=N`
//! sets the thread pool size (`job.container.thread.pool.size`; default the cores). `RUNTIME_BENCH_ONLY=N`
//! runs only configuration N (0..=5).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gregor::log::{LogDir, PartitionReader, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::{JobConfig, RunOptions, builtin, run_job};
use gregor::statedir::StateDir;
use gregor::store::cached::CacheBudget;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The system allocator, counting allocations (and reallocations).
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

/// Peak resident set size of this process in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5); false if not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// How keys are drawn.
#[derive(Clone, Copy)]
enum Keys {
    /// Uniform over this many keys.
    Uniform(u64),
    /// Every event its own key.
    Distinct,
    /// Zipf over this many keys with exponent `s`.
    Zipf(u64, f64),
}

const PARTITIONS: u32 = 4;
const KEYS: u64 = 100_000;

fn produce(state: &Path, events: u64, keys: Keys) {
    let logs = LogDir::open(state).unwrap();
    let topic = logs
        .create_topic("in", PARTITIONS, TopicConfig::default())
        .unwrap();
    let mut parts: Vec<_> = (0..PARTITIONS)
        .map(|p| topic.open_partition(p).unwrap().0)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut distinct: Vec<u64> = Vec::new();
    let mut zipf_cdf: Vec<f64> = Vec::new();
    match keys {
        Keys::Distinct => {
            distinct = (0..events).collect();
            distinct.shuffle(&mut rng);
        }
        Keys::Zipf(n, s) => {
            let mut acc = 0.0;
            zipf_cdf = (1..=n)
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(s);
                    acc
                })
                .collect();
            let total = acc;
            zipf_cdf.iter_mut().for_each(|c| *c /= total);
        }
        Keys::Uniform(_) => {}
    }
    for i in 0..events {
        let k = match keys {
            Keys::Uniform(n) => rng.gen_range(0..n),
            Keys::Distinct => distinct[i as usize],
            Keys::Zipf(..) => {
                let u: f64 = rng.r#gen();
                zipf_cdf.partition_point(|&c| c < u) as u64
            }
        };
        let key = format!("key-{k:07}");
        let p = partition_for_key(key.as_bytes(), PARTITIONS);
        parts[p as usize]
            .append(i as i64, key.as_bytes(), Some(b"1"))
            .unwrap();
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
}

/// The ceiling: count keys in a `HashMap` reading the same partitions.
fn hashmap_count(state: &Path) -> (Duration, u64, usize, u64) {
    let a0 = allocs();
    let started = Instant::now();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut events = 0u64;
    for p in 0..PARTITIONS {
        let mut reader = PartitionReader::open(&state.join(format!("logs/in/{p}")), 0).unwrap();
        loop {
            let batch = reader.next_batch(1024).unwrap();
            if batch.is_empty() {
                break;
            }
            for r in batch {
                let key = std::str::from_utf8(&r.key).unwrap();
                match counts.get_mut(key) {
                    Some(n) => *n += 1,
                    None => {
                        counts.insert(key.to_string(), 1);
                    }
                }
                events += 1;
            }
        }
    }
    (started.elapsed(), events, counts.len(), allocs() - a0)
}

fn job(cache: &str) -> JobConfig {
    // `RUNTIME_BENCH_POOL=N` sets `job.container.thread.pool.size` (default: the cores).
    let pool = std::env::var("RUNTIME_BENCH_POOL")
        .map(|n| format!("container.thread.pool.size = {n}"))
        .unwrap_or_default();
    let text = format!(
        r#"
        [job]
        name = "count"
        task = "count"
        inputs = ["in"]
        commit.ms = 1000
        {pool}

        [stores.counts]
        engine = "rocksdb"
        key.serde = "string"
        value.serde = "u64"
        changelog = "counts-changelog"
        {cache}
    "#
    );
    JobConfig::from_toml_str("<bench job>", &text).unwrap()
}

struct JobRun {
    /// The most bytes the store caches held at once, and their bound.
    cache_peak: (usize, usize),
    processing: Duration,
    total: Duration,
    events: u64,
    commits: u64,
    allocs: u64,
    peak_rss_kib: Option<u64>,
}

fn count_job(state_dir: &Path, cache: &str) -> JobRun {
    let state = StateDir::open(state_dir).unwrap();
    let job = job(cache);
    let factory = builtin::factory("count").unwrap();
    let started = Instant::now();
    let opts = RunOptions {
        until_end: true,
        progress: Box::new(gregor::restore::NoProgress),
        ..RunOptions::new()
    };
    let reset = reset_peak_rss();
    // The caches' own bound: each store's share of job.cache.max.bytes, at most its
    // cache.max.bytes (4 tasks x 1 store), plus one entry each.
    let store = &job.stores["counts"];
    let caches = PARTITIONS as usize;
    let bound = caches
        * (store.cache_max_bytes.min(job.cache_max_bytes / caches)
            + gregor::store::cached::ENTRY_OVERHEAD
            + 64);
    let budget = CacheBudget::process(job.cache_max_bytes);
    budget.reset_peak();
    let a0 = allocs();
    let stats = run_job(&state, &job, &factory, opts).unwrap();
    let allocs = allocs() - a0;
    let peak = budget.peak();
    assert!(
        peak <= bound,
        "the caches held {peak} bytes, over their bound of {bound}"
    );
    JobRun {
        cache_peak: (peak, bound),
        processing: stats.elapsed,
        total: started.elapsed(),
        events: stats.processed,
        commits: stats.commits,
        allocs,
        peak_rss_kib: reset.then(peak_rss_kib),
    }
}

fn rate(events: u64, d: Duration) -> f64 {
    events as f64 / d.as_secs_f64().max(1e-9)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let events: u64 = if quick { 200_000 } else { 1_000_000 };
    let rounds = if quick { 1 } else { 3 };
    println!(
        "runtime benchmark: count job vs HashMap, {events} events over {KEYS} keys, {PARTITIONS} partitions{}",
        if quick { " (--quick)" } else { "" }
    );

    let mut results = Vec::new();
    let configs: [(&str, Keys, &str); 6] = [
        ("defaults, 100k keys uniform", Keys::Uniform(KEYS), ""),
        ("defaults, 1M distinct keys", Keys::Distinct, ""),
        ("defaults, 100k keys Zipf s=1.1", Keys::Zipf(KEYS, 1.1), ""),
        (
            "1M distinct keys, cache.max.bytes = 4 MiB (state ~6x the cache)",
            Keys::Distinct,
            "cache.max.bytes = 4194304",
        ),
        (
            "Samza's old cache (object.cache.size = 1000, write.batch.size = 500), 100k keys uniform",
            Keys::Uniform(KEYS),
            "object.cache.size = 1000\nwrite.batch.size = 500",
        ),
        (
            "stores.counts.ttl.ms = 3600000 (issue 13: TTL), 100k keys uniform",
            Keys::Uniform(KEYS),
            "ttl.ms = 3600000",
        ),
    ];
    let only = std::env::var("RUNTIME_BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    for (i, &(label, keys, cache)) in configs.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        // Best of `rounds` (the machine may be shared): a fresh state directory each round.
        let (mut job_rate, mut hm_rate) = (0.0f64, 0.0f64);
        for round in 1..=rounds {
            let dir = tempfile::tempdir().unwrap();
            produce(dir.path(), events, keys);
            // The ceiling first, on the same files (warm page cache for both).
            let (hm, hm_events, hm_keys, hm_allocs) = hashmap_count(dir.path());
            assert_eq!(hm_events, events);
            let run = count_job(dir.path(), cache);
            assert_eq!(run.events, events, "the job processed every event");
            let (j, h) = (rate(run.events, run.processing), rate(hm_events, hm));
            println!(
                "{label} [round {round}]: count job {j:.0} events/s ({:.3}s processing, {:.3}s with open/close, {} commits, {:.2} allocations/event, peak RSS {}, caches at most {:.1} MiB of their {:.1} MiB bound); HashMap {h:.0} events/s ({:.3}s, {hm_keys} keys, {:.2} allocations/event); ratio {:.3}",
                run.processing.as_secs_f64(),
                run.total.as_secs_f64(),
                run.commits,
                run.allocs as f64 / run.events as f64,
                run.peak_rss_kib
                    .map_or("unknown".to_string(), |k| format!("{} MiB", k / 1024)),
                run.cache_peak.0 as f64 / (1 << 20) as f64,
                run.cache_peak.1 as f64 / (1 << 20) as f64,
                hm.as_secs_f64(),
                hm_allocs as f64 / hm_events as f64,
                j / h
            );
            job_rate = job_rate.max(j);
            hm_rate = hm_rate.max(h);
        }
        println!(
            "{label}: best count job {job_rate:.0} events/s, best HashMap {hm_rate:.0} events/s, ratio {:.3}",
            job_rate / hm_rate
        );
        results.push((label, job_rate, hm_rate));
    }
    for (label, job_rate, hm_rate) in results {
        println!(
            "targets ({label}): >= 1.5M events/s: {}; >= 0.5x HashMap: {}",
            if job_rate >= 1.5e6 { "met" } else { "NOT met" },
            if job_rate >= 0.5 * hm_rate {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
