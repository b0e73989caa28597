//! `gregor topic … --kafka BOOTSTRAP`: the topic commands against a Kafka cluster, through
//! gregor's Kafka backend (so they see topics the way a job does): `list`, `create`,
//! `produce`, `consume`. Records print and parse exactly as for the embedded log.

use std::io::{self, Write};

use anyhow::{Context, Result, bail};
use clap::Args;
use gregor::backend::kafka::{KafkaBackend, KafkaSettings};
use gregor::backend::{Backend, TopicPartition, TopicRole, TopicSpec};
use gregor::partitioner::partition_for_key;

use crate::topic::{TopicCmd, escape, parse_input, read_value_file, unescape};

/// Where the Kafka cluster is.
#[derive(Args, Debug, Clone, Default)]
pub struct KafkaArgs {
    /// Run against the Kafka cluster at BOOTSTRAP (host:port[,host:port]) instead of the
    /// state directory's embedded log.
    #[arg(long, value_name = "BOOTSTRAP", global = true)]
    pub kafka: Option<String>,
    /// A librdkafka setting `KEY=VALUE` for --kafka (repeatable), e.g.
    /// `api.version.request=false` and `broker.version.fallback=0.9.0.1` for Kafka 0.9.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", global = true)]
    pub kafka_config: Vec<String>,
}

impl KafkaArgs {
    /// The client settings, if --kafka was given.
    pub fn settings(&self) -> Result<Option<KafkaSettings>> {
        let Some(bootstrap) = &self.kafka else {
            if !self.kafka_config.is_empty() {
                bail!("--kafka-config needs --kafka BOOTSTRAP");
            }
            return Ok(None);
        };
        let mut s = KafkaSettings::new("cli", bootstrap);
        for kv in &self.kafka_config {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--kafka-config {kv:?}: expected KEY=VALUE");
            };
            s.client.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(Some(s))
    }
}

/// Runs a topic command against Kafka.
pub fn run(settings: KafkaSettings, cmd: TopicCmd) -> Result<i32> {
    let bootstrap = settings
        .client
        .get("bootstrap.servers")
        .cloned()
        .unwrap_or_default();
    let backend = KafkaBackend::connect_without_checkpoints(settings)
        .with_context(|| format!("Kafka at {bootstrap}"))?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match cmd {
        TopicCmd::List => {
            for (topic, n) in backend.topics()? {
                for p in 0..n {
                    let o = backend.offsets(&TopicPartition::new(topic.clone(), p))?;
                    writeln!(out, "{topic}\t{p}\t{}\t{}\t-", o.start, o.end)?;
                }
            }
        }
        TopicCmd::Create {
            name,
            partitions,
            compact,
            ..
        } => {
            if backend.partitions(&name)?.is_some() {
                bail!("topic {name} already exists");
            }
            let role = if compact {
                TopicRole::Changelog
            } else {
                TopicRole::Output
            };
            let n = backend.ensure_topic(&TopicSpec {
                name: name.clone(),
                partitions,
                role,
            })?;
            writeln!(
                out,
                "created topic {name} with {n} partitions (cleanup policy {})",
                if compact { "compact" } else { "delete" }
            )?;
        }
        TopicCmd::Produce {
            name,
            partition,
            key,
            value_file,
            ..
        } => {
            let Some(n) = backend.partitions(&name)? else {
                bail!("topic {name} does not exist; nothing was written");
            };
            if let Some(p) = partition
                && p >= n
            {
                bail!("topic {name} has {n} partitions; partition {p} does not exist");
            }
            let records = match (key, value_file) {
                (Some(key), Some(file)) => vec![read_value_file(unescape(&key), &file)?],
                _ => parse_input(io::stdin().lock())?,
            };
            let mut sink = backend.open_sink("gregor-cli")?;
            for (k, v) in &records {
                let p = partition.unwrap_or_else(|| partition_for_key(k, n));
                sink.send(
                    &TopicPartition::new(name.clone(), p),
                    now_ms(),
                    k,
                    v.as_deref(),
                )?;
            }
            let ends = sink.flush()?;
            writeln!(
                out,
                "produced {} records to {name} (acknowledged; partition ends: {})",
                records.len(),
                ends.iter()
                    .map(|(tp, e)| format!("{}={e}", tp.partition))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        TopicCmd::Consume {
            name,
            partition,
            from,
            max,
        } => {
            let Some(n) = backend.partitions(&name)? else {
                bail!("topic {name} does not exist");
            };
            let parts: Vec<u32> = match partition {
                Some(p) if p >= n => bail!("topic {name} has {n} partitions; no partition {p}"),
                Some(p) => vec![p],
                None => (0..n).collect(),
            };
            let mut left = max.unwrap_or(usize::MAX);
            'parts: for p in parts {
                let tp = TopicPartition::new(name.clone(), p);
                let o = backend.offsets(&tp)?;
                let start = from.unwrap_or(o.start).max(o.start);
                if start >= o.end {
                    continue;
                }
                let mut reader = backend.open_reader(&tp, start)?;
                while left > 0 {
                    let batch = reader.next_batch(left.min(1024))?;
                    if batch.is_empty() {
                        break;
                    }
                    for r in batch {
                        if left == 0 || r.offset >= o.end {
                            continue 'parts;
                        }
                        let value = match &r.value {
                            Some(v) => escape(v),
                            None => "\\N".to_string(),
                        };
                        writeln!(out, "{p}\t{}\t{}\t{value}", r.offset, escape(&r.key))?;
                        left -= 1;
                    }
                }
            }
        }
        TopicCmd::Roles { release: Some(job) } => {
            if !backend.roles()?.jobs.contains_key(&job) {
                bail!("job `{job}` has no recorded topic roles on this cluster");
            }
            backend.release_roles(&job)?;
            writeln!(out, "released the topic roles of job `{job}`")?;
        }
        TopicCmd::Roles { release: None } => {
            crate::topic::print_roles(&mut out, &backend.roles()?)?;
        }
        other => bail!(
            "`topic {}` works on the embedded log only (Kafka brokers verify, compact and keep their own logs)",
            match other {
                TopicCmd::Verify { .. } => "verify",
                _ => "compact",
            }
        ),
    }
    out.flush()?;
    Ok(0)
}

fn now_ms() -> i64 {
    gregor::changelog::now_ms()
}
