//! `gregor topic ...`: create, list, produce to, consume from, verify and compact embedded
//! topics (`<state-dir>/logs/`).
//!
//! Text format (consume output, produce input): keys and values are printed as UTF-8 with
//! `\\`, tab, newline and carriage return escaped as `\\`, `\t`, `\n`, `\r`, and bytes that
//! are not UTF-8 as `\xHH`. A tombstone value is printed as `\N` (as in PostgreSQL's text
//! format: a literal backslash-N in data prints as `\\N`, so it cannot be confused).
//! `produce` reads the same format back (unknown escapes are kept literally).

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Subcommand;
use gregor::backend::TopicPartition;
use gregor::backend::embedded::committed_end;
use gregor::backend::roles::{Role, RoleRegistry, roles_path};
use gregor::log::record::{MAX_PAYLOAD_LEN, MIN_PAYLOAD_LEN, payload_len};
use gregor::log::{
    CleanupReport, LogDir, LogError, Partition, Topic, TopicConfig, verify_partition,
};
use gregor::partitioner::partition_for_key;

/// Prints `job<TAB>topic<TAB>role` per claim of `registry`.
pub(crate) fn print_roles(out: &mut dyn Write, registry: &RoleRegistry) -> io::Result<()> {
    for (job, claims) in &registry.jobs {
        for c in claims {
            let role = match &c.role {
                Role::Input => "input".to_string(),
                Role::Output => "output".to_string(),
                Role::Changelog { store } => format!("changelog of store {store}"),
                other => other.to_string(),
            };
            writeln!(out, "{job}\t{}\t{role}", c.topic)?;
        }
    }
    Ok(())
}

/// The `topic` verbs.
#[derive(Subcommand, Debug)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        /// Topic name: `[a-zA-Z0-9._-]+`.
        name: String,
        /// Number of partitions (1 to 10000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        partitions: u32,
        /// Compacted topic (changelog): keep the newest record per key. Default: delete
        /// old segments by retention.
        #[arg(long)]
        compact: bool,
        /// Segment size in bytes (default 128 MiB; at most 1 GiB).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
        segment_bytes: Option<u64>,
        /// Delete policy: keep at most about this many bytes per partition (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        retention_bytes: Option<u64>,
        /// Delete policy: delete segments whose newest record is older than this (ms, at
        /// least 1).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        retention_ms: Option<i64>,
        /// Do not fsync on commit (faster; a machine crash may lose recent records).
        #[arg(long)]
        no_fsync: bool,
    },
    /// One line per partition: topic, partition, start offset, end offset, bytes (tab-separated).
    List,
    /// Append stdin lines `key<TAB>value` (value `\N` = tombstone). The partition is
    /// murmur2(key) mod partitions unless --partition. All or nothing: the whole input is
    /// read and checked (format, partition, record sizes) before anything is written, the
    /// log is fsynced at the end, and if a write or fsync fails part-way (a full disk) the
    /// records already appended are removed again before the error is reported.
    /// With --key and --value-file: one record whose value is a file's bytes, unescaped.
    Produce {
        /// Topic name.
        name: String,
        /// Write every record to this partition.
        #[arg(long)]
        partition: Option<u32>,
        /// Produce one record with this key (escapes as in the input lines) and the value
        /// read from --value-file, instead of reading lines from stdin.
        #[arg(long, requires = "value_file")]
        key: Option<String>,
        /// With --key: the value is this file's bytes exactly (`-`: stdin), with no escaping
        /// and no size limit but the log's record size; for values too large or too binary
        /// for a command line or an input line.
        #[arg(long, requires = "key", value_name = "PATH")]
        value_file: Option<PathBuf>,
        /// Write even into a topic a job records as its output or a store's changelog
        /// (refused without it). A job drops output past its own checkpoints at start-up, so
        /// its next start deletes what is written here; a changelog's restore truncates it.
        #[arg(long)]
        force: bool,
    },
    /// Which job uses which topic as an input, an output or a store's changelog (recorded
    /// when a job starts, in `<state-dir>/roles`): `job<TAB>topic<TAB>role` lines.
    Roles {
        /// Forget every role of this job (a job that is gone for good), so that another job
        /// may take its topics.
        #[arg(long, value_name = "JOB")]
        release: Option<String>,
    },
    /// Print records as `partition<TAB>offset<TAB>key<TAB>value` (tombstone value: `\N`).
    Consume {
        /// Topic name.
        name: String,
        /// Only this partition (default: all, in order).
        #[arg(long)]
        partition: Option<u32>,
        /// Start at this offset (below a partition's start offset: from its start).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many records in total.
        #[arg(long)]
        max: Option<usize>,
    },
    /// Check every frame's length and CRC32C and every offset in every segment. Prints one
    /// line per partition; exit code 1 if any partition is corrupt.
    Verify {
        /// Topic name.
        name: String,
    },
    /// Run the topic's cleanup now: compaction (compact topics) or retention (delete topics).
    Compact {
        /// Topic name.
        name: String,
    },
}

/// Runs a `topic` verb against `state_dir`; returns the process exit code.
pub fn run(state_dir: &Path, cmd: TopicCmd) -> anyhow::Result<i32> {
    let logs = LogDir::open(state_dir)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let code = match cmd {
        TopicCmd::Create {
            name,
            partitions,
            compact,
            segment_bytes,
            retention_bytes,
            retention_ms,
            no_fsync,
        } => {
            let mut config = if compact {
                TopicConfig::compacted()
            } else {
                TopicConfig::default()
            };
            if let Some(b) = segment_bytes {
                config.segment_bytes = b;
            }
            if retention_bytes.is_some() {
                config.retention_bytes = retention_bytes;
            }
            if retention_ms.is_some() {
                config.retention_ms = retention_ms;
            }
            config.fsync = !no_fsync;
            let topic = logs.create_topic(&name, partitions, config)?;
            writeln!(
                out,
                "created topic {} with {} partitions (cleanup policy {})",
                topic.name(),
                topic.partitions(),
                if compact { "compact" } else { "delete" }
            )?;
            0
        }
        TopicCmd::List => {
            for t in logs.list_topics()? {
                for p in &t.partitions {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}",
                        t.name, p.partition, p.start_offset, p.end_offset, p.bytes
                    )?;
                }
            }
            0
        }
        TopicCmd::Produce {
            name,
            partition,
            key,
            value_file,
            force,
        } => {
            let topic = logs.topic(&name)?;
            let registry = RoleRegistry::load(&roles_path(state_dir))?;
            let writers: Vec<String> = registry
                .holders(&name)
                .filter(|(_, r)| **r != Role::Input)
                .map(|(job, r)| format!("{r} of job `{job}`"))
                .collect();
            if !writers.is_empty() {
                if !force {
                    bail!(
                        "topic {name} is {}: a job's topics are written by the job only (its next start drops records past its own checkpoints, so a record produced here would be deleted); nothing was written. Produce into the job's input instead, or pass --force to write anyway (the job's next start may delete it)",
                        writers.join(" and ")
                    );
                }
                tracing::warn!(
                    "--force: writing into topic {name}, {}; the job's next start may delete these records",
                    writers.join(" and ")
                );
            }
            if let Some(p) = partition {
                topic.partition_dir(p)?;
            }
            let records = match (key, value_file) {
                (Some(key), Some(file)) => read_value_file(unescape(&key), &file).map(|r| vec![r]),
                _ => parse_input(io::stdin().lock()),
            }
            .with_context(|| format!("topic {name}: nothing was written"))?;
            produce(&topic, partition, &records, now_ms())?;
            writeln!(out, "wrote {} records to {}", records.len(), topic.name())?;
            0
        }
        TopicCmd::Roles { release } => {
            let path = roles_path(state_dir);
            let mut registry = RoleRegistry::load(&path)?;
            if let Some(job) = release {
                if registry.jobs.remove(&job).is_none() {
                    bail!("job `{job}` has no recorded topic roles");
                }
                registry.save(&path)?;
                writeln!(out, "released the topic roles of job `{job}`")?;
            } else {
                print_roles(&mut out, &registry)?;
            }
            0
        }
        TopicCmd::Consume {
            name,
            partition,
            from,
            max,
        } => {
            let topic = logs.topic(&name)?;
            let parts: Vec<u32> = match partition {
                Some(p) => vec![p],
                None => (0..topic.partitions()).collect(),
            };
            let mut left = max.unwrap_or(usize::MAX);
            for p in parts {
                if left == 0 {
                    break;
                }
                let (mut part, _) = topic.open_partition(p)?;
                let start = from.unwrap_or(0).max(part.start_offset());
                // Read committed: output of a job is readable only up to its last commit.
                let limit = gregor::runtime::committed::read(part.dir())?.unwrap_or(u64::MAX);
                let mut reader = part.reader(start)?;
                'read: while left > 0 {
                    let batch = reader.next_batch(left.min(1024))?;
                    if batch.is_empty() {
                        break;
                    }
                    for r in batch {
                        if r.offset >= limit {
                            break 'read;
                        }
                        let value = match &r.value {
                            Some(v) => escape(v),
                            None => "\\N".to_string(),
                        };
                        writeln!(out, "{p}\t{}\t{}\t{value}", r.offset, escape(&r.key))?;
                    }
                    left -= batch.len();
                }
            }
            0
        }
        TopicCmd::Verify { name } => {
            let topic = logs.topic(&name)?;
            let mut corrupt = false;
            for p in 0..topic.partitions() {
                let dir = topic.partition_dir(p)?;
                match verify_partition(&dir) {
                    Ok(v) => {
                        let range = match (v.first_offset, v.last_offset) {
                            (Some(a), Some(b)) => format!("offsets {a}..={b}"),
                            _ => "empty".to_string(),
                        };
                        write!(
                            out,
                            "{}\t{p}\tok\t{} records\t{} segments\t{} bytes\t{range}",
                            topic.name(),
                            v.records,
                            v.segments,
                            v.bytes
                        )?;
                        if let Some(t) = v.torn_tail {
                            write!(
                                out,
                                "\ttorn tail of {} bytes at position {} of {} (cut on next open)",
                                t.bytes_cut,
                                t.position,
                                t.file.display()
                            )?;
                        }
                        writeln!(out)?;
                    }
                    Err(e @ LogError::Corrupt { .. }) => {
                        corrupt = true;
                        writeln!(out, "{}\t{p}\tcorrupt\t{e}", topic.name())?;
                        out.flush()?;
                        eprintln!("error: topic {} partition {p}: {e}", topic.name());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            i32::from(corrupt)
        }
        TopicCmd::Compact { name } => {
            let topic = logs.topic(&name)?;
            let now = now_ms();
            for p in 0..topic.partitions() {
                let (mut part, _) = topic.open_partition(p)?;
                // Records past a crashed commit are truncated at the job's next start: they
                // must not shadow committed records (issue 11 #5).
                let committed =
                    committed_end(state_dir, &TopicPartition::new(topic.name(), p), part.dir())?;
                match part.clean_committed(now, committed.offset())? {
                    CleanupReport::Compacted(r) => writeln!(
                        out,
                        "{}\t{p}\tcompacted\t{} records removed\t{} of {} closed segments rewritten\t{} -> {} bytes\tcommitted horizon: {committed}",
                        topic.name(),
                        r.records_removed,
                        r.segments_rewritten,
                        r.segments_examined,
                        r.bytes_before,
                        r.bytes_after
                    )?,
                    CleanupReport::Retention(r) => writeln!(
                        out,
                        "{}\t{p}\tretention\t{} segments deleted\t{} bytes deleted\tstart offset {}",
                        topic.name(),
                        r.segments_deleted,
                        r.bytes_deleted,
                        r.start_offset
                    )?,
                }
                part.sync()?;
            }
            0
        }
    };
    out.flush()?;
    Ok(code)
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// What `produce` knew about a partition before it appended anything.
struct Before {
    partition: u32,
    end_offset: u64,
    committed: Option<u64>,
}

/// Appends `records` (all checked already) to `topic` all-or-nothing: every target partition
/// is opened first, then the records are appended and every partition synced, then the
/// read-committed markers moved. If a write or fsync fails part-way (a full disk), every
/// partition is truncated back to the end it had before and its marker restored, so the
/// topic is as it was and a retry does not duplicate anything; the error says so, or, if the
/// rollback failed too, which partitions still hold records from this input.
fn produce(
    topic: &Topic,
    partition: Option<u32>,
    records: &[KeyValue],
    now: i64,
) -> anyhow::Result<()> {
    let target =
        |key: &[u8]| partition.unwrap_or_else(|| partition_for_key(key, topic.partitions()));
    let mut open: BTreeMap<u32, Partition> = BTreeMap::new();
    let mut before = Vec::new();
    (|| -> anyhow::Result<()> {
        for (key, _) in records {
            let p = target(key);
            if let std::collections::btree_map::Entry::Vacant(slot) = open.entry(p) {
                let (part, _) = topic.open_partition(p)?;
                before.push(Before {
                    partition: p,
                    end_offset: part.end_offset(),
                    committed: gregor::runtime::committed::read(part.dir())?,
                });
                slot.insert(part);
            }
        }
        Ok(())
    })()
    .with_context(|| format!("topic {}: nothing was written", topic.name()))?;
    let mut appended = 0usize;
    let written = (|| -> anyhow::Result<()> {
        for (key, value) in records {
            let p = target(key);
            open.get_mut(&p)
                .expect("every target partition was opened above")
                .append(now, key, value.as_deref())
                .with_context(|| format!("appending record {} to partition {p}", appended + 1))?;
            appended += 1;
        }
        for (p, part) in &mut open {
            part.sync()
                .with_context(|| format!("syncing partition {p}"))?;
        }
        // A topic a job writes carries a read-committed marker; what the CLI produced is
        // committed, so move the marker along.
        for b in &before {
            if b.committed.is_some() {
                let part = &open[&b.partition];
                gregor::runtime::committed::write(part.dir(), part.end_offset()).with_context(
                    || format!("moving the committed marker of partition {}", b.partition),
                )?;
            }
        }
        Ok(())
    })();
    let Err(error) = written else {
        return Ok(());
    };
    // The failed handles are poisoned; reopen each partition to undo what reached the disk.
    drop(open);
    let n = records.len();
    match roll_back(topic, &before) {
        Ok(()) => Err(error.context(format!(
            "topic {}: nothing was written: writing failed after {appended} of {n} records were appended, and they were removed again (partitions truncated back to their previous ends)",
            topic.name()
        ))),
        Err(rollback) => Err(anyhow::anyhow!(
            "topic {}: writing failed after {appended} of {n} records ({}), and removing them again failed too ({}): records from this input may remain past offset {}",
            topic.name(),
            crate::one_line(&error),
            crate::one_line(&rollback),
            before
                .iter()
                .map(|b| format!("{} of partition {}", b.end_offset, b.partition))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Restores every partition in `before`: its read-committed marker first (so readers never
/// see records about to be removed), then its end offset (truncation).
fn roll_back(topic: &Topic, before: &[Before]) -> anyhow::Result<()> {
    let mut first_error = None;
    for b in before {
        let result = (|| -> anyhow::Result<()> {
            let (mut part, _) = topic.open_partition(b.partition)?;
            if let Some(marker) = b.committed
                && gregor::runtime::committed::read(part.dir())? != Some(marker)
            {
                gregor::runtime::committed::write(part.dir(), marker)?;
            }
            if part.end_offset() > b.end_offset {
                part.truncate(b.end_offset)?;
            } else if part.end_offset() < b.end_offset {
                bail!(
                    "partition {} ends at {}, before its end of {} when produce started",
                    b.partition,
                    part.end_offset(),
                    b.end_offset
                );
            }
            Ok(())
        })()
        .with_context(|| format!("partition {}", b.partition));
        if let Err(e) = result {
            // Keep going: every other partition can still be restored.
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The record `key` with the bytes of `file` (`-`: stdin) as its value, checked against the
/// log's record size limit while reading (a larger file is not read to its end).
pub(crate) fn read_value_file(key: Vec<u8>, file: &Path) -> anyhow::Result<KeyValue> {
    let max_value = MAX_PAYLOAD_LEN.saturating_sub(payload_len(key.len(), Some(0)));
    let mut value = Vec::new();
    let limit = max_value as u64 + 1;
    if file == Path::new("-") {
        io::stdin().lock().take(limit).read_to_end(&mut value)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut value))
    }
    .with_context(|| format!("reading --value-file {}", file.display()))?;
    if value.len() > max_value {
        bail!(
            "--value-file {}: more than {max_value} bytes, the largest value the log takes with a key of {} bytes",
            file.display(),
            key.len()
        );
    }
    Ok((key, Some(value)))
}

/// Parses `key<TAB>value` lines and checks each record against the log's record size limit;
/// an error names the first bad line (1-based). Nothing is written here.
pub(crate) fn parse_input(input: impl BufRead) -> anyhow::Result<Vec<KeyValue>> {
    let mut records = Vec::new();
    for (i, line) in input.split(b'\n').enumerate() {
        let mut line = line.context("reading stdin")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let line = String::from_utf8(line)
            .map_err(|_| anyhow::anyhow!("line {}: not valid UTF-8 (use \\xHH escapes)", i + 1))?;
        let Some((key, value)) = line.split_once('\t') else {
            bail!("line {}: expected key<TAB>value, found no tab", i + 1);
        };
        let value = (value != "\\N").then(|| unescape(value));
        let key = unescape(key);
        let size = payload_len(key.len(), value.as_ref().map(Vec::len));
        if size > MAX_PAYLOAD_LEN {
            bail!(
                "line {}: record of {size} bytes (key, value and {MIN_PAYLOAD_LEN} bytes of header) exceeds the log's maximum record size of {MAX_PAYLOAD_LEN} bytes",
                i + 1
            );
        }
        records.push((key, value));
    }
    Ok(records)
}

/// Printable form of bytes (see the module doc).
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\t' => s.push_str("\\t"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Inverse of [`escape`]; unknown escapes are kept literally.
pub(crate) fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let decoded = match b[i + 1] {
                b'\\' => Some((b'\\', 2)),
                b't' => Some((b'\t', 2)),
                b'n' => Some((b'\n', 2)),
                b'r' => Some((b'\r', 2)),
                b'x' if i + 4 <= b.len() => std::str::from_utf8(&b[i + 2..i + 4])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .map(|v| (v, 4)),
                _ => None,
            };
            if let Some((byte, n)) = decoded {
                out.push(byte);
                i += n;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips_any_bytes() {
        let cases: Vec<Vec<u8>> = vec![
            b"plain".to_vec(),
            b"tab\there\nnl\\back\\N".to_vec(),
            vec![0xff, 0x00, b'a', 0xc3],
            "héllo".as_bytes().to_vec(),
            b"\\x4".to_vec(),
        ];
        for c in cases {
            let e = escape(&c);
            assert!(!e.contains('\t') && !e.contains('\n'));
            assert_eq!(unescape(&e), c, "{e}");
        }
        assert_eq!(escape(b"\\N"), "\\\\N");
        assert_eq!(unescape("C:\\path"), b"C:\\path");
    }

    #[test]
    fn parse_input_names_bad_line() {
        let err = parse_input(&b"a\t1\nb\t\\N\nno-tab\n"[..]).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        let ok = parse_input(&b"a\t1\t2\nb\t\\N\n"[..]).unwrap();
        assert_eq!(
            ok,
            vec![
                (b"a".to_vec(), Some(b"1\t2".to_vec())),
                (b"b".to_vec(), None)
            ]
        );
    }

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails writes (or fsyncs) of segment files with ENOSPC: the `fail_at`-th call, and
    /// every later one too if `persistent`.
    struct DiskFull {
        calls: AtomicUsize,
        fail_at: usize,
        persistent: bool,
        on_sync: bool,
    }

    impl DiskFull {
        fn hit(&self, path: &Path) -> io::Result<()> {
            if path.extension().is_none_or(|e| e != "log") {
                return Ok(());
            }
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n == self.fail_at || (self.persistent && n > self.fail_at) {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
    }

    impl gregor::log::IoHooks for DiskFull {
        fn before_write(&self, path: &Path) -> io::Result<()> {
            if self.on_sync { Ok(()) } else { self.hit(path) }
        }
        fn before_sync(&self, path: &Path) -> io::Result<()> {
            if self.on_sync { self.hit(path) } else { Ok(()) }
        }
    }

    fn records(n: usize) -> Vec<KeyValue> {
        (0..n)
            .map(|i| {
                (
                    format!("key-{i}").into_bytes(),
                    Some(vec![b'v'; 200 + i % 7]),
                )
            })
            .collect()
    }

    /// Every partition's (end offset, records) of `name`, read without hooks.
    fn contents(state: &Path, name: &str) -> Vec<(u64, Vec<KeyValue>)> {
        let topic = LogDir::open(state).unwrap().topic(name).unwrap();
        (0..topic.partitions())
            .map(|p| {
                let (mut part, _) = topic.open_partition(p).unwrap();
                let recs = part.read(part.start_offset(), usize::MAX).unwrap();
                (
                    part.end_offset(),
                    recs.into_iter().map(|r| (r.key, r.value)).collect(),
                )
            })
            .collect()
    }

    /// Issue #10, ENOSPC: a write or fsync failing part-way through a large input (after some
    /// 1 MiB buffers reached the disk, across segment rolls) leaves the topic exactly as it was.
    #[test]
    fn a_failed_write_or_sync_part_way_leaves_the_topic_unchanged() {
        for (what, fail_at, persistent, on_sync, segment_bytes) in [
            ("3rd write", 3, false, false, 128 << 20),
            ("every write from the 4th", 4, true, false, 128 << 20),
            ("a write after segment rolls", 9, false, false, 700_000),
            ("1st fsync", 1, false, true, 128 << 20),
            ("an fsync at a segment roll", 2, false, true, 700_000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path();
            let config = TopicConfig {
                segment_bytes,
                ..TopicConfig::default()
            };
            let topic = LogDir::open(state)
                .unwrap()
                .create_topic("t", 2, config)
                .unwrap();
            // Something already in the topic, and a read-committed marker on partition 1.
            produce(&topic, None, &records(50), 1).unwrap();
            let marker_dir = topic.partition_dir(1).unwrap();
            gregor::runtime::committed::write(&marker_dir, 7).unwrap();
            let before = contents(state, "t");

            let hooks = Arc::new(DiskFull {
                calls: AtomicUsize::new(0),
                fail_at,
                persistent,
                on_sync,
            });
            let failing = LogDir::open_with_hooks(state, hooks.clone())
                .unwrap()
                .topic("t")
                .unwrap();
            let err = produce(&failing, None, &records(30_000), 2).unwrap_err();
            let msg = crate::one_line(&err);
            assert!(
                hooks.calls.load(Ordering::SeqCst) >= fail_at,
                "{what}: the failure was never injected"
            );
            assert!(msg.contains("No space left"), "{what}: {msg}");
            if persistent {
                // Truncation also goes through the failing hooks here, so it cannot undo:
                // the error must say what may be left.
                assert!(
                    msg.contains("removing them again failed")
                        && msg.contains("may remain past offset"),
                    "{what}: {msg}"
                );
                continue;
            }
            assert!(
                msg.contains("nothing was written") && msg.contains("of 30000 records"),
                "{what}: {msg}"
            );
            let now = contents(state, "t");
            let ends = |c: &[(u64, Vec<KeyValue>)]| c.iter().map(|(e, _)| *e).collect::<Vec<_>>();
            assert_eq!(ends(&now), ends(&before), "{what}: end offsets changed");
            assert!(now == before, "{what}: records changed");
            assert_eq!(
                gregor::runtime::committed::read(&marker_dir).unwrap(),
                Some(7),
                "{what}: marker moved"
            );
            // A retry on a healthy disk writes every record exactly once.
            produce(&topic, None, &records(30_000), 3).unwrap();
            let after = contents(state, "t");
            let total: usize = after.iter().map(|(_, r)| r.len()).sum();
            assert_eq!(total, 30_050, "{what}");
        }
    }
}
