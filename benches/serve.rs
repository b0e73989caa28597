//! Serving benchmark (issue 10): what HTTP reads cost a job that processes flat out, and
//! what a read costs while it does.
//!
//! Input: N events over 100k keys (uniform), 4 partitions placed with murmur2, processed by
//! the built-in `count` job (RocksDB store with a changelog, `commit.ms = 1000`) until the
//! end of the input, three ways in the same run, each on a fresh copy of the input:
//!
//! 1. `run_job`, no HTTP at all (the baseline);
//! 2. served over HTTP (`run_job_serving` + the HTTP server), nobody reading;
//! 3. served, with one client doing back-to-back `GET /v1/stores/counts/keys/{key}` of random
//!    keys over loopback for the whole run (a steady closed-loop read load).
//!
//! Reported: events/s of processing (as `RunStats::elapsed`, best of 3 rounds, the three
//! runs interleaved in each), and for 3 the reads done and
//! GET latency (p50, p99, max) while the job processes. Then, the job caught up and idle,
//! 2000 GETs give the idle latency.
//!
//! `cargo bench --bench serve` (1M events) or `cargo bench --bench serve -- --quick` (300k).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::{JobConfig, RunOptions, RunStats, builtin, run_job, run_job_serving};
use gregor::serve::Serving;
use gregor::serve::http::{self, HttpOptions, ProcessInfo};
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

fn job() -> JobConfig {
    JobConfig::from_toml_str(
        "<bench job>",
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
        "#,
    )
    .unwrap()
}

fn opts(until_end: bool) -> RunOptions {
    RunOptions {
        until_end,
        progress: Box::new(gregor::restore::NoProgress),
        ..RunOptions::new()
    }
}

/// Latencies, sorted.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn at(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0[((self.0.len() - 1) as f64 * q).round() as usize]
    }

    fn line(&self) -> String {
        format!(
            "{} GETs, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.0.len(),
            self.at(0.5).as_secs_f64() * 1e3,
            self.at(0.99).as_secs_f64() * 1e3,
            self.at(1.0).as_secs_f64() * 1e3
        )
    }
}

/// Back-to-back GETs of random keys until `stop` (or `max` reads); their latencies.
fn read_loop(addr: SocketAddr, stop: &AtomicBool, max: usize) -> Latencies {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut lat = Vec::new();
    while !stop.load(Ordering::SeqCst) && lat.len() < max {
        let key = format!("key-{:06}", rng.gen_range(0..KEYS));
        let started = Instant::now();
        let mut r = agent
            .get(format!("http://{addr}/v1/stores/counts/keys/{key}"))
            .call()
            .unwrap();
        let _ = r.body_mut().read_to_string();
        match r.status().as_u16() {
            // 503: a task still opening; not a read of the store, not counted.
            200 | 404 => lat.push(started.elapsed()),
            503 => std::thread::sleep(Duration::from_millis(5)),
            s => panic!("GET {key}: {s}"),
        }
    }
    lat.sort();
    Latencies(lat)
}

/// Runs the job served over HTTP; with `read`, one client reads (at most `max` GETs) while
/// it runs, and stops the job when done.
fn served(state: &StateDir, until_end: bool, read: bool, max: usize) -> (RunStats, Latencies) {
    let job = job();
    let factory = builtin::factory("count").unwrap();
    let serving = Serving::new(job.clone(), false);
    let link = serving.link().unwrap();
    let server = http::start(
        serving,
        HttpOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            process: ProcessInfo { id: 0, count: 1 },
            metrics: None,
            writes: None,
            auth_token: None,
        },
    )
    .unwrap();
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let o = opts(until_end);
    let job_stop = Arc::clone(&o.stop);
    let reader = read.then(|| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let lat = read_loop(addr, &stop, max);
            job_stop.store(true, Ordering::SeqCst);
            lat
        })
    });
    let backend = Arc::new(gregor::runtime::embedded_backend(state, &job).unwrap());
    let stats = run_job_serving(backend, state, &job, &factory, o, link).unwrap();
    stop.store(true, Ordering::SeqCst);
    let lat = reader.map_or(Latencies(Vec::new()), |r| r.join().unwrap());
    server.shutdown();
    (stats, lat)
}

fn rate(stats: &RunStats) -> f64 {
    stats.processed as f64 / stats.elapsed.as_secs_f64().max(1e-9)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let events: u64 = if quick { 300_000 } else { 1_000_000 };
    println!(
        "serve benchmark: count job, {events} events over {KEYS} keys, {PARTITIONS} partitions{}",
        if quick { " (--quick)" } else { "" }
    );
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        produce(dir.path(), events);
        dir
    };

    let rounds = if quick { 1 } else { 3 };
    let (mut plain, mut idle, mut loaded) = (0f64, 0f64, 0f64);
    let (mut busy, mut busy_rate) = (Latencies(Vec::new()), 0f64);
    let mut idle_lat = Latencies(Vec::new());
    for _ in 0..rounds {
        // The three runs interleaved, each on fresh input; best of the rounds.
        let dir = fresh();
        let state = StateDir::open(dir.path()).unwrap();
        let s = run_job(
            &state,
            &job(),
            &builtin::factory("count").unwrap(),
            opts(true),
        )
        .unwrap();
        plain = plain.max(rate(&s));
        drop(state);

        let dir = fresh();
        let state = StateDir::open(dir.path()).unwrap();
        idle = idle.max(rate(&served(&state, true, false, 0).0));
        drop(state);

        let dir = fresh();
        let state = StateDir::open(dir.path()).unwrap();
        let (s, lat) = served(&state, true, true, usize::MAX);
        loaded = loaded.max(rate(&s));
        busy_rate = lat.0.len() as f64 / s.elapsed.as_secs_f64().max(1e-9);
        busy = lat;
        // Caught up: the job idles, so these GETs measure the idle path (the reader stops
        // the job when done).
        idle_lat = served(&state, false, true, 2000).1;
    }

    println!();
    println!("| run | events/s | vs no HTTP |");
    println!("|---|---:|---:|");
    for (name, r) in [
        ("no HTTP (`run_job`)", plain),
        ("served, no reads", idle),
        ("served, one client reading back-to-back", loaded),
    ] {
        println!("| {name} | {r:.0} | {:.2}x |", r / plain);
    }
    println!();
    println!(
        "GET while processing flat out (last round): {} ({busy_rate:.0} reads/s)",
        busy.line()
    );
    println!("GET with the job idle: {}", idle_lat.line());
}
