//! The in-memory engine: an ordered persistent map (`imbl::OrdMap`) whose snapshots are
//! O(1) copy-on-write views sharing structure with the live map.

use imbl::OrdMap;
use std::ops::Bound;

use super::{Engine, Entry, KeyValueStore, KvIter, KvSnapshot, Limits, Mutation, Result};

type Map = OrdMap<Vec<u8>, Vec<u8>>;

/// An in-memory engine. It keeps nothing across restarts: a store on it is rebuilt from its
/// changelog every time its task starts.
pub struct MemoryEngine {
    name: String,
    limits: Limits,
    map: Map,
    changelog_end: Option<u64>,
}

impl MemoryEngine {
    /// An empty engine for store `name`.
    pub fn new(name: impl Into<String>, limits: Limits) -> Self {
        MemoryEngine {
            name: name.into(),
            limits,
            map: Map::new(),
            changelog_end: None,
        }
    }

    fn apply(&mut self, batch: Vec<Mutation>) {
        for m in batch {
            match m.value {
                Some(v) => {
                    self.map.insert(m.key, v);
                }
                None => {
                    self.map.remove(&m.key);
                }
            }
        }
    }
}

fn scan_map<'a>(map: &'a Map, from: &[u8], to: Option<&[u8]>) -> KvIter<'a> {
    if let Some(to) = to
        && from >= to
    {
        return Box::new(std::iter::empty());
    }
    let upper = match to {
        Some(t) => Bound::Excluded(t.to_vec()),
        None => Bound::Unbounded,
    };
    let range = map.range((Bound::Included(from.to_vec()), upper));
    Box::new(range.map(|(k, v)| Ok::<Entry, _>((k.clone(), v.clone()))))
}

impl KeyValueStore for MemoryEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }

    fn get_with(&mut self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        f(self.map.get(key).map(Vec::as_slice));
        Ok(())
    }

    fn write_batch(&mut self, batch: Vec<Mutation>) -> Result<()> {
        self.limits.check_batch(&self.name, &batch)?;
        self.apply(batch);
        Ok(())
    }

    fn scan(&mut self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        Ok(scan_map(&self.map, from, to))
    }

    fn snapshot(&mut self) -> Result<Box<dyn KvSnapshot>> {
        Ok(Box::new(MemorySnapshot(self.map.clone())))
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

impl Engine for MemoryEngine {
    fn write_logged(&mut self, batch: Vec<Mutation>, changelog_end: u64) -> Result<()> {
        self.limits.check_batch(&self.name, &batch)?;
        self.apply(batch);
        self.changelog_end = Some(changelog_end);
        Ok(())
    }

    fn changelog_end(&mut self) -> Result<Option<u64>> {
        Ok(self.changelog_end)
    }

    fn wipe(&mut self) -> Result<()> {
        self.map = Map::new();
        self.changelog_end = None;
        Ok(())
    }

    fn is_empty(&mut self) -> Result<bool> {
        Ok(self.map.is_empty())
    }
}

/// A snapshot of a [`MemoryEngine`]: a structurally shared copy of the map.
struct MemorySnapshot(Map);

impl KvSnapshot for MemorySnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>) -> Result<KvIter<'_>> {
        Ok(scan_map(&self.0, from, to))
    }
}
