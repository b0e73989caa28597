//! Feeds arbitrary bytes to the decoders of gregor's small files: the checked-file framing
//! (checkpoint, `OFFSET`, `COMMITTED`, store manifests, topic roles), then what each holds
//! (a checkpoint's JSON, an offset's decimal number). Must never panic; whatever decodes
//! must encode back to bytes that decode to the same value.

use gregor_fuzz::checked_file;
use gregor_fuzz::checkpoint::Checkpoint;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(payload) = checked_file::decode(data) else {
            return;
        };
        assert_eq!(
            checked_file::decode(&checked_file::encode(&payload)).as_deref(),
            Ok(&payload[..]),
            "a decoded payload encodes back"
        );
        if let Ok(cp) = Checkpoint::from_bytes(&payload) {
            let again =
                Checkpoint::from_bytes(&cp.to_bytes()).expect("an encoded checkpoint decodes");
            assert_eq!(again, cp);
        }
        if let Some(n) = std::str::from_utf8(&payload)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            assert_eq!(n.to_string().parse::<u64>(), Ok(n));
        }
    });
}
