//! Feeds arbitrary bytes as a segment file to the recovery scan and the strict reader.
//! Must never panic; `-malloc_limit_mb` catches allocations driven by length fields (the
//! reader allocates at most 1 MiB chunks plus one frame bounded by `MAX_PAYLOAD_LEN` and by
//! the input size).
#![no_main]

use gregor::log::segment::{read_all_bytes, scan_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(scan) = scan_bytes(data) {
        assert!(scan.valid_len <= data.len() as u64);
        match &scan.torn {
            Some(t) => {
                assert_eq!(t.position, scan.valid_len);
                assert_eq!(t.bytes, data.len() as u64 - scan.valid_len);
            }
            None => assert_eq!(scan.valid_len, data.len() as u64),
        }
        // The valid prefix reads back cleanly with the same records.
        let records = read_all_bytes(&data[..scan.valid_len as usize], 0)
            .expect("the prefix recovery kept is valid");
        assert_eq!(records.len() as u64, scan.records);
        assert_eq!(records.last().map(|r| r.offset), scan.last_offset);
    }
    let _ = read_all_bytes(data, 0);
});
