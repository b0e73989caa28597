//! The topic role registry on Kafka: what `<state-dir>/roles` is on the embedded log, kept
//! in the compacted topic [`ROLES_TOPIC`] (one partition; key = job name, value = the job's
//! claims as JSON, a tombstone when its roles are released), shared by every gregor job of
//! the cluster.
//!
//! Kafka has no compare-and-set, so two jobs starting at once could both read a registry
//! without the other's claim. The log's order decides instead: the registry is the replay of
//! the topic in offset order where a claim that conflicts with one accepted before it is
//! void. A job appends its claim, reads the topic to its end, and finds out from the replay
//! whether its own record (recognised by a random nonce) was accepted; if not, it appends
//! its previous claims again (so compaction cannot leave the void record as the job's
//! newest) and fails with the conflict. Every reader replays the same log, so all agree.
//!
//! Brokers without the admin API (Kafka 0.9) cannot create the topic: if it is missing
//! there, roles are not checked and a warning says how to create it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::producer::BaseRecord;

use super::context::{KafkaContext, Producer};
use serde::{Deserialize, Serialize};

use super::reader::KafkaReader;
use super::{KafkaBackend, kafka_err};
use crate::backend::roles::{RoleClaim, RoleRegistry};
use crate::backend::{BackendError, LogReader, Result, TopicPartition};

/// The cluster-wide topic holding every job's topic roles.
pub const ROLES_TOPIC: &str = "__gregor-roles";

/// One record's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClaimRecord {
    claims: Vec<RoleClaim>,
    /// Tells the writer its own record apart from an identical one of another process.
    nonce: u64,
}

/// The registry replayed from the topic, and whether the record with `nonce` was accepted.
fn replay(records: &[(String, Option<ClaimRecord>)], nonce: u64) -> (RoleRegistry, bool) {
    let mut registry = RoleRegistry::default();
    let mut accepted = false;
    for (job, value) in records {
        match value {
            None => {
                registry.jobs.remove(job);
            }
            Some(r) => {
                if registry.check(job, &r.claims).is_ok() {
                    registry.set(job, &r.claims);
                    if r.nonce == nonce {
                        accepted = true;
                    }
                }
            }
        }
    }
    (registry, accepted)
}

impl KafkaBackend {
    /// Whether the roles topic can be used; creates it where the broker can.
    fn roles_topic_ready(&self) -> Result<bool> {
        if self.topics()?.contains_key(ROLES_TOPIC) {
            return Ok(true);
        }
        if self.inner.admin.is_none() {
            if !self.inner.roles_warned.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "topic roles are not checked on this cluster: the topic {ROLES_TOPIC} does not exist and this broker has no admin API to create it; create it with:\n  \
                     kafka-topics.sh --zookeeper <zookeeper> --create --topic {ROLES_TOPIC} --partitions 1 --replication-factor {} --config cleanup.policy=compact",
                    self.inner.settings.replication_factor
                );
            }
            return Ok(false);
        }
        self.ensure_topic_inner(ROLES_TOPIC, 1, true)?;
        Ok(true)
    }

    /// Every record of the roles topic, in offset order.
    fn read_roles(&self) -> Result<Vec<(String, Option<ClaimRecord>)>> {
        let tp = TopicPartition::new(ROLES_TOPIC, 0);
        let mut reader = KafkaReader::open(&self.inner.settings, &self.inner.meta, &tp, 0)?;
        let mut out = Vec::new();
        loop {
            let batch = reader.next_batch(1024)?;
            if batch.is_empty() {
                return Ok(out);
            }
            for r in batch {
                let job = String::from_utf8_lossy(&r.key).into_owned();
                let value = match r.value {
                    None => None,
                    Some(v) => Some(serde_json::from_slice(&v).map_err(|e| {
                        BackendError::fatal(
                            format!("{tp} at offset {}: the claims of job `{job}`", r.offset),
                            format!("not a valid record: {e}"),
                        )
                    })?),
                };
                out.push((job, value));
            }
        }
    }

    /// Appends `value` for `job` to the roles topic and waits for the acknowledgement.
    fn write_roles(&self, job: &str, value: Option<&ClaimRecord>) -> Result<()> {
        let context = || format!("job `{job}`: writing its topic roles to {ROLES_TOPIC}");
        let mut cc = self.inner.settings.producer_config();
        cc.set("linger.ms", "0");
        let producer: Producer = cc
            .create_with_context(KafkaContext)
            .map_err(|e| kafka_err(context(), e))?;
        let payload = value
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| BackendError::fatal(context(), e))?;
        let mut record = BaseRecord::<str, [u8]>::to(ROLES_TOPIC)
            .partition(0)
            .key(job);
        if let Some(p) = &payload {
            record = record.payload(p);
        }
        producer
            .send(record)
            .map_err(|(e, _)| kafka_err(context(), e))?;
        super::flush_producer(&producer, Duration::from_secs(60).max(self.timeout()))
            .map_err(|e| kafka_err(context(), e))
    }

    /// The registry as every job sees it (empty where the topic does not exist).
    pub fn roles(&self) -> Result<RoleRegistry> {
        if !self.topics()?.contains_key(ROLES_TOPIC) {
            return Ok(RoleRegistry::default());
        }
        Ok(replay(&self.read_roles()?, 0).0)
    }

    /// Frees every role job `job` holds (a tombstone), for a job that is gone for good.
    pub fn release_roles(&self, job: &str) -> Result<()> {
        if !self.roles_topic_ready()? {
            return Ok(());
        }
        self.write_roles(job, None)
    }

    /// [`crate::backend::Backend::claim_roles`] on Kafka (see the module doc).
    pub(super) fn claim(&self, job: &str, claims: &[RoleClaim]) -> Result<()> {
        if !self.roles_topic_ready()? {
            return Ok(());
        }
        let before = self.read_roles()?;
        let (registry, _) = replay(&before, 0);
        registry.check(job, claims)?;
        let mut wanted = claims.to_vec();
        wanted.sort();
        wanted.dedup();
        let previous = registry.jobs.get(job).cloned();
        if previous.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let nonce = loop {
            let n = rand_nonce();
            if n != 0 {
                break n;
            }
        };
        self.write_roles(
            job,
            Some(&ClaimRecord {
                claims: wanted.clone(),
                nonce,
            }),
        )?;
        let after = self.read_roles()?;
        let (registry, accepted) = replay(&after, nonce);
        if accepted {
            return Ok(());
        }
        // Another job's conflicting claim came first: withdraw ours (restore the previous
        // claims, so compaction cannot leave the void record as the job's newest) and fail
        // with the conflict as the registry now stands.
        let withdraw = previous.map(|claims| ClaimRecord { claims, nonce: 0 });
        self.write_roles(job, withdraw.as_ref())?;
        registry.check(job, &wanted)?;
        Err(BackendError::fatal(
            format!("job `{job}`: claiming its topic roles in {ROLES_TOPIC}"),
            "another process of the same job changed its claims at the same time; start again",
        ))
    }
}

/// A random nonce from the standard library's per-process random hasher keys and the time.
fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::roles::Role;

    fn claim(job: &str, topic: &str, role: Role, nonce: u64) -> (String, Option<ClaimRecord>) {
        (
            job.to_string(),
            Some(ClaimRecord {
                claims: vec![RoleClaim::new(topic, role)],
                nonce,
            }),
        )
    }

    fn changelog() -> Role {
        Role::Changelog { store: "s".into() }
    }

    #[test]
    fn the_first_of_two_conflicting_claims_wins_for_every_reader() {
        let log = vec![
            claim("a", "t", changelog(), 1),
            claim("b", "t", changelog(), 2),
        ];
        let (reg, a_ok) = replay(&log, 1);
        assert!(a_ok);
        assert!(!replay(&log, 2).1, "b's claim is void");
        assert!(reg.jobs.contains_key("a") && !reg.jobs.contains_key("b"));
    }

    #[test]
    fn compatible_claims_are_both_accepted_and_a_tombstone_frees() {
        let mut log = vec![
            claim("a", "t", Role::Output, 1),
            claim("b", "t", Role::Input, 2),
        ];
        assert!(replay(&log, 1).1 && replay(&log, 2).1);
        log.push(("a".into(), None));
        log.push(claim("c", "t", Role::Output, 3));
        let (reg, c_ok) = replay(&log, 3);
        assert!(c_ok, "a released the output role");
        assert_eq!(reg.jobs.len(), 2);
    }

    #[test]
    fn a_void_claim_does_not_replace_the_jobs_earlier_claims_once_withdrawn() {
        let log = vec![
            claim("a", "x", changelog(), 1),
            claim("b", "t", changelog(), 2),
            // a wants t too (void), then withdraws to its previous claims.
            (
                "a".into(),
                Some(ClaimRecord {
                    claims: vec![
                        RoleClaim::new("x", changelog()),
                        RoleClaim::new("t", changelog()),
                    ],
                    nonce: 3,
                }),
            ),
            claim("a", "x", changelog(), 0),
        ];
        let (reg, ok) = replay(&log, 3);
        assert!(!ok);
        assert_eq!(reg.jobs["a"], vec![RoleClaim::new("x", changelog())]);
        assert_eq!(reg.jobs["b"], vec![RoleClaim::new("t", changelog())]);
    }
}
