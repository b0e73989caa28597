//! Kafka benchmark (issue 8, part 8), on Apache Kafka 0.9.0.1 started by the test harness on
//! this machine (loopback), in one run:
//!
//! 1. **Restore vs raw consumer.** A changelog partition of N records (16-byte random keys,
//!    100-byte values) written through a RocksDB store and committed; the local store is
//!    deleted and reopened: a full restore from Kafka through `TaskStorage::open` (sorted SST
//!    ingestion). Baseline: a plain librdkafka consumer reading the same partition from
//!    offset 0 to its end (copying nothing), with librdkafka's default settings and, second
//!    baseline, with the settings gregor's bulk reader adds (8 MiB fetches, deep prefetch
//!    queue); gregor's readers alone. Goal: restore >= 0.8x the raw consumer. Best of two
//!    runs for each baseline, one run of the restore.
//! 2. **Count job on Kafka vs on the embedded log.** The built-in `count` job over the same M
//!    events (100k keys, 4 partitions, murmur2) on each backend; events/s of processing.
//!
//! `cargo bench --bench kafka` (N = 1M, M = 1M) or `cargo bench --bench kafka -- --quick`
//! (N = M = 200k); `-- --restore-only` skips the count job. Needs the brokers installed by
//! `.ci/brokers`. Profiling one phase: `mkfifo /tmp/ctl; PERF_CTL_FIFO=/tmp/ctl
//! PERF_PHASE=restore perf record --control=fifo:/tmp/ctl -D -1 -- BENCH_BINARY --bench`
//! (phases: `restore`, `raw`, `reader`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gregor::backend::kafka::{KafkaBackend, KafkaSettings};
use gregor::backend::{Backend, RecordBatch, TopicPartition};
use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::restore::NoProgress;
use gregor::runtime::{JobConfig, RunOptions, builtin, run_job, run_job_on};
use gregor::statedir::StateDir;
use gregor::store::config::StoreConfig;
use gregor::task_storage::{TaskStorage, TaskStorageContext};
use gregor_testkit::Kafka09;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: u32 = 4;
const KEYS: u64 = 100_000;

fn settings(kafka: &Kafka09, job: &str) -> KafkaSettings {
    let mut s = KafkaSettings::new(job, &kafka.bootstrap());
    for (k, v) in Kafka09::client_config() {
        s.client.insert(k.to_string(), v.to_string());
    }
    s
}

fn open(backend: &Arc<dyn Backend>, state: &StateDir, config: &StoreConfig) -> (TaskStorage, f64) {
    let ctx = TaskStorageContext {
        backend: Arc::clone(backend),
        state,
        task: "bench.partition-0",
        changelog_partition: 0,
    };
    let configs = BTreeMap::from([("s".to_string(), config.clone())]);
    let t = Instant::now();
    let (storage, _) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
    (storage, t.elapsed().as_secs_f64())
}

/// The consumer settings gregor's bulk (restore) reader adds to librdkafka's defaults
/// (`src/backend/kafka/reader.rs`), for the second baseline.
const BULK_SETTINGS: &[(&str, &str)] = &[
    ("fetch.message.max.bytes", "8388608"),
    ("queued.min.messages", "1000000"),
];

/// A plain consumer (librdkafka's defaults plus `extra`) reading `topic`/0 from offset 0 to
/// its end; returns (records, bytes, s).
fn raw_consume(s: &KafkaSettings, topic: &str, extra: &[(&str, &str)]) -> (u64, u64, f64) {
    let mut cc = ClientConfig::new();
    for (k, v) in &s.client {
        cc.set(k, v);
    }
    for (k, v) in extra {
        cc.set(*k, *v);
    }
    cc.set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let t = Instant::now();
    let consumer: BaseConsumer = cc.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                n += 1;
                bytes +=
                    (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    (n, bytes, t.elapsed().as_secs_f64())
}

/// With `PERF_CTL_FIFO` set (`perf record --control=fifo:PATH -D -1 ...`), profiles one
/// phase only, `PERF_PHASE` (`restore`, the default; `raw`; `reader`): sends `cmd`
/// ("enable" / "disable") to perf around it.
fn perf_control(phase: &str, cmd: &str) {
    let wanted = std::env::var("PERF_PHASE").unwrap_or_else(|_| "restore".into());
    if let Some(path) = std::env::var_os("PERF_CTL_FIFO")
        && wanted == phase
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        writeln!(f, "{cmd}").unwrap();
    }
}

fn restore_vs_raw(kafka: &mut Kafka09, n: u64) {
    let s = settings(kafka, "bench");
    kafka.create_topic(&s.checkpoint_topic, 1, true);
    kafka.create_topic("bench-changelog", 1, true);
    let backend: Arc<dyn Backend> = Arc::new(KafkaBackend::connect(s.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let config = StoreConfig {
        changelog: Some("bench-changelog".into()),
        ..StoreConfig::default()
    };
    let (mut storage, _) = open(&backend, &state, &config);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (mut key, mut value) = ([0u8; 16], [0u8; 100]);
    let t = Instant::now();
    for _ in 0..n {
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
    let fill = t.elapsed().as_secs_f64();
    drop(storage);
    println!(
        "fill: {n} puts through the store stack into Kafka, committed: {:.0} puts/s",
        n as f64 / fill
    );

    // Raw consumer first and again after the restore (page cache warm for both; best of 2).
    let (raw_n, raw_bytes, raw1) = raw_consume(&s, "bench-changelog", &[]);
    let (_, _, tuned1) = raw_consume(&s, "bench-changelog", BULK_SETTINGS);
    assert_eq!(raw_n, n);
    std::fs::remove_dir_all(state.task_dir("bench.partition-0").join("stores")).unwrap();
    perf_control("restore", "enable");
    let (mut storage, restore_secs) = open(&backend, &state, &config);
    perf_control("restore", "disable");
    let restored = storage.store("s").unwrap().stack().all().unwrap().count() as u64;
    assert!(
        restored > n * 99 / 100 && restored <= n,
        "restored {restored} of {n}"
    );
    perf_control("raw", "enable");
    let (_, _, raw2) = raw_consume(&s, "bench-changelog", &[]);
    let (_, _, tuned2) = raw_consume(&s, "bench-changelog", BULK_SETTINGS);
    perf_control("raw", "disable");
    // gregor's readers alone, no engine: the bulk reader into one reused buffer (what a full
    // restore reads through), and the input reader handing out owned records.
    let tp = TopicPartition::new("bench-changelog", 0);
    perf_control("reader", "enable");
    let t = Instant::now();
    let mut reader = backend.open_bulk_reader(&tp, 0).unwrap();
    let (mut seen, mut batch) = (0u64, RecordBatch::new());
    loop {
        batch.clear();
        let read = reader.read_into(&mut batch, 8192).unwrap();
        if read == 0 {
            break;
        }
        seen += read as u64;
    }
    let bulk_secs = t.elapsed().as_secs_f64();
    perf_control("reader", "disable");
    assert_eq!(seen, n);
    let t = Instant::now();
    let mut reader = backend.open_reader(&tp, 0).unwrap();
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
    let raw = raw1.min(raw2);
    let mb = raw_bytes as f64 / 1e6;
    println!(
        "gregor's Kafka bulk reader alone (read_into, restore's reader): {n} records in {bulk_secs:.3}s ({:.0} records/s; {:.3}x raw)",
        n as f64 / bulk_secs,
        raw / bulk_secs
    );
    println!(
        "gregor's Kafka input reader alone (next_batch): {n} records in {reader_secs:.3}s ({:.0} records/s; {:.3}x raw)",
        n as f64 / reader_secs,
        raw / reader_secs
    );
    println!(
        "raw consumer: {raw_n} records, {mb:.1} MB in {raw:.3}s ({:.0} records/s, {:.1} MB/s; runs {raw1:.3}s, {raw2:.3}s)",
        raw_n as f64 / raw,
        mb / raw
    );
    println!(
        "full restore from Kafka: {restored} keys in {restore_secs:.3}s ({:.0} records/s, {:.1} MB/s)",
        n as f64 / restore_secs,
        mb / restore_secs
    );
    let tuned = tuned1.min(tuned2);
    println!(
        "raw consumer with the bulk reader's settings: {:.3}s ({:.0} records/s; runs {tuned1:.3}s, {tuned2:.3}s)",
        tuned,
        raw_n as f64 / tuned
    );
    let ratio = raw / restore_secs;
    println!(
        "restore / raw consumer (speed ratio): {ratio:.3} (goal >= 0.8: {}); restore / raw consumer with the same settings: {:.3}",
        if ratio >= 0.8 { "met" } else { "NOT met" },
        tuned / restore_secs
    );
}

const JOB: &str = r#"
[job]
name = "bench-count"
task = "count"
inputs = ["in"]

[stores.counts]
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#;

fn count_job(kafka: &mut Kafka09, events: u64) {
    // The same events on both backends.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let keys: Vec<String> = (0..events)
        .map(|_| format!("key-{:06}", rng.gen_range(0..KEYS)))
        .collect();

    // Embedded.
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    {
        let logs = LogDir::open(state.root()).unwrap();
        let topic = logs
            .create_topic("in", PARTITIONS, TopicConfig::default())
            .unwrap();
        let mut parts: Vec<_> = (0..PARTITIONS)
            .map(|p| topic.open_partition(p).unwrap().0)
            .collect();
        for (i, key) in keys.iter().enumerate() {
            let p = partition_for_key(key.as_bytes(), PARTITIONS);
            parts[p as usize]
                .append(i as i64, key.as_bytes(), Some(b"1"))
                .unwrap();
        }
        for p in &mut parts {
            p.sync().unwrap();
        }
    }
    let job = JobConfig::from_toml_str("<bench>", JOB).unwrap();
    let factory = builtin::factory("count").unwrap();
    let opts = || RunOptions {
        until_end: true,
        progress: Box::new(NoProgress),
        ..RunOptions::new()
    };
    let emb = run_job(&state, &job, &factory, opts()).unwrap();
    assert_eq!(emb.processed, events);

    // Kafka.
    let s = settings(kafka, "bench-count");
    kafka.create_topic(&s.checkpoint_topic, 1, true);
    kafka.create_topic("in", PARTITIONS, false);
    kafka.create_topic("counts-changelog", PARTITIONS, true);
    let backend = KafkaBackend::connect(s).unwrap();
    {
        let mut sink = backend.open_sink("producer").unwrap();
        for key in &keys {
            let tp = TopicPartition::new("in", partition_for_key(key.as_bytes(), PARTITIONS));
            sink.send(&tp, 0, key.as_bytes(), Some(b"1")).unwrap();
        }
        sink.flush().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let kfk = run_job_on(Arc::new(backend), &state, &job, &factory, opts()).unwrap();
    assert_eq!(kfk.processed, events);
    let rate = |st: &gregor::runtime::RunStats| st.processed as f64 / st.elapsed.as_secs_f64();
    println!(
        "count job, {events} events, {KEYS} keys, {PARTITIONS} partitions: embedded {:.0} events/s ({:.3}s, {} commits); Kafka {:.0} events/s ({:.3}s, {} commits); Kafka / embedded {:.3}",
        rate(&emb),
        emb.elapsed.as_secs_f64(),
        emb.commits,
        rate(&kfk),
        kfk.elapsed.as_secs_f64(),
        kfk.commits,
        rate(&kfk) / rate(&emb)
    );
}

fn main() {
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
        "machine: {} cores, {cpu}; mode: {}; Apache Kafka 0.9.0.1 on loopback (gregor-testkit)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick { "quick" } else { "full" }
    );
    let mut kafka = Kafka09::start();
    restore_vs_raw(&mut kafka, n);
    if !std::env::args().any(|a| a == "--restore-only") {
        count_job(&mut kafka, n);
    }
}
