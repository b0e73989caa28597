//! The metered layer: operation counts, bytes read and written, and (when enabled) latency
//! histograms per operation, exported through the `metrics` facade under the names in
//! [`crate::telemetry`] with the labels `job`, `task`, `store` (and `operation`).
//!
//! The hot path is cheap: counts are plain integers in the layer, published to the recorder
//! at every [`flush`](KeyValueStore::flush) / [`flush_to_changelog`](KeyValueStore::flush_to_changelog)
//! (each commit) and when the layer is dropped; label sets are resolved once, here, when the
//! store opens. The clock is read per operation only when latency histograms are on
//! (`metrics.recording.level = "debug"`, after Kafka Streams' recording levels).

use std::time::Instant;

use metrics::{Counter, Histogram, Label};

use super::{KeyValueStore, KvIter, KvSnapshot, Mutation, Result};
use crate::telemetry::{self as t, StoreLabels};

/// The operations counted, in the order of [`Counts::ops`].
const OPS: [&str; 7] = ["get", "put", "delete", "range", "all", "flush", "snapshot"];
const GET: usize = 0;
const PUT: usize = 1;
const DELETE: usize = 2;
const RANGE: usize = 3;
const ALL: usize = 4;
const FLUSH: usize = 5;
const SNAPSHOT: usize = 6;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    ops: [u64; 7],
    read: u64,
    written: u64,
}

struct Meters {
    ops: [Counter; 7],
    read: Counter,
    written: Counter,
}

struct Latency {
    get: Histogram,
    put: Histogram,
    delete: Histogram,
    flush: Histogram,
}

/// Counts (and optionally times) every operation of the store below it.
pub struct MeteredStore {
    inner: Box<dyn KeyValueStore>,
    counts: Counts,
    published: Counts,
    meters: Meters,
    latency: Option<Latency>,
}

fn with_op(labels: &[Label], op: &'static str) -> Vec<Label> {
    let mut l = labels.to_vec();
    l.push(Label::new("operation", op));
    l
}

impl MeteredStore {
    /// Wraps `inner` with counters labelled with its store name only and no latency
    /// histograms.
    pub fn new(inner: Box<dyn KeyValueStore>) -> Self {
        let labels = StoreLabels::store(inner.name());
        Self::with_labels(inner, &labels, false)
    }

    /// Wraps `inner`; metrics are registered with the current `metrics` recorder now, under
    /// `labels`; `latency` turns the per-operation latency histograms on.
    pub fn with_labels(inner: Box<dyn KeyValueStore>, labels: &StoreLabels, latency: bool) -> Self {
        let l = labels.labels();
        let ops = OPS.map(|op| metrics::counter!(t::STORE_OPERATIONS, with_op(&l, op)));
        let meters = Meters {
            ops,
            read: metrics::counter!(t::STORE_READ_BYTES, l.clone()),
            written: metrics::counter!(t::STORE_WRITTEN_BYTES, l.clone()),
        };
        let h = |op| metrics::histogram!(t::STORE_OPERATION_DURATION, with_op(&l, op));
        let latency = latency.then(|| Latency {
            get: h("get"),
            put: h("put"),
            delete: h("delete"),
            flush: h("flush"),
        });
        MeteredStore {
            inner,
            counts: Counts::default(),
            published: Counts::default(),
            meters,
            latency,
        }
    }

    /// Hands the counts since the last publication to the recorder.
    fn publish(&mut self) {
        let (now, then) = (self.counts, self.published);
        for i in 0..OPS.len() {
            if now.ops[i] != then.ops[i] {
                self.meters.ops[i].increment(now.ops[i] - then.ops[i]);
            }
        }
        if now.read != then.read {
            self.meters.read.increment(now.read - then.read);
        }
        if now.written != then.written {
            self.meters.written.increment(now.written - then.written);
        }
        self.published = now;
    }

    fn start(&self) -> Option<Instant> {
        self.latency.as_ref().map(|_| Instant::now())
    }
}

impl Drop for MeteredStore {
    fn drop(&mut self) {
        self.publish();
    }
}

fn record(h: Option<&Histogram>, start: Option<Instant>) {
    if let (Some(h), Some(s)) = (h, start) {
        h.record(s.elapsed().as_secs_f64());
    }
}

impl KeyValueStore for MeteredStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let start = self.start();
        let v = self.inner.get(key)?;
        record(self.latency.as_ref().map(|l| &l.get), start);
        self.counts.ops[GET] += 1;
        self.counts.read += (v.as_ref().map_or(0, |v| v.len()) + key.len()) as u64;
        Ok(v)
    }

    fn get_with(&mut self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        let start = self.start();
        let mut n = key.len();
        self.inner.get_with(key, &mut |v| {
            n += v.map_or(0, <[u8]>::len);
            f(v)
        })?;
        record(self.latency.as_ref().map(|l| &l.get), start);
        self.counts.ops[GET] += 1;
        self.counts.read += n as u64;
        Ok(())
    }

    fn get_all(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let vs = self.inner.get_all(keys)?;
        self.counts.ops[GET] += keys.len() as u64;
        // Same rule as `get`: key bytes of every key asked plus the bytes of values found.
        let n: usize = keys.iter().map(|k| k.len()).sum::<usize>()
            + vs.iter()
                .map(|v| v.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>();
        self.counts.read += n as u64;
        Ok(vs)
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()> {
        let start = self.start();
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
        if let (Some(l), Some(s)) = (&self.latency, start) {
            let secs = s.elapsed().as_secs_f64();
            if deletes == 0 {
                l.put.record(secs);
            } else if puts == 0 {
                l.delete.record(secs);
            }
        }
        self.counts.ops[PUT] += puts;
        self.counts.ops[DELETE] += deletes;
        self.counts.written += bytes as u64;
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let start = self.start();
        self.inner.put(key, value)?;
        record(self.latency.as_ref().map(|l| &l.put), start);
        self.counts.ops[PUT] += 1;
        self.counts.written += (key.len() + value.len()) as u64;
        Ok(())
    }

    fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl_ms: u64) -> Result<()> {
        let start = self.start();
        self.inner.put_with_ttl(key, value, ttl_ms)?;
        record(self.latency.as_ref().map(|l| &l.put), start);
        self.counts.ops[PUT] += 1;
        self.counts.written += (key.len() + value.len()) as u64;
        Ok(())
    }

    fn put_expiring(&mut self, key: &[u8], value: &[u8], expires_at_ms: u64) -> Result<()> {
        let start = self.start();
        self.inner.put_expiring(key, value, expires_at_ms)?;
        record(self.latency.as_ref().map(|l| &l.put), start);
        self.counts.ops[PUT] += 1;
        self.counts.written += (key.len() + value.len()) as u64;
        Ok(())
    }

    fn expire(&mut self) -> Result<u64> {
        self.inner.expire()
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        let start = self.start();
        self.inner.delete(key)?;
        record(self.latency.as_ref().map(|l| &l.delete), start);
        self.counts.ops[DELETE] += 1;
        Ok(())
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        if from.is_empty() && to.is_none() {
            self.counts.ops[ALL] += 1;
        } else {
            self.counts.ops[RANGE] += 1;
        }
        let read = &mut self.counts.read;
        let it = self.inner.scan(from, to)?;
        Ok(Box::new(it.inspect(move |r| {
            if let Ok((k, v)) = r {
                *read += (k.len() + v.len()) as u64;
            }
        })))
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        self.counts.ops[SNAPSHOT] += 1;
        self.inner.snapshot()
    }

    fn flush(&mut self) -> Result<()> {
        let start = self.start();
        self.inner.flush()?;
        record(self.latency.as_ref().map(|l| &l.flush), start);
        self.counts.ops[FLUSH] += 1;
        self.publish();
        Ok(())
    }

    fn relog(&mut self, keys: &[Vec<u8>]) -> Result<()> {
        self.inner.relog(keys)
    }

    fn flush_to_changelog(&mut self) -> Result<()> {
        self.inner.flush_to_changelog()?;
        self.publish();
        Ok(())
    }
}
