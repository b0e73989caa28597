//! `gregor topic ...`: create, list, produce to, consume from, verify and compact embedded
//! topics (`<state-dir>/logs/`).
//!
//! Text format (consume output, produce input): keys and values are printed as UTF-8 with
//! `\\`, tab, newline and carriage return escaped as `\\`, `\t`, `\n`, `\r`, and bytes that
//! are not UTF-8 as `\xHH`. A tombstone value is printed as `\N` (as in PostgreSQL's text
//! format: a literal backslash-N in data prints as `\\N`, so it cannot be confused).
//! `produce` reads the same format back (unknown escapes are kept literally).

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Subcommand;
use gregor::log::{CleanupReport, LogDir, LogError, Partition, TopicConfig, verify_partition};
use gregor::partitioner::partition_for_key;

/// The `topic` verbs.
#[derive(Subcommand, Debug)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        /// Topic name: `[a-zA-Z0-9._-]+`.
        name: String,
        /// Number of partitions.
        #[arg(long)]
        partitions: u32,
        /// Compacted topic (changelog): keep the newest record per key. Default: delete
        /// old segments by retention.
        #[arg(long)]
        compact: bool,
        /// Segment size in bytes (default 128 MiB).
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Delete policy: keep at most about this many bytes per partition.
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Delete policy: delete segments whose newest record is older than this (ms).
        #[arg(long)]
        retention_ms: Option<i64>,
        /// Do not fsync on commit (faster; a machine crash may lose recent records).
        #[arg(long)]
        no_fsync: bool,
    },
    /// One line per partition: topic, partition, start offset, end offset, bytes (tab-separated).
    List,
    /// Append stdin lines `key<TAB>value` (value `\N` = tombstone). The partition is
    /// murmur2(key) mod partitions unless --partition. The input is checked entirely
    /// before anything is written; the log is fsynced at the end.
    Produce {
        /// Topic name.
        name: String,
        /// Write every record to this partition.
        #[arg(long)]
        partition: Option<u32>,
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
        TopicCmd::Produce { name, partition } => {
            let topic = logs.topic(&name)?;
            if let Some(p) = partition {
                topic.partition_dir(p)?;
            }
            let records = parse_input(io::stdin().lock())?;
            let now = now_ms();
            let mut open: Vec<Option<Partition>> = (0..topic.partitions()).map(|_| None).collect();
            for (key, value) in &records {
                let p = partition.unwrap_or_else(|| partition_for_key(key, topic.partitions()));
                let slot = &mut open[p as usize];
                if slot.is_none() {
                    *slot = Some(topic.open_partition(p)?.0);
                }
                slot.as_mut()
                    .expect("opened")
                    .append(now, key, value.as_deref())?;
            }
            for part in open.iter_mut().flatten() {
                part.sync()?;
                // A topic a job writes carries a read-committed marker; what the CLI
                // produced is committed, so move the marker along.
                if gregor::runtime::committed::read(part.dir())?.is_some() {
                    gregor::runtime::committed::write(part.dir(), part.end_offset())?;
                }
            }
            writeln!(out, "wrote {} records to {}", records.len(), topic.name())?;
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
                match part.clean(now)? {
                    CleanupReport::Compacted(r) => writeln!(
                        out,
                        "{}\t{p}\tcompacted\t{} records removed\t{} of {} closed segments rewritten\t{} -> {} bytes",
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

type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// Parses `key<TAB>value` lines; an error names the first bad line (1-based).
fn parse_input(input: impl BufRead) -> anyhow::Result<Vec<KeyValue>> {
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
        records.push((unescape(key), value));
    }
    Ok(records)
}

/// Printable form of bytes (see the module doc).
fn escape(bytes: &[u8]) -> String {
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
fn unescape(s: &str) -> Vec<u8> {
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
}
