//! `gregor serve [--http ADDR] [JOB.toml]`: the key-value service (a job running the `kv`
//! task, with HTTP writes), and the HTTP set-up `gregor run --http` shares.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gregor::backend::Backend;
use gregor::backend::embedded::EmbeddedBackend;
use gregor::backend::kafka::KafkaBackend;
use gregor::log::TopicConfig;
use gregor::runtime::config::System;
use gregor::runtime::{JobConfig, RunOptions, builtin, embedded_backend, run_job_serving};
use gregor::serve::http::{self, HttpOptions, HttpServer, MetricsRender, ProcessInfo, Writes};
use gregor::serve::{KvWriter, Serving};
use gregor::statedir::StateDir;

use crate::progress;
use crate::run_cmd::{print_stats, stop_on_signal};

/// Where `gregor serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The ready-made job of `gregor serve` without a job file.
const BUILTIN_JOB: &str = r#"
[job]
name = "kv"
task = "kv"
inputs = ["kv-in"]

[stores.kv]
engine = "rocksdb"
key.serde = "string"
value.serde = "bytes"
changelog = "kv-changelog"
"#;

/// Partitions of the ready-made job's input topic when it is created (`--partitions`). One
/// by default: one log file, so a group commit is one fsync for every writer waiting, as
/// Redis's append-only file; N partitions are N tasks (and N fsyncs per round of writes).
const BUILTIN_PARTITIONS: u32 = 1;

/// `gregor serve`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where to listen for HTTP (IP:PORT; port 0 picks a free one). Default: the job's
    /// `http.listen`, else 127.0.0.1:8080.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// The ready-made job's input partitions (tasks), when its input topic is created on
    /// first start (default 1: one log, one fsync per group commit). Not with a job file.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: Option<u32>,
    /// A job file running the `kv` task; without one, the ready-made job `kv` (input
    /// `kv-in`, 1 partition unless `--partitions`, store `kv`: string keys, bytes values,
    /// changelog `kv-changelog`).
    job: Option<PathBuf>,
}

/// Installs the Prometheus recorder for the `metrics` facade in this process and returns
/// what renders it for `GET /metrics`. The one place metrics are exported from; metric
/// names are whatever the code records.
pub fn install_metrics() -> Result<MetricsRender> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus metrics recorder")?;
    gregor::telemetry::describe();
    let upkeep = handle.clone();
    // Histograms buffer samples until upkeep: without it they grow when nobody scrapes.
    std::thread::Builder::new()
        .name("gregor-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .context("starting the metrics upkeep thread")?;
    Ok(Arc::new(move || handle.render()))
}

/// Starts the HTTP server for `serving` (metrics installed) and prints where it listens.
pub fn start_http(
    serving: &Serving,
    listen: SocketAddr,
    process: ProcessInfo,
    writes: Option<Writes>,
) -> Result<HttpServer> {
    let server = http::start(
        serving.clone(),
        HttpOptions {
            listen,
            process,
            metrics: Some(install_metrics()?),
            writes,
            // The environment wins, so a token need not be written into a job file.
            auth_token: std::env::var("GREGOR_HTTP_AUTH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| serving.job().http_auth_token.clone()),
        },
    )?;
    eprintln!("http: listening on {}", server.local_addr());
    serving.set_advertised(server.local_addr().to_string());
    Ok(server)
}

/// The backend `job` runs on, with local state under `state`; `prepare` runs on an
/// embedded one first.
pub fn backend_for(
    state: &StateDir,
    job: &JobConfig,
    source: &str,
    prepare: impl FnOnce(&EmbeddedBackend) -> Result<()>,
) -> Result<Arc<dyn Backend>> {
    Ok(match job.system {
        System::Kafka => Arc::new(
            KafkaBackend::connect(job.kafka_settings())
                .with_context(|| format!("{source}: connecting to Kafka"))?,
        ),
        _ => {
            let backend = embedded_backend(state, job)?;
            prepare(&backend)?;
            Arc::new(backend)
        }
    })
}

/// Runs `gregor serve`.
pub fn run(state_dir: &Path, args: ServeArgs) -> Result<i32> {
    let (job, source) = match &args.job {
        Some(f) => (JobConfig::from_file(f)?, f.display().to_string()),
        None => (
            JobConfig::from_toml_str("gregor serve (built-in job)", BUILTIN_JOB)?,
            "gregor serve".to_string(),
        ),
    };
    if let (Some(_), Some(f)) = (args.partitions, &args.job) {
        bail!(
            "--partitions sets the ready-made job's input; {} names its own input topic (create it with `gregor topic create`)",
            f.display()
        );
    }
    if job.task != "kv" {
        bail!(
            "{source}: job.task = \"{}\": gregor serve runs the `kv` task (gregor run --http serves any job's stores read-only)",
            job.task
        );
    }
    let [input] = job.inputs.as_slice() else {
        bail!(
            "{source}: a key-value service has one input topic (job.inputs), found {}",
            job.inputs.len()
        );
    };
    let store = builtin::kv_store(&job);
    if !job.stores.contains_key(&store) {
        bail!("{source}: the kv task writes store `{store}`, but the job has no [stores.{store}]");
    }
    let listen = match args.http.or(job.http_listen) {
        Some(a) => a,
        None => DEFAULT_LISTEN
            .parse()
            .context("the default listen address")?,
    };
    let state = StateDir::open(state_dir)?;
    let backend = backend_for(&state, &job, &source, |backend| {
        if args.job.is_none() {
            // The ready-made job's input: created on first start.
            let want = args.partitions.unwrap_or(BUILTIN_PARTITIONS);
            let topic = backend
                .logs()
                .topic_or_create(input, want, TopicConfig::default())
                .with_context(|| format!("creating input topic `{input}`"))?;
            if let Some(asked) = args.partitions
                && topic.partitions() != asked
            {
                bail!(
                    "--partitions {asked}: input topic `{input}` exists with {} partitions; its writes stay where they are (a new state directory starts with {asked})",
                    topic.partitions()
                );
            }
        }
        Ok(())
    })?;
    let factory = builtin::factory("kv").context("the built-in kv task")?;
    let serving = Serving::new(job.clone(), true);
    let writer = KvWriter::start(Arc::clone(&backend), serving.clone(), input)?;
    let link = serving.link().context("serving link taken")?;
    let _server = start_http(
        &serving,
        listen,
        ProcessInfo { id: 0, count: 1 },
        Some(Writes { store, writer }),
    )?;
    let opts = RunOptions {
        until_end: false,
        stop: stop_on_signal()?,
        progress: progress::for_stderr(),
        assignment: None,
    };
    let stats = run_job_serving(backend, &state, &job, &factory, opts, link)?;
    print_stats(&stats);
    Ok(0)
}
