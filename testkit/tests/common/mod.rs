//! rdkafka helpers shared by the smoke tests: produce keyed records, read partitions back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// A record read back: (partition, offset, key, value).
pub type Read = (i32, i64, String, String);

/// A client config for `bootstrap` with `extra` settings (e.g. `Kafka09::client_config()`).
pub fn config(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c
}

/// `count` records `key-i` → `value-i` (`prefix` in front of both), record i to partition
/// `i % partitions`, then flush. Panics if any is not acknowledged.
pub fn produce(
    base: &ClientConfig,
    producer_extra: &[(&str, &str)],
    topic: &str,
    partitions: i32,
    prefix: &str,
    count: usize,
) {
    let mut cfg = base.clone();
    cfg.set("message.timeout.ms", "30000");
    for (k, v) in producer_extra {
        cfg.set(*k, *v);
    }
    let producer: BaseProducer = cfg.create().expect("create producer");
    for i in 0..count {
        let key = format!("{prefix}key-{i}");
        let value = format!("{prefix}value-{i}");
        let record = BaseRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition((i as i32) % partitions);
        producer.send(record).map_err(|(e, _)| e).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush: every record acknowledged");
    assert_eq!(producer.in_flight_count(), 0);
}

/// Reads `expected` records from partitions `0..partitions` of `topic`, each from offset 0,
/// with manual assignment. Panics if they do not all arrive within 60 s.
pub fn read_all(base: &ClientConfig, topic: &str, partitions: i32, expected: usize) -> Vec<Read> {
    let mut cfg = base.clone();
    cfg.set("group.id", "gregor-testkit-smoke")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = cfg.create().expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .expect("add partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} records of {topic} in 60 s",
            out.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            Some(Ok(m)) => out.push((
                m.partition(),
                m.offset(),
                String::from_utf8(m.key().expect("key").to_vec()).expect("utf-8 key"),
                String::from_utf8(m.payload().expect("value").to_vec()).expect("utf-8 value"),
            )),
        }
    }
    // Nothing beyond what was expected.
    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        panic!(
            "unexpected record at {}:{} offset {}",
            m.topic(),
            m.partition(),
            m.offset()
        );
    }
    out.sort();
    out
}

/// Asserts that `got` is exactly batches of records from [`produce`] (each `(prefix, count)`,
/// produced in that order, each round-robin over `partitions`): per partition, contiguous
/// offsets from 0 and the keys and values in production order.
pub fn assert_records(got: &[Read], partitions: i32, batches: &[(&str, usize)]) {
    let mut want: BTreeMap<i32, Vec<(String, String)>> = BTreeMap::new();
    for (prefix, count) in batches {
        for i in 0..*count {
            want.entry((i as i32) % partitions)
                .or_default()
                .push((format!("{prefix}key-{i}"), format!("{prefix}value-{i}")));
        }
    }
    let mut expected = Vec::new();
    for (p, records) in want {
        for (offset, (k, v)) in records.into_iter().enumerate() {
            expected.push((p, offset as i64, k, v));
        }
    }
    expected.sort();
    assert_eq!(got.len(), expected.len(), "record count");
    assert_eq!(got, expected.as_slice());
}

/// Runs a future to completion on this thread (rdkafka's admin futures need no runtime).
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// Prints a timing line (shown with `--nocapture`, and in the output of a failing test).
pub fn timing(what: &str, d: Duration) {
    eprintln!("timing: {what}: {:.2} s", d.as_secs_f64());
}
