//! The crash image of one directory after a simulated power loss, shared by the power-loss
//! tests: what the last fsyncs made durable, plus an arbitrary subset of the rest.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use rand::Rng;
use rand::rngs::StdRng;

const PAGE: usize = 4096;

/// What power loss took from a directory's files.
#[derive(Debug, Default, Clone, Copy)]
pub struct Loss {
    /// A file that held bytes is missing from the image.
    pub dropped: bool,
    /// The most bytes of any one file that the image lost, zeroed or changed.
    pub max_changed: usize,
}

/// Writes the crash image of the files of `dir` into `out`. `durable(name)` is what the
/// file's last fsync made durable; `entries` the directory's entries at its last fsync
/// (empty if it never was). The image keeps the durable bytes exactly where they were not
/// written since (a page overwritten since the fsync, as the zeros a segment preallocates
/// are, holds the old or the new bytes); past them each unsynced 4 KiB page either reached
/// the disk or reads as zeros, the length lands anywhere
/// between the durable and the current one, and entries created or removed since the
/// directory's last fsync may or may not be there.
pub fn dir_image(
    dir: &Path,
    out: &Path,
    durable: &dyn Fn(&str) -> Option<Vec<u8>>,
    entries: &BTreeSet<String>,
    rng: &mut StdRng,
) -> Loss {
    let mut loss = Loss::default();
    let now: BTreeSet<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for n in now.union(entries) {
        let path = dir.join(n);
        let present = now.contains(n);
        let exists = if present && entries.contains(n) {
            true
        } else {
            // Created or removed since the directory's last fsync: either way.
            rng.gen_bool(0.5)
        };
        if !exists {
            loss.dropped |= present
                && !fs::read(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .is_empty();
            continue;
        }
        let old = durable(n).unwrap_or_default();
        let cur = if present {
            fs::read(&path).unwrap()
        } else {
            old.clone()
        };
        let lo = old.len().min(cur.len());
        let hi = old.len().max(cur.len());
        let len = if hi > lo { rng.gen_range(lo..=hi) } else { hi };
        let mut img = vec![0u8; len];
        for page in 0..len.div_ceil(PAGE) {
            // Past the fsynced bytes a page reached the disk (true) or was lost (zeros).
            let reached = rng.gen_bool(0.5);
            let start = page * PAGE;
            for (i, byte) in img
                .iter_mut()
                .enumerate()
                .take((start + PAGE).min(len))
                .skip(start)
            {
                *byte = match (old.get(i), cur.get(i)) {
                    // Overwritten since the fsync (the zeros a segment preallocates ahead of
                    // its appends): the page holds the old or the new bytes.
                    (Some(&o), Some(&c)) if o != c => {
                        if reached {
                            c
                        } else {
                            o
                        }
                    }
                    // Bytes an fsync covered, unchanged since, are on the disk exactly.
                    (Some(&o), _) => o,
                    (None, c) if reached => c.copied().unwrap_or(0),
                    (None, _) => 0,
                };
            }
        }
        let changed =
            img.iter().zip(&cur).filter(|(a, b)| a != b).count() + img.len().abs_diff(cur.len());
        loss.max_changed = loss.max_changed.max(changed);
        fs::write(out.join(n), img).unwrap();
    }
    loss
}
