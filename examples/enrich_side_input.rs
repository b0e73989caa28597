//! Enriching events with a reference table every task reads (a side input): a `users`
//! topic (user id -> country) fills the side-input store `users`; the task looks each
//! page view's user up in it and counts views per country in its own store.
//!
//! ```sh
//! cargo run --release --example enrich_side_input -- /tmp/enrich-state
//! ```

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::{
    Envelope, JobConfig, RunOptions, StreamTask, TaskContext, TaskError, TaskFactory, run_job,
    task_name,
};
use gregor::statedir::StateDir;

/// Counts page views per country of the viewing user.
struct ViewsByCountry;

impl StreamTask for ViewsByCountry {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let user = String::from_utf8_lossy(msg.key).into_owned();
        let country = ctx
            .store::<String, String>("users")?
            .get(&user)?
            .unwrap_or_else(|| "unknown".into());
        let mut counts = ctx.store::<String, u64>("views-by-country")?;
        let n = counts.get(&country)?.unwrap_or(0);
        counts.put(&country, &(n + 1))?;
        Ok(())
    }
}

const JOB: &str = r#"
    [job]
    name = "enrich"
    task = "enrich-example"
    inputs = ["views"]

    [stores.users]                 # every task reads all of topic `users`
    key.serde = "string"
    value.serde = "string"
    side.inputs = ["users"]

    [stores.views-by-country]
    key.serde = "string"
    value.serde = "u64"
    changelog = "views-by-country-changelog"
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "enrich-state".into());
    let state = StateDir::open(dir.as_ref())?;
    let logs = LogDir::open(state.root())?;
    let produce = |topic: &str, partitions: u32, records: &[(&str, &str)], compact: bool| {
        let config = if compact {
            TopicConfig::compacted()
        } else {
            TopicConfig::default()
        };
        let t = logs.topic_or_create(topic, partitions, config)?;
        for (k, v) in records {
            let (mut p, _) = t.open_partition(partition_for_key(k.as_bytes(), partitions))?;
            p.append(0, k.as_bytes(), Some(v.as_bytes()))?;
            p.sync()?;
        }
        Ok::<_, gregor::log::LogError>(())
    };
    // The reference table (2 partitions) and the events (3 partitions): a task reads one
    // partition of `views` but all of `users`.
    produce(
        "users",
        2,
        &[("ann", "NL"), ("bob", "FR"), ("cho", "KR"), ("dee", "NL")],
        true,
    )?;
    let views: Vec<(&str, &str)> = ["ann", "bob", "cho", "dee", "ann", "eve"]
        .iter()
        .map(|u| (*u, "/home"))
        .collect();
    produce("views", 3, &views, false)?;

    let job = JobConfig::from_toml_str("<enrich example>", JOB)?;
    let factory: TaskFactory = Box::new(|_task| Box::new(ViewsByCountry));
    let stats = run_job(
        &state,
        &job,
        &factory,
        RunOptions {
            until_end: true,
            ..RunOptions::new()
        },
    )?;
    println!("processed {} views", stats.processed);

    // Views per country, summed over the tasks (read from their changelogs' committed state).
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    for p in 0..3 {
        let dir = state.store_dir(&task_name("enrich", p), "views-by-country");
        if !dir.exists() {
            continue;
        }
        let o = gregor::task_storage::open_read_only(
            state.root(),
            &task_name("enrich", p),
            "views-by-country",
        )?;
        let mut engine = o.engine;
        for e in engine.all()? {
            let (k, v) = e?;
            let n = u64::from_be_bytes(v.as_slice().try_into()?);
            *totals.entry(String::from_utf8(k)?).or_default() += n;
        }
    }
    for (country, n) in totals {
        println!("{country}\t{n}");
    }
    Ok(())
}
