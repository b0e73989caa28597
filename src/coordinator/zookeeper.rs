//! The ZooKeeper coordinator: a job's processes join and leave, a leader assigns tasks.
//!
//! Layout under `<zookeeper.root>/<job>`:
//!
//! ```text
//! members/p-<seq>        ephemeral sequential, one per process session: MemberInfo (JSON)
//! model                  the newest job model (JSON PublishedModel), written by the leader
//! acks/<version>-<id>    ephemeral: member <id> released what it lost under <version>
//! ```
//!
//! One thread per process talks to ZooKeeper (the `zookeeper-client` crate on a small tokio
//! runtime) and reacts to watches, not to a timer:
//!
//! - every member keeps a data watch on `model` (an exists watch while there is none) and,
//!   while the barrier of the model it knows waits for someone, a child watch on `acks`;
//! - the member with the lowest sequence number is the leader and keeps a child watch on
//!   `members`; every other member keeps an exists watch on its predecessor (the next lower
//!   sequence number, [`super::barrier::predecessor_of`]), so a member's death wakes one
//!   process, and when the leader dies its successor finds itself lowest and leads;
//! - when the membership has been unchanged for `job.debounce.time.ms` (a timer) and differs
//!   from the model's, the leader re-reads the members' data, computes the next model with
//!   [`super::model::plan`] and writes it (compare-and-set on the node's version, so two
//!   processes that both think they lead cannot both write one version).
//!
//! A fired watch makes the thread read that node again (which sets the watch again); what the
//! container asks for (an acknowledgement, the tasks it holds) is written at once. The thread
//! publishes what it knows to the container, which decides with
//! [`super::barrier::member_step`]. A safety re-read ([`SAFETY_REREAD`]) lists the members and
//! acknowledgements and reads the model even when no watch fired, in case one was lost across
//! a reconnection.
//!
//! **Lease.** A round trip that ZooKeeper answered proves the session was alive when it
//! started. A process commits only while its last such proof is younger than half the
//! session timeout ([`Coordinator::fence`]) and drops its tasks without committing once it is
//! older ([`Directive::Fence`]); the server expires the session only a full session timeout
//! after it last heard from it, and only then does the leader give the tasks to others. When
//! nothing else talked to ZooKeeper for a sixth of the session timeout
//! ([`LEASE_RENEWALS_PER_SESSION`]), the thread renews the proof with one `exists` on its own
//! member node. The client's session state events are not used for the lease (a
//! `Disconnected` event can come later than half a session timeout after the server last
//! heard from the process), only to stop at once when the session expired and to read
//! everything again after a reconnection. A fenced process closes its session and joins
//! again as a new member.
//!
//! A clean stop deletes the member node and closes the session, so the others rebalance
//! after the debounce instead of after the session timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zookeeper_client as zk;

use super::barrier::{
    ModelChange, Step, leader_of, leader_step, member_step, moved_tasks, predecessor_of,
};
use super::{
    Coordinator, CoordinatorError, CoordinatorStatus, Directive, MemberInfo, PublishedModel,
};
use crate::checkpoint::CheckpointOwner;
use crate::runtime::config::ZooKeeperConfig;
use crate::task_storage::CommitFence;

/// How often the coordinator's thread reads members, model and acknowledgements even when no
/// watch fired (at most half the session timeout): a watch lost across a reconnect delays a
/// rebalance by this much at worst.
pub const SAFETY_REREAD: Duration = Duration::from_secs(2);

/// The lease is renewed (one round trip, if nothing else talked to ZooKeeper) every this
/// fraction of the session timeout; the lease itself is half the session timeout.
pub const LEASE_RENEWALS_PER_SESSION: u32 = 6;

/// The pause before retrying after a failed ZooKeeper call (at most; less with short
/// sessions).
const RETRY: Duration = Duration::from_millis(100);

/// How long a process tries to join its job at start before it gives up with an error.
pub const FIRST_JOIN_DEADLINE: Duration = Duration::from_secs(15);

/// What the coordinator's thread and the container share.
#[derive(Default)]
struct Shared {
    /// The member id of the current session, once joined.
    member: Option<String>,
    /// Start of the last round ZooKeeper answered, in the current session.
    last_ok: Option<Instant>,
    /// Live members (by id), the newest model, its acknowledgements.
    members: BTreeMap<String, MemberInfo>,
    model: Option<PublishedModel>,
    acked: BTreeSet<String>,
    /// The member id the container's open tasks were started under.
    tasks_member: Option<String>,
    /// An acknowledgement to write: (member, version).
    ack_wanted: Option<(String, u64)>,
    /// Tasks with local state here, when they changed since the last write.
    holds: Option<BTreeSet<u32>>,
    /// The container dropped its tasks: start a new session.
    rejoin: bool,
    /// A clean stop: leave.
    leave: bool,
    /// The thread ended (with why).
    stopped: Option<String>,
    /// The last ZooKeeper error, for messages.
    last_error: Option<String>,
}

/// Joins a job through ZooKeeper (see the module doc).
pub struct ZooKeeperCoordinator {
    shared: Arc<Mutex<Shared>>,
    wake: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
    lease: Duration,
    connect: String,
}

/// What a process tells the others about itself when it joins.
#[derive(Debug, Clone)]
pub struct JoinInfo {
    /// Its host name.
    pub host: String,
    /// Its HTTP address, if it serves the job.
    pub http: Option<String>,
    /// Tasks it has local state for.
    pub holds: BTreeSet<u32>,
    /// The newest job model version the job's checkpoints name (0 if none): a first model
    /// (none in ZooKeeper, say after its data was lost) gets a higher version, so checkpoints
    /// written under it are never taken for a former owner's late ones.
    pub newest_generation: u64,
}

impl ZooKeeperCoordinator {
    /// Starts the coordinator's thread, which joins `job` (of `tasks` tasks) under
    /// `settings` and keeps trying while ZooKeeper is down. Returns at once.
    pub fn join(
        settings: &ZooKeeperConfig,
        job: &str,
        tasks: u32,
        standby_replicas: usize,
        info: JoinInfo,
    ) -> Result<Self, CoordinatorError> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let session = Duration::from_millis(settings.session_timeout_ms);
        let worker = Worker {
            settings: settings.clone(),
            base: format!("{}/{job}", settings.root),
            tasks,
            standby_replicas,
            info,
            shared: Arc::clone(&shared),
            wake: Arc::clone(&wake),
            session,
            reread: SAFETY_REREAD.min(session / 2),
            renew: session / LEASE_RENEWALS_PER_SESSION,
            retry: RETRY.min(session / 20),
            debounce: Duration::from_millis(settings.debounce_ms),
        };
        let thread = std::thread::Builder::new()
            .name("gregor-zookeeper".into())
            .spawn(move || worker.run())
            .map_err(|e| CoordinatorError::Stopped(format!("cannot start its thread: {e}")))?;
        Ok(ZooKeeperCoordinator {
            shared,
            wake,
            thread: Some(thread),
            lease: session / 2,
            connect: settings.connect.clone(),
        })
    }

    fn lease_error(shared: &Shared, lease: Duration) -> Option<String> {
        match (&shared.member, &shared.tasks_member) {
            (Some(m), Some(t)) if m != t => {
                return Some(format!(
                    "the ZooKeeper session of member {t} ended (now member {m})"
                ));
            }
            (None, Some(t)) => {
                return Some(format!("the ZooKeeper session of member {t} ended"));
            }
            _ => {}
        }
        match shared.last_ok {
            Some(at) if at.elapsed() < lease => None,
            Some(at) => Some(format!(
                "no answer from ZooKeeper for {} ms (lease {} ms){}",
                at.elapsed().as_millis(),
                lease.as_millis(),
                shared
                    .last_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            None => Some("not connected to ZooKeeper".into()),
        }
    }
}

impl Coordinator for ZooKeeperCoordinator {
    fn poll(&mut self, open: &BTreeSet<u32>) -> Result<Directive, CoordinatorError> {
        let mut s = crate::sync::lock(&self.shared);
        if let Some(why) = &s.stopped {
            return Err(CoordinatorError::ZooKeeper {
                connect: self.connect.clone(),
                message: why.clone(),
            });
        }
        if !open.is_empty()
            && let Some(reason) = Self::lease_error(&s, self.lease)
        {
            s.tasks_member = None;
            s.rejoin = true;
            drop(s);
            self.wake.notify_one();
            return Ok(Directive::Fence { reason });
        }
        let Some(me) = s.member.clone() else {
            return Ok(Directive::Continue);
        };
        if s.last_ok.is_none_or(|at| at.elapsed() >= self.lease) {
            // Not sure the session is alive: start nothing.
            return Ok(Directive::Continue);
        }
        Ok(match member_step(&me, s.model.as_ref(), open, &s.acked) {
            Step::Continue => Directive::Continue,
            Step::Release { version, keep } => Directive::Release { version, keep },
            Step::Acknowledge { version } => {
                if s.ack_wanted.as_ref() != Some(&(me.clone(), version)) {
                    s.ack_wanted = Some((me, version));
                    drop(s);
                    self.wake.notify_one();
                }
                Directive::Continue
            }
            Step::Run { version, active } => {
                s.tasks_member = Some(me);
                Directive::Run { version, active }
            }
        })
    }

    fn released(&mut self, version: u64) -> Result<(), CoordinatorError> {
        let mut s = crate::sync::lock(&self.shared);
        if let Some(me) = s.member.clone() {
            s.ack_wanted = Some((me, version));
        }
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    fn fence(&self) -> CommitFence {
        let shared = Arc::clone(&self.shared);
        let lease = self.lease;
        Arc::new(
            move || match Self::lease_error(&crate::sync::lock(&shared), lease) {
                None => Ok(()),
                Some(reason) => Err(reason),
            },
        )
    }

    fn owner(&self, generation: u64) -> Option<CheckpointOwner> {
        let s = crate::sync::lock(&self.shared);
        s.tasks_member
            .clone()
            .map(|member| CheckpointOwner { member, generation })
    }

    fn standbys(&self) -> BTreeSet<u32> {
        let s = crate::sync::lock(&self.shared);
        match (&s.member, &s.model) {
            (Some(me), Some(m)) => m.model.standbys_of(me).collect(),
            _ => BTreeSet::new(),
        }
    }

    fn assigned(&self) -> BTreeSet<u32> {
        let s = crate::sync::lock(&self.shared);
        match (&s.member, &s.model) {
            (Some(me), Some(m)) => m.model.active_of(me).collect(),
            _ => BTreeSet::new(),
        }
    }

    fn holds(&mut self, tasks: &BTreeSet<u32>) {
        crate::sync::lock(&self.shared).holds = Some(tasks.clone());
        self.wake.notify_one();
    }

    fn leave(&mut self) {
        crate::sync::lock(&self.shared).leave = true;
        self.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn status(&self) -> Option<CoordinatorStatus> {
        let s = crate::sync::lock(&self.shared);
        Some(CoordinatorStatus {
            member: s.member.clone()?,
            leader: leader_of(s.members.keys().map(String::as_str)).map(str::to_string),
            members: s.members.clone(),
            model: s.model.clone(),
        })
    }
}

impl Drop for ZooKeeperCoordinator {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The coordinator's thread.
struct Worker {
    settings: ZooKeeperConfig,
    base: String,
    tasks: u32,
    standby_replicas: usize,
    info: JoinInfo,
    shared: Arc<Mutex<Shared>>,
    wake: Arc<tokio::sync::Notify>,
    session: Duration,
    /// The safety re-read's interval.
    reread: Duration,
    /// The lease's renewal interval: the longest the thread goes without a round trip.
    renew: Duration,
    /// The pause after a failed call.
    retry: Duration,
    debounce: Duration,
}

/// A ZooKeeper call failed; `ended`: the session is gone (expired or closed).
struct ZkFailure {
    message: String,
    ended: bool,
}

fn zk_failure(what: &str, e: zk::Error) -> ZkFailure {
    let ended = matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed);
    ZkFailure {
        message: format!("{what}: {e}"),
        ended,
    }
}

/// What one read found.
struct View {
    members: BTreeMap<String, MemberInfo>,
    model: Option<(PublishedModel, i32)>,
    acked: BTreeSet<String>,
}

/// A watch set on ZooKeeper: resolves when it fires.
type Watch = std::pin::Pin<Box<dyn std::future::Future<Output = zk::WatchedEvent>>>;

fn watch(w: zk::OneshotWatcher) -> Watch {
    Box::pin(w.changed())
}

/// Resolves when the watch in `slot` fires (and empties the slot); never when it is empty.
async fn fired(slot: &mut Option<Watch>) -> zk::WatchedEvent {
    match slot {
        Some(w) => {
            let event = w.await;
            *slot = None;
            event
        }
        None => std::future::pending().await,
    }
}

/// The watches of one session. A watch is never dropped before it fired while its session
/// lives: `zookeeper-client` then sends a `RemoveWatches` request, which ZooKeeper 3.4 does
/// not know (it answers "unimplemented" and closes the connection). So a slot is re-armed
/// only once it fired, a watch no longer wanted is kept in `retired`, and the whole set is
/// dropped only after the session's client is.
#[derive(Default)]
struct Watches {
    /// The leader's child watch on `members`.
    members: Option<Watch>,
    /// A data (or, while the node does not exist, exists) watch on `model`.
    model: Option<Watch>,
    /// A child watch on `acks`, armed while a barrier waits.
    acks: Option<Watch>,
    /// An exists watch on the predecessor's member node (non-leaders).
    predecessor: Option<Watch>,
    /// Whose node `predecessor` watches.
    predecessor_id: Option<String>,
    /// Unfired watches no longer wanted.
    retired: Vec<Watch>,
}

impl Watches {
    fn retire(&mut self, w: Option<Watch>) {
        self.retired.extend(w);
    }
}

/// What must be read again (a watch fired, a write changed it, or the safety re-read).
#[derive(Debug, Clone, Copy)]
struct Dirty {
    members: bool,
    model: bool,
    acks: bool,
}

impl Dirty {
    const ALL: Dirty = Dirty {
        members: true,
        model: true,
        acks: true,
    };

    fn any(self) -> bool {
        self.members || self.model || self.acks
    }
}

/// What one session knows.
struct Known {
    members: BTreeMap<String, MemberInfo>,
    model: Option<(PublishedModel, i32)>,
    acked: BTreeSet<String>,
    /// When the live set last changed (the leader's debounce).
    stable_since: Instant,
    /// The model version this session last acknowledged.
    ack_written: Option<u64>,
}

impl Known {
    fn leads(&self, me: &str) -> bool {
        leader_of(self.members.keys().map(String::as_str)) == Some(me)
    }

    /// The barrier of the known model waits for someone.
    fn barrier_open(&self) -> bool {
        self.model
            .as_ref()
            .is_some_and(|(m, _)| !m.members.is_subset(&self.acked))
    }
}

impl Worker {
    fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                crate::sync::lock(&self.shared).stopped =
                    Some(format!("cannot start its runtime: {e}"));
                return;
            }
        };
        rt.block_on(self.sessions());
    }

    fn leaving(&self) -> bool {
        crate::sync::lock(&self.shared).leave
    }

    /// Joins, follows the job until the session ends or a rejoin is asked for, joins again.
    /// The first join must succeed within [`FIRST_JOIN_DEADLINE`] (or the session timeout,
    /// if longer): a wrong address or a server that is down is reported, not waited out.
    /// Later, the process keeps trying for as long as it runs.
    async fn sessions(&self) {
        let started = Instant::now();
        let deadline = FIRST_JOIN_DEADLINE.max(self.session);
        let mut joined_once = false;
        let mut warned: Option<Instant> = None;
        while !self.leaving() {
            let joined = match self.connect().await {
                Ok(client) => match self.register(&client).await {
                    Ok(me) => Ok((client, me)),
                    Err(f) => Err(f.message),
                },
                Err(message) => Err(message),
            };
            let (client, me) = match joined {
                Ok(j) => j,
                Err(message) => {
                    if !joined_once && started.elapsed() >= deadline {
                        crate::sync::lock(&self.shared).stopped = Some(format!(
                            "could not join the job within {} ms: {message}",
                            deadline.as_millis()
                        ));
                        return;
                    }
                    if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!("zookeeper {}: {message}; retrying", self.settings.connect);
                        warned = Some(Instant::now());
                    }
                    crate::sync::lock(&self.shared).last_error = Some(message);
                    self.pause(Duration::from_millis(500)).await;
                    continue;
                }
            };
            joined_once = true;
            tracing::info!(member = %me, "joined job at {}", self.base);
            {
                let mut s = crate::sync::lock(&self.shared);
                s.member = Some(me.clone());
                s.last_ok = None;
                s.rejoin = false;
            }
            let mut watches = Watches::default();
            self.follow(&client, &me, &mut watches).await;
            crate::sync::lock(&self.shared).member = None;
            if self.leaving() {
                let path = format!("{}/members/{me}", self.base);
                let _ = self.call(client.delete(&path, None)).await;
            }
            drop(client); // closes the session (its ephemeral nodes go with it)
            // Unfired watches go after their client: no RemoveWatches request (see `Watches`).
            drop(watches);
            // Let the runtime send the close request.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
        }
    }

    /// A ZooKeeper call bounded by half the lease (a partitioned server must not hang us).
    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, zk::Error>>,
    ) -> Result<T, zk::Error> {
        match tokio::time::timeout(self.session / 4, f).await {
            Ok(r) => r,
            Err(_) => Err(zk::Error::Timeout),
        }
    }

    async fn connect(&self) -> Result<zk::Client, String> {
        let connector = zk::Client::connector()
            .with_session_timeout(self.session)
            .with_connection_timeout(self.session / 4)
            // Plain `create` (not `create2`): works on ZooKeeper 3.4 and later.
            .with_server_version(3, 4, 0);
        match tokio::time::timeout(self.session, connector.connect(&self.settings.connect)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Err(_) => Err(format!(
                "cannot connect within {} ms",
                self.session.as_millis()
            )),
        }
    }

    /// This process's member node content (its id is the node's name).
    fn member_data(&self, holds: BTreeSet<u32>) -> Vec<u8> {
        let info = MemberInfo {
            id: String::new(),
            host: self.info.host.clone(),
            pid: std::process::id(),
            http: self.info.http.clone(),
            holds,
        };
        serde_json::to_vec(&info).unwrap_or_default()
    }

    /// Creates the job's directories if missing and this process's member node.
    async fn register(&self, client: &zk::Client) -> Result<String, ZkFailure> {
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        for dir in ["members", "acks"] {
            let path = format!("{}/{dir}", self.base);
            match self.call(client.mkdir(&path, &persistent)).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_failure(&format!("creating {path}"), e)),
            }
        }
        let holds = crate::sync::lock(&self.shared).holds.take();
        let data = self.member_data(holds.unwrap_or_else(|| self.info.holds.clone()));
        let prefix = format!("{}/members/p-", self.base);
        let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let (_, seq) = self
            .call(client.create(&prefix, &data, &ephemeral))
            .await
            .map_err(|e| zk_failure("registering this process", e))?;
        Ok(format!("p-{seq}"))
    }

    /// Follows the job until the session ends, a rejoin is asked for, or the process
    /// leaves: reads what changed (a watch fired, the container asked for a write, or the
    /// safety re-read is due), acts (acknowledge, lead), publishes what it knows to the
    /// container, and sleeps until the next event.
    async fn follow(&self, client: &zk::Client, me: &str, watches: &mut Watches) {
        let mut known = Known {
            members: BTreeMap::new(),
            model: None,
            acked: BTreeSet::new(),
            stable_since: Instant::now(),
            ack_written: None,
        };
        let mut dirty = Dirty::ALL;
        let mut reread_at = Instant::now() + self.reread;
        let mut state = client.state_watcher();
        loop {
            {
                let s = crate::sync::lock(&self.shared);
                if s.leave || s.rejoin {
                    return;
                }
            }
            if Instant::now() >= reread_at {
                dirty = Dirty::ALL;
                reread_at = Instant::now() + self.reread;
            }
            let started = Instant::now();
            let mut retry = false;
            match self.step(client, me, &mut known, watches, &mut dirty).await {
                Ok(answered) => {
                    let mut s = crate::sync::lock(&self.shared);
                    if answered {
                        s.last_ok = Some(started);
                        s.last_error = None;
                    }
                    s.members.clone_from(&known.members);
                    s.acked.clone_from(&known.acked);
                    s.model = known.model.as_ref().map(|(m, _)| m.clone());
                }
                Err(f) => {
                    tracing::warn!(member = %me, "zookeeper {}: {}", self.settings.connect, f.message);
                    crate::sync::lock(&self.shared).last_error = Some(f.message);
                    if f.ended || client.state().is_terminated() {
                        return;
                    }
                    dirty = Dirty::ALL;
                    retry = true;
                }
            }
            if dirty.any() && !retry {
                continue;
            }
            // Sleep until something happens: a watch, the container, the session state, the
            // lease's renewal, the safety re-read, the end of the leader's debounce.
            let last_ok = crate::sync::lock(&self.shared).last_ok;
            let mut until = reread_at.min(last_ok.map_or(Instant::now(), |at| at + self.renew));
            if retry {
                until = until.min(Instant::now() + self.retry);
            }
            if known.leads(me) && self.leader_next(&known).is_none() && !self.up_to_date(&known) {
                until = until.min(known.stable_since + self.debounce);
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                e = fired(&mut watches.members) => {
                    tracing::debug!(member = %me, "watch: members changed ({:?})", e.event_type);
                    dirty.members = true;
                }
                e = fired(&mut watches.predecessor) => {
                    tracing::debug!(member = %me, "watch: predecessor {} ({:?})", e.path, e.event_type);
                    watches.predecessor_id = None;
                    dirty.members = true;
                }
                e = fired(&mut watches.model) => {
                    tracing::debug!(member = %me, "watch: model ({:?})", e.event_type);
                    dirty.model = true;
                }
                e = fired(&mut watches.acks) => {
                    tracing::debug!(member = %me, "watch: acknowledgements ({:?})", e.event_type);
                    dirty.acks = true;
                }
                st = state.changed() => {
                    tracing::debug!(member = %me, "zookeeper session state: {st:?}");
                    if st.is_terminated() {
                        crate::sync::lock(&self.shared).last_error =
                            Some(format!("the ZooKeeper session ended: {st:?}"));
                        return;
                    }
                    if st == zk::SessionState::SyncConnected {
                        // Back after a disconnection: read everything again.
                        dirty = Dirty::ALL;
                    }
                }
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// The membership the known model was computed for and its task count are current.
    fn up_to_date(&self, known: &Known) -> bool {
        known.model.as_ref().is_some_and(|(m, _)| {
            m.tasks == self.tasks && known.members.keys().eq(m.members.iter())
        })
    }

    /// The model the leader would publish now.
    fn leader_next(&self, known: &Known) -> Option<PublishedModel> {
        leader_step(
            &known.members,
            self.tasks,
            known.model.as_ref().map(|(m, _)| m),
            self.standby_replicas,
            known.stable_since.elapsed(),
            self.debounce,
        )
    }

    /// One step: the writes the container asked for, the reads `dirty` asks for, the
    /// leader's part, and a lease renewal if nothing else talked to ZooKeeper for a while.
    /// Returns whether ZooKeeper answered anything (the session was alive at the start).
    async fn step(
        &self,
        client: &zk::Client,
        me: &str,
        known: &mut Known,
        watches: &mut Watches,
        dirty: &mut Dirty,
    ) -> Result<bool, ZkFailure> {
        let mut answered = false;
        let (ack, holds, last_ok) = {
            let mut s = crate::sync::lock(&self.shared);
            let ack = match &s.ack_wanted {
                Some((member, version)) if member == me => Some(*version),
                _ => None,
            };
            (ack, s.holds.take(), s.last_ok)
        };
        if let Some(version) = ack
            && known.ack_written != Some(version)
        {
            let path = format!("{}/acks/{version}-{me}", self.base);
            let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
            match self.call(client.create(&path, &[], &ephemeral)).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_failure(&format!("acknowledging model {version}"), e)),
            }
            known.ack_written = Some(version);
            answered = true;
            dirty.acks = true;
        }
        if let Some(holds) = holds {
            let path = format!("{}/members/{me}", self.base);
            let data = self.member_data(holds.clone());
            if let Err(e) = self.call(client.set_data(&path, &data, None)).await {
                crate::sync::lock(&self.shared).holds.get_or_insert(holds);
                return Err(zk_failure("updating this member", e));
            }
            answered = true;
        }
        if dirty.members {
            dirty.members = false;
            if self.read_members(client, me, known, watches).await? {
                dirty.members = true; // the predecessor just went: list again
            }
            answered = true;
        }
        if dirty.model {
            dirty.model = false;
            if self.read_model(client, me, known, watches).await? {
                dirty.acks = true;
                if known.model.as_ref().is_some_and(|(m, _)| {
                    !m.members.iter().all(|id| known.members.contains_key(id))
                }) {
                    dirty.members = true; // members we have not read yet (their addresses)
                }
            }
            answered = true;
        }
        if dirty.acks {
            dirty.acks = false;
            self.read_acks(client, known, watches).await?;
            answered = true;
        }
        if known.leads(me) && self.leader_next(known).is_some() {
            // Fresh member data (tasks each holds) for the plan.
            self.read_member_data(client, known).await?;
            if known.leads(me)
                && let Some(mut next) = self.leader_next(known)
            {
                if known.model.is_none() {
                    // A first model (none in ZooKeeper, say after its data was lost): above
                    // every version the checkpoints name, so checkpoints written under it
                    // are never taken for a former owner's late ones.
                    next.model.version = next.model.version.max(self.info.newest_generation + 1);
                }
                self.publish(client, me, next, known, dirty).await?;
            }
            answered = true;
        }
        if !answered && last_ok.is_none_or(|at| at.elapsed() >= self.renew) {
            // The lease's renewal: one cheap round trip, which also checks the member node.
            let path = format!("{}/members/{me}", self.base);
            match self.call(client.check_stat(&path)).await {
                Ok(Some(_)) => answered = true,
                Ok(None) => {
                    return Err(ZkFailure {
                        message: format!("member node {me} is gone"),
                        ended: true,
                    });
                }
                Err(e) => return Err(zk_failure("renewing the lease", e)),
            }
        }
        Ok(answered)
    }

    /// Lists the members (the leader sets a child watch), reads the data of the members when
    /// the set changed, and watches the predecessor. Returns true when the predecessor
    /// turned out gone already (list again).
    async fn read_members(
        &self,
        client: &zk::Client,
        me: &str,
        known: &mut Known,
        watches: &mut Watches,
    ) -> Result<bool, ZkFailure> {
        let dir = format!("{}/members", self.base);
        let mut names = self
            .list(client, &dir, known.leads(me), &mut watches.members)
            .await?;
        if !names.iter().any(|n| n == me) {
            return Err(ZkFailure {
                message: format!("member node {me} is gone"),
                ended: true,
            });
        }
        let leads = leader_of(names.iter().map(String::as_str)) == Some(me);
        if leads && watches.members.is_none() {
            // Just became the leader: list again, with the watch.
            names = self.list(client, &dir, true, &mut watches.members).await?;
        }
        let ids: BTreeSet<&String> = names.iter().collect();
        if !known.members.keys().eq(ids.iter().copied()) {
            known.stable_since = Instant::now();
            let mut members = BTreeMap::new();
            for name in names.iter() {
                if let Some(info) = self.read_member(client, name).await? {
                    members.insert(name.clone(), info);
                }
            }
            known.members = members;
            if leads {
                tracing::debug!(member = %me, "leader: members {:?}", known.members.keys());
            }
        }
        let predecessor = predecessor_of(me, names.iter().map(String::as_str)).map(str::to_string);
        if predecessor == watches.predecessor_id
            && (predecessor.is_none() || watches.predecessor.is_some())
        {
            return Ok(false);
        }
        let old = watches.predecessor.take();
        watches.retire(old);
        watches.predecessor_id = None;
        let Some(p) = predecessor else {
            return Ok(false);
        };
        let path = format!("{dir}/{p}");
        let (stat, w) = self
            .call(client.check_and_watch_stat(&path))
            .await
            .map_err(|e| zk_failure(&format!("watching {path}"), e))?;
        if stat.is_none() {
            // Gone meanwhile: this watch would only fire on a creation (never).
            watches.retire(Some(watch(w)));
            return Ok(true);
        }
        tracing::debug!(member = %me, "watching predecessor {p}");
        watches.predecessor = Some(watch(w));
        watches.predecessor_id = Some(p);
        Ok(false)
    }

    /// The children of `dir`, setting a child watch in `slot` when `want` and it is empty
    /// (an armed watch is kept: see [`Watches`]).
    async fn list(
        &self,
        client: &zk::Client,
        dir: &str,
        want: bool,
        slot: &mut Option<Watch>,
    ) -> Result<Vec<String>, ZkFailure> {
        let listed = if want && slot.is_none() {
            self.call(client.get_and_watch_children(dir))
                .await
                .map(|(names, _, w)| {
                    *slot = Some(watch(w));
                    names
                })
        } else {
            self.call(client.get_children(dir))
                .await
                .map(|(names, _)| names)
        };
        match listed {
            Ok(names) => Ok(names),
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(zk_failure(&format!("listing {dir}"), e)),
        }
    }

    async fn read_member(
        &self,
        client: &zk::Client,
        name: &str,
    ) -> Result<Option<MemberInfo>, ZkFailure> {
        let path = format!("{}/members/{name}", self.base);
        match self.call(client.get_data(&path)).await {
            Ok((data, _)) => match serde_json::from_slice::<MemberInfo>(&data) {
                Ok(mut info) => {
                    info.id = name.to_string();
                    Ok(Some(info))
                }
                Err(e) => {
                    tracing::warn!("ignoring member {path}: not a gregor member: {e}");
                    Ok(None)
                }
            },
            Err(zk::Error::NoNode) => Ok(None), // left meanwhile
            Err(e) => Err(zk_failure(&format!("reading {path}"), e)),
        }
    }

    /// Reads every known member's data again (the leader, before it plans).
    async fn read_member_data(
        &self,
        client: &zk::Client,
        known: &mut Known,
    ) -> Result<(), ZkFailure> {
        let names: Vec<String> = known.members.keys().cloned().collect();
        for name in names {
            match self.read_member(client, &name).await? {
                Some(info) => {
                    known.members.insert(name, info);
                }
                None => {
                    known.members.remove(&name);
                    known.stable_since = Instant::now();
                }
            }
        }
        Ok(())
    }

    /// Reads the model (arming its watch if none is armed). Returns true when its version
    /// changed; logs what the new version changes for this process.
    async fn read_model(
        &self,
        client: &zk::Client,
        me: &str,
        known: &mut Known,
        watches: &mut Watches,
    ) -> Result<bool, ZkFailure> {
        let path = format!("{}/model", self.base);
        let read = if watches.model.is_none() {
            match self.call(client.get_and_watch_data(&path)).await {
                Ok((data, stat, w)) => {
                    watches.model = Some(watch(w));
                    Ok(Some((data, stat)))
                }
                Err(zk::Error::NoNode) => {
                    // No model yet: watch for its creation.
                    let (stat, w) = self
                        .call(client.check_and_watch_stat(&path))
                        .await
                        .map_err(|e| zk_failure(&format!("watching {path}"), e))?;
                    watches.model = Some(watch(w));
                    if stat.is_some() {
                        // Created meanwhile: read it (the exists watch is a data watch now).
                        self.call(client.get_data(&path)).await.map(Some)
                    } else {
                        Ok(None)
                    }
                }
                Err(e) => Err(e),
            }
        } else {
            match self.call(client.get_data(&path)).await {
                Ok(r) => Ok(Some(r)),
                Err(zk::Error::NoNode) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let read = match read {
            Ok(r) => r,
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(zk_failure(&format!("reading {path}"), e)),
        };
        let model = match read {
            None => None,
            Some((data, stat)) => match serde_json::from_slice::<PublishedModel>(&data) {
                Ok(m) => Some((m, stat.version)),
                Err(e) => {
                    return Err(ZkFailure {
                        message: format!("{path} is not a job model: {e}"),
                        ended: false,
                    });
                }
            },
        };
        let old = known.model.as_ref().map(|(m, _)| &m.model);
        let changed = model.as_ref().map(|(m, _)| m.model.version) != old.map(|m| m.version);
        if changed {
            if let Some((m, _)) = &model {
                log_model_change(me, old, m);
            }
            known.acked.clear();
        }
        known.model = model;
        Ok(changed)
    }

    /// Reads the acknowledgements of the known model, with a child watch while its barrier
    /// waits.
    async fn read_acks(
        &self,
        client: &zk::Client,
        known: &mut Known,
        watches: &mut Watches,
    ) -> Result<(), ZkFailure> {
        let Some((m, _)) = &known.model else {
            known.acked.clear();
            return Ok(());
        };
        let version = m.model.version;
        let dir = format!("{}/acks", self.base);
        let want = known.barrier_open();
        let names = self.list(client, &dir, want, &mut watches.acks).await?;
        let prefix = format!("{version}-");
        known.acked = names
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
            .collect();
        Ok(())
    }

    /// Writes `next` as the job model (compare-and-set against the known node version),
    /// then drops acknowledgements of older versions.
    async fn publish(
        &self,
        client: &zk::Client,
        me: &str,
        next: PublishedModel,
        known: &mut Known,
        dirty: &mut Dirty,
    ) -> Result<(), ZkFailure> {
        let path = format!("{}/model", self.base);
        let data = serde_json::to_vec(&next).unwrap_or_default();
        let written = match &known.model {
            Some((_, v)) => self
                .call(client.set_data(&path, &data, Some(*v)))
                .await
                .map(|stat| stat.version),
            None => {
                let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                self.call(client.create(&path, &data, &persistent))
                    .await
                    .map(|(stat, _)| stat.version)
            }
        };
        let stat_version = match written {
            Ok(v) => v,
            // Someone else wrote meanwhile: read it.
            Err(zk::Error::BadVersion | zk::Error::NodeExists) => {
                dirty.model = true;
                return Ok(());
            }
            Err(e) => return Err(zk_failure("publishing the job model", e)),
        };
        let previous = known.model.as_ref().map(|(m, _)| &m.model);
        let (moved, standbys_moved) = moved_tasks(previous, &next.model);
        tracing::info!(
            leader = %me,
            "leader: wrote job model v{}: members {:?}, {} tasks, {moved} moved, {standbys_moved} new standbys",
            next.model.version,
            next.members,
            next.tasks,
        );
        log_model_change(me, previous, &next);
        known.model = Some((next, stat_version));
        known.acked.clear();
        dirty.acks = true;
        let version = known.model.as_ref().map_or(0, |(m, _)| m.model.version);
        let acks = format!("{}/acks", self.base);
        if let Ok((names, _)) = self.call(client.get_children(&acks)).await {
            for n in names {
                let old = n
                    .split_once('-')
                    .and_then(|(v, _)| v.parse::<u64>().ok())
                    .is_some_and(|v| v < version);
                if old {
                    let _ = self.call(client.delete(&format!("{acks}/{n}"), None)).await;
                }
            }
        }
        Ok(())
    }

    /// Reads the members, the model and its acknowledgements once, without watches.
    async fn read(&self, client: &zk::Client) -> Result<View, ZkFailure> {
        let dir = format!("{}/members", self.base);
        let names = self.list(client, &dir, false, &mut None).await?;
        let mut members = BTreeMap::new();
        for name in names {
            if let Some(info) = self.read_member(client, &name).await? {
                members.insert(name, info);
            }
        }
        let model_path = format!("{}/model", self.base);
        let model = match self.call(client.get_data(&model_path)).await {
            Ok((data, stat)) => match serde_json::from_slice::<PublishedModel>(&data) {
                Ok(m) => Some((m, stat.version)),
                Err(e) => {
                    return Err(ZkFailure {
                        message: format!("{model_path} is not a job model: {e}"),
                        ended: false,
                    });
                }
            },
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(zk_failure(&format!("reading {model_path}"), e)),
        };
        let mut acked = BTreeSet::new();
        if let Some((m, _)) = &model {
            let names = self
                .list(client, &format!("{}/acks", self.base), false, &mut None)
                .await?;
            let prefix = format!("{}-", m.model.version);
            acked = names
                .into_iter()
                .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
                .collect();
        }
        Ok(View {
            members,
            model,
            acked,
        })
    }
}

/// Logs what a new job model changes for this process (one line, `model v<N>: ...`).
fn log_model_change(me: &str, previous: Option<&super::JobModel>, next: &PublishedModel) {
    let c = ModelChange::of(me, previous, &next.model);
    tracing::info!(
        member = %me,
        "model v{}: {} members; active {:?} (gained {:?}, released {:?}); standby {:?} (gained {:?}, dropped {:?})",
        next.model.version,
        next.members.len(),
        c.active,
        c.gained,
        c.released,
        c.standby,
        c.standby_gained,
        c.standby_dropped
    );
}

/// A job's coordination state as read from ZooKeeper (see [`read_status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCoordination {
    /// The live members, by id.
    pub members: BTreeMap<String, MemberInfo>,
    /// The newest job model.
    pub model: Option<PublishedModel>,
    /// The members that acknowledged it.
    pub acked: BTreeSet<String>,
}

/// Reads a job's coordination state from ZooKeeper once, without joining (for `gregor job
/// status`).
pub fn read_status(
    settings: &ZooKeeperConfig,
    job: &str,
) -> Result<JobCoordination, CoordinatorError> {
    let err = |message: String| CoordinatorError::ZooKeeper {
        connect: settings.connect.clone(),
        message,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(format!("cannot start a runtime: {e}")))?;
    let session = Duration::from_millis(settings.session_timeout_ms);
    let worker = Worker {
        settings: settings.clone(),
        base: format!("{}/{job}", settings.root),
        tasks: 0,
        standby_replicas: 0,
        info: JoinInfo {
            host: String::new(),
            http: None,
            holds: BTreeSet::new(),
            newest_generation: 0,
        },
        shared: Arc::new(Mutex::new(Shared::default())),
        wake: Arc::new(tokio::sync::Notify::new()),
        session,
        reread: SAFETY_REREAD,
        renew: session / LEASE_RENEWALS_PER_SESSION,
        retry: RETRY,
        debounce: Duration::ZERO,
    };
    rt.block_on(async {
        let client = worker.connect().await.map_err(err)?;
        match worker.read(&client).await {
            Ok(v) => Ok(JobCoordination {
                members: v.members,
                model: v.model.map(|(m, _)| m),
                acked: v.acked,
            }),
            Err(f) => Err(err(f.message)),
        }
    })
}
