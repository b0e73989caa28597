//! Store stack vs raw RocksDB (issue 2).
//!
//! In one run, over the same deterministic data (16-byte random keys, 100-byte random values,
//! random order, seeded):
//!
//! - (a) raw `rocksdb` crate puts one by one with the WAL on (RocksDB default options plus
//!   gregor's default block cache, bloom filter and compression), then a flush;
//! - (b) gregor stack puts (RocksEngine + CachedStore with default sizes + MeteredStore +
//!   typed `Store<Vec<u8>, Vec<u8>>`, as `StoreConfig::default()` assembles it), then flush;
//! - (c) random gets on both, each key read once, by a stack reopened after the puts (an
//!   empty cache), so every stack get is a cache miss;
//! - (d) gets of a hot set that fits in the cache, on both (stack gets are cache hits);
//! - (e) a full scan on both;
//! - (f) TTL (issue 13): the same stack with `ttl.ms` vs without (puts, cold and hot gets),
//!   and the expiry pass: one pass over every entry when none expired (the scan alone) and
//!   when all expired (scan + a tombstone each), vs a full scan of the stack without TTL.
//!
//! `cargo bench --bench store` (1M keys) or `cargo bench --bench store -- --quick` (100k).
//! `cargo bench --bench store -- --ttl-ops N [plain|ttl] [--rounds R]` runs only the
//! cache-hit cost of TTL on the memory engine (N gets and N puts of 500 hot keys per stack; with `plain` or `ttl`
//! only that stack): quick, and deterministic under `valgrind --tool=callgrind`
//! (instructions per operation, whatever the load).

use std::path::Path;
use std::time::{Duration, Instant};

use gregor::serde::SerdeName;
use gregor::store::KeyValueStore;
use gregor::store::cached::{CacheBudget, CacheSettings, CachedStore};
use gregor::store::config::StoreConfig;
use gregor::store::metered::MeteredStore;
use gregor::store::rocks::{Compression, RocksEngine, RocksOptions};
use gregor::store::stack::add_layers;
use gregor::store::typed::Store;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rocksdb::{BlockBasedOptions, Cache, DB, DBCompressionType, IteratorMode, Options};

const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 100;
const SEED: u64 = 0x5eed_2026;
/// Rounds of each read measurement; the best round is reported (the machine is shared).
const ROUNDS: usize = 5;
/// Keys of the hot set read over and over (cache hits).
const HOT_KEYS: usize = 500;
/// Slices the puts are split into, alternating raw and stack.
const CHUNKS: usize = 10;

/// The value of key number `i`: 100 pseudo-random (incompressible) bytes, recomputed on
/// demand so values do not sit in memory.
fn value_of(i: usize, buf: &mut Vec<u8>) {
    buf.clear();
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ SEED;
    while buf.len() < VALUE_BYTES {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let take = (VALUE_BYTES - buf.len()).min(8);
        buf.extend_from_slice(&z.to_le_bytes()[..take]);
    }
}

/// Raw RocksDB with default options plus gregor's default block cache, bloom filter and
/// compression (see `RocksOptions::default()`); the WAL stays on (the default).
fn open_raw(path: &Path) -> DB {
    let g = RocksOptions::default();
    let mut o = Options::default();
    o.create_if_missing(true);
    o.set_compression_type(match g.compression {
        Compression::None => DBCompressionType::None,
        Compression::Snappy => DBCompressionType::Snappy,
        Compression::Lz4 => DBCompressionType::Lz4,
        Compression::Zstd => DBCompressionType::Zstd,
    });
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(g.block_cache_size));
    table.set_bloom_filter(g.bloom_filter_bits, false);
    o.set_block_based_table_factory(&table);
    DB::open(&o, path).expect("open raw RocksDB")
}

type Stack = Store<Vec<u8>, Vec<u8>>;

/// The gregor stack exactly as the default store config builds it (optionally with
/// `rocksdb.wal.enabled = true`).
fn open_stack(path: &Path, wal: bool) -> Stack {
    let mut config = StoreConfig::default();
    config.rocksdb.wal_enabled = wal;
    open_stack_with(path, config)
}

/// The stack `config` builds over RocksDB at `path`.
fn open_stack_with(path: &Path, config: StoreConfig) -> Stack {
    let engine = RocksEngine::open("bench", path, config.stored_limits(), &config.rocksdb)
        .expect("open gregor engine");
    Store::new(
        add_layers(Box::new(engine), &config),
        SerdeName::Bytes,
        SerdeName::Bytes,
    )
    .expect("typed store")
}

struct Row {
    what: &'static str,
    ops: usize,
    raw: Duration,
    stack: Duration,
    target: Option<f64>,
}

impl Row {
    fn raw_rate(&self) -> f64 {
        self.ops as f64 / self.raw.as_secs_f64()
    }
    fn stack_rate(&self) -> f64 {
        self.ops as f64 / self.stack.as_secs_f64()
    }
    fn ratio(&self) -> f64 {
        self.stack_rate() / self.raw_rate()
    }
}

/// Runs `ROUNDS` rounds of `a` and `b` (given the round number), alternating which goes
/// first so background load falls on both alike, and returns the best time of each.
fn paired(
    a: impl FnMut(usize) -> Duration,
    b: impl FnMut(usize) -> Duration,
) -> (Duration, Duration) {
    paired_rounds(ROUNDS, a, b)
}

/// [`paired`] over `rounds` rounds.
fn paired_rounds(
    rounds: usize,
    mut a: impl FnMut(usize) -> Duration,
    mut b: impl FnMut(usize) -> Duration,
) -> (Duration, Duration) {
    let (mut best_a, mut best_b) = (Duration::MAX, Duration::MAX);
    for r in 0..rounds {
        if r % 2 == 0 {
            best_a = best_a.min(a(r));
            best_b = best_b.min(b(r));
        } else {
            best_b = best_b.min(b(r));
            best_a = best_a.min(a(r));
        }
    }
    (best_a, best_b)
}

fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (cpus, model)
}

fn main() {
    // `cargo bench` passes `--bench`; only `--quick` (and `--ttl-ops N`) matter.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--ttl-ops") {
        let n = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .expect("--ttl-ops N");
        // `plain` or `ttl` only (what follows may be the `--bench` cargo appends).
        let only = args
            .get(i + 2)
            .map(String::as_str)
            .filter(|a| matches!(*a, "plain" | "ttl"));
        // `--rounds R`: best of R interleaved rounds (many short rounds resist a loaded
        // machine better than a few long ones).
        let rounds = args
            .iter()
            .position(|a| a == "--rounds")
            .and_then(|j| args.get(j + 1))
            .map_or(ROUNDS, |r| r.parse().expect("--rounds R"));
        ttl_ops(n, only, rounds);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 100_000 } else { 1_000_000 };
    let (cpus, model) = machine();
    println!("# gregor store stack vs raw RocksDB");
    println!("machine: {cpus} CPUs (nproc), {model}");
    println!(
        "mode: {} ({n} keys, {KEY_BYTES}-byte keys, {VALUE_BYTES}-byte values, random order, seed {SEED:#x})",
        if quick { "quick" } else { "full" }
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut k = vec![0u8; KEY_BYTES];
            rng.fill(&mut k[..]);
            k
        })
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    println!("data dir: {}", dir.path().display());
    let raw = open_raw(&dir.path().join("raw"));
    let mut stack = open_stack(&dir.path().join("stack"), false);
    let mut stack_wal = open_stack(&dir.path().join("stack-wal"), true);
    let mut rows = Vec::new();
    let mut buf = Vec::with_capacity(VALUE_BYTES);

    // (a) raw puts (WAL on) and (b) stack puts, each followed by a flush. The keys go in
    // CHUNKS slices, alternating which side goes first, so that load from other processes on
    // a shared machine falls on both sides alike.
    let (mut raw_puts, mut stack_puts, mut stack_wal_puts) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let chunk = n.div_ceil(CHUNKS);
    for (c, part) in keys.chunks(chunk).enumerate() {
        let base = c * chunk;
        let mut put_raw = |buf: &mut Vec<u8>| {
            let t = Instant::now();
            for (j, k) in part.iter().enumerate() {
                value_of(base + j, buf);
                raw.put(k, &*buf).expect("raw put");
            }
            raw_puts += t.elapsed();
        };
        if c % 2 == 0 {
            put_raw(&mut buf);
        }
        let t = Instant::now();
        for (j, k) in part.iter().enumerate() {
            value_of(base + j, &mut buf);
            stack.put(k, &buf).expect("stack put");
        }
        stack_puts += t.elapsed();
        let t = Instant::now();
        for (j, k) in part.iter().enumerate() {
            value_of(base + j, &mut buf);
            stack_wal.put(k, &buf).expect("stack put");
        }
        stack_wal_puts += t.elapsed();
        if c % 2 == 1 {
            put_raw(&mut buf);
        }
    }
    let t = Instant::now();
    raw.flush().expect("raw flush");
    let raw_flush = t.elapsed();
    let t = Instant::now();
    stack.flush().expect("stack flush");
    let stack_flush = t.elapsed();
    let t = Instant::now();
    stack_wal.flush().expect("stack flush");
    stack_wal_puts += t.elapsed();
    drop(stack_wal);
    rows.push(Row {
        what: "puts (+ final flush)",
        ops: n,
        raw: raw_puts + raw_flush,
        stack: stack_puts + stack_flush,
        target: Some(1.0),
    });
    rows.push(Row {
        what: "puts, stack with WAL on (+ final flush)",
        ops: n,
        raw: raw_puts + raw_flush,
        stack: stack_wal_puts,
        target: None,
    });
    println!(
        "puts alone: raw {:.0} ops/s, stack {:.0} ops/s; final flush: raw {:.0} ms, stack {:.0} ms",
        n as f64 / raw_puts.as_secs_f64(),
        n as f64 / stack_puts.as_secs_f64(),
        raw_flush.as_secs_f64() * 1e3,
        stack_flush.as_secs_f64() * 1e3
    );

    // (c) random gets: the stack is reopened (its cache starts empty) and every key is read
    // once over the rounds, in random order, each round its own slice of keys, so every stack
    // get misses the cache (the default cache, 32 MiB, would hold most of the keys).
    drop(stack);
    let mut stack = open_stack(&dir.path().join("stack"), false);
    let mut cold: Vec<usize> = (0..n).collect();
    cold.shuffle(&mut rng);
    let per_round = cold.len() / ROUNDS;
    let slices: Vec<&[usize]> = cold.chunks(per_round).take(ROUNDS).collect();
    let (raw_miss, stack_miss) = paired(
        |r| {
            let t = Instant::now();
            for &i in slices[r] {
                let v = raw.get(&keys[i]).expect("raw get");
                assert_eq!(v.map(|v| v.len()), Some(VALUE_BYTES));
            }
            t.elapsed()
        },
        |r| {
            let t = Instant::now();
            for &i in slices[r] {
                let v = stack.get(&keys[i]).expect("stack get");
                assert_eq!(v.map(|v| v.len()), Some(VALUE_BYTES));
            }
            t.elapsed()
        },
    );
    rows.push(Row {
        what: "random gets, cache misses",
        ops: per_round,
        raw: raw_miss,
        stack: stack_miss,
        target: Some(0.8),
    });

    // (d) a hot set of half a cache, read over and over; stack gets hit the cache.
    let hot: Vec<usize> = (0..HOT_KEYS).map(|_| rng.gen_range(0..n)).collect();
    let hot_ops = n;
    let hot_seq: Vec<usize> = (0..hot_ops)
        .map(|_| hot[rng.gen_range(0..hot.len())])
        .collect();
    for &i in &hot {
        stack.get(&keys[i]).expect("warm-up");
        raw.get(&keys[i]).expect("warm-up");
    }
    let (raw_hit, stack_hit) = paired(
        |_| {
            let t = Instant::now();
            for &i in &hot_seq {
                let v = raw.get(&keys[i]).expect("raw get");
                assert_eq!(v.map(|v| v.len()), Some(VALUE_BYTES));
            }
            t.elapsed()
        },
        |_| {
            let t = Instant::now();
            for &i in &hot_seq {
                let v = stack.get(&keys[i]).expect("stack get");
                assert_eq!(v.map(|v| v.len()), Some(VALUE_BYTES));
            }
            t.elapsed()
        },
    );
    rows.push(Row {
        what: "hot-set gets, cache hits",
        ops: hot_ops,
        raw: raw_hit,
        stack: stack_hit,
        target: Some(5.0),
    });

    // (e) full scans: raw `iterator` (allocates each entry, like the stack's owned entries)
    // and raw `raw_iterator` (zero-copy), vs the typed stack's `all()`, interleaved.
    let (mut raw_scan, mut raw_scan_zero_copy, mut stack_scan) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let mut count = 0usize;
        for r in raw.iterator(IteratorMode::Start) {
            let (k, v) = r.expect("raw scan");
            count += usize::from(k.len() == KEY_BYTES && v.len() == VALUE_BYTES);
        }
        assert_eq!(count, n);
        raw_scan = raw_scan.min(t.elapsed());

        let t = Instant::now();
        let mut count = 0usize;
        for r in stack.all().expect("stack scan") {
            let (k, v) = r.expect("stack scan");
            count += usize::from(k.len() == KEY_BYTES && v.len() == VALUE_BYTES);
        }
        assert_eq!(count, n);
        stack_scan = stack_scan.min(t.elapsed());

        let t = Instant::now();
        let mut count = 0usize;
        let mut it = raw.raw_iterator();
        it.seek_to_first();
        while it.valid() {
            count += usize::from(
                it.key().map(<[u8]>::len) == Some(KEY_BYTES)
                    && it.value().map(<[u8]>::len) == Some(VALUE_BYTES),
            );
            it.next();
        }
        it.status().expect("raw scan");
        assert_eq!(count, n);
        raw_scan_zero_copy = raw_scan_zero_copy.min(t.elapsed());
    }
    rows.push(Row {
        what: "full scan (raw iterator)",
        ops: n,
        raw: raw_scan,
        stack: stack_scan,
        target: None,
    });
    rows.push(Row {
        what: "full scan (raw_iterator, zero-copy)",
        ops: n,
        raw: raw_scan_zero_copy,
        stack: stack_scan,
        target: None,
    });

    println!();
    println!("| operation | ops | raw RocksDB ops/s | gregor stack ops/s | stack/raw | target | |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let (target, verdict) = match r.target {
            Some(t) => (
                format!(">= {t:.1}x"),
                if r.ratio() >= t { "met" } else { "NOT met" },
            ),
            None => ("-".to_string(), ""),
        };
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {} | {} |",
            r.what,
            r.ops,
            r.raw_rate(),
            r.stack_rate(),
            r.ratio(),
            target,
            verdict
        );
    }
    println!();
    println!(
        "raw puts: WAL on, one `put` per key; stack puts: WAL off (gregor default, the changelog is the durability), \
         default cache ({} MiB, dirty entries written below at the flush or past half of it)",
        gregor::store::cached::DEFAULT_CACHE_MAX_BYTES >> 20
    );
    println!(
        "reads: best of {ROUNDS} interleaved rounds; miss rounds each read their own slice of the keys once, in random order, on a reopened stack, so every stack get misses the cache"
    );
    println!(
        "metrics: no recorder installed (the metered layer's counters and histograms are no-ops)"
    );
    drop(stack);

    // Where a cache-miss get spends its time: reopen the stack's database and add one layer
    // at a time, each measured right after a raw round on the same keys.
    // Each layer set gets its own keys, each round its own slice, so the cache never hits.
    let per_round = (n / (4 * ROUNDS)).min(40_000);
    let sample_of = |step: usize, round: usize| {
        let at = (step * ROUNDS + round) * per_round;
        &cold[at..at + per_round]
    };
    let raw_round = |sample: &[usize]| {
        let t = Instant::now();
        for &i in sample {
            raw.get(&keys[i]).expect("raw get");
        }
        t.elapsed()
    };
    let ns = |d: Duration| d.as_nanos() as f64 / per_round as f64;
    let config = StoreConfig::default();
    let path = dir.path().join("stack");
    let mut layers: Box<dyn KeyValueStore> = Box::new(
        RocksEngine::open("bench", &path, config.limits, &config.rocksdb).expect("reopen"),
    );
    println!();
    println!(
        "cache-miss get cost by layer ({per_round} gets, best of {ROUNDS}; raw measured alongside on the same keys):"
    );
    println!("| layers | ns/get | raw ns/get |");
    println!("|---|---:|---:|");
    for step in 0..4 {
        match step {
            0 => {}
            1 => {
                layers = Box::new(CachedStore::sized(
                    layers,
                    config.limits,
                    CacheSettings::default(),
                    CacheBudget::new(config.process_cache_max_bytes),
                ));
            }
            2 => layers = Box::new(MeteredStore::new(layers)),
            _ => {}
        }
        let (mut best, mut best_raw) = (Duration::MAX, Duration::MAX);
        if step < 3 {
            for round in 0..ROUNDS {
                let sample = sample_of(step, round);
                best_raw = best_raw.min(raw_round(sample));
                let t = Instant::now();
                for &i in sample {
                    layers.get(&keys[i]).expect("get");
                }
                best = best.min(t.elapsed());
            }
        } else {
            let mut typed: Stack =
                Store::new(layers, SerdeName::Bytes, SerdeName::Bytes).expect("typed");
            for round in 0..ROUNDS {
                let sample = sample_of(step, round);
                best_raw = best_raw.min(raw_round(sample));
                let t = Instant::now();
                for &i in sample {
                    typed.get(&keys[i]).expect("get");
                }
                best = best.min(t.elapsed());
            }
            println!(
                "| engine + cache + metered + typed (the stack) | {:.0} | {:.0} |",
                ns(best),
                ns(best_raw)
            );
            break;
        }
        let name = ["RocksEngine", "engine + cache", "engine + cache + metered"][step];
        println!("| {name} | {:.0} | {:.0} |", ns(best), ns(best_raw));
    }
    drop(raw);
    ttl_cost(dir.path(), &keys, &mut rng);
}

/// (f) The cost of TTL: the default stack with `ttl.ms` (1 hour: nothing expires during the
/// puts and gets) vs without, over the same keys, interleaved; then the expiry pass.
fn ttl_cost(dir: &Path, keys: &[Vec<u8>], rng: &mut rand::rngs::StdRng) {
    let n = keys.len();
    // Puts and gets read the system clock, as in production; the pass that removes every
    // entry reads a clock set 2 hours ahead.
    let clock = gregor::store::ttl::ManualClock::new(gregor::store::ttl::Clock::System.now_ms());
    let config = |ttl: bool| StoreConfig {
        ttl_ms: ttl.then_some(3_600_000),
        ttl_cleanup_entries: n + 1,
        ..StoreConfig::default()
    };
    let (plain_dir, ttl_dir) = (dir.join("ttl-plain"), dir.join("ttl"));
    let mut plain = open_stack_with(&plain_dir, config(false));
    let mut with_ttl = open_stack_with(&ttl_dir, config(true));
    let mut buf = Vec::with_capacity(VALUE_BYTES);
    let (mut t_plain, mut t_ttl) = (Duration::ZERO, Duration::ZERO);
    let chunk = n.div_ceil(CHUNKS);
    for (c, part) in keys.chunks(chunk).enumerate() {
        let base = c * chunk;
        let put = |s: &mut Stack, buf: &mut Vec<u8>| {
            let t = Instant::now();
            for (j, k) in part.iter().enumerate() {
                value_of(base + j, buf);
                s.put(k, buf).expect("put");
            }
            t.elapsed()
        };
        if c % 2 == 0 {
            t_plain += put(&mut plain, &mut buf);
            t_ttl += put(&mut with_ttl, &mut buf);
        } else {
            t_ttl += put(&mut with_ttl, &mut buf);
            t_plain += put(&mut plain, &mut buf);
        }
    }
    let t = Instant::now();
    plain.flush().expect("flush");
    t_plain += t.elapsed();
    let t = Instant::now();
    with_ttl.flush().expect("flush");
    t_ttl += t.elapsed();
    let mut rows = vec![("puts (+ final flush)", n, t_plain, t_ttl)];

    drop((plain, with_ttl));
    let mut plain = open_stack_with(&plain_dir, config(false));
    let mut with_ttl = open_stack_with(&ttl_dir, config(true));
    let mut cold: Vec<usize> = (0..n).collect();
    cold.shuffle(rng);
    let per_round = cold.len() / ROUNDS;
    let slices: Vec<&[usize]> = cold.chunks(per_round).take(ROUNDS).collect();
    let get_all = |s: &mut Stack, idx: &[usize]| {
        let t = Instant::now();
        for &i in idx {
            let v = s.get(&keys[i]).expect("get");
            assert_eq!(v.map(|v| v.len()), Some(VALUE_BYTES));
        }
        t.elapsed()
    };
    let (p, t) = paired(
        |r| get_all(&mut plain, slices[r]),
        |r| get_all(&mut with_ttl, slices[r]),
    );
    rows.push(("random gets, cache misses", per_round, p, t));
    let hot: Vec<usize> = (0..HOT_KEYS).map(|_| rng.gen_range(0..n)).collect();
    let hot_seq: Vec<usize> = (0..n).map(|_| hot[rng.gen_range(0..hot.len())]).collect();
    get_all(&mut plain, &hot);
    get_all(&mut with_ttl, &hot);
    let (p, t) = paired(
        |_| get_all(&mut plain, &hot_seq),
        |_| get_all(&mut with_ttl, &hot_seq),
    );
    rows.push(("hot-set gets, cache hits", n, p, t));

    // The expiry pass over every entry, none expired (the scan alone), vs a full scan of
    // the plain stack; then with every entry expired (scan + a tombstone each + the flush).
    let scan = |s: &mut Stack| {
        let t = Instant::now();
        let mut count = 0usize;
        for e in s.all().expect("scan") {
            count += usize::from(e.expect("scan").1.len() == VALUE_BYTES);
        }
        assert_eq!(count, n);
        t.elapsed()
    };
    let (p, t) = paired(
        |_| scan(&mut plain),
        |_| {
            let t = Instant::now();
            assert_eq!(with_ttl.inner_mut().expire().expect("expire"), 0);
            t.elapsed()
        },
    );
    rows.push(("expiry pass, nothing expired (vs full scan)", n, p, t));
    drop(with_ttl);
    clock.advance(2 * 3_600_000);
    let mut with_ttl = open_stack_with(
        &ttl_dir,
        StoreConfig {
            clock: clock.clock(),
            ..config(true)
        },
    );
    let t = Instant::now();
    assert_eq!(with_ttl.inner_mut().expire().expect("expire") as usize, n);
    with_ttl.flush().expect("flush");
    let removing = t.elapsed();
    assert!(with_ttl.inner_mut().all().expect("all").next().is_none());

    println!();
    println!("## TTL: the same stack with stores.<name>.ttl.ms vs without");
    println!();
    println!("| operation | ops | without TTL ops/s | with TTL ops/s | with/without | target | |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (i, (what, ops, p, t)) in rows.iter().enumerate() {
        let (rp, rt) = (*ops as f64 / p.as_secs_f64(), *ops as f64 / t.as_secs_f64());
        let target = (i < 3).then_some(0.9);
        println!(
            "| {what} | {ops} | {rp:.0} | {rt:.0} | {:.2}x | {} | {} |",
            rt / rp,
            target.map_or("-".to_string(), |t| format!(">= {t:.1}x")),
            target.map_or("", |t| if rt / rp >= t { "met" } else { "NOT met" })
        );
    }
    println!(
        "| expiry pass, all {n} expired (scan + tombstones + flush) | {n} | - | {:.0} | - | - | |",
        n as f64 / removing.as_secs_f64()
    );
}

/// `--ttl-ops N [--rounds R]`: gets and puts that hit the cache, the default stack over the
/// memory engine with `ttl.ms` (system clock) and without, best of `rounds` (default
/// `ROUNDS`) interleaved rounds of `n` each;
/// `only` = `plain` or `ttl` runs one stack only, one round (for callgrind).
fn ttl_ops(n: usize, only: Option<&str>, rounds: usize) {
    use gregor::store::config::EngineKind;
    use gregor::store::memory::MemoryEngine;
    let open = |ttl: bool| -> Stack {
        let config = StoreConfig {
            engine: EngineKind::Memory,
            ttl_ms: ttl.then_some(3_600_000),
            ..StoreConfig::default()
        };
        let engine = MemoryEngine::new("bench", config.stored_limits());
        Store::new(
            add_layers(Box::new(engine), &config),
            SerdeName::Bytes,
            SerdeName::Bytes,
        )
        .expect("typed store")
    };
    let keys: Vec<Vec<u8>> = (0..HOT_KEYS as u32)
        .map(|i| i.to_be_bytes().repeat(4))
        .collect();
    let value = vec![7u8; VALUE_BYTES];
    let (mut plain, mut with_ttl) = (open(false), open(true));
    let gets = |s: &mut Stack| {
        let t = Instant::now();
        for i in 0..n {
            let v = s.get(&keys[i % HOT_KEYS]).expect("get");
            assert_eq!(v.map(|v| v.len()), Some(VALUE_BYTES));
        }
        t.elapsed()
    };
    let puts = |s: &mut Stack| {
        let t = Instant::now();
        for i in 0..n {
            s.put(&keys[i % HOT_KEYS], &value).expect("put");
        }
        t.elapsed()
    };
    if let Some(only) = only {
        let s = if only == "ttl" {
            &mut with_ttl
        } else {
            &mut plain
        };
        let (p, g) = (puts(s), gets(s));
        let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
        println!("{only}: put {:.1} ns, get {:.1} ns", ns(p), ns(g));
        return;
    }
    let (p_put, t_put) = paired_rounds(rounds, |_| puts(&mut plain), |_| puts(&mut with_ttl));
    let (p_get, t_get) = paired_rounds(rounds, |_| gets(&mut plain), |_| gets(&mut with_ttl));
    let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!("cache hits, memory engine, {n} ops per round, best of {rounds}:");
    println!("| operation | without TTL ns/op | with TTL ns/op | with/without (speed) |");
    println!("|---|---:|---:|---:|");
    for (what, p, t) in [("put", p_put, t_put), ("get", p_get, t_get)] {
        println!(
            "| {what} | {:.1} | {:.1} | {:.2}x |",
            ns(p),
            ns(t),
            ns(p) / ns(t)
        );
    }
}
