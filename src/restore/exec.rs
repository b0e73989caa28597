//! Running a [`RestorePlan`]: truncate the changelog, wipe the engine, replay records in
//! large batches straight into the engine (below the cache and logged layers), reporting
//! progress as it goes.

use std::time::{Duration, Instant};

use super::plan::{Action, PlanError, RestoreKind, RestorePlan};
use crate::log::{LogError, Partition};
use crate::store::{Engine, Mutation, StoreError};

/// Records per engine write batch during replay.
const BATCH_RECORDS: usize = 8192;

/// A restore failed.
#[derive(Debug, thiserror::Error)]
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
    /// Reading or truncating the changelog failed.
    #[error("restore of store `{store}`: changelog: {source}")]
    Log {
        /// Store name.
        store: String,
        /// The log error.
        #[source]
        source: LogError,
    },
    /// Writing the engine failed.
    #[error("restore of store `{store}`: {source}")]
    Store {
        /// Store name.
        store: String,
        /// The store error.
        #[source]
        source: StoreError,
    },
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
    /// Uncommitted changelog records dropped.
    pub truncated: u64,
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
        *self = LogProgress { store: store.to_string(), total: records, started: Some(Instant::now()), last: Some(Instant::now()), ..Default::default() };
        tracing::info!(store, records, "restoring");
    }

    fn advance(&mut self, records: u64, bytes: u64) {
        self.done += records;
        self.bytes += bytes;
        let now = Instant::now();
        if self.last.is_some_and(|l| now - l >= Duration::from_secs(5)) {
            self.last = Some(now);
            let secs = self.started.map_or(0.0, |s| (now - s).as_secs_f64()).max(1e-9);
            tracing::info!(
                store = %self.store,
                "restore progress: {}/{} records, {:.1} MB/s",
                self.done,
                self.total,
                self.bytes as f64 / 1e6 / secs
            );
        }
    }

    fn finish(&mut self, stats: &RestoreStats) {
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

/// Runs `plan` for `engine` against its changelog partition.
pub fn execute(
    plan: &RestorePlan,
    engine: &mut dyn Engine,
    changelog: &mut Partition,
    progress: &mut dyn RestoreProgress,
) -> Result<RestoreStats, RestoreError> {
    let store = engine.name().to_string();
    let started = Instant::now();
    let log_err = |source| RestoreError::Log { store: store.clone(), source };
    let store_err = |source| RestoreError::Store { store: store.clone(), source };
    let mut stats = RestoreStats {
        store: store.clone(),
        kind: plan.kind,
        records: 0,
        bytes: 0,
        truncated: 0,
        wiped: None,
        elapsed: Duration::ZERO,
    };
    for action in &plan.actions {
        match action {
            Action::TruncateChangelog { to, records } => {
                changelog.truncate(*to).map_err(log_err)?;
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
                replay(engine, changelog, *from, *to, &mut stats, progress)?;
            }
        }
    }
    stats.elapsed = started.elapsed();
    progress.finish(&stats);
    Ok(stats)
}

fn replay(
    engine: &mut dyn Engine,
    changelog: &mut Partition,
    from: u64,
    to: u64,
    stats: &mut RestoreStats,
    progress: &mut dyn RestoreProgress,
) -> Result<(), RestoreError> {
    let store = engine.name().to_string();
    let log_err = |source| RestoreError::Log { store: store.clone(), source };
    let store_err = |source| RestoreError::Store { store: store.clone(), source };
    if from < to {
        let mut reader = changelog.reader(from).map_err(log_err)?;
        'read: loop {
            let records = reader.next_batch(BATCH_RECORDS).map_err(log_err)?;
            if records.is_empty() {
                break;
            }
            let mut batch = Vec::with_capacity(records.len());
            let mut bytes = 0u64;
            let mut done = false;
            for r in records {
                if r.offset >= to {
                    done = true;
                    break;
                }
                bytes += (r.key.len() + r.value.as_ref().map_or(0, |v| v.len())) as u64;
                batch.push(Mutation { key: r.key.clone(), value: r.value.clone() });
            }
            let n = batch.len() as u64;
            let end = if done { to } else { records.last().map_or(to, |r| r.offset + 1).min(to) };
            engine.write_logged(batch, end).map_err(store_err)?;
            stats.records += n;
            stats.bytes += bytes;
            progress.advance(n, bytes);
            if done || end >= to {
                break 'read;
            }
        }
    }
    // Record the target even if the last records before it were compacted away.
    engine.write_logged(Vec::new(), to).map_err(store_err)?;
    engine.flush().map_err(store_err)?;
    Ok(())
}
