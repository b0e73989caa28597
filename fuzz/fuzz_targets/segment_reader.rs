//! Feeds arbitrary bytes as a segment file to the recovery scan and the strict reader.
//! Must never panic (AFL reports a panic as a crash); allocations are bounded by the input
//! size and `MAX_PAYLOAD_LEN` (the reader allocates at most 1 MiB chunks plus one frame).
//! The recovered prefix must read back cleanly with exactly the records the scan counted;
//! what follows it is a torn tail or zeros (preallocated space), to the end of the input.

use gregor_fuzz::log::segment::{read_all_bytes, scan_bytes};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(scan) = scan_bytes(data) {
            assert!(scan.valid_len <= data.len() as u64);
            match &scan.torn {
                Some(t) => {
                    assert_eq!(t.position, scan.valid_len);
                    assert_eq!(t.bytes, data.len() as u64 - scan.valid_len);
                    assert_eq!(scan.zero_tail, 0);
                }
                None => {
                    // The end, or zeros (preallocated space) from the end of the frames on.
                    assert_eq!(scan.valid_len + scan.zero_tail, data.len() as u64);
                    assert!(data[scan.valid_len as usize..].iter().all(|&b| b == 0));
                }
            }
            let records = read_all_bytes(&data[..scan.valid_len as usize], 0)
                .expect("the prefix recovery kept is valid");
            assert_eq!(records.len() as u64, scan.records);
            assert_eq!(records.last().map(|r| r.offset), scan.last_offset);
        }
        let _ = read_all_bytes(data, 0);
    });
}
