//! Serving a job's stores over HTTP (the contract is `docs/http-api.md`; the design is
//! `docs/design.md`, "Serving").
//!
//! A read is answered from the owning task's own store stack, write-back cache included,
//! between two batches of the task, so it sees every write the task made before it and
//! never an older value, and never half a batch. The HTTP worker that parsed it answers it
//! itself when the task's stores are free (the run loop holds them for a batch or a commit;
//! see `runtime::shared_storage` and [`Serving::try_read`]); otherwise the read is a
//! [`query::Request`] sent into a bounded channel that the container's run loop drains
//! between batches.
//!
//! - this module: [`Serving`], what the container and the HTTP server share: the request
//!   channel, the job's status ([`JobStatus`]: tasks restoring / running, restore progress,
//!   checkpoints), each input partition's processed position and the key-value service's
//!   acknowledged writes (the read barrier: a read waits until its task applied every write
//!   acknowledged before it to the key it reads, or to any key for a range); [`ServeLink`],
//!   the container's end of it;
//! - `barrier`: which acknowledged writes a read waits for;
//! - [`query`]: the read requests and how they are answered;
//! - [`render`]: keys and values to and from URLs and JSON through the store's serdes;
//! - [`write`](mod@write): the key-value service's writer (appends to the input topic, group commit);
//! - [`http`]: the axum server, its routes and error replies.

mod barrier;
pub mod http;
mod layers;
pub mod query;
pub mod render;
pub mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::backend::TopicPartition;
use crate::checkpoint::Checkpoint;
use crate::runtime::JobConfig;

pub use http::{HttpOptions, HttpServer, ProcessInfo, ServeError};
pub use query::{QueryError, ReadAnswer, ReadOp, Request, StandbyAnswer};
pub use write::{KvWriter, WriteError};

/// Read requests that may wait for the run loop; more are answered 503 at once.
pub const REQUEST_QUEUE: usize = 4096;

/// Where the job as a whole stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Checking topics; the tasks are not known yet.
    Starting,
    /// Opening (restoring) the tasks of this process.
    Restoring,
    /// The run loop runs: tasks answer reads.
    Running,
    /// The run loop ended: tasks are closing.
    Stopping,
}

/// Where one task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskState {
    /// Assigned to this process, waiting to be opened or restoring its stores.
    Restoring,
    /// Open and processing: reads are answered.
    Running,
    /// Closed (the job is stopping).
    Stopped,
}

impl TaskState {
    /// The name used in `/v1/job`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Restoring => "restoring",
            TaskState::Running => "running",
            TaskState::Stopped => "stopped",
        }
    }
}

/// One task's status, as `/v1/job` shows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskStatus {
    /// The task's name (`<job>.partition-<P>`).
    pub name: String,
    /// Its state.
    pub state: TaskState,
    /// While restoring: changelog records replayed so far and to replay in all (summed over
    /// its stores as each store's replay starts).
    pub restore: Option<(u64, u64)>,
    /// Its last checkpoint.
    pub checkpoint: Option<Checkpoint>,
}

/// What the container publishes about the job for the HTTP server.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobStatus {
    /// Where the job stands.
    pub phase: Phase,
    /// The job's task count, once the container has read its inputs.
    pub tasks_total: Option<u32>,
    /// The tasks of this process by partition.
    pub tasks: BTreeMap<u32, TaskStatus>,
}

impl JobStatus {
    /// Whether every task of this process runs (the process is ready).
    pub fn ready(&self) -> bool {
        self.phase == Phase::Running
            && !self.tasks.is_empty()
            && self.tasks.values().all(|t| t.state == TaskState::Running)
    }

    /// Whether task `p` runs in this process.
    pub fn running(&self, p: u32) -> bool {
        self.phase == Phase::Running
            && self
                .tasks
                .get(&p)
                .is_some_and(|t| t.state == TaskState::Running)
    }
}

/// What the container and the HTTP server of one process share. Cheap to clone.
#[derive(Clone)]
pub struct Serving {
    inner: Arc<Shared>,
}

struct Shared {
    job: Arc<JobConfig>,
    catch_up: bool,
    status: RwLock<JobStatus>,
    requests: SyncSender<Request>,
    receiver: Mutex<Option<Receiver<Request>>>,
    positions: Mutex<BTreeMap<TopicPartition, Arc<tokio::sync::watch::Sender<u64>>>>,
    /// The key-value service's acknowledged writes per input partition: a read waits until
    /// its task has processed those it must see (the read barrier, see
    /// [`Serving::read_barrier`]).
    durable: Mutex<BTreeMap<TopicPartition, barrier::Acknowledged>>,
    /// Where the HTTP server listens (told to the job's other processes).
    advertised: Mutex<Option<String>>,
    /// Who runs each task, when a coordinator shares the job between processes.
    routes: RwLock<Option<Arc<Routes>>>,
    /// The tasks this process holds a standby copy of (bounded-staleness reads).
    standbys: RwLock<BTreeSet<u32>>,
    /// The tasks an HTTP worker may read directly, without the run loop's hop
    /// ([`Serving::try_read`]): ready, and not replaying after a rollback.
    direct: RwLock<BTreeMap<u32, Arc<dyn DirectRead>>>,
}

/// A task's stores as an HTTP worker reads them itself, between two batches of the task
/// (the run loop holds them while it processes a batch or commits).
pub(crate) trait DirectRead: Send + Sync {
    /// `op` on `store`, answered now from the task's store stack (write-back cache
    /// included); `None` when the task's stores are busy (a batch or a commit runs) or may
    /// hold what must not be seen (a message failed mid-batch and the task will be rolled
    /// back, or it closed): the read then goes through the run loop.
    fn try_read(&self, store: &str, op: &ReadOp) -> Option<Result<ReadAnswer, QueryError>>;
}

/// Who runs each task of the job, as its coordinator last said: reads of a key whose task
/// runs elsewhere are redirected there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// The job model version.
    pub version: u64,
    /// This process's member id.
    pub me: String,
    /// Task -> (member id, its HTTP address if it serves).
    pub owners: BTreeMap<u32, (String, Option<String>)>,
}

use crate::sync::lock;

impl Serving {
    /// Serving for `job` (nothing open yet: every read is a 503 until the container runs).
    ///
    /// With `catch_up`, a task answers reads (and counts as ready) only once it has processed
    /// its inputs up to where they ended when it was opened: what the key-value service
    /// needs, since writes acknowledged before a restart sit in the input past the
    /// checkpoint. Without it (an ordinary job), a task answers as soon as it runs, from the
    /// state it has reached.
    pub fn new(job: JobConfig, catch_up: bool) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(REQUEST_QUEUE);
        Serving {
            inner: Arc::new(Shared {
                job: Arc::new(job),
                catch_up,
                status: RwLock::new(JobStatus {
                    phase: Phase::Starting,
                    tasks_total: None,
                    tasks: BTreeMap::new(),
                }),
                requests: tx,
                receiver: Mutex::new(Some(rx)),
                positions: Mutex::new(BTreeMap::new()),
                durable: Mutex::new(BTreeMap::new()),
                advertised: Mutex::new(None),
                routes: RwLock::new(None),
                standbys: RwLock::new(BTreeSet::new()),
                direct: RwLock::new(BTreeMap::new()),
            }),
        }
    }

    /// Records where the HTTP server listens (`host:port`), which the coordinator tells
    /// the job's other processes.
    pub fn set_advertised(&self, address: String) {
        *lock(&self.inner.advertised) = Some(address);
    }

    /// Sets who runs each task (from the job's coordinator).
    pub fn set_routes(&self, routes: Option<Routes>) {
        *crate::sync::write(&self.inner.routes) = routes.map(Arc::new);
    }

    /// Who runs each task, when a coordinator shares the job between processes.
    pub fn routes(&self) -> Option<Arc<Routes>> {
        crate::sync::read(&self.inner.routes).clone()
    }

    /// Sets the tasks this process holds a standby copy of (from the container).
    pub(crate) fn set_standbys(&self, tasks: BTreeSet<u32>) {
        *crate::sync::write(&self.inner.standbys) = tasks;
    }

    /// Whether this process holds a standby copy of task `p` (which may answer a read with
    /// `?max_lag=`, if it is not too far behind).
    pub fn has_standby(&self, p: u32) -> bool {
        crate::sync::read(&self.inner.standbys).contains(&p)
    }

    /// Where the HTTP server listens, if recorded.
    pub fn advertised(&self) -> Option<String> {
        lock(&self.inner.advertised).clone()
    }

    /// The job served.
    pub fn job(&self) -> &JobConfig {
        &self.inner.job
    }

    /// A copy of the job's status.
    pub fn status(&self) -> JobStatus {
        crate::sync::read(&self.inner.status).clone()
    }

    /// Reads the status without copying it.
    pub fn with_status<R>(&self, f: impl FnOnce(&JobStatus) -> R) -> R {
        f(&crate::sync::read(&self.inner.status))
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        f(&mut crate::sync::write(&self.inner.status))
    }

    /// The container's end: the request receiver. `None` if it was taken already (one
    /// container per [`Serving`]).
    pub fn link(&self) -> Option<ServeLink> {
        lock(&self.inner.receiver).take().map(|rx| ServeLink {
            serving: self.clone(),
            rx,
            published: BTreeMap::new(),
            senders: BTreeMap::new(),
            ready: BTreeSet::new(),
            direct: BTreeMap::new(),
            woken: false,
        })
    }

    /// Queues a request for the run loop; `false` if the queue is full or the container is
    /// gone.
    pub fn send(&self, request: Request) -> bool {
        match self.inner.requests.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Answers `op` on `store` of task `task` on the calling thread, without the run loop,
    /// if the task is ready and its stores are free now; `None` otherwise (send the read
    /// to the run loop, which answers it between batches with the same result or says why
    /// it cannot). The answer reflects every record the task has published as processed.
    pub fn try_read(
        &self,
        task: u32,
        store: &str,
        op: &ReadOp,
    ) -> Option<Result<ReadAnswer, QueryError>> {
        let reads = crate::sync::read(&self.inner.direct).get(&task).cloned()?;
        reads.try_read(store, op)
    }

    fn set_direct(&self, task: u32, reads: Option<&Arc<dyn DirectRead>>) {
        let mut direct = crate::sync::write(&self.inner.direct);
        match reads {
            Some(r) => direct.insert(task, Arc::clone(r)),
            None => direct.remove(&task),
        };
    }

    /// Wakes an idle run loop (new input was appended).
    pub fn wake(&self) {
        let _ = self.inner.requests.try_send(Request::Wake);
    }

    fn position_sender(&self, tp: &TopicPartition) -> Arc<tokio::sync::watch::Sender<u64>> {
        Arc::clone(
            lock(&self.inner.positions)
                .entry(tp.clone())
                .or_insert_with(|| Arc::new(tokio::sync::watch::Sender::new(0))),
        )
    }

    /// Records that the key-value service's writer made input partition `tp` durable up to
    /// `end` with a group writing `keys` (called before the writes are acknowledged).
    pub fn note_durable<'k>(
        &self,
        tp: &TopicPartition,
        end: u64,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) {
        let hashes = keys.into_iter().map(barrier::key_hash);
        let mut durable = lock(&self.inner.durable);
        match durable.get_mut(tp) {
            Some(a) => a.acknowledge(end, hashes),
            None => {
                let mut a = barrier::Acknowledged::default();
                a.acknowledge(end, hashes);
                durable.insert(tp.clone(), a);
            }
        }
    }

    /// The read barrier of input partition `tp`: the end of every write to it acknowledged
    /// so far (0 if none was). A read of a range of its task waits until the task has
    /// processed up to it, so it sees every write acknowledged before the read arrived:
    /// writes are answered once durable, not once applied.
    pub fn read_barrier(&self, tp: &TopicPartition) -> u64 {
        lock(&self.inner.durable).get(tp).map_or(0, |a| a.end())
    }

    /// The read barrier of `key` in input partition `tp`: how far its task must have
    /// processed before a read of the key sees every write to it acknowledged so far (the
    /// end of the last acknowledged group that wrote it, unless applied already; 0: nothing
    /// to wait for). Writes to other keys are not waited for.
    pub fn key_barrier(&self, tp: &TopicPartition, key: &[u8]) -> u64 {
        let h = barrier::key_hash(key);
        lock(&self.inner.durable)
            .get(tp)
            .map_or(0, |a| a.barrier_for(h))
    }

    /// The task consuming `tp` has processed every record below `next` and its readers see
    /// them: writes acknowledged below it need no waiting any more.
    fn note_applied(&self, tp: &TopicPartition, next: u64) {
        if let Some(a) = lock(&self.inner.durable).get_mut(tp) {
            a.applied(next);
        }
    }

    /// Whether the task consuming `tp` has processed every record below `end` (without
    /// waiting).
    pub fn has_processed(&self, tp: &TopicPartition, end: u64) -> bool {
        end == 0
            || lock(&self.inner.positions)
                .get(tp)
                .is_some_and(|s| *s.borrow() >= end)
    }

    /// Waits until the task consuming `tp` has processed every record below `end`; `false`
    /// after `timeout`.
    pub async fn processed(&self, tp: &TopicPartition, end: u64, timeout: Duration) -> bool {
        let mut rx = self.position_sender(tp).subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|&pos| pos >= end)).await,
            Ok(Ok(_))
        )
    }
}

/// The container's end of a [`Serving`]: it answers read requests and publishes where its
/// tasks are.
pub struct ServeLink {
    serving: Serving,
    rx: Receiver<Request>,
    /// The highest position published per input partition. A task whose position is below
    /// it (rolled back to its checkpoint, replaying) answers reads with 503 until it is back:
    /// a write acknowledged as applied must never look undone.
    published: BTreeMap<TopicPartition, u64>,
    senders: BTreeMap<TopicPartition, Arc<tokio::sync::watch::Sender<u64>>>,
    /// Tasks that answer reads (open, and caught up where the job asks for it).
    ready: BTreeSet<u32>,
    /// Tasks an HTTP worker reads directly (ready, and not behind a published position),
    /// with the stores it reads.
    direct: BTreeMap<u32, Arc<dyn DirectRead>>,
    /// A [`Serving::wake`] arrived since [`ServeLink::take_woken`] was last asked.
    woken: bool,
}

/// How the container lets a request reach a task's store.
pub(crate) trait TaskStores {
    /// `op` on the store stack of `store` in task `task`, if the task can answer exactly
    /// now.
    fn read(
        &mut self,
        task: u32,
        store: &str,
        op: &ReadOp,
        published: &BTreeMap<TopicPartition, u64>,
    ) -> Result<ReadAnswer, QueryError>;

    /// The value under `key` in `store` of this process's standby copy of task `task`, if
    /// it holds one that is at most `max_lag` changelog records behind
    /// ([`QueryError::NoStandby`] otherwise).
    fn standby_get(
        &mut self,
        task: u32,
        store: &str,
        key: &[u8],
        max_lag: u64,
    ) -> Result<StandbyAnswer, QueryError> {
        let _ = (store, key, max_lag);
        Err(QueryError::NoStandby {
            task,
            why: "this process holds no standby of it".into(),
        })
    }
}

impl ServeLink {
    /// The shared side.
    pub fn serving(&self) -> &Serving {
        &self.serving
    }

    /// Task `p` (named `name`) is being opened, or reopened after a rollback: it answers no
    /// read until [`publish_task`](Self::publish_task) finds it ready.
    pub(crate) fn task_opening(&mut self, p: u32, name: &str) {
        self.ready.remove(&p);
        self.stop_direct(p);
        self.serving.task_restoring(p, name);
    }

    /// Task `p` was closed here (its coordinator moved it to another process).
    pub(crate) fn task_closed(&mut self, p: u32) {
        self.ready.remove(&p);
        self.stop_direct(p);
        self.serving.update(|s| {
            s.tasks.remove(&p);
        });
    }

    fn stop_direct(&mut self, p: u32) {
        if self.direct.remove(&p).is_some() {
            self.serving.set_direct(p, None);
        }
    }

    /// Publishes where open task `p` is: `positions` (input partition, next offset to
    /// process); `caught_up` if it has processed its inputs to where they ended when it was
    /// opened. A task becomes ready (running, answering reads) here; HTTP workers read it
    /// through `reads` while it is ready and not behind a position already published
    /// (rolled back to its checkpoint and replaying).
    pub(crate) fn publish_task<'t>(
        &mut self,
        p: u32,
        positions: impl Iterator<Item = (&'t TopicPartition, u64)>,
        caught_up: bool,
        checkpoint: Option<&Checkpoint>,
        reads: &Arc<dyn DirectRead>,
    ) {
        let mut behind = false;
        for (tp, next) in positions {
            behind |= self.published.get(tp).is_some_and(|&p| next < p);
            self.publish(tp, next);
        }
        if !self.ready.contains(&p) && (caught_up || !self.serving.inner.catch_up) {
            self.ready.insert(p);
            self.serving.task_checkpoint(p, checkpoint, true);
        }
        if !self.ready.contains(&p) || behind {
            self.stop_direct(p);
        } else if self.direct.get(&p).is_none_or(|r| !Arc::ptr_eq(r, reads)) {
            // New, or a new opening of the task (a new store stack).
            self.direct.insert(p, Arc::clone(reads));
            self.serving.set_direct(p, Some(reads));
        }
    }

    /// Publishes that input partition `tp` is processed up to (not including) `next`.
    fn publish(&mut self, tp: &TopicPartition, next: u64) {
        match self.published.get_mut(tp) {
            Some(p) if *p >= next => return,
            Some(p) => *p = next,
            None => {
                self.published.insert(tp.clone(), next);
            }
        }
        if !self.senders.contains_key(tp) {
            let s = self.serving.position_sender(tp);
            self.senders.insert(tp.clone(), s);
        }
        if let Some(s) = self.senders.get(tp) {
            s.send_if_modified(|v| {
                let changed = *v < next;
                *v = (*v).max(next);
                changed
            });
        }
        self.serving.note_applied(tp, next);
    }

    /// Answers queued requests, at most `max`. With `wait`, first waits that long for one
    /// (the run loop's idle wait). Returns how many reads were answered.
    pub(crate) fn answer(
        &mut self,
        wait: Option<Duration>,
        max: usize,
        tasks: &mut dyn TaskStores,
    ) -> usize {
        let mut answered = 0;
        if let Some(w) = wait {
            match self.rx.recv_timeout(w) {
                Ok(r) => answered += self.answer_one(r, tasks),
                Err(_) => return 0,
            }
        }
        while answered < max {
            match self.rx.try_recv() {
                Ok(r) => answered += self.answer_one(r, tasks),
                Err(_) => break,
            }
        }
        answered
    }

    /// Whether new input was appended (a [`Serving::wake`] came) since the last call: the
    /// run loop then reads its input limits again at once instead of waiting.
    pub(crate) fn take_woken(&mut self) -> bool {
        std::mem::take(&mut self.woken)
    }

    fn answer_one(&mut self, request: Request, tasks: &mut dyn TaskStores) -> usize {
        let (task, store, op, reply) = match request {
            Request::Read {
                task,
                store,
                op,
                reply,
            } => (task, store, op, reply),
            Request::StandbyGet {
                task,
                store,
                key,
                max_lag,
                reply,
            } => {
                if reply.is_closed() {
                    return 0;
                }
                // A standby and the task's catch-up writes both live on this (the container's)
                // thread: the read sees the standby between two catch-ups, never during one.
                let _ = reply.send(tasks.standby_get(task, &store, &key, max_lag));
                return 1;
            }
            Request::Wake => {
                self.woken = true;
                return 0;
            }
        };
        if reply.is_closed() {
            return 0; // the client gave up
        }
        let answer = if self.ready.contains(&task) {
            tasks.read(task, &store, &op, &self.published)
        } else {
            Err(QueryError::Unavailable {
                task,
                why: "is not ready (restoring, or catching up with its input)",
            })
        };
        let _ = reply.send(answer);
        1
    }
}

/// Status updates the container makes.
impl Serving {
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.update(|s| {
            s.phase = phase;
            if phase == Phase::Stopping {
                for t in s.tasks.values_mut() {
                    t.state = TaskState::Stopped;
                }
            }
        });
    }

    /// The job has `total` tasks; those in `assigned` run here, named by `name`.
    pub(crate) fn set_tasks(&self, total: u32, assigned: &[u32], name: impl Fn(u32) -> String) {
        self.update(|s| {
            s.phase = Phase::Restoring;
            s.tasks_total = Some(total);
            for &p in assigned {
                s.tasks.entry(p).or_insert_with(|| TaskStatus {
                    name: name(p),
                    state: TaskState::Restoring,
                    restore: None,
                    checkpoint: None,
                });
            }
        });
    }

    /// Task `p` is being opened (or reopened after a rollback).
    pub(crate) fn task_restoring(&self, p: u32, name: &str) {
        self.update(|s| {
            let t = s.tasks.entry(p).or_insert_with(|| TaskStatus {
                name: name.to_string(),
                state: TaskState::Restoring,
                restore: None,
                checkpoint: None,
            });
            t.state = TaskState::Restoring;
            t.restore = Some((0, 0));
        });
    }

    /// Task `p` has `checkpoint`; with `running`, it answers reads from now on.
    pub(crate) fn task_checkpoint(&self, p: u32, checkpoint: Option<&Checkpoint>, running: bool) {
        self.update(|s| {
            if let Some(t) = s.tasks.get_mut(&p) {
                t.checkpoint = checkpoint.cloned();
                if running {
                    t.state = TaskState::Running;
                    t.restore = None;
                }
            }
        });
    }
}

/// Restore progress that also updates a task's status, for `/v1/job`.
pub(crate) struct StatusProgress<'a> {
    /// The progress display being wrapped.
    pub(crate) inner: &'a mut dyn crate::restore::RestoreProgress,
    /// Where the status goes.
    pub(crate) serving: &'a Serving,
    /// The task's partition.
    pub(crate) task: u32,
}

impl StatusProgress<'_> {
    fn add(&self, records: u64, total: u64) {
        self.serving.update(|s| {
            if let Some(t) = s.tasks.get_mut(&self.task) {
                let (r, n) = t.restore.unwrap_or((0, 0));
                t.restore = Some((r + records, n + total));
            }
        });
    }
}

impl crate::restore::RestoreProgress for StatusProgress<'_> {
    fn start(&mut self, store: &str, records: u64) {
        self.inner.start(store, records);
        self.add(0, records);
    }

    fn advance(&mut self, records: u64, bytes: u64) {
        self.inner.advance(records, bytes);
        self.add(records, 0);
    }

    fn grow(&mut self, records: u64) {
        self.inner.grow(records);
    }

    fn finish(&mut self, stats: &crate::restore::RestoreStats) {
        self.inner.finish(stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores that answer every get with the value they were made with.
    struct Fixed(&'static [u8]);

    impl DirectRead for Fixed {
        fn try_read(&self, _: &str, _: &ReadOp) -> Option<Result<ReadAnswer, QueryError>> {
            Some(Ok(ReadAnswer::Value(Some(self.0.to_vec()))))
        }
    }

    fn serving(catch_up: bool) -> (Serving, ServeLink) {
        let job = JobConfig::from_toml_str(
            "<test>",
            "[job]\nname = \"j\"\ntask = \"kv\"\ninputs = [\"in\"]\n",
        )
        .unwrap();
        let serving = Serving::new(job, catch_up);
        let link = serving.link().unwrap();
        (serving, link)
    }

    /// What a direct read of task 0 answers: `None` when it is not registered.
    fn direct(s: &Serving) -> Option<Vec<u8>> {
        match s.try_read(0, "kv", &ReadOp::Get(b"k".to_vec())) {
            None => None,
            Some(Ok(ReadAnswer::Value(v))) => v,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }

    /// A task is read directly only while it is ready and not behind a position it already
    /// published; a rollback (`task_opening`) or a close stops it at once, and a new opening
    /// of the task is read through its new stores.
    #[test]
    fn direct_reads_follow_readiness_rollbacks_and_reopenings() {
        let tp = TopicPartition::new("in", 0);
        let first: Arc<dyn DirectRead> = Arc::new(Fixed(b"first"));
        let second: Arc<dyn DirectRead> = Arc::new(Fixed(b"second"));
        let (s, mut link) = serving(true);
        link.task_opening(0, "j.partition-0");
        // Not caught up with its input yet: not ready, not read directly.
        link.publish_task(0, [(&tp, 5)].into_iter(), false, None, &first);
        assert_eq!(direct(&s), None);
        link.publish_task(0, [(&tp, 10)].into_iter(), true, None, &first);
        assert_eq!(direct(&s), Some(b"first".to_vec()));
        // Rolled back to its checkpoint: nothing direct from the moment it reopens, and not
        // while it replays below what it had published (10), even once ready again.
        link.task_opening(0, "j.partition-0");
        assert_eq!(direct(&s), None);
        link.publish_task(0, [(&tp, 7)].into_iter(), true, None, &second);
        assert_eq!(direct(&s), None, "read directly while replaying");
        link.publish_task(0, [(&tp, 10)].into_iter(), true, None, &second);
        assert_eq!(direct(&s), Some(b"second".to_vec()));
        // Reopened without a rollback notice (e.g. a promoted standby): its new stores.
        link.publish_task(0, [(&tp, 11)].into_iter(), true, None, &first);
        assert_eq!(direct(&s), Some(b"first".to_vec()));
        link.task_closed(0);
        assert_eq!(direct(&s), None);
        // Without catch-up a task is ready as soon as it runs.
        let (s, mut link) = serving(false);
        link.task_opening(0, "j.partition-0");
        link.publish_task(0, [(&tp, 0)].into_iter(), false, None, &first);
        assert_eq!(direct(&s), Some(b"first".to_vec()));
    }
}
