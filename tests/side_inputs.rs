//! Side inputs (issue 13 part 3): a join of click events with a reference table of users
//! that every task reads whole (`stores.users.side.inputs = ["users"]`), on the embedded
//! backend: the table bootstrapped before any task runs, updated (and a row deleted) while
//! the job runs and seen by the tasks, rebuilt at a restart; writes to it refused with an
//! error naming the store and its topic.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gregor::backend::{Backend, TopicPartition};
use gregor::log::{LogDir, PartitionReader, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::restore::NoProgress;
use gregor::runtime::{
    Envelope, JobConfig, RunOptions, StreamTask, TaskContext, TaskError, TaskFactory,
    embedded_backend, run_job_on,
};
use gregor::statedir::StateDir;

const JOB: &str = r#"
[job]
name = "enrich"
task = "enrich"
inputs = ["clicks"]
outputs = ["enriched"]
commit.ms = 50

[stores.users]
engine = "rocksdb"
key.serde = "string"
value.serde = "string"
side.inputs = ["users"]
"#;

/// Sends `user -> "<name>:<page>"` for every click (`?` for a user not in the table), and
/// records what a write to the side-input store answered.
struct Enrich {
    write_errors: Arc<Mutex<Vec<String>>>,
}

impl StreamTask for Enrich {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let user = String::from_utf8_lossy(msg.key).into_owned();
        let page = String::from_utf8_lossy(msg.value.unwrap_or_default()).into_owned();
        let name = {
            let mut users = ctx.store::<String, String>("users")?;
            if page == "try-write" {
                let e = users.put(&user, &"hacked".to_string()).unwrap_err();
                self.write_errors.lock().unwrap().push(e.to_string());
            }
            users.get(&user)?.unwrap_or_else(|| "?".into())
        };
        ctx.send(
            "enriched",
            msg.key,
            Some(format!("{name}:{page}").as_bytes()),
        )?;
        Ok(())
    }
}

fn send(backend: &dyn Backend, topic: &str, partitions: u32, records: &[(&str, Option<&str>)]) {
    let mut sink = backend.open_sink("test-producer").unwrap();
    for (k, v) in records {
        let tp = TopicPartition::new(topic, partition_for_key(k.as_bytes(), partitions));
        sink.send(&tp, 0, k.as_bytes(), v.map(str::as_bytes))
            .unwrap();
    }
    sink.flush().unwrap();
}

/// The committed output, per user, in order.
fn enriched(root: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in 0..3 {
        let dir = root.join(format!("logs/enriched/{p}"));
        if !dir.exists() {
            continue;
        }
        for r in PartitionReader::open(&dir, 0)
            .unwrap()
            .read(usize::MAX)
            .unwrap()
        {
            out.entry(String::from_utf8(r.key).unwrap())
                .or_default()
                .push(String::from_utf8(r.value.unwrap()).unwrap());
        }
    }
    out
}

/// Sets the flag when dropped (also while unwinding from a failed assertion).
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn all_values(out: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    out.values().flatten().cloned().collect()
}

#[test]
fn a_join_with_a_side_input_table_updated_while_the_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let logs = LogDir::open(root).unwrap();
    logs.create_topic("users", 2, TopicConfig::compacted())
        .unwrap();
    logs.create_topic("clicks", 3, TopicConfig::default())
        .unwrap();
    drop(logs);
    let state = StateDir::open(root).unwrap();
    let job = JobConfig::from_toml_str("<test>", JOB).unwrap();
    assert!(job.side_inputs.contains_key("users") && !job.stores.contains_key("users"));
    let backend = Arc::new(embedded_backend(&state, &job).unwrap());
    let users: Vec<(String, String)> = (0..10)
        .map(|i| (format!("u{i}"), format!("name{i}-v1")))
        .collect();
    let rows: Vec<(&str, Option<&str>)> = users
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
        .collect();
    send(&*backend, "users", 2, &rows);
    let clicks: Vec<String> = (0..60).map(|i| format!("u{}", i % 10)).collect();
    let batch: Vec<(&str, Option<&str>)> =
        clicks.iter().map(|u| (u.as_str(), Some("home"))).collect();
    send(&*backend, "clicks", 3, &batch);

    let errors = Arc::new(Mutex::new(Vec::new()));
    let factory = {
        let errors = errors.clone();
        move || -> TaskFactory {
            let errors = errors.clone();
            Box::new(move |_| {
                Box::new(Enrich {
                    write_errors: errors.clone(),
                })
            })
        }
    };

    // The job runs; the table changes under it.
    let opts = RunOptions {
        until_end: false,
        progress: Box::new(NoProgress),
        ..RunOptions::new()
    };
    let stop = opts.stop.clone();
    let wait_for = |n: usize| {
        let t = Instant::now();
        while all_values(&enriched(root)).len() < n {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "output stuck below {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    std::thread::scope(|scope| {
        // A failed check below stops the job too, so the scope ends and the test fails
        // instead of waiting for the job forever.
        let _stop_on_exit = StopOnDrop(stop.clone());
        let running = {
            let (backend, job, state, factory) = (backend.clone(), &job, &state, factory());
            scope.spawn(move || run_job_on(backend, state, job, &factory, opts))
        };
        wait_for(60);
        assert!(
            all_values(&enriched(root))
                .iter()
                .all(|v| v.ends_with("-v1:home")),
            "bootstrapped before any click: {:?}",
            enriched(root)
        );
        send(
            &*backend,
            "users",
            2,
            &[("u3", Some("name3-v2")), ("u9", None)],
        );
        std::thread::sleep(Duration::from_millis(500));
        send(
            &*backend,
            "clicks",
            3,
            &[
                ("u3", Some("later")),
                ("u9", Some("later")),
                ("u4", Some("try-write")),
            ],
        );
        wait_for(63);
        stop.store(true, Ordering::SeqCst);
        running.join().unwrap().unwrap();
    });
    let out = enriched(root);
    assert_eq!(
        out["u3"].last().unwrap(),
        "name3-v2:later",
        "an update while running"
    );
    assert_eq!(out["u9"].last().unwrap(), "?:later", "a deleted row");
    assert_eq!(out["u4"].last().unwrap(), "name4-v1:try-write");
    let e = errors.lock().unwrap().clone();
    assert!(
        e.len() == 1 && e[0].contains("`users`") && e[0].contains("read-only"),
        "{e:?}"
    );

    // A restart rebuilds the table from the topic: the update and the delete are there.
    send(
        &*backend,
        "clicks",
        3,
        &[("u3", Some("after-restart")), ("u9", Some("after-restart"))],
    );
    let opts = RunOptions {
        until_end: true,
        progress: Box::new(NoProgress),
        ..RunOptions::new()
    };
    run_job_on(backend.clone(), &state, &job, &factory(), opts).unwrap();
    let out = enriched(root);
    assert_eq!(out["u3"].last().unwrap(), "name3-v2:after-restart");
    assert_eq!(out["u9"].last().unwrap(), "?:after-restart");
    assert_eq!(all_values(&out).len(), 65, "every click once");
}
