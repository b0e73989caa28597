//! Running a [`RestorePlan`]: truncate the changelog, wipe the engine, replay records in
//! large batches straight into the engine (below the cache and logged layers), reporting
//! progress as it goes. The restore metrics (`gregor_restore_*`, see [`crate::telemetry`])
//! are recorded by the task's storage, which knows the task, around [`execute`].

use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use super::plan::{Action, PlanError, RestoreKind, RestorePlan};
use crate::backend::{Backend, BackendError, RecordBatch};
use crate::changelog::{Changelog, now_ms};
use crate::store::{Engine, Mutation, MutationRef, StoreError};

/// Records per engine write batch during a delta replay.
const BATCH_RECORDS: usize = 8192;
/// Key and value bytes gathered, sorted and bulk-loaded at once during a full restore.
const BULK_CHUNK_BYTES: usize = 32 << 20;
/// At most this many records per bulk-loaded chunk (records may be tiny).
const BULK_CHUNK_RECORDS: usize = 1 << 22;
/// Chunks of at least this many records are first distributed on 16 bits of their key
/// prefixes (see [`bucket_sort`]); smaller ones are sorted directly.
const BUCKET_SORT_MIN: usize = 1 << 12;

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
                    tp: changelog.topic_partition(),
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

/// Applies the changelog records `[from, to)` of `tp` to `engine` and records `to` as the
/// engine's changelog end, writing nothing to the changelog: what a standby replica does to
/// follow its task's checkpoints. `bulk` (an empty engine, `from` at the changelog's start)
/// takes the full-restore path.
pub fn apply_range(
    engine: &mut dyn Engine,
    backend: &dyn Backend,
    tp: &crate::backend::TopicPartition,
    from: u64,
    to: u64,
    bulk: bool,
    progress: &mut dyn RestoreProgress,
) -> Result<RestoreStats, RestoreError> {
    let started = Instant::now();
    let mut stats = RestoreStats {
        store: engine.name().to_string(),
        kind: if bulk {
            RestoreKind::Full
        } else {
            RestoreKind::Delta
        },
        records: 0,
        bytes: 0,
        truncated: 0,
        trimmed: 0,
        wiped: None,
        elapsed: Duration::ZERO,
    };
    progress.start(&stats.store.clone(), to.saturating_sub(from));
    let source = Source { backend, tp };
    if bulk {
        bulk_replay(engine, &source, from, to, &mut stats, progress)?;
    } else {
        replay(engine, &source, from, to, &mut stats, progress)?;
    }
    stats.elapsed = started.elapsed();
    progress.finish(&stats);
    Ok(stats)
}

/// The positions in `chunk` of the records to load, in key order: the newest record per key
/// (records of a chunk are in offset order), without the tombstones when nothing older lies
/// below (`drop_tombstones`). The result and the sort's work space live in `bufs`, reused
/// from chunk to chunk.
fn newest_per_key<'b>(
    chunk: &RecordBatch,
    drop_tombstones: bool,
    bufs: &'b mut SortBuffers,
) -> &'b [u32] {
    newest_per_key_with(chunk, drop_tombstones, BUCKET_SORT_MIN, bufs)
}

/// A record to sort: its key's first 16 bytes (zero-padded, big-endian), its key length and
/// its position in the chunk.
type SortEntry = (u128, u32, u32);

/// The buffers of [`newest_per_key`], kept across the chunks of a restore: allocating them
/// per chunk made the kernel fault their pages in (and free them) every time.
#[derive(Debug, Default)]
struct SortBuffers {
    order: Vec<SortEntry>,
    scratch: Vec<SortEntry>,
    buckets: Vec<usize>,
    out: Vec<u32>,
}

/// [`newest_per_key`], distributing on key bits first from `bucket_min` records on.
fn newest_per_key_with<'b>(
    chunk: &RecordBatch,
    drop_tombstones: bool,
    bucket_min: usize,
    bufs: &'b mut SortBuffers,
) -> &'b [u32] {
    // Sort on an inline 16-byte key prefix and the key length first: keys of up to 16 bytes
    // (most keys) are then ordered and compared without reading them from the buffer (a
    // cache miss each); longer keys with equal prefixes are compared in full. Then the
    // position, so the newest record of a key comes last.
    let prefix = |k: &[u8]| {
        let mut p = [0u8; 16];
        let n = k.len().min(16);
        p[..n].copy_from_slice(&k[..n]);
        u128::from_be_bytes(p)
    };
    let key = |i: u32| chunk.get(i as usize).map_or(&[][..], |r| r.key);
    let SortBuffers {
        order,
        scratch,
        buckets,
        out,
    } = bufs;
    order.clear();
    order.extend(chunk.iter().zip(0u32..).map(|(r, i)| {
        (
            prefix(r.key),
            u32::try_from(r.key.len()).unwrap_or(u32::MAX),
            i,
        )
    }));
    // Same prefix and length: equal if the key fits in the prefix. Else a shorter key is a
    // prefix of the longer one (padding is zeros), so it sorts first.
    let by_key = |a: &SortEntry, b: &SortEntry| {
        a.0.cmp(&b.0).then_with(|| {
            if a.1 <= 16 && b.1 <= 16 {
                a.1.cmp(&b.1)
            } else {
                key(a.2).cmp(key(b.2))
            }
        })
    };
    let by_key_then_position = |a: &SortEntry, b: &SortEntry| by_key(a, b).then(a.2.cmp(&b.2));
    if order.len() >= bucket_min {
        bucket_sort(order, scratch, buckets, by_key_then_position);
    } else {
        order.sort_unstable_by(by_key_then_position);
    }
    out.clear();
    let mut prev: Option<&SortEntry> = None;
    for e in order.iter() {
        match (prev, out.last_mut()) {
            (Some(p), Some(last)) if by_key(p, e).is_eq() => *last = e.2,
            _ => out.push(e.2),
        }
        prev = Some(e);
    }
    if drop_tombstones {
        out.retain(|&i| chunk.get(i as usize).is_some_and(|r| r.value.is_some()));
    }
    out
}

/// Sorts `entries` with `cmp` (which orders by prefix first): distributes them into 65536
/// buckets on the 16 prefix bits that follow the bits all prefixes share (a counting sort,
/// two passes, through `scratch`; `buckets` holds the counts), then sorts each bucket.
/// Random keys leave a handful of entries per bucket, so nearly all the work is two linear
/// passes instead of a comparison sort's ~log2(n).
fn bucket_sort(
    entries: &mut Vec<SortEntry>,
    scratch: &mut Vec<SortEntry>,
    buckets: &mut Vec<usize>,
    cmp: impl Fn(&SortEntry, &SortEntry) -> std::cmp::Ordering,
) {
    let Some(first) = entries.first().map(|e| e.0) else {
        return;
    };
    let differing = entries.iter().fold(0u128, |acc, e| acc | (e.0 ^ first));
    // The 16 bits from the first one that differs (or the last 16 if fewer remain).
    let shift = 128u32.saturating_sub(differing.leading_zeros() + 16);
    let bucket = |e: &SortEntry| ((e.0 >> shift) & 0xFFFF) as usize;
    // Counts, then each bucket's start; the scatter moves each start to the bucket's end.
    buckets.clear();
    buckets.resize(1 << 16, 0);
    for e in entries.iter() {
        buckets[bucket(e)] += 1;
    }
    let mut start = 0;
    for b in buckets.iter_mut() {
        let n = *b;
        *b = start;
        start += n;
    }
    scratch.clear();
    scratch.resize(entries.len(), (0, 0, 0));
    for e in entries.iter() {
        let b = &mut buckets[bucket(e)];
        scratch[*b] = *e;
        *b += 1;
    }
    std::mem::swap(entries, scratch);
    let mut begin = 0;
    for &end in buckets.iter() {
        if end - begin > 1 {
            entries[begin..end].sort_unstable_by(&cmp);
        }
        begin = end;
    }
}

/// Where replays read.
struct Source<'a> {
    backend: &'a dyn Backend,
    tp: &'a crate::backend::TopicPartition,
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

/// The keys of the records in `[from, to)` of `tp`, read until the reader is past `to-1`.
/// Every record below `to` must be readable (acknowledged); an empty read is retried for up
/// to 30 s (a broker's fetch can come back empty before its data is visible).
pub fn keys_in_range(
    backend: &dyn Backend,
    tp: &crate::backend::TopicPartition,
    from: u64,
    to: u64,
) -> Result<BTreeSet<Vec<u8>>, BackendError> {
    let mut keys = BTreeSet::new();
    if from >= to {
        return Ok(keys);
    }
    let mut reader = backend.open_reader(tp, from)?;
    let mut idle_since: Option<Instant> = None;
    while reader.position() < to {
        let records = reader.next_batch(BATCH_RECORDS)?;
        if records.is_empty() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(30) {
                return Err(BackendError::retriable(
                    format!("reading {tp} from {from} to {to}"),
                    format!("nothing more after offset {}", reader.position()),
                ));
            }
            continue;
        }
        idle_since = None;
        for r in records {
            if r.offset >= to {
                return Ok(keys);
            }
            if r.offset >= from {
                keys.insert(r.key);
            }
        }
    }
    Ok(keys)
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
        .open_reader(source.tp, from)
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

/// A full restore into an empty engine: read large chunks of the changelog into one buffer
/// ([`RecordBatch`], no allocation per record) from a reader tuned for bulk reads
/// ([`Backend::open_bulk_reader`]), keep the newest record per key, copy those in key order
/// into a [`SortedChunk`], and bulk-load it (sorted SST ingestion on RocksDB). Loading chunk
/// k runs on a second thread while this one reads and sorts chunk k+1. The buffers (one
/// chunk, two sorted chunks) are reused.
fn bulk_replay(
    engine: &mut dyn Engine,
    source: &Source<'_>,
    from: u64,
    to: u64,
    stats: &mut RestoreStats,
    progress: &mut dyn RestoreProgress,
) -> Result<(), RestoreError> {
    let store = stats.store.clone();
    let log_err = |source| RestoreError::Changelog {
        store: store.clone(),
        source,
    };
    if from >= to {
        return finish_replay(engine, to);
    }
    let mut reader = source
        .backend
        .open_bulk_reader(source.tp, from)
        .map_err(log_err)?;
    let mut times = StageTimes::default();
    let engine = std::thread::scope(|scope| {
        // The engine is either here (`idle`) or lent to the loading thread with a chunk.
        let mut idle: Option<&mut dyn Engine> = Some(engine);
        let mut loading: Option<std::thread::ScopedJoinHandle<'_, Loaded<'_>>> = None;
        let mut spare: Option<SortedChunk> = None;
        let mut sort_bufs = SortBuffers::default();
        let mut chunk = RecordBatch::new();
        let mut first = true;
        loop {
            let before = chunk.len();
            let t = Instant::now();
            let read = reader
                .read_into(&mut chunk, BATCH_RECORDS)
                .map_err(log_err)?;
            times.read += t.elapsed();
            // A backend may hand back records before the position asked for (Kafka returns
            // whole compressed batches); records at or past the target are not restored.
            chunk.drop_below(before, from);
            chunk.truncate_at_offset(to);
            let end = if read == 0 {
                to
            } else {
                reader.position().min(to)
            };
            let last = end >= to;
            let (n, bytes) = (before..chunk.len()).filter_map(|i| chunk.get(i)).fold(
                (0u64, 0u64),
                |(n, b), r| {
                    (
                        n + 1,
                        b + (r.key.len() + r.value.map_or(0, <[u8]>::len)) as u64,
                    )
                },
            );
            stats.records += n;
            stats.bytes += bytes;
            progress.advance(n, bytes);
            if !last && chunk.bytes() < BULK_CHUNK_BYTES && chunk.len() < BULK_CHUNK_RECORDS {
                continue;
            }
            let t = Instant::now();
            let order =
                newest_per_key(&chunk, std::mem::replace(&mut first, false), &mut sort_bufs);
            let mut sorted = spare.take().unwrap_or_default();
            sorted.fill(&chunk, order);
            chunk.clear();
            times.sort += t.elapsed();
            if let Some(h) = loading.take() {
                let t = Instant::now();
                let (e, recycled) = joined(h.join(), &mut times)?;
                times.waited += t.elapsed();
                idle = Some(e);
                spare = Some(recycled);
            }
            let e = idle.take().expect("the engine is idle between loads");
            loading = Some(scope.spawn(move || load_chunk(e, sorted, end)));
            if last {
                break;
            }
        }
        match loading.take() {
            Some(h) => {
                let t = Instant::now();
                let (e, _) = joined(h.join(), &mut times)?;
                times.waited += t.elapsed();
                Ok(e)
            }
            None => Ok(idle.take().expect("the engine is idle")),
        }
    })?;
    tracing::debug!(
        store = %stats.store,
        records = stats.records,
        "full restore stages: reading {:.3}s, sorting {:.3}s, waiting for loads {:.3}s; loading thread: loading {:.3}s",
        times.read.as_secs_f64(),
        times.sort.as_secs_f64(),
        times.waited.as_secs_f64(),
        times.load.as_secs_f64(),
    );
    finish_replay(engine, to)
}

/// Where a full restore spent its time (for the debug log line).
#[derive(Debug, Default)]
struct StageTimes {
    /// Reading the changelog (this thread).
    read: Duration,
    /// Waiting for the loading thread (this thread).
    waited: Duration,
    /// Sorting chunks (this thread).
    sort: Duration,
    /// Loading sorted chunks into the engine (loading thread).
    load: Duration,
}

/// The records of a chunk to load, in key order, their keys and values copied next to each
/// other in that order: the SST writer then reads memory in sequence instead of missing the
/// cache on every record (the copy, a tight loop, overlaps those misses).
#[derive(Debug, Default)]
struct SortedChunk {
    data: Vec<u8>,
    /// Key length and value length (`None`: a tombstone) of each record, in order.
    lens: Vec<(usize, Option<usize>)>,
}

impl SortedChunk {
    /// Replaces the contents with the records of `chunk` at the positions in `order`.
    fn fill(&mut self, chunk: &RecordBatch, order: &[u32]) {
        self.data.clear();
        self.lens.clear();
        self.data.reserve(chunk.bytes());
        self.lens.reserve(order.len());
        for r in order.iter().filter_map(|&i| chunk.get(i as usize)) {
            self.data.extend_from_slice(r.key);
            if let Some(v) = r.value {
                self.data.extend_from_slice(v);
            }
            self.lens.push((r.key.len(), r.value.map(<[u8]>::len)));
        }
    }

    /// The records, borrowed.
    fn refs(&self) -> Vec<MutationRef<'_>> {
        let mut rest = &self.data[..];
        let mut out = Vec::with_capacity(self.lens.len());
        for &(k, v) in &self.lens {
            let (key, after) = rest.split_at(k);
            let (value, after) = match v {
                Some(n) => {
                    let (value, after) = after.split_at(n);
                    (Some(value), after)
                }
                None => (None, after),
            };
            out.push(MutationRef { key, value });
            rest = after;
        }
        out
    }
}

/// On the loading thread: loads `sorted` into `engine` with changelog end `end`, and hands
/// back the engine and the emptied buffer for reuse.
fn load_chunk(engine: &mut dyn Engine, mut sorted: SortedChunk, end: u64) -> Loaded<'_> {
    let t = Instant::now();
    let result = engine.bulk_load_refs(&sorted.refs(), end);
    sorted.data.clear();
    sorted.lens.clear();
    Loaded {
        engine,
        chunk: sorted,
        result,
        load: t.elapsed(),
    }
}

/// What the loading thread hands back: the engine, the emptied chunk, the load's result and
/// how long loading took.
struct Loaded<'e> {
    engine: &'e mut dyn Engine,
    chunk: SortedChunk,
    result: crate::store::Result<()>,
    load: Duration,
}

fn joined<'e>(
    r: std::thread::Result<Loaded<'e>>,
    times: &mut StageTimes,
) -> Result<(&'e mut dyn Engine, SortedChunk), RestoreError> {
    let l = r.unwrap_or_else(|p| std::panic::resume_unwind(p));
    times.load += l.load;
    l.result.map_err(RestoreError::Store)?;
    Ok((l.engine, l.chunk))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Keys chosen so that the prefix shortcut must not decide alone: zero padding, exactly
    /// 16 bytes, longer keys sharing their first 16 bytes, the empty key.
    #[test]
    fn newest_per_key_sorts_bytewise_and_keeps_the_newest() {
        let p16 = b"0123456789abcdef";
        let writes: Vec<(Vec<u8>, Option<&[u8]>)> = vec![
            (b"ab".to_vec(), Some(b"1")),
            (b"ab\0".to_vec(), Some(b"2")),
            ([&p16[..], b"Y"].concat(), Some(b"3")),
            ([&p16[..], b"X"].concat(), Some(b"4")),
            (p16.to_vec(), Some(b"5")),
            (p16[..15].to_vec(), None),
            ([&p16[..15], b"\0"].concat(), Some(b"6")),
            (b"ab".to_vec(), Some(b"7")),
            ([&p16[..], b"Y"].concat(), None),
            (Vec::new(), Some(b"8")),
            (p16[..15].to_vec(), Some(b"9")),
            (b"ab\0".to_vec(), None),
        ];
        let mut chunk = RecordBatch::new();
        for (i, (k, v)) in writes.iter().enumerate() {
            chunk.push(100 + i as u64, 0, k, *v);
        }
        let mut expected: BTreeMap<Vec<u8>, Option<&[u8]>> = BTreeMap::new();
        for (k, v) in &writes {
            expected.insert(k.clone(), *v);
        }
        for (drop_tombstones, bucket_min) in [
            (false, usize::MAX),
            (true, usize::MAX),
            (false, 0),
            (true, 0),
        ] {
            let mut bufs = SortBuffers::default();
            let order = newest_per_key_with(&chunk, drop_tombstones, bucket_min, &mut bufs);
            let mut sorted = SortedChunk::default();
            sorted.fill(&chunk, order);
            let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = sorted
                .refs()
                .iter()
                .map(|m| (m.key.to_vec(), m.value.map(<[u8]>::to_vec)))
                .collect();
            let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = expected
                .iter()
                .filter(|(_, v)| !drop_tombstones || v.is_some())
                .map(|(k, v)| (k.clone(), v.map(<[u8]>::to_vec)))
                .collect();
            assert_eq!(got, want, "drop_tombstones: {drop_tombstones}");
        }
    }

    /// The bucket sort against the comparison sort and a model, on chunks of many records:
    /// keys sharing a long prefix (the bucket bits come after it), keys longer than the
    /// 16-byte prefix, random binary keys, repeated keys and tombstones.
    #[test]
    fn bucket_sort_matches_the_comparison_sort() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let shapes: [fn(&mut rand::rngs::StdRng) -> Vec<u8>; 3] = [
            |r| format!("user:{}", r.gen_range(0..5000)).into_bytes(),
            |r| format!("tenant-0000000000:{:x}", r.gen_range(0..3000)).into_bytes(),
            |r| {
                let mut k = vec![0u8; r.gen_range(0..24)];
                r.fill(&mut k[..]);
                k
            },
        ];
        for shape in shapes {
            let mut chunk = RecordBatch::new();
            let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for offset in 0..20_000u64 {
                let key = shape(&mut rng);
                let value = (!rng.gen_ratio(1, 10)).then(|| offset.to_be_bytes().to_vec());
                chunk.push(offset, 0, &key, value.as_deref());
                model.insert(key, value);
            }
            for drop_tombstones in [false, true] {
                let mut bufs = SortBuffers::default();
                let compared =
                    newest_per_key_with(&chunk, drop_tombstones, usize::MAX, &mut bufs).to_vec();
                // Twice with the same buffers: what they held must not matter.
                for _ in 0..2 {
                    let bucketed = newest_per_key_with(&chunk, drop_tombstones, 0, &mut bufs);
                    assert_eq!(bucketed, compared);
                }
                let bucketed = compared;
                let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = bucketed
                    .iter()
                    .filter_map(|&i| chunk.get(i as usize))
                    .map(|r| (r.key.to_vec(), r.value.map(<[u8]>::to_vec)))
                    .collect();
                let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = model
                    .iter()
                    .filter(|(_, v)| !drop_tombstones || v.is_some())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "drop_tombstones: {drop_tombstones}");
            }
        }
    }
}
