//! Time to live: the layer that gives a store's entries an expiry time, hides expired ones
//! from every read, and removes them in bounded background passes through the changelog.
//!
//! A store with `stores.<name>.ttl.ms` keeps every value behind a 9-byte header,
//! `[TTL_FORMAT][expires_at_ms: u64 big-endian]` (`u64::MAX`: never), in the cache, the
//! changelog and the engine alike. The deadline is absolute (milliseconds since the epoch, by
//! the store's [`Clock`]), so a restore on any machine brings back the same deadline, and an
//! entry restored after its deadline is invisible at once, before any tombstone is written.
//!
//! The layer sits between the metrics layer and the cache:
//! `Metered → Ttl → Cached → Logged → Engine`. Reads strip the header and hide entries whose
//! deadline is at or before the clock's now; writes add it (`now + ttl.ms`, or the deadline a
//! per-write TTL gives). [`KeyValueStore::expire`] (run by every task commit, before the
//! stores are flushed) examines at most `ttl.cleanup.entries` entries from where the previous
//! pass stopped and deletes the expired ones through the layers below, so the tombstones
//! travel through the changelog in that same commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cached::CachedStore;
use super::{KeyValueStore, KvIter, KvSnapshot, Limits, Mutation, Result, StoreError};
use crate::telemetry::StoreLabels;

/// The first byte of every value of a TTL store: the header's format version.
pub const TTL_FORMAT: u8 = 1;
/// Bytes the header adds to every value of a TTL store.
pub const HEADER_BYTES: usize = 9;
/// The deadline of an entry that never expires.
pub const NEVER: u64 = u64::MAX;

/// Where a store reads the time: the system clock, or a clock a test sets.
///
/// Cloning shares the clock: a [`ManualClock`] advanced by a test moves every store made
/// with it. Two clocks always compare equal: the clock is not part of a store's
/// configuration.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// A clock that moves only when its [`ManualClock`] is set or advanced.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// Milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Whether an entry with deadline `expires_at_ms` is still visible now (the deadline is
    /// after now). On the system clock this reads the kernel's coarse clock, which lags the
    /// precise clock by at most one tick (no system call): first its whole seconds (`time`,
    /// ~2 ns), which settle any deadline not within a second and two ticks of now; then, for
    /// those, its milliseconds (~10 ns), which settle any deadline not within two ticks;
    /// only those need the precise clock. So the answer is exactly `expires_at_ms >
    /// now_ms()`, whatever the deadline.
    #[inline]
    pub fn is_live(&self, expires_at_ms: u64) -> bool {
        match self {
            Clock::Manual(t) => expires_at_ms > t.load(Ordering::Relaxed),
            Clock::System => {
                if expires_at_ms == NEVER {
                    return true;
                }
                if let (Some(tick), Some(secs)) = (coarse_tick(), coarse_secs()) {
                    // Most checks: the coarse clock's whole seconds. They are at or before
                    // now, and now is less than a second and the margin after them, so only
                    // a deadline within that span needs the clock to the ms.
                    let lo = secs.saturating_mul(1000);
                    if expires_at_ms <= lo {
                        return false;
                    }
                    if expires_at_ms > lo.saturating_add(1000 + tick) {
                        return true;
                    }
                }
                let (coarse, tick) = coarse_ms();
                if expires_at_ms <= coarse {
                    false
                } else if expires_at_ms > coarse.saturating_add(tick) {
                    true
                } else {
                    expires_at_ms > system_ms()
                }
            }
        }
    }

    /// Milliseconds since the epoch for a new deadline: on the system clock the coarse
    /// clock (at most one tick behind, so a deadline is at most that much early).
    fn write_ms(&self) -> u64 {
        match self {
            Clock::Manual(t) => t.load(Ordering::Relaxed),
            Clock::System => coarse_ms().0,
        }
    }
}

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The coarse clock's margin (see [`coarse_ms`]), `None` without a coarse clock.
#[inline]
fn coarse_tick() -> Option<u64> {
    static TICK: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        use nix::time::{ClockId, clock_getres};
        let res = clock_getres(ClockId::CLOCK_REALTIME_COARSE).ok()?;
        let ns = u64::try_from(res.tv_sec()).ok()? * 1_000_000_000 + res.tv_nsec() as u64;
        // No coarse clock (a resolution of 0), or one coarser than 100 ms: not worth it.
        (1..=100_000_000)
            .contains(&ns)
            .then(|| 2 * ns.div_ceil(1_000_000) + 1)
    })
}

/// The coarse realtime clock's whole seconds since the epoch (`time(2)`), `None` if it
/// cannot be read. glibc resolves `time` to the vDSO's, which reads the seconds the kernel
/// last stored at a tick (those of the coarse clock): one load, no sequence lock (~2 ns
/// here, against 3-6 ns for `clock_gettime` of the coarse clock in C and more through nix
/// and the conversion to ms). Under valgrind (no vDSO) glibc makes the system call: slower,
/// the same seconds.
#[allow(unsafe_code)]
#[inline]
fn coarse_secs() -> Option<u64> {
    // SAFETY: `time` with a null pointer writes nothing; it only returns the time (or -1).
    let t = unsafe { nix::libc::time(std::ptr::null_mut()) };
    u64::try_from(t).ok()
}

/// The coarse realtime clock in ms and how far (ms) it may lag the precise one. It is
/// updated every tick (its resolution), so it lags by at most one; the margin taken is two
/// ticks (a tick handled late), plus 1 ms for the rounding of both readings to ms. Where the
/// coarse clock cannot be read, the precise clock with a lag of 0.
fn coarse_ms() -> (u64, u64) {
    // Through libc (nix): glibc calls the vDSO. rustix reads the vDSO itself (~3 ns) but then
    // no longer runs under valgrind (rustix issue #1559).
    use nix::time::{ClockId, clock_gettime};
    match (coarse_tick(), clock_gettime(ClockId::CLOCK_REALTIME_COARSE)) {
        (Some(tick), Ok(t)) => (
            t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000,
            tick,
        ),
        _ => (system_ms(), 0),
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clock::System => f.write_str("Clock::System"),
            Clock::Manual(t) => write!(f, "Clock::Manual({})", t.load(Ordering::Relaxed)),
        }
    }
}

impl PartialEq for Clock {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A clock tests control: [`clock`](Self::clock) hands out [`Clock`]s that read it.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(now_ms)))
    }

    /// A [`Clock`] reading this one.
    pub fn clock(&self) -> Clock {
        Clock::Manual(Arc::clone(&self.0))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }

    /// Sets the clock to `now_ms`.
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }

    /// The time it shows.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `value` behind the header for `expires_at_ms`, appended to `out`.
pub fn encode_into(out: &mut Vec<u8>, expires_at_ms: u64, value: &[u8]) {
    out.reserve(HEADER_BYTES + value.len());
    out.push(TTL_FORMAT);
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out.extend_from_slice(value);
}

/// `value` behind the header for `expires_at_ms`.
pub fn encode(expires_at_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, expires_at_ms, value);
    out
}

/// The deadline and the value of stored bytes, or an error naming the store if they carry
/// no header this version reads.
pub fn decode<'a>(store: &str, stored: &'a [u8]) -> Result<(u64, &'a [u8])> {
    if stored.len() < HEADER_BYTES || stored[0] != TTL_FORMAT {
        return Err(no_header(store, stored.len()));
    }
    let mut at = [0u8; 8];
    at.copy_from_slice(&stored[1..HEADER_BYTES]);
    Ok((u64::from_be_bytes(at), &stored[HEADER_BYTES..]))
}

/// The error of stored bytes without a header this version reads.
fn no_header(store: &str, len: usize) -> StoreError {
    StoreError::Corrupt {
        store: store.to_string(),
        reason: format!(
            "a value of {len} bytes carries no expiry header (format {TTL_FORMAT}, {HEADER_BYTES} bytes): was the store written without stores.{store}.ttl.ms?"
        ),
    }
}

/// The value stored bytes hold as of `now_ms`: `None` if expired (deadline at or before
/// `now_ms`). For readers below the layer (the CLI's read-only and changelog dumps).
pub fn visible<'a>(store: &str, stored: &'a [u8], now_ms: u64) -> Result<Option<&'a [u8]>> {
    let (at, v) = decode(store, stored)?;
    Ok((at > now_ms).then_some(v))
}

/// `it` (entries as stored) with expired entries left out and the headers stripped.
pub fn visible_iter<'a>(store: &str, it: KvIter<'a>, now_ms: u64) -> KvIter<'a> {
    let store = store.to_string();
    Box::new(it.filter_map(move |e| {
        match e {
            Err(e) => Some(Err(e)),
            Ok((k, v)) => strip(&store, v, now_ms)
                .transpose()
                .map(|v| v.map(|v| (k, v))),
        }
    }))
}

/// Strips the header off an owned stored value (no new allocation); `None` if expired.
fn strip(store: &str, mut stored: Vec<u8>, now_ms: u64) -> Result<Option<Vec<u8>>> {
    let (at, _) = decode(store, &stored)?;
    if at <= now_ms {
        return Ok(None);
    }
    stored.drain(..HEADER_BYTES);
    Ok(Some(stored))
}

/// The value of stored bytes if its deadline is after `clock`'s now, `None` if expired;
/// `Err(length)` for bytes without a header (the caller names the store).
#[inline]
fn live_value<'a>(clock: &Clock, stored: &'a [u8]) -> std::result::Result<Option<&'a [u8]>, usize> {
    if stored.len() < HEADER_BYTES || stored[0] != TTL_FORMAT {
        return Err(stored.len());
    }
    let mut at = [0u8; 8];
    at.copy_from_slice(&stored[1..HEADER_BYTES]);
    Ok(clock
        .is_live(u64::from_be_bytes(at))
        .then(|| &stored[HEADER_BYTES..]))
}

/// What the layer needs to know from the store's configuration.
#[derive(Debug, Clone)]
pub struct TtlSettings {
    /// `ttl.ms`: the time an entry lives after its write, unless the write gives its own.
    pub ttl_ms: u64,
    /// `ttl.cleanup.entries`: the most entries one expiry pass examines.
    pub cleanup_entries: usize,
    /// Limits on what users write (the layers below allow [`HEADER_BYTES`] more per value).
    pub limits: Limits,
    /// Where the time comes from.
    pub clock: Clock,
}

/// The layer below the TTL layer: the cache, known by type so that reads borrow its
/// entries without a closure, or any other layer.
enum Below {
    Cached(Box<CachedStore>),
    Other(Box<dyn KeyValueStore>),
}

/// The TTL layer (see the module docs).
pub struct TtlStore {
    inner: Below,
    settings: TtlSettings,
    /// Where the next expiry pass starts; `None`: from the first key.
    cursor: Option<Vec<u8>>,
    /// Unexpired entries with a deadline the current sweep has seen so far.
    sweep_pending: u64,
    buf: Vec<u8>,
    removed: metrics::Counter,
    pending: metrics::Gauge,
}

impl TtlStore {
    /// Gives `inner`'s entries the expiry `settings` say.
    pub fn new(inner: Box<dyn KeyValueStore>, settings: TtlSettings) -> Self {
        Self::with_below(Below::Other(inner), settings)
    }

    /// [`new`](Self::new) over a cache, which reads borrow from directly (the store stack's
    /// layout).
    pub fn over_cache(cache: CachedStore, settings: TtlSettings) -> Self {
        Self::with_below(Below::Cached(Box::new(cache)), settings)
    }

    fn with_below(inner: Below, settings: TtlSettings) -> Self {
        TtlStore {
            inner,
            settings,
            cursor: None,
            sweep_pending: 0,
            buf: Vec::new(),
            removed: metrics::Counter::noop(),
            pending: metrics::Gauge::noop(),
        }
    }

    /// Records the expiry metrics under `labels`.
    pub fn with_metrics(mut self, labels: &StoreLabels) -> Self {
        let l = labels.labels();
        self.removed = metrics::counter!(crate::telemetry::STORE_EXPIRED_ENTRIES, l.clone());
        self.pending = metrics::gauge!(crate::telemetry::STORE_PENDING_EXPIRY, l);
        self
    }

    /// The layer below, as a store.
    fn below(&mut self) -> &mut dyn KeyValueStore {
        match &mut self.inner {
            Below::Cached(c) => &mut **c,
            Below::Other(o) => &mut **o,
        }
    }

    fn below_name(&self) -> &str {
        match &self.inner {
            Below::Cached(c) => c.name(),
            Below::Other(o) => o.name(),
        }
    }

    fn deadline(&self, ttl_ms: u64) -> u64 {
        self.settings.clock.write_ms().saturating_add(ttl_ms)
    }

    fn put_at(&mut self, key: &[u8], value: &[u8], expires_at_ms: u64) -> Result<()> {
        let l = &self.settings.limits;
        if key.is_empty() || key.len() > l.max_key_bytes || value.len() > l.max_value_bytes {
            // Builds the error naming the store (only now: naming it asks the layers below).
            return l.check_ref(self.below_name(), key, Some(value));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_into(&mut buf, expires_at_ms, value);
        let r = match &mut self.inner {
            Below::Cached(c) => c.put(key, &buf),
            Below::Other(o) => o.put(key, &buf),
        };
        if buf.capacity() <= 64 << 10 {
            self.buf = buf;
        }
        r
    }
}

impl KeyValueStore for TtlStore {
    fn name(&self) -> &str {
        self.below_name()
    }

    /// Copies only the value out of the layer below (no header to strip afterwards).
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Below::Cached(c) = &mut self.inner {
            let found = match c.get_ref(key)? {
                None => return Ok(None),
                Some(v) => live_value(&self.settings.clock, v).map(|v| v.map(<[u8]>::to_vec)),
            };
            return found.map_err(|len| no_header(c.name(), len));
        }
        let mut out = None;
        self.get_with(key, &mut |v| out = v.map(<[u8]>::to_vec))?;
        Ok(out)
    }

    fn get_with(&mut self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        let clock = &self.settings.clock;
        let stored = match &mut self.inner {
            // The stack's layout: borrow the cache entry, no closure below.
            Below::Cached(c) => match c.get_ref(key)? {
                None => {
                    f(None);
                    return Ok(());
                }
                Some(v) => live_value(clock, v).map(&mut *f),
            },
            Below::Other(o) => {
                let mut bad = Ok(());
                o.get_with(key, &mut |v| match v {
                    None => f(None),
                    Some(v) => bad = live_value(clock, v).map(&mut *f),
                })?;
                bad
            }
        };
        stored.map_err(|len| no_header(self.below_name(), len))
    }

    fn get_all(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let now = self.settings.clock.now_ms();
        let vs = self.below().get_all(keys)?;
        let name = self.below_name();
        vs.into_iter()
            .map(|v| match v {
                None => Ok(None),
                Some(v) => strip(name, v, now),
            })
            .collect()
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()> {
        self.settings
            .limits
            .check_batch(self.below_name(), &batch)?;
        let at = self.deadline(self.settings.ttl_ms);
        let batch = batch
            .into_iter()
            .map(|m| Mutation {
                value: m.value.map(|v| encode(at, &v)),
                key: m.key,
            })
            .collect();
        self.below().write_batch(batch)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let at = self.deadline(self.settings.ttl_ms);
        self.put_at(key, value, at)
    }

    fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl_ms: u64) -> Result<()> {
        let at = self.deadline(ttl_ms);
        self.put_at(key, value, at)
    }

    fn put_expiring(&mut self, key: &[u8], value: &[u8], expires_at_ms: u64) -> Result<()> {
        self.put_at(key, value, expires_at_ms)
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.below().delete(key)
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        let now = self.settings.clock.now_ms();
        let name = self.below_name().to_string();
        let it = self.below().scan(from, to)?;
        Ok(visible_iter(&name, it, now))
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        Ok(Box::new(TtlSnapshot {
            name: self.below_name().to_string(),
            inner: self.below().snapshot()?,
            clock: self.settings.clock.clone(),
        }))
    }

    fn flush(&mut self) -> Result<()> {
        self.below().flush()
    }

    fn flush_to_changelog(&mut self) -> Result<()> {
        self.below().flush_to_changelog()
    }

    fn relog(&mut self, keys: &[Vec<u8>]) -> Result<()> {
        self.below().relog(keys)
    }

    fn close(&mut self) -> Result<()> {
        self.below().close()
    }

    /// Examines up to `ttl.cleanup.entries` entries from where the last pass stopped (then
    /// from the first key again) and deletes the expired ones; returns how many.
    fn expire(&mut self) -> Result<u64> {
        let now = self.settings.clock.now_ms();
        let budget = self.settings.cleanup_entries.max(1);
        let from = self.cursor.take().unwrap_or_default();
        let name = self.below_name().to_string();
        let (mut expired, mut examined, mut pending, mut next) = (Vec::new(), 0usize, 0u64, None);
        for e in self.below().scan(&from, None)? {
            let (k, v) = e?;
            if examined == budget {
                next = Some(k);
                break;
            }
            examined += 1;
            let (at, _) = decode(&name, &v)?;
            if at <= now {
                expired.push(Mutation::delete(k));
            } else if at != NEVER {
                pending += 1;
            }
        }
        self.sweep_pending += pending;
        if next.is_none() {
            // A sweep of the whole store ended: publish what it counted.
            self.pending.set(self.sweep_pending as f64);
            self.sweep_pending = 0;
        }
        self.cursor = next;
        let n = expired.len() as u64;
        if n > 0 {
            self.below().write_batch(expired)?;
            self.removed.increment(n);
        }
        Ok(n)
    }
}

/// A snapshot of a TTL store: hides what is expired when read, strips the headers.
struct TtlSnapshot {
    name: String,
    inner: Box<dyn KvSnapshot>,
    clock: Clock,
}

impl KvSnapshot for TtlSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.inner.get(key)? {
            None => Ok(None),
            Some(v) => strip(&self.name, v, self.clock.now_ms()),
        }
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        let it = self.inner.scan(from, to)?;
        Ok(visible_iter(&self.name, it, self.clock.now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryEngine;

    fn store(clock: &ManualClock, ttl_ms: u64, cleanup: usize) -> TtlStore {
        TtlStore::new(
            Box::new(MemoryEngine::new("t", Limits::default())),
            TtlSettings {
                ttl_ms,
                cleanup_entries: cleanup,
                limits: Limits::default(),
                clock: clock.clock(),
            },
        )
    }

    /// The system clock's deadline check agrees with the precise clock, also for deadlines
    /// within a few ticks of now (where the coarse clock alone could be wrong).
    #[test]
    fn system_clock_checks_are_exact_near_the_deadline() {
        let c = Clock::System;
        for round in 0..2_000u64 {
            let base = system_ms();
            // Around now, and around the next whole seconds (where the seconds-only check
            // hands over to the finer ones).
            let second = base.div_ceil(1000) * 1000;
            let tick = coarse_tick().unwrap_or(0);
            for d in [
                base.saturating_sub(1_030),
                base.saturating_sub(30),
                base,
                base + 1,
                base + 5,
                base + 30,
                base + 999,
                base + 1_000 + tick,
                base + 1_001 + tick,
                base + 2_500,
                second - 1,
                second,
                second + 1,
                second + 1_000 + tick,
                second + 1_001 + tick,
            ] {
                let d = d + round % 3;
                let before = system_ms();
                let live = c.is_live(d);
                let after = system_ms();
                if live {
                    assert!(d > before, "deadline {d} live at {before}");
                } else {
                    assert!(d <= after, "deadline {d} expired at {after}");
                }
            }
        }
        assert!(c.is_live(NEVER));
        assert!(!c.is_live(0));
    }

    /// The coarse clock's seconds are at or before the precise clock, and less than a
    /// second and the margin behind it.
    #[test]
    fn coarse_seconds_bound_the_precise_clock() {
        let tick = coarse_tick().unwrap_or(0);
        for _ in 0..100_000 {
            let before = system_ms();
            let secs = coarse_secs().expect("time(2)");
            let after = system_ms();
            assert!(secs * 1000 <= after, "{secs} s after {after} ms");
            assert!(
                before < secs * 1000 + 1000 + tick,
                "{secs} s at {before} ms"
            );
        }
    }

    #[test]
    fn header_round_trips_and_bad_bytes_are_named() {
        let e = encode(42, b"v");
        assert_eq!(e.len(), HEADER_BYTES + 1);
        assert_eq!(decode("s", &e).unwrap(), (42, &b"v"[..]));
        assert_eq!(visible("s", &e, 41).unwrap(), Some(&b"v"[..]));
        assert_eq!(visible("s", &e, 42).unwrap(), None);
        let err = decode("s", b"short").unwrap_err().to_string();
        assert!(err.contains("stores.s.ttl.ms"), "{err}");
    }

    #[test]
    fn entries_vanish_at_their_deadline_from_every_read() {
        let clock = ManualClock::new(1_000);
        let mut s = store(&clock, 100, 10);
        s.put(b"a", b"1").unwrap();
        s.put_with_ttl(b"b", b"2", 500).unwrap();
        s.put_expiring(b"c", b"3", NEVER).unwrap();
        clock.advance(99);
        assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
        clock.advance(1);
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(
            s.get_all(&[b"a", b"b"]).unwrap(),
            vec![None, Some(b"2".to_vec())]
        );
        let all: Vec<_> = s.all().unwrap().map(|e| e.unwrap().0).collect();
        assert_eq!(all, vec![b"b".to_vec(), b"c".to_vec()]);
        let snap = s.snapshot().unwrap();
        clock.advance(400);
        assert_eq!(snap.get(b"b").unwrap(), None);
        let mut seen = None;
        s.get_with(b"c", &mut |v| seen = v.map(<[u8]>::to_vec))
            .unwrap();
        assert_eq!(seen, Some(b"3".to_vec()));
    }

    #[test]
    fn expiry_passes_are_bounded_and_wrap_around() {
        let clock = ManualClock::new(0);
        let mut s = store(&clock, 10, 3);
        for i in 0..8u8 {
            s.put(&[i + 1], b"v").unwrap();
        }
        s.put_expiring(b"z", b"keep", NEVER).unwrap();
        clock.advance(10);
        assert_eq!(s.expire().unwrap(), 3);
        assert_eq!(s.expire().unwrap(), 3);
        assert_eq!(s.expire().unwrap(), 2, "the third pass reaches the end");
        assert_eq!(s.expire().unwrap(), 0);
        let left: Vec<_> = s.below().all().unwrap().map(|e| e.unwrap().0).collect();
        assert_eq!(
            left,
            vec![b"z".to_vec()],
            "expired entries are deleted below"
        );
    }
}
