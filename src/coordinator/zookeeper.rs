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
//! runtime): every `poll` interval (and at once when the container asks) it reads the
//! members, the model and the acknowledgements of the model, and publishes them to the
//! container; the container decides with [`super::barrier::member_step`]. The member with the
//! lowest sequence number is the leader: when membership has been stable for
//! `job.debounce.time.ms` and differs from the model's, it computes the next model with
//! [`super::model::plan`] and writes it (compare-and-set on the node's version, so two
//! processes that both think they lead cannot both write one version).
//!
//! **Lease.** A round that got answers from ZooKeeper proves the session was alive when it
//! started. A process commits only while its last such proof is younger than half the
//! session timeout ([`Coordinator::fence`]) and drops its tasks without committing once it is
//! older ([`Directive::Fence`]); the server expires the session only a full session timeout
//! after it last heard from it, and only then does the leader give the tasks to others. A
//! fenced process closes its session and joins again as a new member.
//!
//! A clean stop deletes the member node and closes the session, so the others rebalance
//! after the debounce instead of after the session timeout.
//!
//! Not built yet: watches (each process polls, every 100 ms by default).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zookeeper_client as zk;

use super::barrier::{Step, leader_of, leader_step, member_step};
use super::{
    Coordinator, CoordinatorError, CoordinatorStatus, Directive, MemberInfo, PublishedModel,
};
use crate::checkpoint::CheckpointOwner;
use crate::runtime::config::ZooKeeperConfig;
use crate::task_storage::CommitFence;

/// How often the coordinator's thread reads ZooKeeper (at most; less with short sessions).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
            poll: POLL_INTERVAL.min(session / 20),
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
    poll: Duration,
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

/// What one round read.
struct View {
    members: BTreeMap<String, MemberInfo>,
    model: Option<(PublishedModel, i32)>,
    acked: BTreeSet<String>,
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

    /// Joins, runs rounds until the session ends or a rejoin is asked for, joins again.
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
            self.rounds(&client, &me).await;
            crate::sync::lock(&self.shared).member = None;
            if self.leaving() {
                let path = format!("{}/members/{me}", self.base);
                let _ = self.call(client.delete(&path, None)).await;
            }
            drop(client); // closes the session (its ephemeral nodes go with it)
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

    /// Reads and acts until the session ends, a rejoin is asked for, or the process leaves.
    async fn rounds(&self, client: &zk::Client, me: &str) {
        let mut observed: Option<BTreeSet<String>> = None;
        let mut stable_since = Instant::now();
        loop {
            {
                let s = crate::sync::lock(&self.shared);
                if s.leave || s.rejoin {
                    return;
                }
            }
            let started = Instant::now();
            match self
                .round(client, me, &mut observed, &mut stable_since)
                .await
            {
                Ok(view) => {
                    let mut s = crate::sync::lock(&self.shared);
                    s.last_ok = Some(started);
                    s.members = view.members;
                    s.acked = view.acked;
                    s.model = view.model.map(|(m, _)| m);
                    s.last_error = None;
                }
                Err(f) => {
                    tracing::warn!(member = %me, "zookeeper {}: {}", self.settings.connect, f.message);
                    crate::sync::lock(&self.shared).last_error = Some(f.message);
                    if f.ended || client.state().is_terminated() {
                        return;
                    }
                }
            }
            self.pause(self.poll).await;
        }
    }

    async fn round(
        &self,
        client: &zk::Client,
        me: &str,
        observed: &mut Option<BTreeSet<String>>,
        stable_since: &mut Instant,
    ) -> Result<View, ZkFailure> {
        // Writes the container asked for first, so the reads below see them.
        let (ack, holds) = {
            let mut s = crate::sync::lock(&self.shared);
            (s.ack_wanted.clone(), s.holds.take())
        };
        if let Some((member, version)) = ack
            && member == me
        {
            let path = format!("{}/acks/{version}-{me}", self.base);
            let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
            match self.call(client.create(&path, &[], &ephemeral)).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_failure(&format!("acknowledging model {version}"), e)),
            }
        }
        if let Some(holds) = holds {
            let path = format!("{}/members/{me}", self.base);
            let data = self.member_data(holds);
            self.call(client.set_data(&path, &data, None))
                .await
                .map_err(|e| zk_failure("updating this member", e))?;
        }
        let view = self.read(client).await?;
        if !view.members.contains_key(me) {
            return Err(ZkFailure {
                message: format!("member node {me} is gone"),
                ended: true,
            });
        }
        // The leader's part.
        let ids: BTreeSet<String> = view.members.keys().cloned().collect();
        if observed.as_ref() != Some(&ids) {
            *observed = Some(ids);
            *stable_since = Instant::now();
        }
        if leader_of(view.members.keys().map(String::as_str)) == Some(me) {
            let current = view.model.as_ref().map(|(m, _)| m);
            if let Some(mut next) = leader_step(
                &view.members,
                self.tasks,
                current,
                self.standby_replicas,
                stable_since.elapsed(),
                self.debounce,
            ) {
                if current.is_none() {
                    next.model.version = next.model.version.max(self.info.newest_generation + 1);
                }
                self.publish(
                    client,
                    me,
                    &next,
                    view.model.as_ref().map(|(_, v)| *v),
                    current,
                )
                .await?;
                // Read again so the container sees the new model at once.
                return self.read(client).await;
            }
        }
        Ok(view)
    }

    async fn read(&self, client: &zk::Client) -> Result<View, ZkFailure> {
        let members_dir = format!("{}/members", self.base);
        let names = match self.call(client.get_children(&members_dir)).await {
            Ok((names, _)) => names,
            Err(zk::Error::NoNode) => Vec::new(), // no process ever joined
            Err(e) => return Err(zk_failure("listing members", e)),
        };
        let mut members = BTreeMap::new();
        for name in names {
            let path = format!("{members_dir}/{name}");
            match self.call(client.get_data(&path)).await {
                Ok((data, _)) => {
                    let mut info: MemberInfo = match serde_json::from_slice(&data) {
                        Ok(i) => i,
                        Err(e) => {
                            tracing::warn!("ignoring member {path}: not a gregor member: {e}");
                            continue;
                        }
                    };
                    info.id = name.clone();
                    members.insert(name, info);
                }
                Err(zk::Error::NoNode) => {} // left meanwhile
                Err(e) => return Err(zk_failure(&format!("reading {path}"), e)),
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
            let names = match self
                .call(client.get_children(&format!("{}/acks", self.base)))
                .await
            {
                Ok((names, _)) => names,
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return Err(zk_failure("listing acknowledgements", e)),
            };
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

    /// Writes `next` as the job model (compare-and-set against `stat_version`), then drops
    /// acknowledgements of older versions.
    async fn publish(
        &self,
        client: &zk::Client,
        me: &str,
        next: &PublishedModel,
        stat_version: Option<i32>,
        current: Option<&PublishedModel>,
    ) -> Result<(), ZkFailure> {
        let path = format!("{}/model", self.base);
        let data = serde_json::to_vec(next).unwrap_or_default();
        let written = match stat_version {
            Some(v) => self
                .call(client.set_data(&path, &data, Some(v)))
                .await
                .map(|_| ()),
            None => {
                let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                self.call(client.create(&path, &data, &persistent))
                    .await
                    .map(|_| ())
            }
        };
        match written {
            Ok(()) => {
                let moved = current.map_or(next.model.active.len(), |c| {
                    next.model
                        .active
                        .iter()
                        .filter(|(t, m)| c.model.active.get(t) != Some(m))
                        .count()
                });
                tracing::info!(
                    leader = %me,
                    "published job model {} for {} members: {} tasks, {} moved",
                    next.model.version,
                    next.members.len(),
                    next.tasks,
                    moved
                );
            }
            // Someone else wrote meanwhile: the next round reads it.
            Err(zk::Error::BadVersion | zk::Error::NodeExists) => return Ok(()),
            Err(e) => return Err(zk_failure("publishing the job model", e)),
        }
        let acks = format!("{}/acks", self.base);
        if let Ok((names, _)) = self.call(client.get_children(&acks)).await {
            for n in names {
                let old = n
                    .split_once('-')
                    .and_then(|(v, _)| v.parse::<u64>().ok())
                    .is_some_and(|v| v < next.model.version);
                if old {
                    let _ = self.call(client.delete(&format!("{acks}/{n}"), None)).await;
                }
            }
        }
        Ok(())
    }
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
        poll: POLL_INTERVAL,
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
