//! Runtime benchmark (issue 4): events/s of the built-in `count` job (RocksDB store with a
//! changelog, `commit.ms = 1000`) vs a plain `HashMap<String, u64>` counter over the same
//! input read from the same log (a `PartitionReader` per partition), in the same run.
//!
//! Input: 1M events over 100k keys (uniform), 4 partitions placed with murmur2. The job runs
//! three times: with the default object cache, with `object.cache.size = 200000` (every
//! key fits) and with that plus `write.batch.size = 200000` (dirty entries are written below
//! only at commit). Events/s of the job count processing only (after stores are opened), as
//! `RunStats::elapsed` does; the end-to-end time including open is printed too.
//!
//! `cargo bench --bench runtime` (1M events, best of 3 rounds) or
//! `cargo bench --bench runtime -- --quick` (200k events, one round). `RUNTIME_BENCH_ONLY=N`
//! runs only configuration N (0, 1, 2).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gregor::log::{LogDir, PartitionReader, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::{JobConfig, RunOptions, builtin, run_job};
use gregor::statedir::StateDir;
use rand::{Rng, SeedableRng};

const PARTITIONS: u32 = 4;
const KEYS: u64 = 100_000;

fn produce(state: &Path, events: u64) {
    let logs = LogDir::open(state).unwrap();
    let topic = logs
        .create_topic("in", PARTITIONS, TopicConfig::default())
        .unwrap();
    let mut parts: Vec<_> = (0..PARTITIONS)
        .map(|p| topic.open_partition(p).unwrap().0)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..events {
        let key = format!("key-{:06}", rng.gen_range(0..KEYS));
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
fn hashmap_count(state: &Path) -> (Duration, u64, usize) {
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
    (started.elapsed(), events, counts.len())
}

fn job(cache: &str) -> JobConfig {
    let text = format!(
        r#"
        [job]
        name = "count"
        task = "count"
        inputs = ["in"]
        commit.ms = 1000

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
    processing: Duration,
    total: Duration,
    events: u64,
    commits: u64,
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
    let stats = run_job(&state, &job, &factory, opts).unwrap();
    JobRun {
        processing: stats.elapsed,
        total: started.elapsed(),
        events: stats.processed,
        commits: stats.commits,
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
    let configs = [
        (
            "default cache (object.cache.size = 1000, write.batch.size = 500)",
            "",
        ),
        (
            "object.cache.size = 200000 (write.batch.size = 500)",
            "object.cache.size = 200000",
        ),
        (
            "object.cache.size = 200000, write.batch.size = 200000",
            "object.cache.size = 200000\nwrite.batch.size = 200000",
        ),
    ];
    let only = std::env::var("RUNTIME_BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    for (i, &(label, cache)) in configs.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        // Best of `rounds` (the machine may be shared): a fresh state directory each round.
        let (mut job_rate, mut hm_rate) = (0.0f64, 0.0f64);
        for round in 1..=rounds {
            let dir = tempfile::tempdir().unwrap();
            produce(dir.path(), events);
            // The ceiling first, on the same files (warm page cache for both).
            let (hm, hm_events, hm_keys) = hashmap_count(dir.path());
            assert_eq!(hm_events, events);
            let run = count_job(dir.path(), cache);
            assert_eq!(run.events, events, "the job processed every event");
            let (j, h) = (rate(run.events, run.processing), rate(hm_events, hm));
            println!(
                "{label} [round {round}]: count job {j:.0} events/s ({:.3}s processing, {:.3}s with open/close, {} commits); HashMap {h:.0} events/s ({:.3}s, {hm_keys} keys); ratio {:.3}",
                run.processing.as_secs_f64(),
                run.total.as_secs_f64(),
                run.commits,
                hm.as_secs_f64(),
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
            "targets ({label}): >= 1M events/s: {}; >= 0.5x HashMap: {}",
            if job_rate >= 1e6 { "met" } else { "NOT met" },
            if job_rate >= 0.5 * hm_rate {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
