//! The metrics as an operator scrapes them: a small job runs (counting, a poison message
//! skipped, a commit, then a restart that restores its store from the changelog) with the
//! Prometheus exporter (`metrics-exporter-prometheus`) as the global recorder; the rendered
//! text must contain every gregor metric with its `job`, `task` and `store` labels, and pass
//! `promtool check metrics` (Debian package `prometheus`, installed by `.ci/deps`). Without
//! promtool the test FAILS, saying so: it is never skipped silently.
//!
//! One test in this file: the recorder is process-global.

use std::path::Path;

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::restore::NoProgress;
use gregor::runtime::{
    Envelope, JobConfig, RunOptions, StreamTask, TaskContext, TaskError, TaskFactory, run_job,
};
use gregor::statedir::StateDir;
use gregor::telemetry as t;
use metrics_exporter_prometheus::PrometheusBuilder;

#[path = "support/promtool.rs"]
mod promtool;
use promtool::promtool_check;

const PARTITIONS: u32 = 2;

/// Counts keys into `counts`; fails on the key `poison` (skipped by the job's policy).
struct CountOrFail;

impl StreamTask for CountOrFail {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        if msg.key == b"poison" {
            return Err("a poison message".into());
        }
        let key = String::from_utf8_lossy(msg.key).into_owned();
        let mut counts = ctx.store::<String, u64>("counts")?;
        let n = counts.get(&key)?.unwrap_or(0);
        counts.put(&key, &(n + 1))?;
        // A store with ttl.ms: an entry already expired (the commits' passes remove it) and
        // one that lives an hour (pending expiry).
        let mut seen = ctx.store::<String, String>("seen")?;
        seen.put_expiring_at(&key, &"x".to_string(), 1)?;
        seen.put(&"last".to_string(), &key)?;
        Ok(())
    }
}

fn produce(state: &Path) {
    let logs = LogDir::open(state).unwrap();
    let topic = logs
        .create_topic("in", PARTITIONS, TopicConfig::default())
        .unwrap();
    let mut parts: Vec<_> = (0..PARTITIONS)
        .map(|p| topic.open_partition(p).unwrap().0)
        .collect();
    for i in 0..500u32 {
        let key = if i == 250 {
            "poison".to_string()
        } else {
            format!("key-{}", i % 37)
        };
        let p = partition_for_key(key.as_bytes(), PARTITIONS);
        parts[p as usize]
            .append(i as i64, key.as_bytes(), Some(b"1"))
            .unwrap();
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
}

fn run(state: &StateDir, job: &JobConfig) -> u64 {
    let factory: TaskFactory = Box::new(|_| Box::new(CountOrFail));
    let opts = RunOptions {
        until_end: true,
        progress: Box::new(NoProgress),
        ..RunOptions::new()
    };
    run_job(state, job, &factory, opts).unwrap().processed
}

#[test]
fn a_jobs_metrics_render_for_prometheus_and_pass_promtool() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
    t::describe();

    let dir = tempfile::tempdir().unwrap();
    produce(dir.path());
    let job = JobConfig::from_toml_str(
        "<prometheus test>",
        r#"
        [job]
        name = "clicks"
        task = "count-or-fail"
        inputs = ["in"]
        process.error = "skip"

        [metrics]
        recording.level = "debug"

        [stores.counts]
        key.serde = "string"
        value.serde = "u64"
        changelog = "counts-changelog"

        [stores.seen]
        key.serde = "string"
        value.serde = "string"
        changelog = "seen-changelog"
        ttl.ms = 3600000
        "#,
    )
    .unwrap();
    {
        let state = StateDir::open(dir.path()).unwrap();
        assert!(run(&state, &job) >= 500);
    }
    // The local stores lost: the restart restores them from the changelog.
    for p in 0..PARTITIONS {
        let stores = dir
            .path()
            .join("tasks")
            .join(format!("clicks.partition-{p}"))
            .join("stores");
        std::fs::remove_dir_all(&stores).unwrap();
    }
    {
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(run(&state, &job), 0, "everything was committed");
    }

    let text = handle.render();
    let labels = r#"job="clicks",task="clicks.partition-0""#;
    let store = format!(r#"{labels},store="counts""#);
    for (name, extra) in [
        (t::STORE_OPERATIONS, format!(r#"{store},operation="get""#)),
        (t::STORE_OPERATIONS, format!(r#"{store},operation="put""#)),
        (t::STORE_READ_BYTES, store.clone()),
        (t::STORE_WRITTEN_BYTES, store.clone()),
        (t::STORE_CACHE_HITS, store.clone()),
        (t::STORE_CACHE_MISSES, store.clone()),
        (t::STORE_CACHE_BYTES, store.clone()),
        (t::STORE_CACHE_ENTRIES, store.clone()),
        (t::CHANGELOG_RECORDS, store.clone()),
        (t::CHANGELOG_BYTES, store.clone()),
        (t::RESTORE_RECORDS, store.clone()),
        (t::RESTORE_BYTES, store.clone()),
        (t::RESTORE_PROGRESS, store.clone()),
        (t::RESTORE_DURATION, store.clone()),
        (t::COMMITS, labels.to_string()),
        (
            t::INPUT_LAG,
            format!(r#"{labels},topic="in",partition="0""#),
        ),
    ] {
        let series = format!("{name}{{{extra}}}");
        assert!(
            text.lines().any(|l| l.starts_with(&series)),
            "{series} missing from:\n{text}"
        );
    }
    // Histograms (latency with recording.level = debug; commit duration always).
    for name in [t::STORE_OPERATION_DURATION, t::COMMIT_DURATION] {
        assert!(
            text.contains(&format!("# TYPE {name} summary"))
                || text.contains(&format!("# TYPE {name} histogram")),
            "{name} missing from:\n{text}"
        );
    }
    // The poison message, counted once under its task.
    let skipped: f64 = text
        .lines()
        .filter(|l| l.starts_with(t::SKIPPED_MESSAGES))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(skipped, 1.0, "{text}");
    // The restart restored records, and the lag is 0 at the end.
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
    };
    assert!(value(&format!("{}{{{store}}}", t::RESTORE_RECORDS)) > 0.0);
    let seen = format!(r#"{labels},store="seen""#);
    assert!(value(&format!("{}{{{seen}}}", t::STORE_EXPIRED_ENTRIES)) > 0.0);
    assert!(value(&format!("{}{{{seen}}}", t::STORE_PENDING_EXPIRY)) >= 1.0);
    assert_eq!(
        value(&format!(
            r#"{}{{{labels},topic="in",partition="0"}}"#,
            t::INPUT_LAG
        )),
        0.0
    );
    // Only gregor's names, all of them valid and documented.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(name.starts_with("gregor_"), "{line}");
        assert!(
            t::ALL.iter().any(|(n, ..)| name.starts_with(n)),
            "undocumented metric {name}"
        );
    }
    let (ok, out) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{out}\n--- text:\n{text}"
    );
}
