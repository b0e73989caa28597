//! Built-in tasks, runnable by name from a job file (`job.task`):
//!
//! - `count`: counts messages per key into store `counts` (string -> u64; `task.store`
//!   names another store). If the job has outputs, every message also sends
//!   `key -> new count` (the count as a decimal string) to each of them, partitioned by key,
//!   so per key an output carries exactly `1, 2, 3, …` (a downstream job can check or count it).
//! - `wordcount`: splits values on whitespace and counts words into store `counts`.
//! - `pageviews`: the demo's page-view counter: input values are `user<TAB>page`, views per
//!   page in store `page-views` and per user in `user-views`; every window it sends the
//!   top `task.top.n` (default 5) pages of the task to output `top-pages` (value
//!   `task<TAB>rank<TAB>page<TAB>views`) if that is a job output.
//! - `kv`: the key-value service's task (`gregor serve`): applies each input record to store
//!   `kv` (`task.store` names another): a value is a put of the record's key, a tombstone a
//!   delete. Its input reads like the store's changelog. For a store with `ttl.ms`, a value
//!   behind the store's expiry header (what `gregor serve` writes: the deadline of the PUT)
//!   is put with that deadline, so a replay gives the same one; any other value gets
//!   `ttl.ms` from when it is applied.

use super::task::{Envelope, StreamTask, TaskContext, TaskError, TaskFactory};

/// The names of the built-in tasks.
pub const NAMES: [&str; 4] = ["count", "wordcount", "pageviews", "kv"];

/// A factory for built-in task `name`.
pub fn factory(name: &str) -> Option<TaskFactory> {
    let f: TaskFactory = match name {
        "count" => Box::new(|_| Box::new(Count::default())),
        "wordcount" => Box::new(|_| Box::new(WordCount::default())),
        "pageviews" => Box::new(|_| Box::new(PageViews::default())),
        "kv" => Box::new(|_| Box::new(Kv::default())),
        _ => return None,
    };
    Some(f)
}

/// `task.store`, or `default` if the job does not set it.
fn store_setting(ctx: &TaskContext<'_>, default: &str) -> Result<String, TaskError> {
    match ctx.config().task_config.get("store") {
        None => Ok(default.to_string()),
        Some(v) => Ok(v
            .as_str()
            .ok_or_else(|| {
                format!(
                    "{}: task.store must be a string, not {v}",
                    ctx.config().source
                )
            })?
            .to_string()),
    }
}

/// The store the `kv` task writes: `task.store`, default `kv`.
pub fn kv_store(job: &super::JobConfig) -> String {
    job.task_config
        .get("store")
        .and_then(|v| v.as_str())
        .unwrap_or("kv")
        .to_string()
}

/// Applies input records to a store (see the module doc).
#[derive(Debug, Default)]
pub struct Kv {
    /// The store (`task.store`, default `kv`), read in `init`.
    store: String,
    /// The store has `ttl.ms`: input values may carry their deadline (see `process`).
    ttl: bool,
}

impl StreamTask for Kv {
    fn init(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        self.store = store_setting(ctx, "kv")?;
        self.ttl = ctx
            .config()
            .stores
            .get(&self.store)
            .is_some_and(|c| c.ttl_ms.is_some());
        ctx.raw_store(&self.store)?;
        Ok(())
    }

    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let store = ctx.raw_store(&self.store)?;
        match msg.value {
            Some(v) if self.ttl => match crate::store::ttl::decode(&self.store, v) {
                Ok((at, v)) => store.put_expiring(msg.key, v, at)?,
                Err(_) => store.put(msg.key, v)?,
            },
            Some(v) => store.put(msg.key, v)?,
            None => store.delete(msg.key)?,
        }
        Ok(())
    }
}

/// Adds one to the count of `key` in `store`; `buf` is a reused key buffer (no allocation
/// per call once it is large enough).
fn increment(
    ctx: &mut TaskContext<'_>,
    store: &str,
    key: &str,
    buf: &mut String,
) -> Result<u64, TaskError> {
    let mut s = ctx.store::<String, u64>(store)?;
    buf.clear();
    buf.push_str(key);
    let n = s.get(buf)?.unwrap_or(0) + 1;
    s.put(buf, &n)?;
    Ok(n)
}

/// Counts messages per key (see the module doc).
#[derive(Debug, Default)]
pub struct Count {
    /// The store (`task.store`, default `counts`), read in `init`.
    store: Option<String>,
    /// `job.outputs`, read in `init`.
    outputs: Vec<String>,
    /// The key, reused from message to message.
    key: String,
}

impl StreamTask for Count {
    fn init(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        self.store = Some(store_setting(ctx, "counts")?);
        self.outputs = ctx.config().outputs.clone();
        Ok(())
    }

    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let n = increment(
            ctx,
            self.store.as_deref().unwrap_or("counts"),
            &String::from_utf8_lossy(msg.key),
            &mut self.key,
        )?;
        if !self.outputs.is_empty() {
            let value = n.to_string();
            for out in &self.outputs {
                ctx.send(out, msg.key, Some(value.as_bytes()))?;
            }
        }
        Ok(())
    }
}

/// Counts words in message values.
#[derive(Debug, Default)]
pub struct WordCount {
    key: String,
}

impl StreamTask for WordCount {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let text = String::from_utf8_lossy(msg.value.unwrap_or_default());
        for word in text.split_whitespace() {
            increment(ctx, "counts", word, &mut self.key)?;
        }
        Ok(())
    }
}

/// Counts page views per page and per user; emits the top pages every window.
#[derive(Debug, Default)]
pub struct PageViews {
    key: String,
}

/// The `n` entries with the highest counts (ties by key), highest first.
pub fn top_n(entries: impl IntoIterator<Item = (String, u64)>, n: usize) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = entries.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

impl StreamTask for PageViews {
    fn process(&mut self, msg: &Envelope<'_>, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        let value = String::from_utf8_lossy(msg.value.unwrap_or_default());
        let Some((user, page)) = value.split_once('\t') else {
            return Err(format!(
                "page view {:?} at offset {} is not `user<TAB>page`",
                value, msg.offset
            )
            .into());
        };
        increment(ctx, "page-views", page, &mut self.key)?;
        increment(ctx, "user-views", user, &mut self.key)?;
        Ok(())
    }

    /// A last top-N at a clean stop, so the output reflects every view processed.
    fn close(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        self.window(ctx)
    }

    fn window(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        if !ctx.config().outputs.iter().any(|o| o == "top-pages") {
            return Ok(());
        }
        let n = ctx.config().task_u64("top.n").unwrap_or(5) as usize;
        let top = {
            let mut views = ctx.store::<String, u64>("page-views")?;
            top_n(views.all()?.collect::<Result<Vec<_>, _>>()?, n)
        };
        let task = ctx.task_name().to_string();
        for (rank, (page, count)) in top.iter().enumerate() {
            let value = format!("{task}\t{}\t{page}\t{count}", rank + 1);
            ctx.send("top-pages", page.as_bytes(), Some(value.as_bytes()))?;
        }
        Ok(())
    }
}
