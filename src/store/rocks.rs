//! The RocksDB engine: one RocksDB database per store, with the options users tune exposed
//! per store ([`RocksOptions`]).
//!
//! Besides the default column family holding the data, each database has a small
//! `gregor-meta` column family recording the changelog offset the data reflects. It is
//! written in the same `WriteBatch` as the data and the database uses RocksDB's
//! `atomic_flush`, so even with the WAL off (the default: the changelog is the durability)
//! whatever survives a crash carries the exact changelog offset it corresponds to. Restore
//! uses it to replay only what the engine lacks, or to wipe an engine that got ahead of the
//! last checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, FlushOptions,
    IngestExternalFileOptions, IteratorMode, Options, ReadOptions, SnapshotWithThreadMode,
    SstFileWriter, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

use super::{
    Engine, KeyValueStore, KvIter, KvSnapshot, Limits, Mutation, MutationRef, Result, StoreError,
};

const META_CF: &str = "gregor-meta";
const OFFSET_KEY: &[u8] = b"changelog.end";
/// Bulk loads (chunks of a full restore) during which automatic compactions stay off: the
/// ingested runs of an empty store land on levels 6 down to 1, so up to 6 chunks (about
/// 200 MB of changelog) leave no more sorted runs than a normal tree has, and none in level 0.
const DEFERRED_COMPACTION_LOADS: u64 = 6;

/// Compression of RocksDB blocks (`stores.<name>.rocksdb.compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// Snappy (Samza's default).
    Snappy,
    /// LZ4.
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// Parses a config value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Compression::None,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    fn to_rocks(self) -> DBCompressionType {
        match self {
            Compression::None => DBCompressionType::None,
            Compression::Snappy => DBCompressionType::Snappy,
            Compression::Lz4 => DBCompressionType::Lz4,
            Compression::Zstd => DBCompressionType::Zstd,
        }
    }
}

/// The RocksDB options of one store, under `stores.<name>.rocksdb.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocksOptions {
    /// `rocksdb.block.cache.size`: bytes of block cache (default 100 MiB, as Samza).
    pub block_cache_size: usize,
    /// `rocksdb.write.buffer.size`: bytes per memtable (default 32 MiB).
    pub write_buffer_size: usize,
    /// `rocksdb.max.write.buffer.number`: memtables before writes stall (default 3).
    pub max_write_buffer_number: i32,
    /// `rocksdb.compression`: none, snappy, lz4 (default) or zstd.
    pub compression: Compression,
    /// `rocksdb.bloom.filter.bits`: bits per key of the bloom filter, 0 disables (default 10).
    pub bloom_filter_bits: f64,
    /// `rocksdb.wal.enabled`: RocksDB's own write-ahead log (default off: the changelog is
    /// the durability).
    pub wal_enabled: bool,
    /// `rocksdb.max.open.files`: -1 keeps every file open (default 1000).
    pub max_open_files: i32,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            block_cache_size: 100 << 20,
            write_buffer_size: 32 << 20,
            max_write_buffer_number: 3,
            compression: Compression::Lz4,
            bloom_filter_bits: 10.0,
            wal_enabled: false,
            max_open_files: 1000,
        }
    }
}

impl RocksOptions {
    fn db_options(&self) -> Options {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_atomic_flush(true);
        o.set_max_open_files(self.max_open_files);
        o.set_write_buffer_size(self.write_buffer_size);
        o.set_max_write_buffer_number(self.max_write_buffer_number);
        o.set_compression_type(self.compression.to_rocks());
        let mut table = BlockBasedOptions::default();
        if self.block_cache_size > 0 {
            table.set_block_cache(&Cache::new_lru_cache(self.block_cache_size));
        } else {
            table.disable_cache();
        }
        if self.bloom_filter_bits > 0.0 {
            table.set_bloom_filter(self.bloom_filter_bits, false);
        }
        o.set_block_based_table_factory(&table);
        o
    }
}

/// A store's data in a RocksDB database.
pub struct RocksEngine {
    name: String,
    limits: Limits,
    path: PathBuf,
    db: Arc<DB>,
    write_opts: WriteOptions,
    wal_enabled: bool,
    db_opts: Options,
    /// What `db_opts` was derived from; kept alive with the database (block cache).
    _base_opts: Options,
    ingested: u64,
    /// Bulk loads since the last flush outside one (the restore in progress).
    bulk_loads: u64,
    /// Whether automatic compactions are off (during a bulk load).
    compactions_off: bool,
}

impl RocksEngine {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(
        name: impl Into<String>,
        path: &Path,
        limits: Limits,
        opts: &RocksOptions,
    ) -> Result<Self> {
        let name = name.into();
        // With the WAL off, RocksDB would flush the memtables when the database is closed,
        // making writes that were never committed durable (the engine ahead of its checkpoint:
        // a full restore). Only an explicit flush — the commit's, after the checkpoint —
        // persists the memtables; a drop without one behaves like a crash.
        let mut base_opts = opts.db_options();
        let db_opts = base_opts
            .get_options_from_string("avoid_flush_during_shutdown=true")
            .map_err(|source| StoreError::Rocks {
                store: name.clone(),
                source: Box::new(source),
            })?;
        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, db_opts.clone()),
            ColumnFamilyDescriptor::new(META_CF, Options::default()),
        ];
        let db =
            DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|source| StoreError::Rocks {
                store: name.clone(),
                source: Box::new(source),
            })?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(!opts.wal_enabled);
        Ok(RocksEngine {
            name,
            limits,
            path: path.to_path_buf(),
            db: Arc::new(db),
            write_opts,
            wal_enabled: opts.wal_enabled,
            db_opts,
            _base_opts: base_opts,
            ingested: 0,
            bulk_loads: 0,
            compactions_off: false,
        })
    }

    /// Opens the existing database at `path` for reading only, as of what is on disk: no
    /// lock file, no recovery writes, no flush or compaction; every write is refused.
    /// RocksDB's info log goes to a directory under the system's temporary directory, so
    /// nothing is written next to the database (it may be on a read-only file system).
    pub fn open_read_only(
        name: impl Into<String>,
        path: &Path,
        limits: Limits,
        opts: &RocksOptions,
    ) -> Result<Self> {
        let name = name.into();
        let rocks_err = |source: rocksdb::Error| StoreError::Rocks {
            store: name.clone(),
            source: Box::new(source),
        };
        let mut base_opts = opts.db_options();
        base_opts.create_if_missing(false);
        base_opts.create_missing_column_families(false);
        let logs = std::env::temp_dir().join("gregor-read-only-rocksdb-logs");
        if std::fs::create_dir_all(&logs).is_ok() {
            base_opts.set_db_log_dir(&logs);
        }
        let db_opts = base_opts.clone();
        let cfs: Vec<ColumnFamilyDescriptor> = DB::list_cf(&db_opts, path)
            .map_err(rocks_err)?
            .into_iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf, db_opts.clone()))
            .collect();
        let db =
            DB::open_cf_descriptors_read_only(&db_opts, path, cfs, false).map_err(rocks_err)?;
        if db.cf_handle(META_CF).is_none() {
            return Err(StoreError::Corrupt {
                store: name,
                reason: format!("{} has no `{META_CF}` column family", path.display()),
            });
        }
        Ok(RocksEngine {
            name,
            limits,
            path: path.to_path_buf(),
            db: Arc::new(db),
            write_opts: WriteOptions::default(),
            wal_enabled: false,
            db_opts,
            _base_opts: base_opts,
            ingested: 0,
            bulk_loads: 0,
            compactions_off: false,
        })
    }

    /// Writes a RocksDB checkpoint of the database to the new directory `dir`: its SST
    /// files hard-linked where `dir` is on the same file system (copied elsewhere), the
    /// other files copied. The memtables are not flushed first: the checkpoint holds what
    /// the database holds on disk, which is what survives a crash (the last explicit flush,
    /// a commit's), plus the write-ahead log where it is enabled.
    pub fn checkpoint_to(&self, dir: &Path) -> Result<()> {
        let rocks_err = |source: rocksdb::Error| StoreError::Rocks {
            store: self.name.clone(),
            source: Box::new(source),
        };
        rocksdb::checkpoint::Checkpoint::new(&*self.db)
            .and_then(|c| c.create_checkpoint_with_log_size(dir, u64::MAX))
            .map_err(rocks_err)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rocks<T>(&self, r: std::result::Result<T, rocksdb::Error>) -> Result<T> {
        r.map_err(|source| StoreError::Rocks {
            store: self.name.clone(),
            source: Box::new(source),
        })
    }

    /// A write batch of `batch`, its buffer sized up front (a batch of a commit can hold
    /// hundreds of thousands of entries; growing it by doubling copied it over and over).
    fn batch_of<'a>(batch: impl ExactSizeIterator<Item = MutationRef<'a>> + Clone) -> WriteBatch {
        // Per entry: a tag, two varint lengths (at most 5 bytes each), key and value.
        let bytes: usize = batch
            .clone()
            .map(|m| 11 + m.key.len() + m.value.map_or(0, <[u8]>::len))
            .sum();
        let mut wb = WriteBatch::with_capacity_bytes(bytes + 64);
        for m in batch {
            match m.value {
                Some(v) => wb.put(m.key, v),
                None => wb.delete(m.key),
            }
        }
        wb
    }
}

fn scan_db<'a>(
    name: &str,
    db: &'a DB,
    snap: Option<&'a SnapshotWithThreadMode<'static, DB>>,
    from: &[u8],
    to: Option<&[u8]>,
) -> KvIter<'a> {
    if let Some(to) = to
        && from >= to
    {
        return Box::new(std::iter::empty());
    }
    let mut ro = ReadOptions::default();
    if let Some(to) = to {
        ro.set_iterate_upper_bound(to.to_vec());
    }
    let mode = IteratorMode::From(from, rocksdb::Direction::Forward);
    let store = name.to_string();
    let iter = match snap {
        Some(s) => s.iterator_opt(mode, ro),
        None => db.iterator_opt(mode, ro),
    };
    Box::new(iter.map(move |r| {
        r.map(|(k, v)| (k.into_vec(), v.into_vec()))
            .map_err(|source| StoreError::Rocks {
                store: store.clone(),
                source: Box::new(source),
            })
    }))
}

impl KeyValueStore for RocksEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.rocks(self.db.get(key))
    }

    fn get_with(&mut self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        let v = self.rocks(self.db.get_pinned(key))?;
        f(v.as_deref());
        Ok(())
    }

    fn get_all(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.db
            .multi_get(keys)
            .into_iter()
            .map(|r| self.rocks(r))
            .collect()
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()> {
        self.limits.check_batch(&self.name, &batch)?;
        let wb = Self::batch_of(batch.iter().map(MutationRef::from));
        self.rocks(self.db.write_opt(wb, &self.write_opts))
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        Ok(scan_db(&self.name, &self.db, None, from, to))
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        let db = Arc::clone(&self.db);
        let snap = db.snapshot();
        // SAFETY: the snapshot borrows the `DB` inside `db`. `RocksSnapshot` owns a clone of
        // that `Arc`, so the `DB` lives at least as long as the snapshot, and its field order
        // drops `snap` before `_db`. The `'static` never escapes: iterators borrow the
        // `RocksSnapshot`.
        #[allow(unsafe_code)]
        let snap: SnapshotWithThreadMode<'static, DB> = unsafe { std::mem::transmute(snap) };
        Ok(Box::new(RocksSnapshot {
            name: self.name.clone(),
            snap,
            _db: db,
        }))
    }

    fn flush(&mut self) -> Result<()> {
        // The end of a bulk load (a restore ends with a flush): compactions resume.
        self.bulk_loads = 0;
        self.set_auto_compactions(true)?;
        self.flush_cfs()
    }
}

impl RocksEngine {
    /// Turns RocksDB's automatic compactions on or off (nothing if they already are).
    fn set_auto_compactions(&mut self, on: bool) -> Result<()> {
        let off = !on;
        if self.compactions_off == off {
            return Ok(());
        }
        let value = if off { "true" } else { "false" };
        self.rocks(self.db.set_options(&[("disable_auto_compactions", value)]))?;
        self.compactions_off = off;
        Ok(())
    }

    /// Flushes the memtables of both column families (and the WAL if on) and waits.
    fn flush_cfs(&mut self) -> Result<()> {
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        let meta = self
            .db
            .cf_handle(META_CF)
            .expect("meta column family is created on open");
        let default = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .expect("default column family");
        self.rocks(self.db.flush_cfs_opt(&[default, meta], &fo))?;
        if self.wal_enabled {
            self.rocks(self.db.flush_wal(true))?;
        }
        Ok(())
    }
}

impl Engine for RocksEngine {
    fn write_logged_refs(&mut self, batch: &[MutationRef<'_>], changelog_end: u64) -> Result<()> {
        self.limits.check_refs(&self.name, batch)?;
        let mut wb = Self::batch_of(batch.iter().copied());
        let meta = self
            .db
            .cf_handle(META_CF)
            .expect("meta column family is created on open");
        wb.put_cf(meta, OFFSET_KEY, changelog_end.to_be_bytes());
        self.rocks(self.db.write_opt(wb, &self.write_opts))
    }

    fn write_logged(&mut self, batch: Vec<Mutation>, changelog_end: u64) -> Result<()> {
        let refs: Vec<MutationRef<'_>> = batch.iter().map(MutationRef::from).collect();
        self.write_logged_refs(&refs, changelog_end)
    }

    fn bulk_load(&mut self, entries: Vec<Mutation>, changelog_end: u64) -> Result<()> {
        let refs: Vec<MutationRef<'_>> = entries.iter().map(MutationRef::from).collect();
        self.bulk_load_refs(&refs, changelog_end)
    }

    fn bulk_load_refs(&mut self, entries: &[MutationRef<'_>], changelog_end: u64) -> Result<()> {
        self.limits.check_refs(&self.name, entries)?;
        if entries.is_empty() {
            return self.write_logged(Vec::new(), changelog_end);
        }
        debug_assert!(
            entries.windows(2).all(|w| w[0].key < w[1].key),
            "bulk_load needs sorted unique keys"
        );
        // Build the chunk as two non-overlapping SST files on two threads (the SST writer is
        // the slow part of a full restore), then ingest both at once.
        let mut sst_opts = self.db_opts.clone();
        sst_opts.set_compression_type(DBCompressionType::None);
        // Automatic compactions wait for the end of the load (the next flush outside a bulk
        // load) for the first chunks, so that rewriting the ingested files (compressed) does
        // not compete with the restore for the CPU; a longer load turns them back on rather
        // than pile up sorted runs.
        self.set_auto_compactions(self.bulk_loads >= DEFERRED_COMPACTION_LOADS)?;
        self.bulk_loads += 1;
        let (low, high) = entries.split_at(entries.len() / 2);
        let paths: Vec<PathBuf> = (0..2)
            .map(|i| {
                self.path
                    .join(format!("gregor-ingest-{}-{i}.sst", self.ingested))
            })
            .collect();
        self.ingested += 1;
        let started = std::time::Instant::now();
        let (a, b) = std::thread::scope(|s| {
            let b = s.spawn(|| write_sst(&sst_opts, &paths[1], high));
            (
                write_sst(&sst_opts, &paths[0], low),
                b.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        if let Err(e) = a.and(b) {
            paths.iter().for_each(|p| drop(std::fs::remove_file(p)));
            return self.rocks(Err(e));
        }
        let written = started.elapsed();
        let sst: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
        let mut io = IngestExternalFileOptions::default();
        io.set_move_files(true);
        let ingested = self.db.ingest_external_file_opts(&io, sst.clone());
        sst.iter().for_each(|p| drop(std::fs::remove_file(p)));
        self.rocks(ingested)?;
        let ingested = started.elapsed();
        // The ingested file is durable at once; flush the marker too so a crash now does not
        // leave data without its changelog end (which would force a full restore).
        self.write_logged(Vec::new(), changelog_end)?;
        self.flush_cfs()?;
        tracing::debug!(
            store = %self.name,
            records = entries.len(),
            "bulk load: SST files written in {:.3}s, ingested in {:.3}s, marker flushed in {:.3}s",
            written.as_secs_f64(),
            (ingested - written).as_secs_f64(),
            (started.elapsed() - ingested).as_secs_f64(),
        );
        Ok(())
    }

    fn changelog_end(&mut self) -> Result<Option<u64>> {
        let meta = self
            .db
            .cf_handle(META_CF)
            .expect("meta column family is created on open");
        match self.rocks(self.db.get_cf(meta, OFFSET_KEY))? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    store: self.name.clone(),
                    reason: format!("changelog end marker has {} bytes, expected 8", v.len()),
                })?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
        }
    }

    fn wipe(&mut self) -> Result<()> {
        let mut wb = WriteBatch::default();
        let default = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .expect("default column family");
        let meta = self
            .db
            .cf_handle(META_CF)
            .expect("meta column family is created on open");
        // Keys are non-empty, so [0x00, +inf) covers everything; delete_range needs an end:
        // a run of 0xFF one byte longer than the longest allowed key sorts after every key
        // (tests/store_conformance.rs wipes a 64 KiB key of 0xFF bytes).
        let ff_run =
            vec![0xFFu8; super::limits::DEFAULT_MAX_KEY_BYTES.max(self.limits.max_key_bytes) + 1];
        wb.delete_range_cf(default, [0u8].as_slice(), ff_run.as_slice());
        wb.delete_cf(meta, OFFSET_KEY);
        self.rocks(self.db.write_opt(wb, &self.write_opts))?;
        self.flush()
    }
}

/// Writes `entries` (sorted, unique keys) as an SST file at `path`; nothing is written for
/// an empty slice.
fn write_sst(
    opts: &Options,
    path: &Path,
    entries: &[MutationRef<'_>],
) -> std::result::Result<(), rocksdb::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut writer = SstFileWriter::create(opts);
    writer.open(path)?;
    for m in entries {
        match m.value {
            Some(v) => writer.put(m.key, v)?,
            None => writer.delete(m.key)?,
        }
    }
    writer.finish()
}

/// A RocksDB snapshot that owns a handle on its database.
struct RocksSnapshot {
    name: String,
    // Field order matters: `snap` must drop before `_db`.
    snap: SnapshotWithThreadMode<'static, DB>,
    _db: Arc<DB>,
}

impl KvSnapshot for RocksSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snap.get(key).map_err(|source| StoreError::Rocks {
            store: self.name.clone(),
            source: Box::new(source),
        })
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        Ok(scan_db(&self.name, &self._db, Some(&self.snap), from, to))
    }
}
