//! Running a [`RestorePlan`]: truncate the changelog, wipe the engine, replay records in
//! large batches straight into the engine (below the cache and logged layers), reporting
//! progress as it goes. The restore metrics (`gregor_restore_*`, see [`crate::telemetry`])
//! are recorded by the task's storage, which knows the task, around [`execute`].

use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use super::plan::{Action, PlanError, RestoreKind, RestorePlan};
use crate::backend::{Backend, BackendError};
use crate::changelog::{Changelog, now_ms};
use crate::store::{Engine, Mutation, StoreError};

/// Records per engine write batch during a delta replay.
const BATCH_RECORDS: usize = 8192;
/// Key and value bytes gathered, sorted and bulk-loaded at once during a full restore.
const BULK_CHUNK_BYTES: usize = 32 << 20;

/// A restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The inputs cannot be reconciled.
    #[error("restore of store `{store}`: {source}")]
    Plan {
        /// Store name.
        store: String,
        /// Why.
        #[source]
        source: PlanError,
    },
    /// Reading, truncating or trimming the changelog failed.
    #[error("restore of store `{store}`: changelog: {source}")]
    Changelog {
        /// Store name.
        store: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// Writing the engine failed (the error names the store).
    #[error("restore: {0}")]
    Store(#[source] StoreError),
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreStats {
    /// The store.
    pub store: String,
    /// Full, delta or nothing.
    pub kind: RestoreKind,
    /// Changelog records replayed.
    pub records: u64,
    /// Key and value bytes replayed.
    pub bytes: u64,
    /// Uncommitted changelog records dropped (truncated, or overwritten by a trim).
    pub truncated: u64,
    /// Records appended by a trim (restored values of keys that uncommitted records touched).
    pub trimmed: u64,
    /// Whether the local engine was wiped, and why.
    pub wiped: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Receives restore progress: a progress bar, log lines, metrics.
pub trait RestoreProgress {
    /// A replay of about `records` records of `store` starts.
    fn start(&mut self, store: &str, records: u64);
    /// `records` more records (`bytes` bytes) were applied.
    fn advance(&mut self, records: u64, bytes: u64);
    /// The restore of the store finished.
    fn finish(&mut self, stats: &RestoreStats);
    /// Another restore running alongside the one started (several tasks opened at once, see
    /// [`ParallelProgress`]) adds about `records` records to the total. The default ignores
    /// it.
    fn grow(&mut self, records: u64) {
        let _ = records;
    }
}

/// Several restores running at once (tasks opened in parallel) shown as one on a display
/// made for one: the first `start` starts it, each later one grows its total while any runs,
/// every `advance` adds to it, and it finishes with the last restore (the others' summaries
/// are logged). Hand each thread a [`handle`](Self::handle).
pub struct ParallelProgress<'a> {
    state: std::sync::Mutex<ParallelState<'a>>,
}

struct ParallelState<'a> {
    inner: &'a mut (dyn RestoreProgress + Send),
    running: usize,
}

impl<'a> ParallelProgress<'a> {
    /// Restores shown on `inner`.
    pub fn new(inner: &'a mut (dyn RestoreProgress + Send)) -> Self {
        ParallelProgress {
            state: std::sync::Mutex::new(ParallelState { inner, running: 0 }),
        }
    }

    /// A progress for one thread's restores.
    pub fn handle(&self) -> ParallelHandle<'_, 'a> {
        ParallelHandle { shared: self }
    }
}

/// One thread's view of a [`ParallelProgress`].
pub struct ParallelHandle<'p, 'a> {
    shared: &'p ParallelProgress<'a>,
}

impl RestoreProgress for ParallelHandle<'_, '_> {
    fn start(&mut self, store: &str, records: u64) {
        let mut s = crate::sync::lock(&self.shared.state);
        if s.running == 0 {
            s.inner.start(store, records);
        } else {
            s.inner.grow(records);
        }
        s.running += 1;
    }

    fn advance(&mut self, records: u64, bytes: u64) {
        crate::sync::lock(&self.shared.state)
            .inner
            .advance(records, bytes);
    }

    fn finish(&mut self, stats: &RestoreStats) {
        let mut s = crate::sync::lock(&self.shared.state);
        s.running = s.running.saturating_sub(1);
        if s.running == 0 {
            s.inner.finish(stats);
        } else if stats.records > 0 || stats.truncated > 0 || stats.wiped.is_some() {
            tracing::info!(
                store = %stats.store,
                kind = ?stats.kind,
                records = stats.records,
                truncated = stats.truncated,
                "restored in {:.2}s",
                stats.elapsed.as_secs_f64()
            );
        }
    }

    fn grow(&mut self, records: u64) {
        crate::sync::lock(&self.shared.state).inner.grow(records);
    }
}

/// Progress as periodic `tracing` log lines (every 5 s) and a summary line: the default when
/// stderr is not a terminal.
#[derive(Debug, Default)]
pub struct LogProgress {
    store: String,
    total: u64,
    done: u64,
    bytes: u64,
    started: Option<Instant>,
    last: Option<Instant>,
}

impl RestoreProgress for LogProgress {
    fn start(&mut self, store: &str, records: u64) {
        if records == 0 {
            *self = LogProgress {
                store: store.to_string(),
                ..Default::default()
            };
            return;
        }
        *self = LogProgress {
            store: store.to_string(),
            total: records,
            started: Some(Instant::now()),
            last: Some(Instant::now()),
            ..Default::default()
        };
        tracing::info!(store, records, "restoring");
    }

    fn advance(&mut self, records: u64, bytes: u64) {
        self.done += records;
        self.bytes += bytes;
        let now = Instant::now();
        if self.last.is_some_and(|l| now - l >= Duration::from_secs(5)) {
            self.last = Some(now);
            let secs = self
                .started
                .map_or(0.0, |s| (now - s).as_secs_f64())
                .max(1e-9);
            tracing::info!(
                store = %self.store,
                "restore progress: {}/{} records, {:.1} MB/s",
                self.done,
                self.total,
                self.bytes as f64 / 1e6 / secs
            );
        }
    }

    fn grow(&mut self, records: u64) {
        self.total += records;
    }

    fn finish(&mut self, stats: &RestoreStats) {
        if stats.records == 0 && stats.truncated == 0 && stats.wiped.is_none() {
            return;
        }
        let secs = stats.elapsed.as_secs_f64().max(1e-9);
        tracing::info!(
            store = %stats.store,
            kind = ?stats.kind,
            records = stats.records,
            truncated = stats.truncated,
            "restored in {:.2}s ({:.1} MB/s)",
            secs,
            stats.bytes as f64 / 1e6 / secs
        );
    }
}

/// Progress that reports nothing.
#[derive(Debug, Default)]
pub struct NoProgress;

impl RestoreProgress for NoProgress {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64, _: u64) {}
    fn finish(&mut self, _: &RestoreStats) {}
}

/// Where a restore reads and writes the changelog: the backend holding it and the store's
/// [`Changelog`] (its partition, and the task's sink for trim records).
pub struct ChangelogAccess<'a> {
    /// The backend.
    pub backend: &'a dyn Backend,
    /// The store's changelog.
    pub changelog: &'a mut Changelog,
}

/// Runs `plan` for `engine` against its changelog.
pub fn execute(
    plan: &RestorePlan,
    engine: &mut dyn Engine,
    changelog: ChangelogAccess<'_>,
    progress: &mut dyn RestoreProgress,
) -> Result<RestoreStats, RestoreError> {
    let ChangelogAccess { backend, changelog } = changelog;
    let store = engine.name().to_string();
    let started = Instant::now();
    let log_err = |source| RestoreError::Changelog {
        store: store.clone(),
        source,
    };
    let store_err = RestoreError::Store;
    let mut stats = RestoreStats {
        store: store.clone(),
        kind: plan.kind,
        records: 0,
        bytes: 0,
        truncated: 0,
        trimmed: 0,
        wiped: None,
        elapsed: Duration::ZERO,
    };
    for action in &plan.actions {
        match action {
            Action::TruncateChangelog { to, records } => {
                backend
                    .truncate(changelog.topic_partition(), *to)
                    .map_err(log_err)?;
                changelog.acknowledged(*to);
                stats.truncated = *records;
                tracing::warn!(store = %store, "dropped {records} uncommitted changelog records from offset {to}");
            }
            Action::WipeLocal { reason } => {
                tracing::warn!(store = %store, "rebuilding the local store: {reason}");
                engine.wipe().map_err(store_err)?;
                stats.wiped = Some(reason.clone());
            }
            Action::Replay { from, to } => {
                progress.start(&store, to - from);
                let source = Source {
                    backend,
                    changelog: &*changelog,
                };
                if plan.kind == RestoreKind::Full {
                    bulk_replay(engine, &source, *from, *to, &mut stats, progress)?;
                } else {
                    replay(engine, &source, *from, *to, &mut stats, progress)?;
                }
            }
            Action::Trim { from, to } => {
                let n = trim(engine, backend, changelog, *from, *to, &store)?;
                stats.truncated = to - from;
                stats.trimmed = n;
                tracing::warn!(store = %store, "overwrote {} uncommitted changelog records from offset {from} with the restored values of the {n} keys they touched", to - from);
            }
        }
    }
    stats.elapsed = started.elapsed();
    progress.finish(&stats);
    Ok(stats)
}

/// Sorts `chunk` by key and keeps the newest mutation per key (the chunk is in offset
/// order and the sort is stable). Tombstones are dropped when nothing older lies below.
fn newest_per_key(chunk: Vec<Mutation>, drop_tombstones: bool) -> Vec<Mutation> {
    // Sort on an inline 16-byte key prefix first (no pointer chasing for most comparisons),
    // then the full key, then the position, so the newest record of a key comes last.
    let prefix = |k: &[u8]| {
        let mut p = [0u8; 16];
        let n = k.len().min(16);
        p[..n].copy_from_slice(&k[..n]);
        u128::from_be_bytes(p)
    };
    let mut chunk: Vec<(u128, u32, Mutation)> = chunk
        .into_iter()
        .zip(0u32..)
        .map(|(m, i)| (prefix(&m.key), i, m))
        .collect();
    chunk.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.2.key.cmp(&b.2.key))
            .then(a.1.cmp(&b.1))
    });
    let mut out: Vec<Mutation> = Vec::with_capacity(chunk.len());
    for (_, _, m) in chunk {
        match out.last_mut() {
            Some(last) if last.key == m.key => *last = m,
            _ => out.push(m),
        }
    }
    if drop_tombstones {
        out.retain(|m| m.value.is_some());
    }
    out
}

/// Where replays read.
struct Source<'a> {
    backend: &'a dyn Backend,
    changelog: &'a Changelog,
}

/// Records in `[from, to)` of a changelog that cannot be truncated must not count: appends
/// the engine's value (or a tombstone) of every key they touched, through the task's sink, so
/// replaying the whole changelog gives the engine's contents for those keys again (a restore's
/// TRIM). Returns how many keys.
pub fn overwrite_touched_keys(
    engine: &mut dyn Engine,
    access: ChangelogAccess<'_>,
    from: u64,
    to: u64,
) -> Result<u64, RestoreError> {
    let store = engine.name().to_string();
    trim(engine, access.backend, access.changelog, from, to, &store)
}

/// Records in `[from, to)` are uncommitted and cannot be dropped: appends the engine's value
/// (or a tombstone) of every key they touched, through the task's sink. Returns how many.
fn trim(
    engine: &mut dyn Engine,
    backend: &dyn Backend,
    changelog: &mut Changelog,
    from: u64,
    to: u64,
    store: &str,
) -> Result<u64, RestoreError> {
    let log_err = |source| RestoreError::Changelog {
        store: store.to_string(),
        source,
    };
    let mut keys = BTreeSet::new();
    let mut reader = backend
        .open_reader(changelog.topic_partition(), from)
        .map_err(log_err)?;
    'read: loop {
        let records = reader.next_batch(BATCH_RECORDS).map_err(log_err)?;
        if records.is_empty() {
            break;
        }
        for r in records {
            if r.offset >= to {
                break 'read;
            }
            if r.offset >= from {
                keys.insert(r.key);
            }
        }
    }
    let n = keys.len() as u64;
    let mut batch = Vec::with_capacity(BATCH_RECORDS.min(keys.len()));
    for key in keys {
        let value = engine.get(&key).map_err(RestoreError::Store)?;
        batch.push(Mutation { key, value });
        if batch.len() == BATCH_RECORDS {
            changelog
                .append_batch(now_ms(), &std::mem::take(&mut batch))
                .map_err(log_err)?;
        }
    }
    changelog.append_batch(now_ms(), &batch).map_err(log_err)?;
    Ok(n)
}

/// Reads the changelog records in `[from, to)` in batches and hands each batch to `apply` as
/// mutations with the changelog end it brings the engine to, counting them in `stats` and
/// `progress`. `apply` is told when a batch is the last one.
fn read_batches(
    source: &Source<'_>,
    from: u64,
    to: u64,
    stats: &mut RestoreStats,
    progress: &mut dyn RestoreProgress,
    mut apply: impl FnMut(Vec<Mutation>, u64, bool) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    let store = stats.store.clone();
    let log_err = |source| RestoreError::Changelog {
        store: store.clone(),
        source,
    };
    if from >= to {
        return Ok(());
    }
    let mut reader = source
        .backend
        .open_reader(source.changelog.topic_partition(), from)
        .map_err(log_err)?;
    loop {
        let records = reader.next_batch(BATCH_RECORDS).map_err(log_err)?;
        let mut last = records.is_empty();
        let mut batch = Vec::with_capacity(records.len());
        let mut bytes = 0u64;
        for r in records {
            if r.offset >= to {
                last = true;
                break;
            }
            if r.offset < from {
                // A backend may hand back records before the position asked for (Kafka
                // returns whole compressed batches); they are already applied.
                continue;
            }
            bytes += (r.key.len() + r.value.as_ref().map_or(0, |v| v.len())) as u64;
            batch.push(Mutation {
                key: r.key,
                value: r.value,
            });
        }
        let end = if last { to } else { reader.position().min(to) };
        let n = batch.len() as u64;
        stats.records += n;
        stats.bytes += bytes;
        progress.advance(n, bytes);
        apply(batch, end, last || end >= to)?;
        if last || end >= to {
            return Ok(());
        }
    }
}

/// A full restore into an empty engine: gather large chunks of the changelog, keep the
/// newest record per key, and bulk-load each chunk (sorted SST ingestion on RocksDB). Loading
/// chunk k runs on a second thread while this one reads and sorts chunk k+1.
fn bulk_replay(
    engine: &mut dyn Engine,
    source: &Source<'_>,
    from: u64,
    to: u64,
    stats: &mut RestoreStats,
    progress: &mut dyn RestoreProgress,
) -> Result<(), RestoreError> {
    let engine = std::thread::scope(|scope| {
        // The engine is either here (`idle`) or lent to the loading thread.
        let mut idle: Option<&mut dyn Engine> = Some(engine);
        let mut loading: Option<std::thread::ScopedJoinHandle<'_, Loaded<'_>>> = None;
        let (mut chunk, mut chunk_bytes, mut first) = (Vec::new(), 0usize, true);
        read_batches(source, from, to, stats, progress, |batch, end, last| {
            chunk_bytes += batch
                .iter()
                .map(|m| m.key.len() + m.value.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>();
            chunk.extend(batch);
            if chunk_bytes < BULK_CHUNK_BYTES && !last {
                return Ok(());
            }
            let sorted = newest_per_key(std::mem::take(&mut chunk), first);
            (first, chunk_bytes) = (false, 0);
            if let Some(h) = loading.take() {
                idle = Some(joined(h.join())?);
            }
            let e = idle.take().expect("the engine is idle between loads");
            loading = Some(scope.spawn(move || {
                let r = e.bulk_load(sorted, end);
                (e, r)
            }));
            Ok(())
        })?;
        match loading.take() {
            Some(h) => joined(h.join()),
            None => Ok(idle.take().expect("the engine is idle")),
        }
    })?;
    finish_replay(engine, to)
}

/// What the loading thread hands back: the engine and the load's result.
type Loaded<'e> = (&'e mut dyn Engine, crate::store::Result<()>);

fn joined<'e>(r: std::thread::Result<Loaded<'e>>) -> Result<&'e mut dyn Engine, RestoreError> {
    let (e, r) = r.unwrap_or_else(|p| std::panic::resume_unwind(p));
    r.map_err(RestoreError::Store)?;
    Ok(e)
}

/// A delta restore: apply the records in `[from, to)` on top of the engine in write batches.
fn replay(
    engine: &mut dyn Engine,
    source: &Source<'_>,
    from: u64,
    to: u64,
    stats: &mut RestoreStats,
    progress: &mut dyn RestoreProgress,
) -> Result<(), RestoreError> {
    read_batches(source, from, to, stats, progress, |batch, end, _| {
        engine.write_logged(batch, end).map_err(RestoreError::Store)
    })?;
    finish_replay(engine, to)
}

/// Records the target even if the last records before it were compacted away, and flushes.
fn finish_replay(engine: &mut dyn Engine, to: u64) -> Result<(), RestoreError> {
    engine
        .write_logged(Vec::new(), to)
        .map_err(RestoreError::Store)?;
    engine.flush().map_err(RestoreError::Store)
}
