//! Job configuration (TOML, flat Samza-style keys):
//!
//! ```toml
//! [job]
//! name = "counts"
//! task = "count"              # a built-in task, or the task a Rust program registers
//! inputs = ["in"]
//! outputs = []                # topics the task may send to
//! commit.ms = 1000
//! window.ms = 10000           # optional
//! changelog.cleanup.ms = 300000  # compact changelogs this often (after a commit)
//! changelog.segment.bytes = 134217728  # segment size of changelogs the job creates
//! log.fsync = true            # fsync changelogs and outputs the job creates on commit
//!
//! [stores.counts]
//! engine = "rocksdb"
//! key.serde = "string"
//! value.serde = "u64"
//! changelog = "counts-changelog"
//!
//! [task]                      # free-form settings for the task itself
//! top.n = 10
//! ```
//!
//! Unknown keys under `job` and `stores` and values of the wrong type are errors naming the
//! key and the file. Keys under `task` belong to the task and are passed through.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{ConfigError, FlatConfig};
use crate::log::validate_topic_name;
use crate::statedir::validate_name;
use crate::store::config::StoreConfig;

/// Default `job.changelog.cleanup.ms`: five minutes.
pub const DEFAULT_CHANGELOG_CLEANUP_MS: u64 = 5 * 60 * 1000;

/// Default `job.commit.ms`.
pub const DEFAULT_COMMIT_MS: u64 = 1000;

/// A job's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    /// Where it was read from (for messages).
    pub source: String,
    /// `job.name`.
    pub name: String,
    /// `job.task`: the task to run.
    pub task: String,
    /// `job.inputs`: input topics; task N consumes partition N of each.
    pub inputs: Vec<String>,
    /// `job.outputs`: topics the task may send to.
    pub outputs: Vec<String>,
    /// `job.commit.ms`: commit interval.
    pub commit_ms: u64,
    /// `job.window.ms`: window interval, if the task has a window.
    pub window_ms: Option<u64>,
    /// `job.changelog.cleanup.ms`: how often changelogs are compacted (right after a commit).
    pub changelog_cleanup_ms: u64,
    /// `job.changelog.segment.bytes`: segment size of the changelog topics the job creates.
    pub changelog_segment_bytes: Option<u64>,
    /// `job.log.fsync`: fsync changelog and output topics the job creates on every commit
    /// (default true; false trades durability against a machine crash for speed).
    pub log_fsync: bool,
    /// `stores.<name>.*`.
    pub stores: BTreeMap<String, StoreConfig>,
    /// `task.*`, keys without the `task.` prefix.
    pub task_config: BTreeMap<String, toml::Value>,
}

impl JobConfig {
    /// The config of a changelog topic this job creates.
    pub fn changelog_topic_config(&self) -> crate::log::TopicConfig {
        let mut c = crate::log::TopicConfig::compacted();
        if let Some(b) = self.changelog_segment_bytes {
            c.segment_bytes = b;
        }
        c.fsync = self.log_fsync;
        c
    }

    /// The config of an output topic this job creates.
    pub fn output_topic_config(&self) -> crate::log::TopicConfig {
        crate::log::TopicConfig {
            fsync: self.log_fsync,
            ..Default::default()
        }
    }

    /// Reads a job file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_flat(FlatConfig::from_file(path)?)
    }

    /// Reads job TOML text; `source` names it in errors.
    pub fn from_toml_str(source: &str, text: &str) -> Result<Self, ConfigError> {
        Self::from_flat(FlatConfig::from_toml_str(source, text)?)
    }

    /// Takes the job's keys from `c`; anything left over is an error.
    pub fn from_flat(mut c: FlatConfig) -> Result<Self, ConfigError> {
        let source = c.source().to_string();
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: source.clone(),
            key: key.to_string(),
            message,
        };
        let name = c.require_str("job.name")?;
        validate_name("job", &name).map_err(|e| invalid("job.name", e.to_string()))?;
        let task = c.require_str("job.task")?;
        let inputs = c.take_str_list("job.inputs")?.unwrap_or_default();
        if inputs.is_empty() {
            return Err(ConfigError::Missing {
                file: source.clone(),
                key: "job.inputs".into(),
            });
        }
        let outputs = c.take_str_list("job.outputs")?.unwrap_or_default();
        for (key, topics) in [("job.inputs", &inputs), ("job.outputs", &outputs)] {
            for t in topics {
                validate_topic_name(t).map_err(|e| invalid(key, e.to_string()))?;
            }
        }
        let commit_ms = c.take_u64("job.commit.ms")?.unwrap_or(DEFAULT_COMMIT_MS);
        if commit_ms == 0 {
            return Err(invalid("job.commit.ms", "must be at least 1".into()));
        }
        let window_ms = c.take_u64("job.window.ms")?;
        let changelog_segment_bytes = c.take_u64("job.changelog.segment.bytes")?;
        let log_fsync = c.take_bool("job.log.fsync")?.unwrap_or(true);
        let changelog_cleanup_ms = c
            .take_u64("job.changelog.cleanup.ms")?
            .unwrap_or(DEFAULT_CHANGELOG_CLEANUP_MS);
        if window_ms == Some(0) {
            return Err(invalid(
                "job.window.ms",
                "must be at least 1 (leave it out for no window)".into(),
            ));
        }
        let mut stores = BTreeMap::new();
        for store in c.children("stores") {
            validate_name("store", &store)
                .map_err(|e| invalid(&format!("stores.{store}"), e.to_string()))?;
            stores.insert(store.clone(), StoreConfig::from_flat(&store, &mut c)?);
        }
        let mut task_config = BTreeMap::new();
        for key in c.keys_with_prefix("task.") {
            if let Some(v) = c.take_raw(&key) {
                task_config.insert(key["task.".len()..].to_string(), v);
            }
        }
        c.finish()?;
        Ok(JobConfig {
            source,
            name,
            task,
            inputs,
            outputs,
            commit_ms,
            window_ms,
            changelog_cleanup_ms,
            changelog_segment_bytes,
            log_fsync,
            stores,
            task_config,
        })
    }

    /// A `task.*` integer setting.
    pub fn task_u64(&self, key: &str) -> Option<u64> {
        self.task_config
            .get(key)
            .and_then(|v| v.as_integer())
            .and_then(|i| u64::try_from(i).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [job]
        name = "counts"
        task = "count"
        inputs = ["in"]
        commit.ms = 1000
        window.ms = 10000

        [stores.counts]
        engine = "rocksdb"
        key.serde = "string"
        value.serde = "u64"
        changelog = "counts-changelog"

        [task]
        top.n = 5
    "#;

    #[test]
    fn reads_the_documented_example() {
        let j = JobConfig::from_toml_str("count.toml", GOOD).unwrap();
        assert_eq!(j.name, "counts");
        assert_eq!(j.inputs, vec!["in"]);
        assert_eq!(j.commit_ms, 1000);
        assert_eq!(j.window_ms, Some(10000));
        assert_eq!(
            j.stores["counts"].changelog.as_deref(),
            Some("counts-changelog")
        );
        assert_eq!(j.task_u64("top.n"), Some(5));
    }

    #[test]
    fn topic_settings_reach_the_topics_the_job_creates() {
        let j = JobConfig::from_toml_str("count.toml", GOOD).unwrap();
        assert!(j.changelog_topic_config().fsync && j.output_topic_config().fsync);
        let text = GOOD.replace(
            "window.ms = 10000",
            "window.ms = 10000\nlog.fsync = false\nchangelog.segment.bytes = 4096",
        );
        let j = JobConfig::from_toml_str("count.toml", &text).unwrap();
        let c = j.changelog_topic_config();
        assert_eq!((c.fsync, c.segment_bytes), (false, 4096));
        assert_eq!(c.cleanup_policy, crate::log::CleanupPolicy::Compact);
        assert!(!j.output_topic_config().fsync);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_file() {
        let e = JobConfig::from_toml_str(
            "count.toml",
            &GOOD.replace("commit.ms = 1000", "commit.ms = \"1s\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("count.toml") && e.contains("job.commit.ms"),
            "{e}"
        );
        let e = JobConfig::from_toml_str("count.toml", &GOOD.replace("window.ms", "windw.ms"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("count.toml") && e.contains("job.windw.ms"),
            "{e}"
        );
        let e = JobConfig::from_toml_str(
            "count.toml",
            &GOOD.replace("engine = \"rocksdb\"", "engin = \"rocksdb\""),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("stores.counts.engin"), "{e}");
        let e = JobConfig::from_toml_str("count.toml", &GOOD.replace("name = \"counts\"", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("job.name"), "{e}");
    }
}
