//! Apache Kafka 0.9.0.1 through the harness, with librdkafka (rdkafka's bundled build).

mod common;

use std::time::{Duration, Instant};

use common::{assert_records, config, produce, read_all, timing};
use gregor_testkit::{Kafka09, ZooKeeper};

/// Produce keyed records to a compacted topic, read them back from offset 0, kill -9 the
/// broker, restart it and read the same records again (kept on disk), then write more.
#[test]
fn produce_consume_kill9_restart() {
    let t = Instant::now();
    let mut kafka = Kafka09::start();
    timing(
        "ZooKeeper 3.4.6 start",
        kafka.zookeeper().unwrap().started_in(),
    );
    timing("Kafka 0.9.0.1 start", kafka.started_in());
    timing("ZooKeeper + Kafka 0.9.0.1 start, total", t.elapsed());

    let t = Instant::now();
    kafka.create_topic("smoke", 3, true);
    timing(
        "Kafka 0.9 create topic (TopicCommand + leaders)",
        t.elapsed(),
    );
    let meta = kafka.metadata(&["smoke"]).unwrap();
    assert_eq!(meta.topics[0].partitions.len(), 3);

    let cfg = config(&kafka.bootstrap(), &Kafka09::client_config());
    let t = Instant::now();
    produce(&cfg, &[], "smoke", 3, "a-", 300);
    timing("Kafka 0.9 produce 300 + flush", t.elapsed());
    let t = Instant::now();
    let got = read_all(&cfg, "smoke", 3, 300);
    timing("Kafka 0.9 read 300", t.elapsed());
    assert_records(&got, 3, &[("a-", 300)]);

    kafka.kill9();
    assert!(!kafka.is_running());
    assert!(kafka.metadata(&[]).is_err(), "a killed broker answers");
    let t = Instant::now();
    kafka.restart();
    timing("Kafka 0.9 restart after kill -9", t.elapsed());

    let got = read_all(&cfg, "smoke", 3, 300);
    assert_records(&got, 3, &[("a-", 300)]);
    produce(&cfg, &[], "smoke", 3, "b-", 30);
    let got = read_all(&cfg, "smoke", 3, 330);
    assert_records(&got, 3, &[("a-", 300), ("b-", 30)]);

    // Kafka's own console consumer (bin/kafka-console-consumer.sh on Java 17) reads them too.
    let t = Instant::now();
    let out = kafka
        .script("kafka-console-consumer.sh")
        .args([
            "--zookeeper",
            &kafka.zookeeper_connect(),
            "--topic",
            "smoke",
        ])
        .args([
            "--from-beginning",
            "--max-messages",
            "330",
            "--timeout-ms",
            "60000",
        ])
        .args(["--property", "print.key=true"])
        .output()
        .unwrap();
    timing("Kafka 0.9 console consumer, 330 records", t.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (0..300)
        .map(|i| format!("a-key-{i}\ta-value-{i}"))
        .chain((0..30).map(|i| format!("b-key-{i}\tb-value-{i}")))
        .collect();
    want.sort();
    assert_eq!(
        lines,
        want,
        "console consumer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two one-broker clusters on one ZooKeeper (each under its own chroot) stay apart; a clean
/// stop deregisters at once, so a restart after it does not wait for a session to expire.
#[test]
fn brokers_share_a_zookeeper_and_restart_after_a_clean_stop() {
    let zk = ZooKeeper::start();
    let mut a = Kafka09::start_on(&zk);
    let b = Kafka09::start_on(&zk);
    assert_ne!(a.zookeeper_connect(), b.zookeeper_connect());
    a.create_topic("only-on-a", 1, false);
    assert!(
        a.metadata(&[])
            .unwrap()
            .topics
            .iter()
            .any(|t| t.name == "only-on-a")
    );
    assert!(b.metadata(&[]).unwrap().topics.is_empty());

    let cfg = config(&a.bootstrap(), &Kafka09::client_config());
    produce(&cfg, &[], "only-on-a", 1, "", 10);
    a.stop();
    let t = Instant::now();
    a.restart();
    timing("Kafka 0.9 restart after a clean stop", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_records(&read_all(&cfg, "only-on-a", 1, 10), 1, &[("", 10)]);
}

/// A server that cannot come up fails the test loudly, with its log.
#[test]
fn a_broker_that_does_not_come_up_panics_with_its_log() {
    let zk = ZooKeeper::start();
    let mut kafka = Kafka09::start_on(&zk);
    kafka.kill9();
    // Take the broker's port, so the restart cannot bind it.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", kafka.port())).unwrap();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kafka.restart()))
        .expect_err("restart on a taken port must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("Kafka 0.9.0.1 failed during start-up"),
        "{msg}"
    );
    assert!(msg.contains("--- last lines of"), "{msg}");
    assert!(msg.contains("Address already in use"), "{msg}");
}

/// A consumer group on 0.9 (the old group protocol, librdkafka's default settings): subscribe,
/// read everything, commit, and a new consumer of the group sees the committed offsets.
#[test]
fn consumer_group_subscribe_and_commit() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let mut kafka = Kafka09::start();
    kafka.create_topic("grouped", 2, false);
    let cfg = config(&kafka.bootstrap(), &Kafka09::client_config());
    produce(&cfg, &[], "grouped", 2, "", 20);

    let mut ccfg = cfg.clone();
    ccfg.set("group.id", "gregor-testkit-group")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    let t = Instant::now();
    let consumer: BaseConsumer = ccfg.create().unwrap();
    consumer.subscribe(&["grouped"]).unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen < 20 {
        assert!(Instant::now() < deadline, "group read {seen} of 20 in 90 s");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            m.expect("group consume");
            seen += 1;
        }
    }
    timing("Kafka 0.9 group join + read 20", t.elapsed());
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    drop(consumer);

    let consumer: BaseConsumer = ccfg.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("grouped", 0);
    tpl.add_partition("grouped", 1);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .unwrap();
    for p in 0..2 {
        let e = committed.find_partition("grouped", p).unwrap();
        assert_eq!(e.offset(), Offset::Offset(10), "partition {p}");
    }
}

/// 0.9 really compacts: with small segments and the harness's 1 s cleaner back-off, older
/// values of a key disappear from closed segments and the newest value of every key stays.
#[test]
fn compaction_runs() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};
    use std::collections::BTreeMap;

    let mut kafka = Kafka09::start();
    kafka.create_topic_with(
        "compacted",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "4096"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    );
    let cfg = config(&kafka.bootstrap(), &Kafka09::client_config());
    let producer: BaseProducer = cfg.create().unwrap();
    for round in 0..50 {
        for k in 0..10 {
            let (key, value) = (format!("k{k}"), format!("v{round}"));
            let record = BaseRecord::to("compacted")
                .key(&key)
                .payload(&value)
                .partition(0);
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    let read = || {
        let mut c = cfg.clone();
        c.set("group.id", "gregor-testkit-compaction")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = c.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("compacted", 0, Offset::Offset(0))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let (mut n, mut newest) = (0, BTreeMap::new());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no end of partition in 30 s");
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    n += 1;
                    let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                    let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
                    newest.insert(key, value);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("{e}"),
                None => {}
            }
        }
        (n, newest)
    };
    let want: BTreeMap<String, String> = (0..10).map(|k| (format!("k{k}"), "v49".into())).collect();
    let t = Instant::now();
    loop {
        let (n, newest) = read();
        assert_eq!(newest, want);
        if n < 500 {
            timing("Kafka 0.9 compaction of 500 records", t.elapsed());
            eprintln!("compaction: 500 records -> {n}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no compaction in 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
