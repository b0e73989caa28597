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
//!    runs for each baseline and for the restore (`-- --restore-runs N` for more restores).
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

/// What a plain consumer did.
struct Raw {
    records: u64,
    bytes: u64,
    /// Seconds until the end-of-partition event (what "reading to its end" costs a consumer
    /// that does not know where the end is).
    to_eof: f64,
    /// Seconds until the last record arrived.
    to_last: f64,
}

/// A plain consumer (librdkafka's defaults plus `extra`) reading `topic`/0 from offset 0 to
/// its end.
fn raw_consume(s: &KafkaSettings, topic: &str, extra: &[(&str, &str)]) -> Raw {
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
    let (mut records, mut bytes, mut last) = (0u64, 0u64, t);
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                records += 1;
                bytes +=
                    (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    Raw {
        records,
        bytes,
        to_eof: t.elapsed().as_secs_f64(),
        to_last: (last - t).as_secs_f64(),
    }
}

/// Reads `tp` from 0 to its end with `read` (a batch per call, 0 at the end); returns
/// (records, seconds to the end, seconds to the last record).
fn read_all(mut read: impl FnMut() -> usize) -> (u64, f64, f64) {
    let t = Instant::now();
    let (mut seen, mut last) = (0u64, t);
    loop {
        let n = read();
        if n == 0 {
            return (seen, t.elapsed().as_secs_f64(), (last - t).as_secs_f64());
        }
        seen += n as u64;
        last = Instant::now();
    }
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

    // Raw consumers first and again after the restore (page cache warm for all; best of 2).
    let raw1 = raw_consume(&s, "bench-changelog", &[]);
    let tuned1 = raw_consume(&s, "bench-changelog", BULK_SETTINGS);
    assert_eq!(raw1.records, n);
    // Full restores (the local store deleted each time), best of `runs`.
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--restore-runs")
        .nth(1)
        .map_or(2, |v| v.parse().expect("--restore-runs N"));
    let mut restores = Vec::new();
    let mut restored = 0;
    for _ in 0..runs {
        std::fs::remove_dir_all(state.task_dir("bench.partition-0").join("stores")).unwrap();
        perf_control("restore", "enable");
        let (mut storage, secs) = open(&backend, &state, &config);
        perf_control("restore", "disable");
        restored = storage.store("s").unwrap().stack().all().unwrap().count() as u64;
        assert!(
            restored > n * 99 / 100 && restored <= n,
            "restored {restored} of {n}"
        );
        restores.push(secs);
    }
    let restore_secs = restores.iter().copied().fold(f64::INFINITY, f64::min);
    perf_control("raw", "enable");
    let raw2 = raw_consume(&s, "bench-changelog", &[]);
    let tuned2 = raw_consume(&s, "bench-changelog", BULK_SETTINGS);
    perf_control("raw", "disable");
    // gregor's readers alone, no engine: the bulk reader into one reused buffer (what a full
    // restore reads through), and the input reader handing out owned records.
    let tp = TopicPartition::new("bench-changelog", 0);
    perf_control("reader", "enable");
    let mut reader = backend.open_bulk_reader(&tp, 0).unwrap();
    let mut batch = RecordBatch::new();
    let (seen, bulk_eof, bulk_last) = read_all(|| {
        batch.clear();
        reader.read_into(&mut batch, 8192).unwrap()
    });
    perf_control("reader", "disable");
    assert_eq!(seen, n);
    let mut reader = backend.open_reader(&tp, 0).unwrap();
    let (seen, input_eof, input_last) = read_all(|| reader.next_batch(8192).unwrap().len());
    assert_eq!(seen, n);

    let best = |a: &Raw, b: &Raw| (a.to_eof.min(b.to_eof), a.to_last.min(b.to_last));
    let (raw, raw_last) = best(&raw1, &raw2);
    let (tuned, tuned_last) = best(&tuned1, &tuned2);
    let mb = raw1.bytes as f64 / 1e6;
    let rate = |secs: f64| n as f64 / secs;
    println!(
        "raw consumer: {n} records, {mb:.1} MB to the end-of-partition event in {raw:.3}s ({:.0} records/s, {:.1} MB/s; runs {:.3}s, {:.3}s); last record after {raw_last:.3}s",
        rate(raw),
        mb / raw,
        raw1.to_eof,
        raw2.to_eof
    );
    println!(
        "raw consumer with the bulk reader's settings: {tuned:.3}s ({:.0} records/s; runs {:.3}s, {:.3}s); last record after {tuned_last:.3}s",
        rate(tuned),
        tuned1.to_eof,
        tuned2.to_eof
    );
    println!(
        "gregor's Kafka bulk reader alone (read_into, restore's reader): {bulk_eof:.3}s ({:.0} records/s; {:.3}x raw); last record after {bulk_last:.3}s",
        rate(bulk_eof),
        raw / bulk_eof
    );
    println!(
        "gregor's Kafka input reader alone (next_batch): {input_eof:.3}s ({:.0} records/s; {:.3}x raw); last record after {input_last:.3}s",
        rate(input_eof),
        raw / input_eof
    );
    println!(
        "full restore from Kafka: {restored} keys in {restore_secs:.3}s ({:.0} records/s, {:.1} MB/s; runs {})",
        rate(restore_secs),
        mb / restore_secs,
        restores
            .iter()
            .map(|s| format!("{s:.3}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ratio = raw / restore_secs;
    println!(
        "restore / raw consumer (speed ratio): {ratio:.3} (goal >= 0.8: {}); vs the raw consumer's last record: {:.3}; vs the raw consumer with the same settings: {:.3} (its last record: {:.3})",
        if ratio >= 0.8 { "met" } else { "NOT met" },
        raw_last / restore_secs,
        tuned / restore_secs,
        tuned_last / restore_secs
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
