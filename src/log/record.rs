//! Record codec: one self-checking frame per record (pure, no I/O).
//!
//! ```text
//! frame   = payload_len: u32 LE | crc32c(payload): u32 LE | payload
//! payload = offset: u64 LE | timestamp: i64 LE (ms)
//!         | key_len: u32 LE | key
//!         | value_len: i32 LE (-1 = tombstone) | value
//! ```
//! `payload_len` must equal `24 + key_len + max(value_len, 0)` exactly and lie in
//! `[MIN_PAYLOAD_LEN, MAX_PAYLOAD_LEN]`; a decoder checks that before it trusts or allocates
//! anything a length field claims. A record's offset is below `u64::MAX` (an offset of
//! `u64::MAX` would leave no room for the next one: such a frame is invalid).
//!
//! # Sync markers
//! A frame with `value_len == -2` ([`SYNC_MARKER_VALUE_LEN`]) is not a record but a *sync
//! marker* (see [`SyncMarker`] and the module doc of [`crate::log`]):
//! ```text
//! payload = end_offset: u64 LE | synced_len: i64 LE | key_len = 0: u32 LE | -2: i32 LE
//! ```
//! It is [`MIN_FRAME_LEN`] (32) bytes. Readers skip it; the recovery scan uses it.

/// Bytes before the payload: length + CRC.
pub const FRAME_HEADER_LEN: usize = 8;
/// Payload of a record with an empty key and a tombstone.
pub const MIN_PAYLOAD_LEN: usize = 24;
/// Smallest possible frame.
pub const MIN_FRAME_LEN: usize = FRAME_HEADER_LEN + MIN_PAYLOAD_LEN;
/// Largest accepted payload (64 MiB). Appends above it fail with `RecordTooLarge`; a frame
/// claiming more is invalid without reading (or allocating) it.
pub const MAX_PAYLOAD_LEN: usize = 64 << 20;
/// `value_len` of a sync-marker frame.
pub const SYNC_MARKER_VALUE_LEN: i32 = -2;
/// Length of a sync-marker frame.
pub const SYNC_MARKER_FRAME_LEN: usize = MIN_FRAME_LEN;

/// A sync marker: a control frame (not a record) saying that the first `synced_len` bytes of
/// the segment file holding it were covered by a completed fsync before the marker was
/// written, and that every record before the marker has an offset below `end_offset` (the
/// next record's offset is at least `end_offset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncMarker {
    /// The offset the next record gets (at least).
    pub end_offset: u64,
    /// Bytes at the start of the segment proven durable.
    pub synced_len: u64,
}

/// What a valid frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A record (decoded into the caller's slot).
    Record,
    /// A sync marker.
    SyncMarker(SyncMarker),
}

/// One log record. `value == None` is a tombstone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Position in the partition; assigned by `append`, never changed afterwards.
    pub offset: u64,
    /// Milliseconds since the epoch, as given to `append`.
    pub timestamp: i64,
    /// Key bytes (may be empty).
    pub key: Vec<u8>,
    /// Value bytes, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Payload length of a record with these sizes (may exceed `MAX_PAYLOAD_LEN`).
pub fn payload_len(key_len: usize, value_len: Option<usize>) -> usize {
    MIN_PAYLOAD_LEN
        .saturating_add(key_len)
        .saturating_add(value_len.unwrap_or(0))
}

/// Appends the frame of one record to `buf` and returns the frame length. The caller checks
/// `payload_len(..) <= MAX_PAYLOAD_LEN` first.
pub fn encode_into(
    buf: &mut Vec<u8>,
    offset: u64,
    timestamp: i64,
    key: &[u8],
    value: Option<&[u8]>,
) -> usize {
    let plen = payload_len(key.len(), value.map(<[u8]>::len));
    assert!(
        plen <= MAX_PAYLOAD_LEN,
        "record payload of {plen} bytes too large"
    );
    let start = buf.len();
    buf.reserve(FRAME_HEADER_LEN + plen);
    buf.extend_from_slice(&(plen as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&timestamp.to_le_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    match value {
        Some(v) => {
            buf.extend_from_slice(&(v.len() as i32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    let crc = crc32c::crc32c(&buf[start + FRAME_HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    FRAME_HEADER_LEN + plen
}

/// Appends a sync-marker frame to `buf`; returns its length ([`SYNC_MARKER_FRAME_LEN`]).
pub fn encode_sync_marker(buf: &mut Vec<u8>, marker: SyncMarker) -> usize {
    let synced_len = i64::try_from(marker.synced_len).unwrap_or(i64::MAX);
    let start = buf.len();
    buf.extend_from_slice(&(MIN_PAYLOAD_LEN as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&marker.end_offset.to_le_bytes());
    buf.extend_from_slice(&synced_len.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&SYNC_MARKER_VALUE_LEN.to_le_bytes());
    let crc = crc32c::crc32c(&buf[start + FRAME_HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    SYNC_MARKER_FRAME_LEN
}

/// Encodes one record into a fresh buffer.
pub fn encode(record: &Record) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_into(
        &mut buf,
        record.offset,
        record.timestamp,
        &record.key,
        record.value.as_deref(),
    );
    buf
}

/// Checks a frame header: returns the payload length if it is within bounds and the whole
/// frame fits in `available` bytes (the rest of the file). Nothing is allocated.
pub fn check_header(header: &[u8; FRAME_HEADER_LEN], available: u64) -> Result<usize, HeaderError> {
    let plen = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if plen < MIN_PAYLOAD_LEN {
        return Err(HeaderError::Invalid(format!(
            "payload length {plen} is below the minimum of {MIN_PAYLOAD_LEN}"
        )));
    }
    if plen > MAX_PAYLOAD_LEN {
        return Err(HeaderError::Invalid(format!(
            "payload length {plen} exceeds the maximum of {MAX_PAYLOAD_LEN}"
        )));
    }
    if (FRAME_HEADER_LEN + plen) as u64 > available {
        return Err(HeaderError::PastEnd(format!(
            "frame of {} bytes extends past the end of the file ({available} bytes left)",
            FRAME_HEADER_LEN + plen
        )));
    }
    Ok(plen)
}

/// Why a frame header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Length out of bounds.
    Invalid(String),
    /// The frame would end beyond the end of the file (a torn write, or a damaged length).
    PastEnd(String),
}

impl HeaderError {
    /// The human-readable reason.
    pub fn reason(&self) -> &str {
        match self {
            HeaderError::Invalid(r) | HeaderError::PastEnd(r) => r,
        }
    }
}

/// Verifies the CRC of `payload` against the frame header and decodes it into `slot`,
/// reusing `slot`'s buffers. `payload.len()` is the header's payload length. A sync marker
/// is an error here (use [`decode_frame_payload`] where markers may occur).
pub fn decode_payload(crc: u32, payload: &[u8], slot: &mut Record) -> Result<(), String> {
    match decode_frame_payload(crc, payload, slot)? {
        FrameKind::Record => Ok(()),
        FrameKind::SyncMarker(_) => Err("a sync marker, not a record".into()),
    }
}

/// Like [`decode_payload`], but a valid sync marker is returned instead of rejected (and
/// `slot` is left unchanged for it).
pub fn decode_frame_payload(
    crc: u32,
    payload: &[u8],
    slot: &mut Record,
) -> Result<FrameKind, String> {
    let actual = crc32c::crc32c(payload);
    if actual != crc {
        return Err(format!(
            "CRC32C mismatch: stored {crc:#010x}, computed {actual:#010x}"
        ));
    }
    if let Some(marker) = parse_sync_marker(payload)? {
        return Ok(FrameKind::SyncMarker(marker));
    }
    let (offset, timestamp, key, value) = parse_payload(payload)?;
    slot.offset = offset;
    slot.timestamp = timestamp;
    slot.key.clear();
    slot.key.extend_from_slice(key);
    match (value, &mut slot.value) {
        (Some(v), Some(existing)) => {
            existing.clear();
            existing.extend_from_slice(v);
        }
        (Some(v), none) => *none = Some(v.to_vec()),
        (None, v) => *v = None,
    }
    Ok(FrameKind::Record)
}

/// The `N` bytes of `b` starting at `at`, as an array. Every caller checks the length
/// first; like any slice index, a range past the end would panic, never return garbage.
pub(crate) fn array_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// `Some` if `p` is a well-formed sync-marker payload, `None` if it is not a marker at all,
/// an error if it claims to be one but is malformed.
fn parse_sync_marker(p: &[u8]) -> Result<Option<SyncMarker>, String> {
    if p.len() < MIN_PAYLOAD_LEN {
        return Ok(None);
    }
    let key_len = u32::from_le_bytes(array_at(p, 16)) as usize;
    if key_len != 0 || p.len() != MIN_PAYLOAD_LEN {
        return Ok(None);
    }
    let value_len = i32::from_le_bytes(array_at(p, 20));
    if value_len != SYNC_MARKER_VALUE_LEN {
        return Ok(None);
    }
    let end_offset = u64::from_le_bytes(array_at(p, 0));
    let synced_len = i64::from_le_bytes(array_at(p, 8));
    let synced_len = u64::try_from(synced_len)
        .map_err(|_| format!("sync marker with negative synced length {synced_len}"))?;
    Ok(Some(SyncMarker {
        end_offset,
        synced_len,
    }))
}

/// A parsed payload: offset, timestamp, key, value (`None` = tombstone).
pub type PayloadParts<'a> = (u64, i64, &'a [u8], Option<&'a [u8]>);

/// Structural parse of a payload (no CRC check): offset, timestamp, key, value.
pub fn parse_payload(p: &[u8]) -> Result<PayloadParts<'_>, String> {
    if p.len() < MIN_PAYLOAD_LEN {
        return Err(format!("payload of {} bytes is too short", p.len()));
    }
    let offset = u64::from_le_bytes(array_at(p, 0));
    if offset == u64::MAX {
        return Err(format!(
            "offset {offset} leaves no room for a next offset (the largest valid offset is {})",
            u64::MAX - 1
        ));
    }
    let timestamp = i64::from_le_bytes(array_at(p, 8));
    let key_len = u32::from_le_bytes(array_at(p, 16)) as usize;
    if key_len > p.len() - MIN_PAYLOAD_LEN {
        return Err(format!(
            "key length {key_len} does not fit in a payload of {} bytes",
            p.len()
        ));
    }
    let key = &p[20..20 + key_len];
    let vpos = 20 + key_len;
    let value_len = i32::from_le_bytes(array_at(p, vpos));
    let rest = &p[vpos + 4..];
    let value = match value_len {
        -1 => None,
        n if n >= 0 => Some(n as usize),
        n => return Err(format!("invalid value length {n}")),
    };
    if value.unwrap_or(0) != rest.len() {
        return Err(format!(
            "value length {value_len} does not match the {} payload bytes left",
            rest.len()
        ));
    }
    Ok((offset, timestamp, key, value.map(|_| rest)))
}

/// Decodes one complete frame (record or sync marker) at the start of `bytes`; returns what
/// it is (a record is decoded into `slot`) and the frame length.
pub fn decode_frame(bytes: &[u8], slot: &mut Record) -> Result<(FrameKind, usize), String> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err("incomplete frame header".into());
    }
    let header: [u8; FRAME_HEADER_LEN] = array_at(bytes, 0);
    let plen = check_header(&header, bytes.len() as u64).map_err(|e| e.reason().to_string())?;
    let crc = u32::from_le_bytes(array_at(&header, 4));
    let kind = decode_frame_payload(crc, &bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + plen], slot)?;
    Ok((kind, FRAME_HEADER_LEN + plen))
}

/// Decodes one complete record frame at the start of `bytes`; returns the record and frame
/// length. A sync marker is an error here (see [`decode_frame`]).
pub fn decode(bytes: &[u8]) -> Result<(Record, usize), String> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err("incomplete frame header".into());
    }
    let header: [u8; FRAME_HEADER_LEN] = array_at(bytes, 0);
    let plen = check_header(&header, bytes.len() as u64).map_err(|e| e.reason().to_string())?;
    let crc = u32::from_le_bytes(array_at(&header, 4));
    let mut rec = Record::default();
    decode_payload(
        crc,
        &bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + plen],
        &mut rec,
    )?;
    Ok((rec, FRAME_HEADER_LEN + plen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            0..u64::MAX,
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
        )
            .prop_map(|(offset, timestamp, key, value)| Record {
                offset,
                timestamp,
                key,
                value,
            })
    }

    proptest! {
        #[test]
        fn round_trip(rec in arb_record()) {
            let bytes = encode(&rec);
            prop_assert_eq!(bytes.len(), FRAME_HEADER_LEN + payload_len(rec.key.len(), rec.value.as_ref().map(Vec::len)));
            let (back, n) = decode(&bytes).unwrap();
            prop_assert_eq!(n, bytes.len());
            prop_assert_eq!(back, rec);
        }

        #[test]
        fn decode_into_reused_slot(a in arb_record(), b in arb_record()) {
            let mut slot = a.clone();
            let bytes = encode(&b);
            let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            decode_payload(crc, &bytes[8..], &mut slot).unwrap();
            prop_assert_eq!(slot, b);
        }

        #[test]
        fn any_single_bit_flip_is_detected(rec in arb_record(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encode(&rec);
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(decode(&bytes).is_err() || decode(&bytes).unwrap().1 != bytes.len());
        }

        #[test]
        fn truncated_frames_never_decode(rec in arb_record(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&rec);
            let n = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn huge_length_is_rejected_without_allocating() {
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            check_header(&header, u64::MAX),
            Err(HeaderError::Invalid(_))
        ));
        header[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            check_header(&header, 500),
            Err(HeaderError::PastEnd(_))
        ));
        assert_eq!(check_header(&header, 1008), Ok(1000));
    }

    #[test]
    fn offset_u64_max_is_rejected_by_every_decoder() {
        let rec = Record {
            offset: u64::MAX,
            timestamp: 0,
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
        };
        let bytes = encode(&rec);
        let e = decode(&bytes).unwrap_err();
        assert!(e.contains("leaves no room"), "{e}");
        assert!(decode_frame(&bytes, &mut Record::default()).is_err());
        let ok = Record {
            offset: u64::MAX - 1,
            ..rec
        };
        assert_eq!(decode(&encode(&ok)).unwrap().0, ok);
    }

    #[test]
    fn sync_marker_round_trip_and_is_not_a_record() {
        let m = SyncMarker {
            end_offset: 77,
            synced_len: 4096,
        };
        let mut buf = Vec::new();
        assert_eq!(encode_sync_marker(&mut buf, m), SYNC_MARKER_FRAME_LEN);
        assert_eq!(buf.len(), SYNC_MARKER_FRAME_LEN);
        let mut slot = Record::default();
        assert_eq!(
            decode_frame(&buf, &mut slot).unwrap(),
            (FrameKind::SyncMarker(m), SYNC_MARKER_FRAME_LEN)
        );
        assert!(decode(&buf).is_err());
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert_ne!(
                decode_frame(&b, &mut slot).ok(),
                Some((FrameKind::SyncMarker(m), SYNC_MARKER_FRAME_LEN)),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn tombstone_and_empty_value_differ() {
        let t = Record {
            offset: 1,
            timestamp: 2,
            key: b"k".to_vec(),
            value: None,
        };
        let e = Record {
            value: Some(vec![]),
            ..t.clone()
        };
        assert_ne!(encode(&t), encode(&e));
        assert_eq!(decode(&encode(&t)).unwrap().0.value, None);
        assert_eq!(decode(&encode(&e)).unwrap().0.value, Some(vec![]));
    }
}
