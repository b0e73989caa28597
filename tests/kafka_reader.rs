//! The batch read API of the Kafka backend ([`LogReader::read_into`] on a reader from
//! [`Backend::open_bulk_reader`], what a full restore reads through) against the plain
//! reader ([`Backend::open_reader`] + [`LogReader::next_batch`]), on Apache Kafka 0.9.0.1
//! started by the test harness, and a full restore whose checkpointed end lies inside a read
//! batch.
//!
//! What is checked: on a partition the broker really compacted (offsets not contiguous) and
//! whose records were produced in compressed message sets (a fetch from inside one hands back
//! the whole set, records before the position included), both APIs return the same records
//! from every start position, never one below it, in offset order, and report the same
//! position; small batches cut anywhere keep that. A full restore stops at the checkpointed
//! changelog offset even when the records past it arrived in the same fetch and batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gregor::backend::kafka::{KafkaBackend, KafkaSettings};
use gregor::backend::{Backend, LogReader, RecordBatch, TopicPartition};
use gregor::restore::{NoProgress, RestoreKind};
use gregor::statedir::StateDir;
use gregor::store::config::StoreConfig;
use gregor::task_storage::{TaskStorage, TaskStorageContext};
use gregor_testkit::Kafka09;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

type Rec = (u64, Vec<u8>, Option<Vec<u8>>);

fn settings(kafka: &Kafka09, job: &str) -> KafkaSettings {
    let mut s = KafkaSettings::new(job, &kafka.bootstrap());
    for (k, v) in Kafka09::client_config() {
        s.client.insert(k.to_string(), v.to_string());
    }
    // Every read here goes to the end of the partition: the broker's empty answer there
    // comes after 100 ms instead of 500.
    s.client
        .insert("fetch.wait.max.ms".to_string(), "100".to_string());
    s.request_timeout = Duration::from_secs(20);
    s
}

/// Produces `records` to `topic`/0 in gzip-compressed message sets of many records each.
fn produce_compressed(s: &KafkaSettings, topic: &str, records: &[(String, Option<String>)]) {
    let mut cc = ClientConfig::new();
    for (k, v) in &s.client {
        cc.set(k, v);
    }
    cc.set("compression.codec", "gzip")
        .set("linger.ms", "20")
        .set("batch.num.messages", "37")
        .set("max.in.flight.requests.per.connection", "1");
    let producer: BaseProducer = cc.create().unwrap();
    for (k, v) in records {
        let mut r = BaseRecord::<str, str>::to(topic).partition(0).key(k);
        if let Some(v) = v {
            r = r.payload(v);
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Every record from `from` with the plain API, and the reader's position at the end.
fn read_plain(r: &mut dyn LogReader, max: usize) -> (Vec<Rec>, u64) {
    let mut out = Vec::new();
    loop {
        let b = r.next_batch(max).unwrap();
        if b.is_empty() {
            return (out, r.position());
        }
        out.extend(b.into_iter().map(|r| (r.offset, r.key, r.value)));
    }
}

/// Every record from `from` with the batch API (one batch reused, appended to and cleared
/// like a restore does), and the reader's position at the end.
fn read_batched(r: &mut dyn LogReader, max: usize) -> (Vec<Rec>, u64) {
    let mut out = Vec::new();
    let mut batch = RecordBatch::new();
    loop {
        let before = batch.len();
        let n = r.read_into(&mut batch, max).unwrap();
        assert_eq!(batch.len(), before + n, "read_into appends what it reports");
        assert!(n <= max);
        if let Some(last) = batch.last() {
            assert!(r.position() > last.offset);
        }
        if n == 0 || batch.len() > 100 {
            out.extend(
                batch
                    .iter()
                    .map(|r| (r.offset, r.key.to_vec(), r.value.map(<[u8]>::to_vec))),
            );
            batch.clear();
        }
        if n == 0 {
            return (out, r.position());
        }
    }
}

fn assert_in_order_from(records: &[Rec], from: u64, what: &str) {
    assert!(
        records.iter().all(|r| r.0 >= from),
        "{what}: a record below the position {from}: {:?}",
        records.iter().find(|r| r.0 < from)
    );
    assert!(
        records.windows(2).all(|w| w[0].0 < w[1].0),
        "{what}: offsets not increasing"
    );
}

#[test]
fn kafka09_batch_reads_match_plain_reads_on_a_compacted_compressed_partition() {
    let mut kafka = Kafka09::start();
    let s = settings(&kafka, "reader");
    kafka.create_topic(&s.checkpoint_topic, 1, true);
    let topic = "compacted";
    // Small segments and an eager cleaner, so that the broker compacts while the test waits.
    kafka.create_topic_with(
        topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "2048"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    );
    let backend = KafkaBackend::connect(s.clone()).unwrap();
    // 20 keys overwritten ~36 times each, some deleted: most records are compactable; every
    // 10th record has a key of its own, which compaction keeps (so gaps open between them).
    let records: Vec<(String, Option<String>)> = (0..800u32)
        .map(|i| {
            let key = if i % 10 == 4 {
                format!("solo-{i}")
            } else {
                format!("key-{:02}", i % 20)
            };
            let value = (i % 97 != 5).then(|| format!("value-{i}-{}", "x".repeat(i as usize % 50)));
            (key, value)
        })
        .collect();
    produce_compressed(&s, topic, &records);
    let tp = TopicPartition::new(topic, 0);
    let end = backend.offsets(&tp).unwrap().end;
    assert_eq!(end, records.len() as u64);

    // Wait for the cleaner: the partition must have gaps for this test to mean anything, and
    // the cleaner must be done (two reads 500 ms apart alike): a pass swaps in cleaned
    // segments one group at a time, so a read in the middle of one differs from the next.
    let started = Instant::now();
    let mut previous = None;
    let plain = loop {
        let (plain, _) = read_plain(&mut *backend.open_reader(&tp, 0).unwrap(), 1000);
        let contiguous = plain.windows(2).all(|w| w[1].0 == w[0].0 + 1);
        if !contiguous && plain.len() < records.len() / 2 && previous.as_ref() == Some(&plain) {
            break plain;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "Kafka 0.9 did not compact {topic} within 120 s ({} of {} records left)",
            plain.len(),
            records.len()
        );
        previous = Some(plain);
        std::thread::sleep(Duration::from_millis(500));
    };
    // Records still there, in offset order, each one as produced.
    assert_in_order_from(&plain, 0, "plain reader");
    for (offset, key, value) in &plain {
        let (k, v) = &records[*offset as usize];
        assert_eq!(key, k.as_bytes());
        assert_eq!(value.as_deref(), v.as_deref().map(str::as_bytes));
    }

    // From every kind of position: the start, inside a compressed set, inside a compaction
    // gap, the last record, the end, past the records still held.
    let gap = plain
        .windows(2)
        .find(|w| w[1].0 > w[0].0 + 1)
        .map(|w| w[0].0 + 1)
        .expect("a gap");
    let mut froms = vec![0, 1, 17, gap, plain[plain.len() / 2].0 + 1, end - 1, end];
    froms.extend(plain.iter().step_by(plain.len() / 3).map(|r| r.0));
    eprintln!(
        "compacted after {:.1}s; reading from {froms:?}",
        started.elapsed().as_secs_f64()
    );
    for from in froms {
        let expected: Vec<Rec> = plain.iter().filter(|r| r.0 >= from).cloned().collect();
        let (again, plain_position) =
            read_plain(&mut *backend.open_reader(&tp, from).unwrap(), 8192);
        assert_eq!(again, expected, "plain reads from {from}");
        assert!(plain_position >= expected.last().map_or(from, |r| r.0 + 1));
        for max in [1, 7, 8192] {
            let (got, position) =
                read_batched(&mut *backend.open_bulk_reader(&tp, from).unwrap(), max);
            assert_in_order_from(&got, from, "batch reader");
            assert_eq!(got, expected, "batch reads from {from}, max {max}");
            assert_eq!(position, plain_position, "positions from {from}, max {max}");
        }
    }
}

#[test]
fn kafka09_full_restore_stops_at_the_checkpoint_inside_a_batch() {
    let mut kafka = Kafka09::start();
    let s = settings(&kafka, "restore");
    kafka.create_topic(&s.checkpoint_topic, 1, true);
    let changelog = "store-changelog";
    kafka.create_topic(changelog, 1, true);
    let backend: Arc<dyn Backend> = Arc::new(KafkaBackend::connect(s.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let task = "restore.partition-0";
    let config = StoreConfig {
        changelog: Some(changelog.into()),
        ..StoreConfig::default()
    };
    let configs = BTreeMap::from([("s".to_string(), config)]);
    let ctx = TaskStorageContext {
        backend: Arc::clone(&backend),
        state: &state,
        task,
        changelog_partition: 0,
    };
    let (mut storage, _) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..300u32 {
        let (k, v) = (format!("k{:03}", i % 120), format!("v{i}"));
        let stack = storage.store("s").unwrap().stack();
        if i % 11 == 3 {
            stack.delete(k.as_bytes()).unwrap();
            expected.remove(&k);
        } else {
            stack.put(k.as_bytes(), v.as_bytes()).unwrap();
            expected.insert(k, v);
        }
    }
    storage.commit(&BTreeMap::new(), Vec::new()).unwrap();
    // The cache keeps the newest write per key until the commit.
    let committed = storage.checkpoint().unwrap().changelogs["s"];
    assert!(committed > 100, "{committed}");
    drop(storage);
    // Records past the checkpoint (a commit that flushed its changelog records and crashed
    // before its checkpoint), produced in the same compressed sets as the last committed
    // ones would be: overwrites, new keys, deletes.
    let past: Vec<(String, Option<String>)> = (0..50u32)
        .map(|i| {
            let k = format!("k{:03}", (i * 7) % 150);
            (k, (i % 5 != 0).then(|| format!("uncommitted-{i}")))
        })
        .collect();
    produce_compressed(&s, changelog, &past);
    assert_eq!(
        backend
            .offsets(&TopicPartition::new(changelog, 0))
            .unwrap()
            .end,
        committed + 50
    );

    // The local store is lost: a full restore reads the committed records and the 50 past
    // them in one batch (the bulk reader's batches hold 8192 records), loads the committed
    // ones only, then trims the rest.
    std::fs::remove_dir_all(state.task_dir(task).join("stores")).unwrap();
    let (mut storage, stats) = TaskStorage::open(&ctx, &configs, &mut NoProgress).unwrap();
    let stats = &stats[0];
    assert_eq!(stats.kind, RestoreKind::Full, "{stats:?}");
    assert_eq!(stats.records, committed, "{stats:?}");
    assert_eq!(stats.truncated, 50, "{stats:?}");
    let got: BTreeMap<String, String> = storage
        .store("s")
        .unwrap()
        .stack()
        .all()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
        })
        .collect();
    assert_eq!(got, expected);
}

/// Records a slow fetch hands over late are not skipped. The reader's end-of-partition event
/// is left in its queue while records are appended, so the watermark it reads on taking the
/// event is above its position; the broker holds each fetch for 5 s (`fetch.min.bytes` far
/// above what is there), so those records arrive seconds later. A reader that took the
/// offsets below the watermark as gaps after a timer (1 s, as it did) jumped past them and
/// dropped them on arrival as "below the position"; now it asks a probe consumer first.
#[test]
fn kafka09_records_a_slow_fetch_hands_over_late_are_not_skipped() {
    let mut kafka = Kafka09::start();
    let mut s = settings(&kafka, "slow");
    kafka.create_topic(&s.checkpoint_topic, 1, true);
    let topic = "slow";
    kafka.create_topic(topic, 1, false);
    let record = |i: u32| (format!("k{i}"), Some(format!("v{i}")));
    produce_compressed(&s, topic, &(0..5).map(record).collect::<Vec<_>>());
    s.client
        .insert("fetch.wait.max.ms".to_string(), "5000".to_string());
    s.client
        .insert("fetch.min.bytes".to_string(), "10000000".to_string());
    let backend = KafkaBackend::connect(s.clone()).unwrap();
    let tp = TopicPartition::new(topic, 0);
    let mut reader = backend.open_reader(&tp, 0).unwrap();
    let mut got: Vec<u64> = Vec::new();
    // Reads for `d` or until `n` records were read.
    let read_for = |reader: &mut Box<dyn LogReader>, got: &mut Vec<u64>, n: usize, d: Duration| {
        let started = Instant::now();
        while started.elapsed() < d && got.len() < n {
            got.extend(reader.next_batch(100).unwrap().iter().map(|r| r.offset));
        }
    };
    // Stops as soon as they are there, before the end-of-partition event that follows.
    read_for(&mut reader, &mut got, 5, Duration::from_secs(20));
    assert_eq!(got, (0..5).collect::<Vec<_>>(), "the first five records");
    // The fetch at offset 5 comes back empty after 5 s: the end-of-partition event waits in
    // the reader's queue (nothing polls it) while five more records are appended.
    std::thread::sleep(Duration::from_millis(5500));
    produce_compressed(&s, topic, &(5..10).map(record).collect::<Vec<_>>());
    assert_eq!(backend.offsets(&tp).unwrap().end, 10);
    let started = Instant::now();
    read_for(&mut reader, &mut got, 10, Duration::from_secs(12));
    eprintln!(
        "{} records after {:.1}s",
        got.len(),
        started.elapsed().as_secs_f64()
    );
    // Nothing more comes, and the reader stays at the end.
    read_for(&mut reader, &mut got, 11, Duration::from_secs(2));
    assert_eq!(
        got,
        (0..10).collect::<Vec<_>>(),
        "every record, none skipped as a gap"
    );
    assert_eq!(reader.position(), 10);
}
