//! Page views with a windowed top-N, written as a Rust task: counts views per page in a
//! store and, every window, sends the task's current top pages to an output topic. Reads
//! the output topic back at the end (it only holds committed output).
//!
//! ```sh
//! cargo run --release --example pageviews_topn -- /tmp/pageviews-state
//! ```

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::builtin::top_n;
use gregor::runtime::{
    Envelope, JobConfig, RunOptions, StreamTask, TaskContext, TaskError, TaskFactory, run_job,
};
use gregor::statedir::StateDir;

/// Counts views per page and emits the top `n` pages of this task every window.
struct TopPages {
    n: usize,
}

impl StreamTask for TopPages {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let page = std::str::from_utf8(msg.value.unwrap_or_default())?.to_string();
        let mut views = ctx.store::<String, u64>("views")?;
        let n = views.get(&page)?.unwrap_or(0);
        views.put(&page, &(n + 1))?;
        Ok(())
    }

    fn window(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let top = {
            let mut views = ctx.store::<String, u64>("views")?;
            top_n(views.all()?.collect::<Result<Vec<_>, _>>()?, self.n)
        };
        for (rank, (page, n)) in top.into_iter().enumerate() {
            let line = format!("{}\t{page}\t{n}", rank + 1);
            ctx.send("top", page.as_bytes(), Some(line.as_bytes()))?;
        }
        Ok(())
    }

    fn close(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        // One last top-N so the output reflects every view processed.
        self.window(ctx)
    }
}

const JOB: &str = r#"
    [job]
    name = "top-pages"
    task = "top-pages"
    inputs = ["views"]
    outputs = ["top"]
    commit.ms = 200
    window.ms = 100

    [stores.views]
    key.serde = "string"
    value.serde = "u64"
    changelog = "views-changelog"
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "pageviews-state".into());
    let state = StateDir::open(dir.as_ref())?;
    let logs = LogDir::open(state.root())?;
    let topic = logs.topic_or_create("views", 1, TopicConfig::default())?;
    let (mut p, _) = topic.open_partition(partition_for_key(b"any", topic.partitions()))?;
    for i in 0..10_000u64 {
        let page = format!("/page/{}", (i * i) % 37 % 11);
        p.append(0, b"user", Some(page.as_bytes()))?;
    }
    p.sync()?;
    drop(p);

    let job = JobConfig::from_toml_str("<pageviews example>", JOB)?;
    let factory: TaskFactory = Box::new(|_| Box::new(TopPages { n: 3 }));
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

    // The last three records of the output are the final top 3.
    let (mut out, _) = logs.open_partition("top", 0)?;
    let end = out.end_offset();
    for r in out.read(end.saturating_sub(3), 3)? {
        println!(
            "{}",
            String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
        );
    }
    Ok(())
}
