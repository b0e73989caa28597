//! The metered layer: counters and latency histograms per operation through the `metrics`
//! facade, named in the spirit of Samza's store metrics: `<store>.gets`, `<store>.puts`,
//! `<store>.deletes`, `<store>.ranges`, `<store>.alls`, `<store>.flushes`,
//! `<store>.snapshots`, `<store>.bytes-read`, `<store>.bytes-written`, and histograms
//! `<store>.get-ns`, `<store>.put-ns`, `<store>.delete-ns`, `<store>.flush-ns`.

use std::time::Instant;

use metrics::{Counter, Histogram};

use super::{KeyValueStore, KvIter, KvSnapshot, Mutation, Result};

struct Meters {
    gets: Counter,
    puts: Counter,
    deletes: Counter,
    ranges: Counter,
    alls: Counter,
    flushes: Counter,
    snapshots: Counter,
    bytes_read: Counter,
    bytes_written: Counter,
    get_ns: Histogram,
    put_ns: Histogram,
    delete_ns: Histogram,
    flush_ns: Histogram,
}

impl Meters {
    fn new(store: &str) -> Self {
        let c = |op: &str| metrics::counter!(format!("{store}.{op}"));
        let h = |op: &str| metrics::histogram!(format!("{store}.{op}"));
        Meters {
            gets: c("gets"),
            puts: c("puts"),
            deletes: c("deletes"),
            ranges: c("ranges"),
            alls: c("alls"),
            flushes: c("flushes"),
            snapshots: c("snapshots"),
            bytes_read: c("bytes-read"),
            bytes_written: c("bytes-written"),
            get_ns: h("get-ns"),
            put_ns: h("put-ns"),
            delete_ns: h("delete-ns"),
            flush_ns: h("flush-ns"),
        }
    }
}

/// Counts and times every operation of the store below it.
pub struct MeteredStore {
    inner: Box<dyn KeyValueStore>,
    m: Meters,
}

impl MeteredStore {
    /// Wraps `inner`; metrics are registered with the global `metrics` recorder now.
    pub fn new(inner: Box<dyn KeyValueStore>) -> Self {
        let m = Meters::new(inner.name());
        MeteredStore { inner, m }
    }
}

fn elapsed_ns(start: Instant) -> f64 {
    start.elapsed().as_nanos() as f64
}

impl KeyValueStore for MeteredStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let start = Instant::now();
        let v = self.inner.get(key)?;
        self.m.get_ns.record(elapsed_ns(start));
        self.m.gets.increment(1);
        let n = v.as_ref().map_or(0, |v| v.len()) + key.len();
        self.m.bytes_read.increment(n as u64);
        Ok(v)
    }

    fn get_all(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let vs = self.inner.get_all(keys)?;
        self.m.gets.increment(keys.len() as u64);
        // Same rule as `get`: key bytes of every key asked plus the bytes of values found.
        let n: usize = keys.iter().map(|k| k.len()).sum::<usize>()
            + vs.iter()
                .map(|v| v.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>();
        self.m.bytes_read.increment(n as u64);
        Ok(vs)
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()> {
        let start = Instant::now();
        let (mut puts, mut deletes, mut bytes) = (0u64, 0u64, 0usize);
        for m in &batch {
            // Same rule as `put`/`delete`: only puts count bytes written.
            if let Some(v) = &m.value {
                bytes += m.key.len() + v.len();
                puts += 1;
            } else {
                deletes += 1;
            }
        }
        self.inner.write_batch(batch)?;
        let ns = elapsed_ns(start);
        if deletes == 0 {
            self.m.put_ns.record(ns);
        } else if puts == 0 {
            self.m.delete_ns.record(ns);
        }
        self.m.puts.increment(puts);
        self.m.deletes.increment(deletes);
        self.m.bytes_written.increment(bytes as u64);
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let start = Instant::now();
        self.inner.put(key, value)?;
        self.m.put_ns.record(elapsed_ns(start));
        self.m.puts.increment(1);
        self.m
            .bytes_written
            .increment((key.len() + value.len()) as u64);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        let start = Instant::now();
        self.inner.delete(key)?;
        self.m.delete_ns.record(elapsed_ns(start));
        self.m.deletes.increment(1);
        Ok(())
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        if from.is_empty() && to.is_none() {
            self.m.alls.increment(1);
        } else {
            self.m.ranges.increment(1);
        }
        let bytes_read = self.m.bytes_read.clone();
        let it = self.inner.scan(from, to)?;
        Ok(Box::new(it.inspect(move |r| {
            if let Ok((k, v)) = r {
                bytes_read.increment((k.len() + v.len()) as u64);
            }
        })))
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        self.m.snapshots.increment(1);
        self.inner.snapshot()
    }

    fn flush(&mut self) -> Result<()> {
        let start = Instant::now();
        self.inner.flush()?;
        self.m.flush_ns.record(elapsed_ns(start));
        self.m.flushes.increment(1);
        Ok(())
    }

    fn flush_to_changelog(&mut self) -> Result<()> {
        self.inner.flush_to_changelog()
    }
}
