//! `gregor job checkpoints`, `gregor job reset` and `gregor store dump --job` on Kafka
//! (issues 11 and 8), with the release
//! binary and Apache Kafka 0.9.0.1 started by the test harness: both go through the Backend,
//! so the checkpoint topic is read, and a reset, which cannot truncate a Kafka changelog,
//! appends a tombstone per key: a job started from scratch afterwards, in a fresh state
//! directory (full restore from Kafka), counts every input message exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use gregor::backend::kafka::KafkaBackend;
use gregor::backend::{Backend, TopicPartition};
use gregor::partitioner::partition_for_key;
use gregor::runtime::JobConfig;
use gregor_testkit::Kafka09;

const BIN: &str = env!("CARGO_BIN_EXE_gregor");
const PARTITIONS: u32 = 2;

fn gregor(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("GREGOR_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(state: &Path, args: &[&str]) -> String {
    let o = gregor(state, args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "gregor {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn parse(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn dump(state: &Path) -> BTreeMap<String, u64> {
    parse(&ok(
        state,
        &["store", "dump", "--store", "counts", "--read-only"],
    ))
}

/// `store dump --job`: the committed state read from the Kafka changelog, from a state
/// directory that holds nothing of the job.
fn dump_from_kafka(dir: &Path, job: &str) -> BTreeMap<String, u64> {
    let empty = tempfile::tempdir_in(dir).unwrap();
    parse(&ok(
        empty.path(),
        &["store", "dump", "--job", job, "--store", "counts"],
    ))
}

#[test]
fn job_checkpoints_and_reset_on_kafka() {
    let mut kafka = Kafka09::start();
    let dir = tempfile::tempdir().unwrap();
    let mut client = format!("bootstrap.servers = \"{}\"\n", kafka.bootstrap());
    for (k, v) in Kafka09::client_config() {
        client.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    let job_file = dir.path().join("counts.toml");
    std::fs::write(
        &job_file,
        format!(
            "[job]\nname = \"counts\"\ntask = \"count\"\nsystem = \"kafka\"\ninputs = [\"in\"]\n\
             commit.ms = 200\n\n[kafka]\n{client}\n[stores.counts]\nkey.serde = \"string\"\n\
             value.serde = \"u64\"\nchangelog = \"counts-changelog\"\n"
        ),
    )
    .unwrap();
    let jf = job_file.to_str().unwrap();
    let job = JobConfig::from_file(&job_file).unwrap();
    let settings = job.kafka_settings();
    kafka.create_topic(&settings.checkpoint_topic, 1, true);
    kafka.create_topic("in", PARTITIONS, false);
    kafka.create_topic("counts-changelog", PARTITIONS, true);

    let backend = KafkaBackend::connect(settings).unwrap();
    let mut sink = backend.open_sink("producer").unwrap();
    let mut want = BTreeMap::new();
    for i in 0..600u64 {
        let key = format!("k{:02}", i % 37);
        let tp = TopicPartition::new("in", partition_for_key(key.as_bytes(), PARTITIONS));
        sink.send(&tp, 0, key.as_bytes(), Some(b"x")).unwrap();
        *want.entry(key).or_insert(0u64) += 1;
    }
    sink.flush().unwrap();

    let first = dir.path().join("state-1");
    ok(&first, &["run", jf, "--until-end"]);
    assert_eq!(dump(&first), want);
    assert_eq!(
        dump_from_kafka(dir.path(), jf),
        want,
        "the changelogs read up to the checkpoints hold the counts"
    );

    let json = ok(&first, &["job", "checkpoints", jf, "--json"]);
    let mut inputs = 0;
    let mut changelogs = 0;
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let cp = &v["checkpoint"];
        inputs += cp["inputs"]["in"]
            .as_object()
            .unwrap()
            .values()
            .map(|o| o.as_u64().unwrap())
            .sum::<u64>();
        changelogs += cp["changelogs"]["counts"].as_u64().unwrap();
    }
    assert_eq!(inputs, 600, "{json}");
    assert!(changelogs >= 37, "{json}");

    // Reset from another (fresh) state directory: everything needed is in Kafka.
    let second = dir.path().join("state-2");
    ok(&second, &["job", "reset", jf]);
    assert_eq!(
        dump_from_kafka(dir.path(), jf),
        BTreeMap::new(),
        "after a reset the committed changelogs hold nothing"
    );
    let shown = ok(&second, &["job", "checkpoints", jf]);
    assert!(
        !shown.contains("input ") && shown.contains("changelog counts"),
        "{shown}"
    );
    for p in 0..PARTITIONS {
        let end = backend
            .offsets(&TopicPartition::new("counts-changelog", p))
            .unwrap()
            .end;
        assert!(end > 0, "the changelog was not tombstoned");
    }
    ok(&second, &["run", jf, "--until-end"]);
    assert_eq!(
        dump(&second),
        want,
        "counts after a reset are not one pass over the input"
    );
    // And again from a third, empty state directory: a full restore of the new changelog.
    let third = dir.path().join("state-3");
    ok(&third, &["run", jf, "--until-end"]);
    assert_eq!(dump(&third), want);
    assert_eq!(dump_from_kafka(dir.path(), jf), want);
}
