//! The embedded backend: topics are segment files under `<state-dir>/logs/` (the
//! [`crate::log`] module), checkpoints are files under `<state-dir>/tasks/<task>/`.
//!
//! Its own details, invisible above the seam:
//! - **Truncation.** Uncommitted changelog records are cut off at restore, uncommitted output
//!   at start-up ([`Backend::recover_outputs`]).
//! - **Read-committed markers.** An output partition's `COMMITTED` file (see
//!   [`crate::runtime::committed`]) tells readers that do not know the job where committed
//!   output ends; it moves only after the checkpoint that commits the output is written.
//! - **Topic settings** ([`EmbeddedSettings`]): segment size and fsync of the changelog and
//!   output topics it creates; [`TopicOverrides`] are applied to existing topics too.
//! - **Topic roles**: the registry of which job uses which topic how is the checksummed
//!   file `<state-dir>/roles` (see [`super::roles`]).
//!
//! One process owns a state directory, so every writable partition is opened once per
//! backend and shared ([`Arc<Mutex<Partition>>`]) by the tasks' sinks, restore and readers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::roles::{self, RoleClaim, RoleRegistry};
use super::{
    Backend, BackendError, LogReader, Offsets, Record, RecordBatch, RecordSink, Result,
    TopicPartition, TopicRole, TopicSpec,
};
use crate::checkpoint::Checkpoint;
use crate::log::{CleanupPolicy, LogDir, LogError, Partition, PartitionReader, TopicConfig};
use crate::runtime::committed;
use crate::sync::lock;

/// Settings of the topics the embedded backend creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedSettings {
    /// Changelog topics (compacted).
    pub changelog: TopicConfig,
    /// Output topics.
    pub output: TopicConfig,
    /// Settings applied to changelog topics that already exist, too.
    pub changelog_overrides: TopicOverrides,
    /// Settings applied to output topics that already exist, too.
    pub output_overrides: TopicOverrides,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        EmbeddedSettings {
            changelog: TopicConfig::compacted(),
            output: TopicConfig::default(),
            changelog_overrides: TopicOverrides::default(),
            output_overrides: TopicOverrides::default(),
        }
    }
}

/// Topic settings a job sets explicitly, applied by [`Backend::ensure_topic`] to a topic that
/// already exists with other values (its metadata is updated and the change logged once):
/// a changed setting is never silently ignored. `None` leaves the topic's value alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicOverrides {
    /// `segment.bytes`: applies to the segments rolled from now on (the active segment is
    /// closed at its next append if it is already larger).
    pub segment_bytes: Option<u64>,
    /// `fsync`: applies to every later sync.
    pub fsync: Option<bool>,
}

impl TopicOverrides {
    /// `config` with these overrides, and a description of each value changed.
    fn apply(&self, config: &TopicConfig) -> (TopicConfig, Vec<String>) {
        let mut new = config.clone();
        let mut changes = Vec::new();
        if let Some(b) = self.segment_bytes
            && b != config.segment_bytes
        {
            changes.push(format!(
                "segment.bytes {} -> {b} (applies to new segments)",
                config.segment_bytes
            ));
            new.segment_bytes = b;
        }
        if let Some(f) = self.fsync
            && f != config.fsync
        {
            changes.push(format!("fsync {} -> {f}", config.fsync));
            new.fsync = f;
        }
        (new, changes)
    }
}

/// The embedded backend of one state directory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
}

struct Inner {
    state_root: PathBuf,
    logs: LogDir,
    settings: EmbeddedSettings,
    partitions: Mutex<BTreeMap<TopicPartition, SharedPartition>>,
    /// Each partition's read-committed marker (`COMMITTED`) as this backend last read or
    /// wrote it, so `readable_end` (asked every round of the run loop) reads no file. While
    /// the partition is open here only this backend's jobs move its marker, and what another
    /// process appends is not readable here anyway: the readable end is also bounded by the
    /// partition's synced end, which only this process's appends move.
    markers: Mutex<BTreeMap<TopicPartition, Option<u64>>>,
}

type SharedPartition = Arc<Mutex<Partition>>;

/// The error mapping for an operation on `tp`; its context is formatted only when an error
/// happens (sends and reads call this once per record or batch).
fn log_err(tp: &TopicPartition) -> impl FnOnce(LogError) -> BackendError + use<'_> {
    move |e| match e {
        LogError::TopicNotFound(topic) => BackendError::TopicNotFound { topic },
        e => BackendError::fatal(format!("topic {tp}"), e),
    }
}

fn topic_err(topic: &str) -> impl FnOnce(LogError) -> BackendError + use<> {
    let context = format!("topic `{topic}`");
    move |e| match e {
        LogError::TopicNotFound(topic) => BackendError::TopicNotFound { topic },
        e => BackendError::fatal(context, e),
    }
}

impl EmbeddedBackend {
    /// The embedded backend of the state directory at `state_root` (opening `logs/`).
    pub fn open(state_root: &Path, settings: EmbeddedSettings) -> Result<Self> {
        let logs = LogDir::open(state_root).map_err(topic_err("*"))?;
        Ok(Self::with_log_dir(state_root, logs, settings))
    }

    /// Like [`open`](Self::open) over an already open [`LogDir`] (e.g. one with I/O hooks).
    pub fn with_log_dir(state_root: &Path, logs: LogDir, settings: EmbeddedSettings) -> Self {
        EmbeddedBackend {
            inner: Arc::new(Inner {
                state_root: state_root.to_path_buf(),
                logs,
                settings,
                partitions: Mutex::new(BTreeMap::new()),
                markers: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The log directory.
    pub fn logs(&self) -> &LogDir {
        &self.inner.logs
    }

    /// The open, writable partition `tp` (opened on first use, reopened if an earlier
    /// failure poisoned it, which re-reads what actually reached the disk).
    fn partition(&self, tp: &TopicPartition) -> Result<SharedPartition> {
        let mut parts = lock(&self.inner.partitions);
        if let Some(p) = parts.get(tp)
            && lock(p).poisoned().is_none()
        {
            return Ok(Arc::clone(p));
        }
        let (p, report) = self
            .inner
            .logs
            .open_partition(&tp.topic, tp.partition)
            .map_err(log_err(tp))?;
        if let Some(cut) = &report.torn_tail {
            tracing::warn!(topic = %tp.topic, partition = tp.partition, "cut a torn tail: {cut:?}");
        }
        let p = Arc::new(Mutex::new(p));
        parts.insert(tp.clone(), Arc::clone(&p));
        Ok(p)
    }

    /// The read-committed marker of `tp` (whose directory is `dir`), from the cache or
    /// its file.
    fn marker(&self, tp: &TopicPartition, dir: &Path) -> Result<Option<u64>> {
        if let Some(&m) = lock(&self.inner.markers).get(tp) {
            return Ok(m);
        }
        let m = committed::read(dir).map_err(|e| BackendError::fatal(format!("topic {tp}"), e))?;
        lock(&self.inner.markers).insert(tp.clone(), m);
        Ok(m)
    }

    /// Writes `end` as the read-committed marker of `tp` (directory `dir`).
    fn write_marker(&self, tp: &TopicPartition, dir: &Path, end: u64) -> Result<()> {
        let written = committed::write(dir, end);
        let mut markers = lock(&self.inner.markers);
        match written {
            Ok(()) => {
                markers.insert(tp.clone(), Some(end));
                Ok(())
            }
            Err(e) => {
                // Old or new: read the file again next time.
                markers.remove(tp);
                Err(BackendError::fatal(format!("topic {tp}"), e))
            }
        }
    }

    fn checkpoint_path(&self, task: &str) -> PathBuf {
        crate::statedir::checkpoint_file(&self.inner.state_root, task)
    }
}

impl Backend for EmbeddedBackend {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn flushes_locally(&self) -> bool {
        true
    }

    fn partitions(&self, topic: &str) -> Result<Option<u32>> {
        match self.inner.logs.topic(topic) {
            Ok(t) => Ok(Some(t.partitions())),
            Err(LogError::TopicNotFound(_)) => Ok(None),
            Err(e) => Err(topic_err(topic)(e)),
        }
    }

    fn ensure_topic(&self, spec: &TopicSpec) -> Result<u32> {
        let settings = &self.inner.settings;
        let (config, overrides) = match spec.role {
            TopicRole::Changelog => (&settings.changelog, &settings.changelog_overrides),
            TopicRole::Output => (&settings.output, &settings.output_overrides),
        };
        let mut t = self
            .inner
            .logs
            .topic_or_create(&spec.name, spec.partitions.max(1), config.clone())
            .map_err(topic_err(&spec.name))?;
        let (wanted, changes) = overrides.apply(t.config());
        if !changes.is_empty() {
            let open = lock(&self.inner.partitions)
                .keys()
                .any(|tp| tp.topic == spec.name);
            if open {
                return Err(BackendError::TopicMismatch {
                    topic: spec.name.clone(),
                    reason: format!(
                        "its settings changed ({}) while partitions of it are open; restart the job",
                        changes.join(", ")
                    ),
                });
            }
            t = self
                .inner
                .logs
                .set_topic_config(&spec.name, wanted)
                .map_err(topic_err(&spec.name))?;
            tracing::info!(topic = %spec.name, "applied changed topic settings: {}", changes.join(", "));
        }
        if t.partitions() < spec.partitions {
            return Err(BackendError::TopicMismatch {
                topic: spec.name.clone(),
                reason: format!(
                    "it has {} partitions but {} are needed (one per task)",
                    t.partitions(),
                    spec.partitions
                ),
            });
        }
        if spec.role == TopicRole::Changelog && t.config().cleanup_policy != CleanupPolicy::Compact
        {
            return Err(BackendError::TopicMismatch {
                topic: spec.name.clone(),
                reason: "it is not compacted (cleanup.policy=delete), so retention would delete committed store state; a changelog needs a compacted topic (`gregor topic create NAME --partitions N --compact`)".into(),
            });
        }
        Ok(t.partitions())
    }

    fn claim_roles(&self, job: &str, claims: &[RoleClaim]) -> Result<()> {
        let path = roles::roles_path(&self.inner.state_root);
        let mut registry = RoleRegistry::load(&path)?;
        registry.check(job, claims)?;
        let before = registry.clone();
        registry.set(job, claims);
        if registry != before {
            registry.save(&path)?;
        }
        Ok(())
    }

    fn offsets(&self, tp: &TopicPartition) -> Result<Offsets> {
        let p = self.partition(tp)?;
        let p = lock(&p);
        Ok(Offsets {
            start: p.start_offset(),
            end: p.end_offset(),
        })
    }

    fn readable_end(&self, tp: &TopicPartition) -> Result<u64> {
        let p = self.partition(tp)?;
        let p = lock(&p);
        let marker = self.marker(tp, p.dir())?;
        // Up to what is synced: another writer of the process (the key-value service's) may
        // have appended records that are visible but not durable yet.
        Ok(marker.map_or(p.synced_end(), |m| m.min(p.synced_end())))
    }

    fn open_reader(&self, tp: &TopicPartition, from: u64) -> Result<Box<dyn LogReader>> {
        let p = self.partition(tp)?;
        let mut p = lock(&p);
        let reader = p.reader(from).map_err(log_err(tp))?;
        Ok(Box::new(EmbeddedReader {
            tp: tp.clone(),
            reader,
        }))
    }

    fn open_sink(&self, _task: &str) -> Result<Box<dyn RecordSink>> {
        Ok(Box::new(EmbeddedSink {
            backend: self.clone(),
            open: BTreeMap::new(),
            touched: BTreeSet::new(),
        }))
    }

    fn read_checkpoint(&self, task: &str) -> Result<Option<Checkpoint>> {
        Checkpoint::read(&self.checkpoint_path(task))
            .map_err(|e| BackendError::fatal(format!("task `{task}`"), e))
    }

    fn write_checkpoint(&self, task: &str, checkpoint: &Checkpoint) -> Result<()> {
        checkpoint
            .write(&self.checkpoint_path(task))
            .map_err(|e| BackendError::fatal(format!("task `{task}`"), e))
    }

    fn can_truncate(&self) -> bool {
        true
    }

    fn truncate(&self, tp: &TopicPartition, to: u64) -> Result<()> {
        let p = self.partition(tp)?;
        lock(&p).truncate(to).map_err(log_err(tp))
    }

    fn recover_outputs(&self, committed_ends: &BTreeMap<TopicPartition, u64>) -> Result<()> {
        for (tp, &c) in committed_ends {
            let p = self.partition(tp)?;
            let mut p = lock(&p);
            if p.end_offset() > c {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, "dropping {} uncommitted output records", p.end_offset() - c);
                p.truncate(c).map_err(log_err(tp))?;
            }
            self.write_marker(tp, p.dir(), p.end_offset())?;
        }
        Ok(())
    }

    fn outputs_committed(&self, ends: &BTreeMap<TopicPartition, u64>) -> Result<()> {
        for (tp, &end) in ends {
            let p = self.partition(tp)?;
            let p = lock(&p);
            self.write_marker(tp, p.dir(), end)?;
        }
        Ok(())
    }

    fn clean(&self, tp: &TopicPartition, now_ms: i64) -> Result<()> {
        let p = self.partition(tp)?;
        let report = lock(&p).clean(now_ms).map_err(log_err(tp))?;
        tracing::debug!(topic = %tp.topic, partition = tp.partition, "cleanup: {report:?}");
        Ok(())
    }
}

/// A reader of one embedded partition.
struct EmbeddedReader {
    tp: TopicPartition,
    reader: PartitionReader,
}

impl LogReader for EmbeddedReader {
    fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        self.reader.read(max).map_err(log_err(&self.tp))
    }

    /// Copies each record from the partition reader's reused slots straight into `batch`:
    /// no `Record` (two allocations) per record, as the default would make (a full restore's
    /// read path).
    fn read_into(&mut self, batch: &mut RecordBatch, max: usize) -> Result<usize> {
        let mut n = 0;
        while n < max {
            let records = self
                .reader
                .next_batch((max - n).min(4096))
                .map_err(log_err(&self.tp))?;
            if records.is_empty() {
                break;
            }
            for r in records {
                batch.push(r.offset, r.timestamp, &r.key, r.value.as_deref());
            }
            n += records.len();
        }
        Ok(n)
    }

    fn position(&self) -> u64 {
        self.reader.next_offset()
    }

    /// Back to a record of the last batch without reopening (the run loop steps back to its
    /// input limit after reading records not yet synced, under a stream of writes to `gregor
    /// serve`: a reopen re-read up to 64 KiB from the segment index each time); anywhere else
    /// by opening a new reader.
    fn seek(&mut self, offset: u64) -> Result<()> {
        if !self.reader.rewind(offset) {
            self.reader = self.reader.reopen(offset).map_err(log_err(&self.tp))?;
        }
        Ok(())
    }
}

/// A task's sink: appends to the shared partitions, fsyncs the ones it wrote on flush.
struct EmbeddedSink {
    backend: EmbeddedBackend,
    open: BTreeMap<TopicPartition, SharedPartition>,
    touched: BTreeSet<TopicPartition>,
}

impl EmbeddedSink {
    fn part(&mut self, tp: &TopicPartition) -> Result<&SharedPartition> {
        if !self.open.contains_key(tp) {
            let p = self.backend.partition(tp)?;
            self.open.insert(tp.clone(), p);
        }
        Ok(&self.open[tp])
    }
}

impl RecordSink for EmbeddedSink {
    fn send(
        &mut self,
        tp: &TopicPartition,
        timestamp: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        if !self.touched.contains(tp) {
            self.touched.insert(tp.clone());
        }
        let p = self.part(tp)?;
        lock(p)
            .append(timestamp, key, value)
            .map(|_| ())
            .map_err(log_err(tp))
    }

    fn flush_to_os(&mut self) -> Result<()> {
        for tp in &self.touched {
            lock(&self.open[tp]).flush_to_os().map_err(log_err(tp))?;
        }
        Ok(())
    }

    /// Syncs each partition written without holding it during the fsync: the run loop's
    /// `readable_end`, readers and other writers of the partition go on meanwhile (see
    /// [`Partition::start_sync`]). The end returned is the one the fsync covered.
    fn flush(&mut self) -> Result<BTreeMap<TopicPartition, u64>> {
        let mut ends = BTreeMap::new();
        for tp in std::mem::take(&mut self.touched) {
            let p = &self.open[&tp];
            let ticket = lock(p).start_sync().map_err(log_err(&tp))?;
            let fsynced = ticket.fsync();
            let end = lock(p).finish_sync(fsynced).map_err(log_err(&tp))?;
            ends.insert(tp, end);
        }
        Ok(ends)
    }
}

/// Where the committed records of an embedded partition end, and why: what an operator's
/// cleanup (`gregor topic compact`) may treat as final. Records at or past it may belong to
/// a commit that crashed and will be truncated at the job's next start, so they must not
/// shadow anything (see [`crate::log::Partition::compact_committed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommittedEnd {
    /// No job writes the topic through a commit (an input, or a topic no job uses): every
    /// record is committed.
    All,
    /// The changelog of `store` of job `job`: its task's newest checkpoint (0 without one).
    Changelog {
        /// The job.
        job: String,
        /// The store.
        store: String,
        /// The task owning the partition.
        task: String,
        /// The checkpointed changelog end.
        end: u64,
    },
    /// A job's output: its read-committed marker (`COMMITTED`).
    Output {
        /// The marker's offset.
        end: u64,
    },
}

impl CommittedEnd {
    /// The offset below which records are committed (`u64::MAX` for [`All`](Self::All)).
    pub fn offset(&self) -> u64 {
        match self {
            CommittedEnd::All => u64::MAX,
            CommittedEnd::Changelog { end, .. } | CommittedEnd::Output { end } => *end,
        }
    }
}

impl std::fmt::Display for CommittedEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommittedEnd::All => f.write_str("every record"),
            CommittedEnd::Changelog {
                job,
                store,
                task,
                end,
            } => write!(
                f,
                "offset {end} (the checkpoint of task `{task}`, store `{store}` of job `{job}`)"
            ),
            CommittedEnd::Output { end } => write!(f, "offset {end} (the COMMITTED marker)"),
        }
    }
}

/// The [`CommittedEnd`] of partition `tp` (whose directory is `partition_dir`) in the state
/// directory `state_root`, from the topic role registry, the owning task's checkpoint and the
/// partition's `COMMITTED` marker.
/// A changelog whose job is not in the registry (state written before roles were recorded)
/// counts as [`CommittedEnd::All`], as before.
pub fn committed_end(
    state_root: &Path,
    tp: &TopicPartition,
    partition_dir: &Path,
) -> Result<CommittedEnd> {
    let registry = RoleRegistry::load(&roles::roles_path(state_root))?;
    for (job, role) in registry.holders(&tp.topic) {
        if let roles::Role::Changelog { store } = role {
            let task = crate::runtime::task_name(job, tp.partition);
            let path = crate::statedir::checkpoint_file(state_root, &task);
            let checkpoint = Checkpoint::read(&path)
                .map_err(|e| BackendError::fatal(format!("task `{task}`"), e))?;
            let end = checkpoint
                .and_then(|c| c.changelogs.get(store).copied())
                .unwrap_or(0);
            return Ok(CommittedEnd::Changelog {
                job: job.to_string(),
                store: store.clone(),
                task,
                end,
            });
        }
    }
    match committed::read(partition_dir)
        .map_err(|e| BackendError::fatal(format!("topic {tp}"), e))?
    {
        Some(end) => Ok(CommittedEnd::Output { end }),
        None => Ok(CommittedEnd::All),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::TopicConfig;

    /// `read_into` (a full restore's read) returns what `next_batch` returns: the same
    /// records across segments, tombstones included, from a starting offset, `max` at a time.
    #[test]
    fn read_into_matches_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogDir::open(dir.path()).unwrap();
        let config = TopicConfig {
            segment_bytes: 4096,
            ..TopicConfig::default()
        };
        let topic = logs.create_topic("t", 1, config).unwrap();
        let (mut p, _) = topic.open_partition(0).unwrap();
        for i in 0..1000u64 {
            let key = format!("key-{}", i % 97);
            let value = (i % 7 != 0).then(|| vec![b'v'; (i % 50) as usize]);
            p.append(i as i64, key.as_bytes(), value.as_deref())
                .unwrap();
        }
        p.sync().unwrap();
        drop(p);
        let backend =
            EmbeddedBackend::with_log_dir(dir.path(), logs.clone(), EmbeddedSettings::default());
        let tp = TopicPartition::new("t", 0);
        let mut by_batch = backend.open_reader(&tp, 5).unwrap();
        let mut want = Vec::new();
        loop {
            let records = by_batch.next_batch(64).unwrap();
            if records.is_empty() {
                break;
            }
            want.extend(records);
        }
        let mut into = backend.open_bulk_reader(&tp, 5).unwrap();
        let mut batch = RecordBatch::new();
        loop {
            let n = into.read_into(&mut batch, 77).unwrap();
            assert!(n <= 77);
            if n == 0 {
                break;
            }
        }
        assert_eq!(into.position(), 1000);
        assert_eq!(want.len(), 995);
        let got: Vec<Record> = batch
            .iter()
            .map(|r| Record {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.to_vec(),
                value: r.value.map(<[u8]>::to_vec),
            })
            .collect();
        assert_eq!(got, want);
    }

    /// `readable_end` is the synced end bounded by the read-committed marker, following the
    /// marker as this backend moves it (cached, with no file read per call), and the marker
    /// a new backend reads from its file after a restart.
    #[test]
    fn readable_end_follows_the_read_committed_marker() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogDir::open(dir.path()).unwrap();
        let topic = logs.create_topic("out", 1, TopicConfig::default()).unwrap();
        let (mut p, _) = topic.open_partition(0).unwrap();
        for i in 0..10u64 {
            p.append(i as i64, format!("k{i}").as_bytes(), Some(b"v"))
                .unwrap();
        }
        p.sync().unwrap();
        drop(p);
        let tp = TopicPartition::new("out", 0);
        let open =
            || EmbeddedBackend::with_log_dir(dir.path(), logs.clone(), EmbeddedSettings::default());
        let backend = open();
        assert_eq!(
            backend.readable_end(&tp).unwrap(),
            10,
            "no marker: all synced"
        );
        let ends = |end| BTreeMap::from([(tp.clone(), end)]);
        backend.outputs_committed(&ends(4)).unwrap();
        assert_eq!(backend.readable_end(&tp).unwrap(), 4);
        backend.outputs_committed(&ends(8)).unwrap();
        assert_eq!(backend.readable_end(&tp).unwrap(), 8);
        // Start-up recovery cuts what no checkpoint committed and moves the marker there.
        backend.recover_outputs(&ends(6)).unwrap();
        assert_eq!(backend.readable_end(&tp).unwrap(), 6);
        assert_eq!(backend.offsets(&tp).unwrap().end, 6);
        drop(backend);
        assert_eq!(open().readable_end(&tp).unwrap(), 6, "read from the file");
    }
}
