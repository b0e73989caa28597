//! Every metric gregor exports, by name, through the [`metrics`] facade, following
//! Prometheus' conventions: `snake_case`, the `gregor_` prefix, `_total` on counters, base
//! units (`_seconds`, `_bytes`), and labels (`job`, `task`, `store`, ...) instead of names with
//! a store baked in. One name per concept; the table in `docs/design.md` ("Metrics") lists
//! them with their types, labels and meaning.
//!
//! Any recorder can be installed (e.g. `metrics-exporter-prometheus`); call [`describe`]
//! after installing it so every metric has its help text and unit.
//!
//! Cost on the hot path: store handles resolve their labels once, when the store opens; the
//! per-operation counters of a store are plain integers published at every flush (each
//! commit, `job.commit.ms`) and when the store closes, and no clock is read per operation
//! unless `metrics.recording.level = "debug"` turns the latency histograms on.

use metrics::{Label, Unit};

/// Counter: store operations, label `operation` = `get`, `put`, `delete`, `range`, `all`,
/// `flush`, `snapshot` (each entry of a batch counts once).
pub const STORE_OPERATIONS: &str = "gregor_store_operations_total";
/// Counter: key and value bytes read from a store (keys asked for, values found, entries
/// yielded by ranges).
pub const STORE_READ_BYTES: &str = "gregor_store_read_bytes_total";
/// Counter: key and value bytes written to a store by puts.
pub const STORE_WRITTEN_BYTES: &str = "gregor_store_written_bytes_total";
/// Histogram: latency of store operations, label `operation` = `get`, `put`, `delete`,
/// `flush`; recorded only with `metrics.recording.level = "debug"`.
pub const STORE_OPERATION_DURATION: &str = "gregor_store_operation_duration_seconds";
/// Counter: reads the store's cache answered.
pub const STORE_CACHE_HITS: &str = "gregor_store_cache_hits_total";
/// Counter: reads the store's cache passed to the engine.
pub const STORE_CACHE_MISSES: &str = "gregor_store_cache_misses_total";
/// Counter: entries evicted from the store's cache to keep it within its bounds.
pub const STORE_CACHE_EVICTIONS: &str = "gregor_store_cache_evictions_total";
/// Gauge: bytes held by the store's cache (keys, values and per-entry bookkeeping).
pub const STORE_CACHE_BYTES: &str = "gregor_store_cache_bytes";
/// Gauge: entries held by the store's cache.
pub const STORE_CACHE_ENTRIES: &str = "gregor_store_cache_entries";
/// Counter: records sent to a store's changelog.
pub const CHANGELOG_RECORDS: &str = "gregor_changelog_records_total";
/// Counter: key and value bytes sent to a store's changelog.
pub const CHANGELOG_BYTES: &str = "gregor_changelog_bytes_total";
/// Counter: task commits.
pub const COMMITS: &str = "gregor_commits_total";
/// Histogram: duration of a task commit.
pub const COMMIT_DURATION: &str = "gregor_commit_duration_seconds";
/// Counter: changelog records replayed by restores.
pub const RESTORE_RECORDS: &str = "gregor_restore_records_total";
/// Counter: changelog bytes (keys and values) replayed by restores.
pub const RESTORE_BYTES: &str = "gregor_restore_bytes_total";
/// Counter: uncommitted changelog records a restore cut off or overwrote.
pub const RESTORE_TRUNCATED_RECORDS: &str = "gregor_restore_truncated_records_total";
/// Gauge: duration of the store's last restore.
pub const RESTORE_DURATION: &str = "gregor_restore_duration_seconds";
/// Gauge: progress of the store's restore, 0 to 1 (1 once restored).
pub const RESTORE_PROGRESS: &str = "gregor_restore_progress_ratio";
/// Gauge: records of an input partition not processed yet (the partition's end minus the
/// task's position), labels `job`, `task`, `topic`, `partition`; updated at every commit.
pub const INPUT_LAG: &str = "gregor_input_lag_records";
/// Gauge: records of a task's changelog partition a standby replica has not applied (the
/// partition's end minus the standby's position), labels `job`, `task`, `store`; updated at
/// every catch-up (once per commit interval).
pub const STANDBY_LAG: &str = "gregor_standby_lag_records";
/// Counter: input messages skipped because their processing failed (`job.process.error`).
pub const SKIPPED_MESSAGES: &str = "gregor_skipped_messages_total";

/// Counter: expired entries a store's expiry passes removed (a tombstone each through the
/// changelog), labels job, task, store. Only stores with `ttl.ms`.
pub const STORE_EXPIRED_ENTRIES: &str = "gregor_store_expired_entries_total";
/// Gauge: entries of a store with an expiry time still ahead, as counted by its last
/// complete expiry sweep (an estimate: updated once per sweep), labels job, task, store.
pub const STORE_PENDING_EXPIRY: &str = "gregor_store_entries_pending_expiry";

/// Counter: HTTP requests answered, labels `route` (the route pattern, e.g.
/// `/v1/stores/{store}/keys/{key}`; `unmatched` for none) and `status`.
pub const HTTP_REQUESTS: &str = "gregor_http_requests_total";
/// Histogram: time to answer an HTTP request, labels `route` and `status`.
pub const HTTP_REQUEST_DURATION: &str = "gregor_http_request_duration_seconds";

/// Counter: writes of the key-value service made durable, labels `job`, `topic`,
/// `partition` (a write spanning partitions counts once in each). Over
/// [`KV_WRITE_GROUPS`]: writes per group commit, i.e. per fsync on the embedded log.
pub const KV_WRITES: &str = "gregor_kv_writes_total";
/// Counter: group commits of the key-value service's writes (one flush each: an fsync on
/// the embedded log, an acknowledgement round on Kafka), labels `job`, `topic`,
/// `partition` and `leader`: `request` when the write that found the partition idle led
/// its group on the HTTP worker that received it, `writer` when the partition's writer
/// thread led the writes queued behind another group (as RocksDB's write-done-by-self /
/// by-other).
pub const KV_WRITE_GROUPS: &str = "gregor_kv_write_groups_total";

/// Every metric: name, kind, unit, help text.
pub const ALL: [(&str, Kind, Unit, &str); 27] = [
    (
        STORE_EXPIRED_ENTRIES,
        Kind::Counter,
        Unit::Count,
        "Expired entries removed from the store (tombstones through its changelog).",
    ),
    (
        STORE_PENDING_EXPIRY,
        Kind::Gauge,
        Unit::Count,
        "Entries with an expiry time still ahead, counted by the last complete expiry sweep.",
    ),
    (
        STORE_OPERATIONS,
        Kind::Counter,
        Unit::Count,
        "Store operations by operation.",
    ),
    (
        STORE_READ_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "Key and value bytes read from the store.",
    ),
    (
        STORE_WRITTEN_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "Key and value bytes written to the store by puts.",
    ),
    (
        STORE_OPERATION_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Latency of store operations (metrics.recording.level = debug).",
    ),
    (
        STORE_CACHE_HITS,
        Kind::Counter,
        Unit::Count,
        "Store reads answered by the cache.",
    ),
    (
        STORE_CACHE_MISSES,
        Kind::Counter,
        Unit::Count,
        "Store reads the cache passed to the engine.",
    ),
    (
        STORE_CACHE_EVICTIONS,
        Kind::Counter,
        Unit::Count,
        "Entries evicted from the store cache.",
    ),
    (
        STORE_CACHE_BYTES,
        Kind::Gauge,
        Unit::Bytes,
        "Bytes held by the store cache.",
    ),
    (
        STORE_CACHE_ENTRIES,
        Kind::Gauge,
        Unit::Count,
        "Entries held by the store cache.",
    ),
    (
        CHANGELOG_RECORDS,
        Kind::Counter,
        Unit::Count,
        "Records sent to the store's changelog.",
    ),
    (
        CHANGELOG_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "Key and value bytes sent to the store's changelog.",
    ),
    (COMMITS, Kind::Counter, Unit::Count, "Task commits."),
    (
        COMMIT_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Duration of task commits.",
    ),
    (
        RESTORE_RECORDS,
        Kind::Counter,
        Unit::Count,
        "Changelog records replayed by restores.",
    ),
    (
        RESTORE_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "Changelog bytes replayed by restores.",
    ),
    (
        RESTORE_TRUNCATED_RECORDS,
        Kind::Counter,
        Unit::Count,
        "Uncommitted changelog records cut off or overwritten by restores.",
    ),
    (
        RESTORE_DURATION,
        Kind::Gauge,
        Unit::Seconds,
        "Duration of the store's last restore.",
    ),
    (
        RESTORE_PROGRESS,
        Kind::Gauge,
        Unit::Count,
        "Progress of the store's restore, 0 to 1.",
    ),
    (
        INPUT_LAG,
        Kind::Gauge,
        Unit::Count,
        "Records of the input partition not processed yet.",
    ),
    (
        STANDBY_LAG,
        Kind::Gauge,
        Unit::Count,
        "Records of the changelog partition a standby replica has not applied yet.",
    ),
    (
        SKIPPED_MESSAGES,
        Kind::Counter,
        Unit::Count,
        "Input messages skipped because their processing failed.",
    ),
    (
        HTTP_REQUESTS,
        Kind::Counter,
        Unit::Count,
        "HTTP requests answered, by route and status.",
    ),
    (
        HTTP_REQUEST_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Time to answer an HTTP request, by route and status.",
    ),
    (
        KV_WRITES,
        Kind::Counter,
        Unit::Count,
        "Key-value service writes made durable (per partition written).",
    ),
    (
        KV_WRITE_GROUPS,
        Kind::Counter,
        Unit::Count,
        "Key-value service group commits (one flush each), by who led them.",
    ),
];

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of samples.
    Histogram,
}

/// Registers the help text and unit of every metric with the installed recorder.
pub fn describe() {
    for (name, kind, unit, help) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// The job of task `task`, from its name (`<job>.partition-<N>`, see
/// [`crate::runtime::task_name`]); empty for a task named otherwise (CLI tools).
pub fn job_of_task(task: &str) -> &str {
    task.rsplit_once(".partition-").map_or("", |(job, _)| job)
}

/// The labels of a task's metrics: `job` and `task`.
pub fn task_labels(task: &str) -> Vec<Label> {
    let mut l = Vec::with_capacity(2);
    let job = job_of_task(task);
    if !job.is_empty() {
        l.push(Label::new("job", job.to_string()));
    }
    l.push(Label::new("task", task.to_string()));
    l
}

/// The counter of messages task `task` skipped ([`SKIPPED_MESSAGES`]).
pub fn skipped_messages(task: &str) -> metrics::Counter {
    metrics::counter!(SKIPPED_MESSAGES, task_labels(task))
}

/// The labels of one store's metrics, resolved once when the store opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreLabels {
    /// The job (empty: no `job` label).
    pub job: String,
    /// The task (empty: no `task` label).
    pub task: String,
    /// The store.
    pub store: String,
}

impl StoreLabels {
    /// Store `store` of task `task` (its job taken from the task's name).
    pub fn of_task(task: &str, store: &str) -> Self {
        StoreLabels {
            job: job_of_task(task).to_string(),
            task: task.to_string(),
            store: store.to_string(),
        }
    }

    /// A store outside any task (tools, tests): only the `store` label.
    pub fn store(store: &str) -> Self {
        StoreLabels {
            store: store.to_string(),
            ..StoreLabels::default()
        }
    }

    /// The labels: `job` and `task` where known, and `store`.
    pub fn labels(&self) -> Vec<Label> {
        let mut l = Vec::with_capacity(3);
        if !self.job.is_empty() {
            l.push(Label::new("job", self.job.clone()));
        }
        if !self.task.is_empty() {
            l.push(Label::new("task", self.task.clone()));
        }
        l.push(Label::new("store", self.store.clone()));
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for (name, kind, _, help) in ALL {
            assert!(name.starts_with("gregor_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(!help.is_empty());
        }
        let mut names: Vec<_> = ALL.iter().map(|m| m.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "one name per concept");
    }

    #[test]
    fn job_comes_from_the_task_name() {
        assert_eq!(job_of_task("counts.partition-3"), "counts");
        assert_eq!(job_of_task("a.b.partition-0"), "a.b");
        assert_eq!(job_of_task("t"), "");
        let l = StoreLabels::of_task("counts.partition-3", "s").labels();
        let kv: Vec<_> = l.iter().map(|l| (l.key(), l.value())).collect();
        assert_eq!(
            kv,
            [
                ("job", "counts"),
                ("task", "counts.partition-3"),
                ("store", "s")
            ]
        );
    }
}
