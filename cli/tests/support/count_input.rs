//! Input for count jobs in CLI tests: keyed messages appended to the embedded topic `in`.

use std::collections::BTreeMap;
use std::path::Path;

use gregor::log::{LogDir, TopicConfig};
use gregor::partitioner::partition_for_key;

/// The `count` job over `in`: store `counts` (string -> u64) with a changelog.
pub const COUNT_JOB: &str = r#"
[job]
name = "counts"
task = "count"
inputs = ["in"]
commit.ms = 100

[stores.counts]
engine = "rocksdb"
key.serde = "string"
value.serde = "u64"
changelog = "counts-changelog"
"#;

/// Appends `n` messages over `keys` keys to `in` (4 partitions, murmur2); returns the counts.
pub fn produce(state: &Path, n: u64, keys: u64) -> BTreeMap<String, u64> {
    let logs = LogDir::open(state).unwrap();
    let topic = logs
        .topic_or_create("in", 4, TopicConfig::default())
        .unwrap();
    let mut parts: Vec<_> = (0..4).map(|p| topic.open_partition(p).unwrap().0).collect();
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let key = format!("k{}", (i * 7919) % keys);
        let p = partition_for_key(key.as_bytes(), 4);
        parts[p as usize]
            .append(0, key.as_bytes(), Some(b"x"))
            .unwrap();
        *counts.entry(key).or_insert(0) += 1;
    }
    for p in &mut parts {
        p.sync().unwrap();
    }
    counts
}
