//! Word count with a task written in Rust: produce a few lines into an embedded topic, run
//! a job whose task splits lines into words and counts them in a RocksDB store with a
//! changelog, then read the counts back.
//!
//! ```sh
//! cargo run --release --example wordcount -- /tmp/wordcount-state
//! ```

use std::collections::BTreeMap;

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::{
    Envelope, JobConfig, RunOptions, StreamTask, TaskContext, TaskError, TaskFactory, run_job,
    task_name,
};
use gregor::statedir::StateDir;
use gregor::store::typed::Store;
use gregor::task_storage::{TaskStorage, TaskStorageContext};

/// Splits each line into words and counts them in store `words`.
struct WordCount;

impl StreamTask for WordCount {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let line = std::str::from_utf8(msg.value.unwrap_or_default())?;
        let mut words = ctx.store::<String, u64>("words")?;
        for word in line.split_whitespace() {
            let word = word.to_lowercase();
            let n = words.get(&word)?.unwrap_or(0);
            words.put(&word, &(n + 1))?;
        }
        Ok(())
    }
}

const JOB: &str = r#"
    [job]
    name = "wordcount"
    task = "wordcount-example"
    inputs = ["lines"]
    commit.ms = 500

    [stores.words]
    key.serde = "string"
    value.serde = "u64"
    changelog = "words-changelog"
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "wordcount-state".into());
    let state = StateDir::open(dir.as_ref())?;
    let logs = LogDir::open(state.root())?;

    // Produce some lines (keyed by line number) into a 2-partition topic.
    let topic = logs.topic_or_create("lines", 2, TopicConfig::default())?;
    let text = [
        "the quick brown fox",
        "jumps over the lazy dog",
        "the dog sleeps",
        "a fox runs",
    ];
    for (i, line) in text.iter().enumerate() {
        let key = i.to_string();
        let (mut p, _) =
            topic.open_partition(partition_for_key(key.as_bytes(), topic.partitions()))?;
        p.append(0, key.as_bytes(), Some(line.as_bytes()))?;
        p.sync()?;
    }

    // Run the job until it has consumed everything, with our own task.
    let job = JobConfig::from_toml_str("<wordcount example>", JOB)?;
    let factory: TaskFactory = Box::new(|_task| Box::new(WordCount));
    let stats = run_job(
        &state,
        &job,
        &factory,
        RunOptions {
            until_end: true,
            ..RunOptions::new()
        },
    )?;
    println!(
        "processed {} lines in {} tasks",
        stats.processed, stats.tasks
    );

    // Read the counts of every task back through the same store stack.
    let backend: std::sync::Arc<dyn gregor::backend::Backend> =
        std::sync::Arc::new(gregor::runtime::embedded_backend(&state, &job)?);
    let mut totals = BTreeMap::new();
    for p in 0..stats.tasks {
        let task = task_name(&job.name, p);
        let ctx = TaskStorageContext {
            backend: backend.clone(),
            state: &state,
            task: &task,
            changelog_partition: p,
        };
        let (mut storage, _) =
            TaskStorage::open(&ctx, &job.stores, &mut gregor::restore::NoProgress)?;
        let store = storage.store("words").expect("the job has a words store");
        let mut words = Store::<String, u64, _>::new(
            store.stack(),
            job.stores["words"].key_serde,
            job.stores["words"].value_serde,
        )?;
        for entry in words.all()? {
            let (word, n) = entry?;
            *totals.entry(word).or_insert(0) += n;
        }
    }
    for (word, n) in &totals {
        println!("{word}\t{n}");
    }
    Ok(())
}
