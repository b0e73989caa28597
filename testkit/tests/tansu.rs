//! tansu through the harness, with librdkafka (rdkafka's bundled build): topics created with
//! the admin API, the idempotent producer, reads from offset 0.

mod common;

use std::time::{Duration, Instant};

use common::{assert_records, block_on, config, produce, read_all, timing};
use gregor_testkit::Tansu;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

fn create_topics(tansu: &Tansu, topics: &[(&str, i32, bool)]) {
    let admin: AdminClient<DefaultClientContext> =
        config(&tansu.bootstrap(), &Tansu::client_config())
            .create()
            .expect("create admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions, compact)| {
            let t = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
            if *compact {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics(&new, &opts)).expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
}

/// Produce keyed records (idempotent producer) to a compacted topic created with the admin
/// API, read them back from offset 0.
#[test]
fn admin_create_produce_consume() {
    let t = Instant::now();
    let tansu = Tansu::start();
    timing("tansu start", tansu.started_in());
    timing("tansu start, total", t.elapsed());

    let t = Instant::now();
    create_topics(&tansu, &[("smoke", 3, true), ("plain", 1, false)]);
    timing("tansu create 2 topics (admin API)", t.elapsed());
    let meta = tansu.metadata(&["smoke"]).unwrap();
    assert_eq!(meta.topics[0].partitions.len(), 3);
    assert!(meta.topics[0].is_led(), "{meta:?}");

    let cfg = config(&tansu.bootstrap(), &Tansu::client_config());
    let t = Instant::now();
    produce(
        &cfg,
        &[("enable.idempotence", "true")],
        "smoke",
        3,
        "a-",
        300,
    );
    timing("tansu produce 300 (idempotent) + flush", t.elapsed());
    let t = Instant::now();
    let got = read_all(&cfg, "smoke", 3, 300);
    timing("tansu read 300", t.elapsed());
    assert_records(&got, 3, &[("a-", 300)]);

    // A second batch after the first is read (tansu keeps appending at the right offsets).
    produce(
        &cfg,
        &[("enable.idempotence", "true")],
        "smoke",
        3,
        "b-",
        30,
    );
    assert_records(
        &read_all(&cfg, "smoke", 3, 330),
        3,
        &[("a-", 300), ("b-", 30)],
    );

    produce(&cfg, &[], "plain", 1, "", 5);
    assert_records(&read_all(&cfg, "plain", 1, 5), 1, &[("", 5)]);
}

/// With `memory://` storage a killed tansu comes back empty: the harness restarts it on the
/// same port.
#[test]
fn kill9_and_restart_on_memory_storage_loses_the_data() {
    let mut tansu = Tansu::start();
    create_topics(&tansu, &[("gone", 1, false)]);
    let port = tansu.port();
    tansu.kill9();
    assert!(tansu.metadata(&[]).is_err(), "a killed broker answers");
    tansu.restart();
    assert_eq!(tansu.port(), port);
    let meta = tansu.metadata(&[]).unwrap();
    assert!(
        meta.topics.iter().all(|t| t.name != "gone"),
        "memory:// kept a topic across a kill: {meta:?}"
    );
}

/// With `s3://` storage (a local moto server) topics and records survive a kill -9.
#[test]
fn kill9_and_restart_on_s3_storage_keeps_the_data() {
    let t = Instant::now();
    let mut tansu = Tansu::start_s3();
    timing("moto S3 start", tansu.s3().unwrap().started_in());
    timing("tansu on s3 start", tansu.started_in());
    timing("moto + tansu on s3 start, total", t.elapsed());
    create_topics(&tansu, &[("kept", 2, true)]);
    let cfg = config(&tansu.bootstrap(), &Tansu::client_config());
    produce(&cfg, &[("enable.idempotence", "true")], "kept", 2, "", 40);
    assert_records(&read_all(&cfg, "kept", 2, 40), 2, &[("", 40)]);

    tansu.kill9();
    let t = Instant::now();
    tansu.restart();
    timing("tansu on s3 restart after kill -9", t.elapsed());
    assert_records(&read_all(&cfg, "kept", 2, 40), 2, &[("", 40)]);
    produce(&cfg, &[("enable.idempotence", "true")], "kept", 2, "b-", 10);
    assert_records(&read_all(&cfg, "kept", 2, 50), 2, &[("", 40), ("b-", 10)]);
}

/// A server that cannot come up fails the test loudly, with its log.
#[test]
fn a_broker_that_does_not_come_up_panics_with_its_log() {
    let err = std::panic::catch_unwind(|| Tansu::start_with_storage("nosuchengine://x/"))
        .err()
        .expect("a bad storage URL must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("tansu exited during start-up"), "{msg}");
    assert!(msg.contains("--- last lines of"), "{msg}");
    // The harness kept the failed server's directory (it was dropped while panicking); this
    // failure was wanted, so remove it.
    let log = msg
        .split("--- last lines of ")
        .nth(1)
        .and_then(|rest| rest.split(" ---").next())
        .expect("log path in the message");
    let dir = std::path::Path::new(log).parent().unwrap();
    assert!(dir.join("tansu.log").is_file(), "{}", dir.display());
    std::fs::remove_dir_all(dir).unwrap();
}
