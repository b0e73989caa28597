//! Writes the starting inputs of the fuzz targets into `<dir>/<target>/`: valid segments
//! (records, a tombstone, a sync marker), a torn one, and valid checked files holding a
//! checkpoint and an offset. Usage: `make_seeds DIR`.

use std::path::PathBuf;

use gregor_fuzz::checked_file;
use gregor_fuzz::checkpoint::Checkpoint;
use gregor_fuzz::log::record::encode_into;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: make_seeds DIR"));
    let seg = dir.join("segment_reader");
    let small = dir.join("small_files");
    std::fs::create_dir_all(&seg).unwrap();
    std::fs::create_dir_all(&small).unwrap();
    let mut bytes = Vec::new();
    for i in 0..4u64 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let value = (i != 2).then_some(value.as_bytes());
        encode_into(
            &mut bytes,
            i,
            1_700_000_000_000 + i as i64,
            key.as_bytes(),
            value,
        );
    }
    std::fs::write(seg.join("records"), &bytes).unwrap();
    std::fs::write(seg.join("torn"), &bytes[..bytes.len() - 3]).unwrap();
    let mut cp = Checkpoint::default();
    cp.inputs.entry("in".into()).or_default().insert(0, 42);
    cp.changelogs.insert("counts".into(), 17);
    cp.outputs.entry("out".into()).or_default().insert(1, 9);
    std::fs::write(
        small.join("checkpoint"),
        checked_file::encode(&cp.to_bytes()),
    )
    .unwrap();
    std::fs::write(small.join("offset"), checked_file::encode(b"12345")).unwrap();
}
