//! `gregor store …`: offline inspection and editing of a task's store (one no job has open:
//! the state directory lock guarantees it).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::sync::Arc;

use gregor::backend::Backend;
use gregor::backend::embedded::{EmbeddedBackend, EmbeddedSettings};
use gregor::serde::SerdeName;
use gregor::statedir::StateDir;
use gregor::store::config::{EngineKind, StoreConfig};
use gregor::store::stack;
use gregor::task_storage::{self, ReadOnlyStore, TaskStorage, TaskStorageContext, TaskStore};

use crate::progress;

/// Which store, and how to create it if it does not exist yet.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The task owning the store.
    #[arg(long)]
    task: String,
    /// The store's name.
    #[arg(long)]
    store: String,
    #[command(flatten)]
    create: CreateArgs,
}

/// Settings for a store the CLI creates (ignored, but checked, for an existing store).
#[derive(Args, Debug, Clone, Default)]
pub struct CreateArgs {
    /// Engine of a new store: rocksdb (default) or memory (needs --changelog).
    #[arg(long, value_parser = ["rocksdb", "memory"])]
    engine: Option<String>,
    /// Key serde of a new store (default string).
    #[arg(long, value_parser = ["bytes", "string", "u64", "i64", "json", "postcard"])]
    key_serde: Option<String>,
    /// Value serde of a new store (default string).
    #[arg(long, value_parser = ["bytes", "string", "u64", "i64", "json", "postcard"])]
    value_serde: Option<String>,
    /// Changelog topic of a new store.
    #[arg(long)]
    changelog: Option<String>,
    /// Changelog partition of a new store (default: N for a task named <job>.partition-N, else 0).
    #[arg(long)]
    changelog_partition: Option<u32>,
}

/// `gregor store` verbs.
#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Store VALUE (or the contents of --value-file) under KEY (creates the store if needed).
    Put {
        #[command(flatten)]
        at: StoreArgs,
        /// The key, in the store's key serde (decimal for u64/i64, JSON text for json).
        key: String,
        /// The value, in the store's value serde.
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        value: Option<String>,
        /// Read the value from this file (`-`: standard input) instead: its bytes exactly (no
        /// newline is stripped); raw bytes for the `bytes` serde, UTF-8 text in the store's
        /// serde otherwise. Refused if longer than the store's `max.value.bytes`.
        #[arg(long, value_name = "PATH|-")]
        value_file: Option<std::path::PathBuf>,
    },
    /// Print the value under KEY (exit status 1 if missing).
    Get {
        #[command(flatten)]
        at: StoreArgs,
        /// The key.
        key: String,
        /// Read the store as it is on disk without taking the state directory's lock or
        /// writing anything (a backup, a read-only or full disk, a running job): no restore;
        /// a note on stderr says if the store is behind or ahead of its checkpoint.
        #[arg(long)]
        read_only: bool,
    },
    /// Delete KEY.
    Delete {
        #[command(flatten)]
        at: StoreArgs,
        /// The key.
        key: String,
    },
    /// Print entries in key order, one `key<TAB>value` line each.
    Range {
        #[command(flatten)]
        at: StoreArgs,
        /// First key (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Last key (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// Only keys starting with this prefix (raw text).
        #[arg(long, conflicts_with_all = ["from", "to"])]
        prefix: Option<String>,
        /// Print JSON lines `{"key":…,"value":…}`.
        #[arg(long)]
        json: bool,
        /// Read the store as it is on disk without taking the state directory's lock or
        /// writing anything (a backup, a read-only or full disk, a running job): no restore;
        /// a note on stderr says if the store is behind or ahead of its checkpoint.
        #[arg(long)]
        read_only: bool,
    },
    /// Print every entry in key order; without --task, of every task, merged in key order.
    Dump {
        /// The task (default: all tasks that have the store).
        #[arg(long)]
        task: Option<String>,
        /// The store.
        #[arg(long)]
        store: String,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        /// Read the store as it is on disk without taking the state directory's lock or
        /// writing anything (a backup, a read-only or full disk, a running job): no restore;
        /// a note on stderr says if the store is behind or ahead of its checkpoint.
        #[arg(long)]
        read_only: bool,
        /// Read the store's committed state from its changelog instead of local state,
        /// through the job's backend (embedded or Kafka): each task's changelog partition up
        /// to the changelog end of its checkpoint, newest value per key. Needs no local state
        /// (any machine that reaches the brokers); holds a task's entries in memory.
        #[arg(long, value_name = "JOB.toml", conflicts_with = "read_only")]
        job: Option<std::path::PathBuf>,
    },
    /// Rebuild a store from its changelog (e.g. after its directory was deleted), with progress.
    Restore {
        #[command(flatten)]
        at: StoreArgs,
    },
}

fn default_partition(task: &str) -> u32 {
    task.rsplit_once("partition-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// Loads the store's config from its manifest, or builds one from the flags if `create`.
fn resolve_config(state: &StateDir, at: &StoreArgs, create: bool) -> Result<(StoreConfig, u32)> {
    let dir = state.store_dir(&at.task, &at.store);
    let c = &at.create;
    if let Some(m) = stack::read_manifest(&at.store, &dir)? {
        let mut wanted = m.config.clone();
        if let Some(e) = &c.engine {
            wanted.engine = EngineKind::parse(e).expect("clap checked");
        }
        if let Some(s) = &c.key_serde {
            wanted.key_serde = SerdeName::parse(s).expect("clap checked");
        }
        if let Some(s) = &c.value_serde {
            wanted.value_serde = SerdeName::parse(s).expect("clap checked");
        }
        stack::check_compatible(&at.store, &m.config, &wanted)?;
        return Ok((m.config, m.changelog_partition));
    }
    if !create && c.changelog.is_none() {
        let tasks = state.tasks().unwrap_or_default();
        bail!(
            "no store `{}` in task `{}` under {} (tasks here: {}); `store put` creates one, `store restore --changelog TOPIC` rebuilds one",
            at.store,
            at.task,
            state.root().display(),
            if tasks.is_empty() {
                "none".to_string()
            } else {
                tasks.join(", ")
            }
        );
    }
    let config = StoreConfig {
        engine: c.engine.as_deref().map_or(EngineKind::Rocksdb, |e| {
            EngineKind::parse(e).expect("clap checked")
        }),
        key_serde: c.key_serde.as_deref().map_or(SerdeName::String, |s| {
            SerdeName::parse(s).expect("clap checked")
        }),
        value_serde: c.value_serde.as_deref().map_or(SerdeName::String, |s| {
            SerdeName::parse(s).expect("clap checked")
        }),
        changelog: c.changelog.clone(),
        ..StoreConfig::default()
    };
    if config.engine == EngineKind::Memory && config.changelog.is_none() {
        bail!(
            "a memory store keeps nothing between commands without a changelog: add --changelog TOPIC or use --engine rocksdb"
        );
    }
    Ok((
        config,
        c.changelog_partition
            .unwrap_or_else(|| default_partition(&at.task)),
    ))
}

/// An open store: the storage of its task holding just this store.
struct Opened {
    storage: TaskStorage,
    store: String,
}

fn open(
    state: &StateDir,
    backend: &Arc<dyn Backend>,
    at: &StoreArgs,
    create: bool,
) -> Result<Opened> {
    let (config, partition) = resolve_config(state, at, create)?;
    let ctx = TaskStorageContext {
        backend: Arc::clone(backend),
        state,
        task: &at.task,
        changelog_partition: partition,
    };
    let mut progress = progress::for_stderr();
    let configs = BTreeMap::from([(at.store.clone(), config)]);
    let (storage, _) = TaskStorage::open(&ctx, &configs, &mut *progress)?;
    Ok(Opened {
        storage,
        store: at.store.clone(),
    })
}

impl Opened {
    fn store(&mut self) -> &mut TaskStore {
        self.storage
            .store(&self.store)
            .expect("opened with this store")
    }

    /// Commits the store and records its changelog end in the task's checkpoint (keeping the
    /// checkpoint's other entries), so the write is not dropped as uncommitted when the job
    /// restarts.
    fn commit(mut self) -> Result<()> {
        self.storage.commit(&BTreeMap::new(), Vec::new())?;
        self.storage.close()?;
        Ok(())
    }
}

fn text(serde: SerdeName, bytes: &[u8], what: &str) -> Result<String> {
    serde
        .decode_text(bytes)
        .with_context(|| format!("cannot decode {what}"))
}

fn json_of(serde: SerdeName, bytes: &[u8]) -> Result<serde_json::Value> {
    Ok(match serde {
        SerdeName::U64 | SerdeName::I64 => serde_json::from_str(&serde.decode_text(bytes)?)?,
        SerdeName::Json => serde_json::from_slice(bytes)?,
        _ => serde_json::Value::String(serde.decode_text(bytes)?),
    })
}

fn print_entry(config: &StoreConfig, key: &[u8], value: &[u8], json: bool) -> Result<()> {
    if json {
        let line = serde_json::json!({"key": json_of(config.key_serde, key)?, "value": json_of(config.value_serde, value)?});
        println!("{line}");
    } else {
        println!(
            "{}\t{}",
            text(config.key_serde, key, "key")?,
            text(config.value_serde, value, "value")?
        );
    }
    Ok(())
}

/// Opens a store read-only and prints its notes on stderr.
fn open_read_only(state_dir: &Path, task: &str, store: &str) -> Result<ReadOnlyStore> {
    let o = task_storage::open_read_only(state_dir, task, store)?;
    for n in &o.notes {
        eprintln!("note: {n}");
    }
    Ok(o)
}

/// What a reader of the store sees of a value as stored below the store's layers (a
/// read-only engine, a changelog): with `ttl.ms`, `None` if expired by the system clock, the
/// expiry header stripped.
fn visible(config: &StoreConfig, store: &str, v: Option<Vec<u8>>) -> Result<Option<Vec<u8>>> {
    match (v, config.ttl_ms) {
        (Some(v), Some(_)) => {
            Ok(gregor::store::ttl::visible(store, &v, config.clock.now_ms())?.map(<[u8]>::to_vec))
        }
        (v, _) => Ok(v),
    }
}

/// [`visible`] for every entry of `it`.
fn stored_view<'a>(
    config: &StoreConfig,
    store: &str,
    it: gregor::store::KvIter<'a>,
) -> gregor::store::KvIter<'a> {
    match config.ttl_ms {
        Some(_) => gregor::store::ttl::visible_iter(store, it, config.clock.now_ms()),
        None => it,
    }
}

/// Prints the entries of `it` (one store) in key order.
fn print_all(config: &StoreConfig, it: gregor::store::KvIter<'_>, json: bool) -> Result<()> {
    for e in it {
        let (k, v) = e?;
        print_entry(config, &k, &v, json)?;
    }
    Ok(())
}

/// `range`: the entries of `store` under `prefix`, or in `[from, to)` (keys in the store's key
/// serde), printed one per line.
fn print_range(
    store: &mut dyn gregor::store::KeyValueStore,
    config: &StoreConfig,
    from: Option<String>,
    to: Option<String>,
    prefix: Option<String>,
    json: bool,
) -> Result<()> {
    let encode = |k: Option<String>, what: &'static str| {
        k.map(|k| config.key_serde.encode_text(&k))
            .transpose()
            .context(what)
    };
    let (from, to) = (encode(from, "bad --from")?, encode(to, "bad --to")?);
    let it = match &prefix {
        Some(p) => store.prefix(p.as_bytes())?,
        None => store.scan(from.as_deref().unwrap_or(&[]), to.as_deref())?,
    };
    print_all(config, it, json)
}

/// `get`, `range` and `dump` with `--read-only`: nothing under the state directory is
/// written, no lock is taken.
fn run_read_only(state_dir: &Path, cmd: StoreCmd) -> Result<i32> {
    match cmd {
        StoreCmd::Get { at, key, .. } => {
            let mut o = open_read_only(state_dir, &at.task, &at.store)?;
            let k = o.config.key_serde.encode_text(&key).context("bad key")?;
            let v = o.engine.get(&k)?;
            match visible(&o.config, &at.store, v)? {
                Some(v) => {
                    println!("{}", text(o.config.value_serde, &v, "value")?);
                    Ok(0)
                }
                None => {
                    eprintln!(
                        "key {key:?} not found in store `{}` of task `{}`",
                        at.store, at.task
                    );
                    Ok(1)
                }
            }
        }
        StoreCmd::Range {
            at,
            from,
            to,
            prefix,
            json,
            ..
        } => {
            let o = open_read_only(state_dir, &at.task, &at.store)?;
            let c = o.config.clone();
            let engine: Box<dyn gregor::store::KeyValueStore> = o.engine;
            let mut view: Box<dyn gregor::store::KeyValueStore> = match c.ttl_ms {
                Some(ttl_ms) => Box::new(gregor::store::ttl::TtlStore::new(
                    engine,
                    gregor::store::ttl::TtlSettings {
                        ttl_ms,
                        cleanup_entries: c.ttl_cleanup_entries,
                        limits: c.limits,
                        clock: c.clock.clone(),
                    },
                )),
                None => engine,
            };
            print_range(&mut *view, &c, from, to, prefix, json)?;
            Ok(0)
        }
        StoreCmd::Dump {
            task, store, json, ..
        } => {
            let tasks = match task {
                Some(t) => vec![t],
                None => gregor::statedir::tasks_in(state_dir)?
                    .into_iter()
                    .filter(|t| {
                        gregor::statedir::store_dir_in(state_dir, t, &store)
                            .join(stack::MANIFEST_FILE)
                            .exists()
                    })
                    .collect(),
            };
            if tasks.is_empty() {
                bail!(
                    "no task under {} has a store `{store}`",
                    state_dir.display()
                );
            }
            let mut opened = Vec::new();
            for t in &tasks {
                opened.push(open_read_only(state_dir, t, &store)?);
            }
            let config = opened[0].config.clone();
            let mut iters = Vec::new();
            for o in &mut opened {
                iters.push(stored_view(&config, &store, o.engine.all()?));
            }
            merge_print(&config, iters, json)?;
            Ok(0)
        }
        _ => bail!("--read-only is for get, range and dump"),
    }
}

/// `store dump --job`: the committed state of `store` read from its changelog, per task up to
/// the changelog end of the task's checkpoint, through the job's backend.
fn dump_from_changelog(
    state_dir: &Path,
    file: &Path,
    task: Option<String>,
    store: &str,
    json: bool,
) -> Result<i32> {
    let job = gregor::runtime::JobConfig::from_file(file)?;
    let Some(config) = job.stores.get(store) else {
        bail!(
            "{}: job `{}` has no store `{store}` (its stores: {})",
            file.display(),
            job.name,
            job.stores.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let Some(changelog) = &config.changelog else {
        bail!(
            "store `{store}` of job `{}` has no changelog: its state is only in the local state directories (use `store dump` there)",
            job.name
        );
    };
    let state = StateDir::open(state_dir)?;
    let backend = crate::job_cmd::backend(&state, &job, file)?;
    let mut maps = Vec::new();
    for t in crate::job_cmd::tasks(&*backend, &job, task)? {
        let end = match backend.read_checkpoint(&t)? {
            Some(cp) => cp.changelogs.get(store).copied().unwrap_or(0),
            None => {
                eprintln!("note: task `{t}` has no checkpoint: nothing of it is committed");
                0
            }
        };
        let tp = gregor::backend::TopicPartition::new(
            changelog.clone(),
            crate::job_cmd::partition_of(&t),
        );
        maps.push(
            gregor::changelog::committed_entries(&*backend, &tp, end)
                .with_context(|| format!("task `{t}`: reading changelog {tp}"))?,
        );
    }
    let iters: Vec<gregor::store::KvIter<'_>> = maps
        .into_iter()
        .map(|m| stored_view(config, store, Box::new(m.into_iter().map(Ok))))
        .collect();
    merge_print(config, iters, json)?;
    Ok(0)
}

/// Prints the entries of several ordered iterators merged in key order.
fn merge_print(
    config: &StoreConfig,
    mut iters: Vec<gregor::store::KvIter<'_>>,
    json: bool,
) -> Result<()> {
    let mut heads: BTreeMap<(Vec<u8>, usize), Vec<u8>> = BTreeMap::new();
    for (i, it) in iters.iter_mut().enumerate() {
        if let Some(e) = it.next() {
            let (k, v) = e?;
            heads.insert((k, i), v);
        }
    }
    while let Some(((k, i), v)) = heads.pop_first() {
        print_entry(config, &k, &v, json)?;
        if let Some(e) = iters[i].next() {
            let (k, v) = e?;
            heads.insert((k, i), v);
        }
    }
    Ok(())
}

/// Runs a `store` verb; returns the exit status.
pub fn run(state_dir: &Path, cmd: StoreCmd) -> Result<i32> {
    if let StoreCmd::Dump {
        job: Some(file),
        task,
        store,
        json,
        ..
    } = cmd
    {
        return dump_from_changelog(state_dir, &file, task, &store, json);
    }
    if matches!(
        cmd,
        StoreCmd::Get {
            read_only: true,
            ..
        } | StoreCmd::Range {
            read_only: true,
            ..
        } | StoreCmd::Dump {
            read_only: true,
            ..
        }
    ) {
        return run_read_only(state_dir, cmd);
    }
    let state = StateDir::open(state_dir)?;
    let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend::open(
        state.root(),
        EmbeddedSettings::default(),
    )?);
    match cmd {
        StoreCmd::Put {
            at,
            key,
            value,
            value_file,
        } => {
            let mut o = open(&state, &backend, &at, true)?;
            let c = o.store().config().clone();
            let k = c.key_serde.encode_text(&key).context("bad key")?;
            let v = match (value, value_file) {
                (Some(value), _) => c.value_serde.encode_text(&value).context("bad value")?,
                (None, Some(path)) => read_value_file(&path, &c)?,
                (None, None) => bail!("give VALUE or --value-file PATH (clap requires one)"),
            };
            o.store().stack().put(&k, &v)?;
            o.commit()?;
            Ok(0)
        }
        StoreCmd::Get { at, key, .. } => {
            let mut o = open(&state, &backend, &at, false)?;
            let c = o.store().config().clone();
            let k = c.key_serde.encode_text(&key).context("bad key")?;
            match o.store().stack().get(&k)? {
                Some(v) => {
                    println!("{}", text(c.value_serde, &v, "value")?);
                    Ok(0)
                }
                None => {
                    eprintln!(
                        "key {key:?} not found in store `{}` of task `{}`",
                        at.store, at.task
                    );
                    Ok(1)
                }
            }
        }
        StoreCmd::Delete { at, key } => {
            let mut o = open(&state, &backend, &at, false)?;
            let c = o.store().config().clone();
            let k = c.key_serde.encode_text(&key).context("bad key")?;
            o.store().stack().delete(&k)?;
            o.commit()?;
            Ok(0)
        }
        StoreCmd::Range {
            at,
            from,
            to,
            prefix,
            json,
            ..
        } => {
            let mut o = open(&state, &backend, &at, false)?;
            let c = o.store().config().clone();
            print_range(o.store().stack(), &c, from, to, prefix, json)?;
            Ok(0)
        }
        StoreCmd::Dump {
            task, store, json, ..
        } => dump(&state, &backend, task, &store, json),
        StoreCmd::Restore { at } => {
            let o = open(&state, &backend, &at, false)?;
            o.commit()?;
            Ok(0)
        }
    }
}

/// Reads a `--value-file` (`-`: stdin) for a store with `config`: at most the store's
/// `max.value.bytes` (one byte more is read to tell a longer input apart), bytes kept exactly;
/// the `bytes` serde takes them raw, the others need UTF-8 text in their text encoding.
fn read_value_file(path: &Path, config: &StoreConfig) -> Result<Vec<u8>> {
    use std::io::Read;
    let max = config.limits.max_value_bytes;
    let limit = max as u64 + 1;
    let mut buf = Vec::new();
    let shown = path.display();
    if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut buf)
            .context("cannot read the value from standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut buf))
            .with_context(|| format!("cannot read the value from {shown}"))?;
    }
    if buf.len() > max {
        bail!(
            "the value in {} is longer than the store's max.value.bytes ({max} bytes); nothing was written",
            if path == Path::new("-") {
                "standard input".to_string()
            } else {
                shown.to_string()
            }
        );
    }
    if config.value_serde == SerdeName::Bytes {
        return Ok(buf);
    }
    let text = String::from_utf8(buf).map_err(|_| {
        anyhow::anyhow!(
            "the value in {shown} is not UTF-8 text, which the store's value serde `{}` needs (only `bytes` takes raw bytes)",
            config.value_serde.as_str()
        )
    })?;
    config.value_serde.encode_text(&text).context("bad value")
}

/// Dumps a store of one task or, merged in key order, of every task that has it.
fn dump(
    state: &StateDir,
    backend: &Arc<dyn Backend>,
    task: Option<String>,
    store: &str,
    json: bool,
) -> Result<i32> {
    let tasks = match task {
        Some(t) => vec![t],
        None => state
            .tasks()?
            .into_iter()
            .filter(|t| {
                state
                    .store_dir(t, store)
                    .join(stack::MANIFEST_FILE)
                    .exists()
            })
            .collect(),
    };
    if tasks.is_empty() {
        bail!(
            "no task under {} has a store `{store}`",
            state.root().display()
        );
    }
    let mut opened = Vec::new();
    for t in &tasks {
        let at = StoreArgs {
            task: t.clone(),
            store: store.to_string(),
            create: CreateArgs::default(),
        };
        opened.push(open(state, backend, &at, false)?);
    }
    let config = opened[0].store().config().clone();
    // k-way merge of the tasks' ordered iterators.
    let mut iters = Vec::new();
    for o in &mut opened {
        iters.push(o.store().stack().all()?);
    }
    merge_print(&config, iters, json)?;
    Ok(0)
}
