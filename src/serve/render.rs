//! Keys and values over HTTP, through the store's serdes (the table in `docs/http-api.md`):
//! a key in a URL (path or query), a key or value in JSON, a value as a request body, and
//! the opaque range cursor.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use crate::serde::{I64Serde, JsonSerde, Serde, SerdeName, StringSerde, U64Serde};

/// A key, value or cursor that does not fit its serde.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// Text from a client does not decode with the serde.
    #[error("{what} is not a valid `{serde}` {expected}: {reason}")]
    Malformed {
        /// What was being read ("key", "value", "prefix", ...).
        what: String,
        /// The serde.
        serde: SerdeName,
        /// What the serde expects there.
        expected: &'static str,
        /// Why not.
        reason: String,
    },
    /// Stored bytes do not decode with the store's serde (written by other means).
    #[error("stored {what} does not decode with serde `{serde}`: {reason}")]
    Stored {
        /// "key" or "value".
        what: &'static str,
        /// The serde.
        serde: SerdeName,
        /// Why not.
        reason: String,
    },
    /// The range cursor is not one this server gave out.
    #[error("cursor {0:?} is not a cursor this server returned")]
    Cursor(String),
}

fn malformed(what: &str, serde: SerdeName, expected: &'static str, reason: String) -> RenderError {
    RenderError::Malformed {
        what: what.to_string(),
        serde,
        expected,
        reason,
    }
}

/// What URL text a serde expects (for messages).
fn url_form(serde: SerdeName) -> &'static str {
    match serde {
        SerdeName::String => "string",
        SerdeName::Bytes | SerdeName::Postcard => "base64url text without padding",
        SerdeName::U64 | SerdeName::I64 => "decimal number",
        SerdeName::Json => "JSON text",
    }
}

/// Serialized key bytes from the (percent-decoded) text of a URL path segment or query
/// parameter; `what` names it in errors.
pub fn key_from_url(serde: SerdeName, text: &str, what: &str) -> Result<Vec<u8>, RenderError> {
    let bad = |reason: String| malformed(what, serde, url_form(serde), reason);
    match serde {
        SerdeName::String => Ok(text.as_bytes().to_vec()),
        SerdeName::Bytes | SerdeName::Postcard => URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| bad(format!("{text:?}: {e}"))),
        SerdeName::U64 => text
            .parse::<u64>()
            .map_err(|e| bad(format!("{text:?}: {e}")))
            .and_then(|n| U64Serde.encode(&n).map_err(|e| bad(e.message))),
        SerdeName::I64 => text
            .parse::<i64>()
            .map_err(|e| bad(format!("{text:?}: {e}")))
            .and_then(|n| I64Serde.encode(&n).map_err(|e| bad(e.message))),
        SerdeName::Json => serde_json::from_str::<Value>(text)
            .map_err(|e| bad(format!("{text:?}: {e}")))
            .and_then(|v| json_bytes(&v).map_err(bad)),
    }
}

fn json_bytes(v: &Value) -> Result<Vec<u8>, String> {
    JsonSerde::<Value>::new().encode(v).map_err(|e| e.message)
}

/// Serialized bytes as their JSON form; `what` is "key" or "value".
pub fn to_json(serde: SerdeName, bytes: &[u8], what: &'static str) -> Result<Value, RenderError> {
    let bad = |reason: String| RenderError::Stored {
        what,
        serde,
        reason,
    };
    Ok(match serde {
        SerdeName::String => Value::String(StringSerde.decode(bytes).map_err(|e| bad(e.message))?),
        SerdeName::Bytes | SerdeName::Postcard => Value::String(STANDARD.encode(bytes)),
        SerdeName::U64 => U64Serde.decode(bytes).map_err(|e| bad(e.message))?.into(),
        SerdeName::I64 => I64Serde.decode(bytes).map_err(|e| bad(e.message))?.into(),
        SerdeName::Json => JsonSerde::<Value>::new()
            .decode(bytes)
            .map_err(|e| bad(e.message))?,
    })
}

/// Serialized bytes from a key's or value's JSON form (a batch op); `what` names it.
pub fn from_json(serde: SerdeName, v: &Value, what: &str) -> Result<Vec<u8>, RenderError> {
    let expected = match serde {
        SerdeName::String => "JSON string",
        SerdeName::Bytes | SerdeName::Postcard => "JSON string of standard base64",
        SerdeName::U64 | SerdeName::I64 => "JSON integer",
        SerdeName::Json => "JSON value",
    };
    let bad = |reason: String| malformed(what, serde, expected, reason);
    match (serde, v) {
        (SerdeName::String, Value::String(s)) => Ok(s.as_bytes().to_vec()),
        (SerdeName::Bytes | SerdeName::Postcard, Value::String(s)) => {
            STANDARD.decode(s).map_err(|e| bad(format!("{s:?}: {e}")))
        }
        (SerdeName::U64, Value::Number(n)) => match n.as_u64() {
            Some(n) => U64Serde.encode(&n).map_err(|e| bad(e.message)),
            None => Err(bad(format!("{n} is not an unsigned 64-bit integer"))),
        },
        (SerdeName::I64, Value::Number(n)) => match n.as_i64() {
            Some(n) => I64Serde.encode(&n).map_err(|e| bad(e.message)),
            None => Err(bad(format!("{n} is not a signed 64-bit integer"))),
        },
        (SerdeName::Json, v) => json_bytes(v).map_err(bad),
        (_, other) => Err(bad(format!("found {other}"))),
    }
}

/// A value's serialized bytes from a `PUT` body: raw bytes for `bytes` and `postcard`,
/// UTF-8 for `string`, JSON text for `json`, a decimal number for `u64` / `i64`.
pub fn value_from_body(serde: SerdeName, body: &[u8]) -> Result<Vec<u8>, RenderError> {
    let bad = |expected, reason: String| malformed("value (request body)", serde, expected, reason);
    match serde {
        SerdeName::Bytes | SerdeName::Postcard => Ok(body.to_vec()),
        SerdeName::String => std::str::from_utf8(body)
            .map(|s| s.as_bytes().to_vec())
            .map_err(|e| bad("UTF-8 text", e.to_string())),
        SerdeName::Json => serde_json::from_slice::<Value>(body)
            .map_err(|e| bad("JSON text", e.to_string()))
            .and_then(|v| json_bytes(&v).map_err(|e| bad("JSON text", e))),
        SerdeName::U64 | SerdeName::I64 => {
            let text =
                std::str::from_utf8(body).map_err(|e| bad("decimal number", e.to_string()))?;
            key_from_url(serde, text.trim(), "value (request body)")
        }
    }
}

/// The cursor after entry (`task`, `key`) of a merged range: the next page starts after it.
pub fn encode_cursor(task: u32, key: &[u8]) -> String {
    let mut raw = task.to_be_bytes().to_vec();
    raw.extend_from_slice(key);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The (`task`, `key`) a cursor from [`encode_cursor`] names.
pub fn decode_cursor(cursor: &str) -> Result<(u32, Vec<u8>), RenderError> {
    let raw = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| RenderError::Cursor(cursor.to_string()))?;
    if raw.len() < 5 {
        return Err(RenderError::Cursor(cursor.to_string()));
    }
    let (task, key) = raw.split_at(4);
    let task = u32::from_be_bytes(
        task.try_into()
            .map_err(|_| RenderError::Cursor(cursor.into()))?,
    );
    Ok((task, key.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_serde_round_trips_through_url_and_json() {
        for (serde, url, js) in [
            (SerdeName::String, "a/b é", json!("a/b é")),
            (SerdeName::Bytes, "AP8", json!("AP8=")),
            (SerdeName::Postcard, "AQI", json!("AQI=")),
            (SerdeName::U64, "42", json!(42)),
            (SerdeName::I64, "-7", json!(-7)),
            (SerdeName::Json, r#"{"a": [1, 2]}"#, json!({"a": [1, 2]})),
        ] {
            let bytes = key_from_url(serde, url, "key").unwrap();
            assert_eq!(to_json(serde, &bytes, "key").unwrap(), js, "{serde}");
            assert_eq!(from_json(serde, &js, "key").unwrap(), bytes, "{serde}");
        }
    }

    #[test]
    fn malformed_input_names_the_serde() {
        for (serde, url) in [
            (SerdeName::U64, "-1"),
            (SerdeName::I64, "x"),
            (SerdeName::Bytes, "not base64!"),
            (SerdeName::Json, "{"),
        ] {
            let e = key_from_url(serde, url, "key").unwrap_err().to_string();
            assert!(e.contains(&format!("`{serde}`")), "{e}");
        }
        let e = from_json(SerdeName::U64, &json!("1"), "key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`u64`") && e.contains("JSON integer"), "{e}");
        let e = value_from_body(SerdeName::String, &[0xff])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`string`"), "{e}");
        assert_eq!(
            value_from_body(SerdeName::U64, b"5").unwrap(),
            5u64.to_be_bytes()
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(3, b"key");
        assert_eq!(decode_cursor(&c).unwrap(), (3, b"key".to_vec()));
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor("AAA").is_err());
    }
}
