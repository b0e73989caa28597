//! `gregor demo`: generates a page-view stream into a local topic, runs the page-view
//! counter job over it on the embedded default (RocksDB stores with changelogs), and prints
//! the top pages, the top users and the throughput. Each run appends new page views and the
//! job resumes from its checkpoint, so counts accumulate across runs. With `--kafka
//! BOOTSTRAP` the page views, changelogs, output and checkpoints live in Kafka instead
//! (topics are created through the admin API; a broker without one, such as Kafka 0.9, gets
//! an error listing the `kafka-topics.sh` commands).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use gregor::backend::kafka::KafkaBackend;
use gregor::backend::{Backend, TopicPartition, TopicRole, TopicSpec};
use gregor::checkpoint::Checkpoint;
use gregor::config::FlatConfig;
use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;
use gregor::runtime::builtin::{self, top_n};
use gregor::runtime::{JobConfig, RunOptions, run_job, run_job_on, task_name};
use gregor::serde::{Serde, StringSerde, U64Serde};
use gregor::statedir::StateDir;
use gregor::store::stack;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};

use crate::{progress, run_cmd};

const TOPIC: &str = "page-views";

/// Demo settings.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Page views to generate in this run.
    #[arg(long, default_value_t = 500_000)]
    events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 20_000)]
    users: u64,
    /// Distinct pages.
    #[arg(long, default_value_t = 500)]
    pages: u64,
    /// Partitions of the page-view topic (= tasks), used when it is first created.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    #[command(flatten)]
    kafka: crate::kafka_topic::KafkaArgs,
}

fn job_config() -> Result<JobConfig> {
    job_config_on(None)
}

fn job_config_on(kafka: Option<&gregor::backend::kafka::KafkaSettings>) -> Result<JobConfig> {
    let mut c = FlatConfig::from_toml_str("<demo job>", JOB)?;
    if let Some(k) = kafka {
        c.set("job.system", "kafka");
        for (key, v) in &k.client {
            c.set(&format!("kafka.{key}"), v.as_str());
        }
    }
    Ok(JobConfig::from_flat(c)?)
}

const JOB: &str = r#"
        [job]
        name = "pageviews"
        task = "pageviews"
        inputs = ["page-views"]
        outputs = ["top-pages"]
        commit.ms = 1000
        window.ms = 2000

        [stores.page-views]
        key.serde = "string"
        value.serde = "u64"
        changelog = "page-views-changelog"

        [stores.user-views]
        key.serde = "string"
        value.serde = "u64"
        changelog = "user-views-changelog"

        [task]
        top.n = 5
    "#;

/// Generates page views into Kafka through gregor's producer (murmur2 partitions).
fn generate_kafka(backend: &KafkaBackend, args: &DemoArgs) -> Result<()> {
    let n = backend.ensure_topic(&TopicSpec {
        name: TOPIC.into(),
        partitions: args.partitions,
        role: TopicRole::Output,
    })?;
    let mut seed = 0;
    for p in 0..n {
        seed += backend.offsets(&TopicPartition::new(TOPIC, p))?.end;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sink = backend.open_sink("demo-generator")?;
    let now = gregor::changelog::now_ms();
    for _ in 0..args.events {
        let user = format!("user-{:05}", rng.gen_range(0..args.users));
        let page = format!("/page/{}", pick_page(&mut rng, args.pages));
        let p = partition_for_key(user.as_bytes(), n);
        let value = format!("{user}\t{page}");
        sink.send(
            &TopicPartition::new(TOPIC, p),
            now,
            user.as_bytes(),
            Some(value.as_bytes()),
        )?;
    }
    sink.flush()?;
    eprintln!(
        "generated {} page views into Kafka topic `{TOPIC}` ({n} partitions)",
        args.events
    );
    Ok(())
}

/// Page `p` of `pages` with a Zipf-like skew: a few pages get most views.
fn pick_page(rng: &mut impl Rng, pages: u64) -> u64 {
    let u: f64 = rng.r#gen();
    ((pages as f64).powf(u) - 1.0) as u64 % pages
}

fn generate(state: &StateDir, args: &DemoArgs) -> Result<()> {
    let logs = LogDir::open(state.root())?;
    let topic = logs.topic_or_create(TOPIC, args.partitions, TopicConfig::default())?;
    let n = topic.partitions();
    let mut parts = (0..n)
        .map(|p| topic.open_partition(p).map(|(p, _)| p))
        .collect::<Result<Vec<_>, _>>()?;
    let seed = parts.iter().map(|p| p.end_offset()).sum::<u64>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(args.events)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("generating page views [{bar:30}] {pos}/{len} {per_sec}")
            .expect("template")
            .progress_chars("=> "),
    );
    let now = gregor::changelog::now_ms();
    for i in 0..args.events {
        let user = format!("user-{:05}", rng.gen_range(0..args.users));
        let page = format!("/page/{}", pick_page(&mut rng, args.pages));
        let p = partition_for_key(user.as_bytes(), n);
        let value = format!("{user}\t{page}");
        parts[p as usize].append(now, user.as_bytes(), Some(value.as_bytes()))?;
        if i % 10_000 == 0 {
            bar.set_position(i);
        }
    }
    for p in &mut parts {
        p.sync()?;
    }
    bar.finish_and_clear();
    eprintln!(
        "generated {} page views into topic `{TOPIC}` ({n} partitions)",
        args.events
    );
    Ok(())
}

/// Sums a string -> u64 store over every task.
fn totals(state: &StateDir, tasks: u32, store: &str) -> Result<BTreeMap<String, u64>> {
    let job = job_config()?;
    let config = &job.stores[store];
    let mut sums = BTreeMap::new();
    for p in 0..tasks {
        let dir = state.store_dir(&task_name(&job.name, p), store);
        let mut engine = stack::open_engine(store, &dir, config)?;
        for e in engine.all()? {
            let (k, v) = e?;
            *sums.entry(StringSerde.decode(&k)?).or_insert(0) += U64Serde.decode(&v)?;
        }
    }
    Ok(sums)
}

/// Runs the demo.
pub fn run(state_dir: &Path, args: DemoArgs) -> Result<i32> {
    let state = StateDir::open(state_dir)?;
    let kafka = args.kafka.settings()?;
    let job = job_config_on(kafka.as_ref())?;
    let backend = match &kafka {
        Some(_) => Some(KafkaBackend::connect(job.kafka_settings())?),
        None => None,
    };
    let resumed = match &backend {
        Some(b) => b.read_checkpoint(&task_name("pageviews", 0))?.is_some(),
        None => Checkpoint::read(&state.checkpoint_path(&task_name("pageviews", 0)))?.is_some(),
    };
    match &backend {
        Some(b) => generate_kafka(b, &args)?,
        None => generate(&state, &args)?,
    }
    let factory = builtin::factory(&job.task).expect("built-in");
    let opts = RunOptions {
        until_end: true,
        stop: run_cmd::stop_on_signal()?,
        progress: progress::for_stderr(),
        assignment: None,
    };
    if resumed {
        eprintln!("resuming the page-view job from its checkpoint");
    }
    let stats = match backend {
        Some(b) => run_job_on(std::sync::Arc::new(b), &state, &job, &factory, opts)?,
        None => run_job(&state, &job, &factory, opts)?,
    };
    run_cmd::print_stats(&stats);
    let pages = totals(&state, stats.tasks, "page-views")?;
    let users = totals(&state, stats.tasks, "user-views")?;
    let total: u64 = pages.values().sum();
    println!(
        "\nTop pages ({total} views counted so far, {} pages, {} users):",
        pages.len(),
        users.len()
    );
    for (rank, (page, views)) in top_n(pages, 10).into_iter().enumerate() {
        println!("{:>3}. {page:<12} {views:>9} views", rank + 1);
    }
    println!("\nTop users:");
    for (rank, (user, views)) in top_n(users, 5).into_iter().enumerate() {
        println!("{:>3}. {user:<12} {views:>9} views", rank + 1);
    }
    println!(
        "\nthroughput: {:.0} events/s ({} events in {:.2}s); state in {}",
        stats.processed as f64 / stats.elapsed.as_secs_f64().max(1e-9),
        stats.processed,
        stats.elapsed.as_secs_f64(),
        state.root().display()
    );
    println!(
        "run `gregor --state-dir {} demo` again to add more page views and resume from the checkpoint",
        state.root().display()
    );
    Ok(0)
}
