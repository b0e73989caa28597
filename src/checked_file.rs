//! Small files that must never be half-written or silently corrupt (store manifests,
//! `OFFSET` files, checkpoints): written atomically with [`crate::fsutil::write_atomic`] and
//! framed as a header line `gregor-checked v1 <crc32c hex> <length>` followed by the payload,
//! so a torn or bit-flipped file is detected on read instead of being trusted.

use std::io;
use std::path::Path;

const MAGIC: &str = "gregor-checked v1";

/// Why a checked file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckedFileError {
    /// The OS refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The header or checksum does not match the payload.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What did not match.
        reason: String,
    },
}

/// The bytes of a checked file holding `payload`: a header line with the checksum and the
/// length, then the payload ([`decode`] reverses it).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "{MAGIC} {:08x} {}\n",
        crc32c::crc32c(payload),
        payload.len()
    )
    .into_bytes();
    bytes.extend_from_slice(payload);
    bytes
}

/// Atomically writes `payload` to `path` with a checksum header.
pub fn write(path: &Path, payload: &[u8]) -> Result<(), CheckedFileError> {
    crate::fsutil::write_atomic(path, &encode(payload)).map_err(|source| CheckedFileError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a checked file: `Ok(None)` if it does not exist, an error if it is corrupt.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, CheckedFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckedFileError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| CheckedFileError::Corrupt {
            path: path.display().to_string(),
            reason,
        })
}

/// Checks a checked file's bytes and returns its payload.
pub fn decode(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not UTF-8")?;
    let rest = header
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("unknown header {header:?}"))?;
    let mut parts = rest.split_whitespace();
    let (Some(crc), Some(len), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("malformed header {header:?}"));
    };
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum field {crc:?}"))?;
    let len: usize = len
        .parse()
        .map_err(|_| format!("bad length field {len:?}"))?;
    let payload = &bytes[nl + 1..];
    if payload.len() != len {
        return Err(format!(
            "payload has {} bytes, header says {len}",
            payload.len()
        ));
    }
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_every_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("OFFSET");
        assert!(read(&p).unwrap().is_none());
        write(&p, b"12345").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"12345");
        let good = std::fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
        for cut in 0..good.len() {
            assert!(
                decode(&good[..cut]).is_err(),
                "truncation to {cut} bytes went unnoticed"
            );
        }
    }
}
