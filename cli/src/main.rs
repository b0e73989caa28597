//! `gregor`: the command-line tool. Inspect and edit stores and embedded topics, run jobs,
//! and run the demo. Errors print one line and exit with status 2.

// One `unsafe` block, `restore_default_sigpipe` (a libc call), allowed where it is.
#![deny(unsafe_code)]

mod demo;
mod job_cmd;
mod kafka_topic;
mod progress;
mod run_cmd;
mod serve_cmd;
mod snapshot_cmd;
mod store_cmd;
mod topic;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc for the Rust side of the process (RocksDB's C++ keeps the system allocator): a
/// `gregor serve` PUT makes about 80 allocations, and glibc's malloc and free took about
/// 18,000 of its 78,000 user-space instructions (callgrind; docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Samza-style state stores and stream processing.
#[derive(Parser, Debug)]
#[command(
    name = "gregor",
    version,
    about = "Samza-style key-value state stores and stateful stream processing, embedded"
)]
struct Cli {
    /// The state directory (stores, logs, checkpoints).
    #[arg(
        long,
        global = true,
        env = "GREGOR_STATE_DIR",
        default_value = "gregor-state"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// `gregor topic`: where the topics are, and the verb.
#[derive(clap::Args, Debug)]
struct TopicArgs {
    #[command(flatten)]
    kafka: kafka_topic::KafkaArgs,
    #[command(subcommand)]
    cmd: topic::TopicCmd,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read and write a task's store offline.
    #[command(subcommand)]
    Store(store_cmd::StoreCmd),
    /// A job's tasks: print their checkpoints, reset them to start from scratch.
    #[command(subcommand)]
    Job(job_cmd::JobCmd),
    /// Consistent snapshots (backups) of a stopped job's state: create, verify, restore.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCmd),
    /// Create, inspect, produce to and consume from topics: the state directory's embedded
    /// log, or a Kafka cluster with --kafka BOOTSTRAP.
    Topic(TopicArgs),
    /// Run a job (a TOML file naming a built-in task) in this process.
    Run {
        /// The job file.
        job: PathBuf,
        /// Stop once every input is consumed to the end it had at start, and committed.
        #[arg(long)]
        until_end: bool,
        /// This process's number among --processors (0-based): it runs the tasks t with
        /// t mod N == I. Kafka jobs only; each process has its own state directory.
        #[arg(long, requires = "processors", default_value_t = 0)]
        processor_id: u32,
        /// How many processes run the job (Kafka jobs only).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        processors: u32,
        /// Serve the job's stores over HTTP on this address (IP:PORT; port 0 picks a free
        /// one, printed as `http: listening on ADDR`); overrides the job's `http.listen`.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Restore this snapshot (`gregor snapshot create`) into the state directory, which
        /// must be empty, before starting: the job resumes at the snapshot's commits.
        #[arg(long, value_name = "DIR")]
        from_snapshot: Option<PathBuf>,
    },
    /// Run the key-value service: a job of the `kv` task whose stores are read AND written
    /// over HTTP (writes go through its input topic). Without a job file, a ready-made one.
    Serve(serve_cmd::ServeArgs),
    /// Generate page views and run the page-view counter job over them (resumes on re-run).
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    restore_default_sigpipe();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GREGOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Store(cmd) => store_cmd::run(&cli.state_dir, cmd),
        Command::Job(cmd) => job_cmd::run(&cli.state_dir, cmd),
        Command::Snapshot(cmd) => snapshot_cmd::run(&cli.state_dir, cmd),
        Command::Topic(TopicArgs { kafka, cmd }) => match kafka.settings() {
            Err(e) => Err(e),
            Ok(Some(settings)) => kafka_topic::run(settings, cmd),
            Ok(None) => gregor::statedir::StateDir::open(&cli.state_dir)
                .map_err(anyhow::Error::from)
                .and_then(|_lock| topic::run(&cli.state_dir, cmd)),
        },
        Command::Run {
            job,
            until_end,
            processor_id,
            processors,
            http,
            from_snapshot,
        } => run_cmd::run(
            &cli.state_dir,
            &job,
            until_end,
            run_cmd::Processors {
                id: processor_id,
                count: processors,
            },
            http,
            from_snapshot.as_deref(),
        ),
        Command::Serve(args) => serve_cmd::run(&cli.state_dir, args),
        Command::Demo(args) => demo::run(&cli.state_dir, args),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        // Where SIGPIPE cannot end the process (not Unix), a reader that went away (`| head`)
        // ends it here, quietly, as SIGPIPE would.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// Makes a write to a closed pipe end the process quietly, as in C programs: the Rust runtime
/// ignores SIGPIPE, so every write to stdout after `| head` exits would fail with EPIPE, and
/// `println!` panics on that with a backtrace. With the default disposition the kernel ends
/// the process at that write instead, wherever it happens (every command, every print path).
/// That is safe for gregor: a command's durable work is done before it prints its result, and
/// anything cut short is recovered like a crash (`kill -9` is tested to be safe at any point).
#[cfg(unix)]
#[allow(unsafe_code)]
fn restore_default_sigpipe() {
    // signal(2) from the C library std already links; SIGPIPE is 13 and SIG_DFL is 0 on
    // every Unix Rust supports.
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: called first thing in `main`, before any other thread exists; it only resets
    // a signal disposition to the kernel default and installs no handler code.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_default_sigpipe() {}

/// Whether the error is a write to a pipe whose reader went away.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s.replace('\n', " ")
}
