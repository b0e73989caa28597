//! Serdes: how typed keys and values become bytes, named in config as `key.serde` and
//! `value.serde`.
//!
//! | name       | Rust types                          | encoding                               |
//! |------------|-------------------------------------|----------------------------------------|
//! | `bytes`    | `Vec<u8>`                           | as is                                  |
//! | `string`   | `String`                            | UTF-8, checked on decode               |
//! | `u64`      | `u64`                               | 8 bytes big-endian (orders numerically) |
//! | `i64`      | `i64`                               | 8 bytes big-endian, sign bit flipped   |
//! | `json`     | any `Serialize + DeserializeOwned`  | `serde_json`                           |
//! | `postcard` | any `Serialize + DeserializeOwned`  | `postcard`                             |
//!
//! `u64` and `i64` keys range in numeric order because their encodings sort like the numbers.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A serde's config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerdeName {
    /// Raw bytes.
    Bytes,
    /// UTF-8 strings.
    String,
    /// Order-preserving big-endian `u64`.
    U64,
    /// Order-preserving big-endian `i64`.
    I64,
    /// JSON via `serde_json`.
    Json,
    /// `postcard`.
    Postcard,
}

impl SerdeName {
    /// Every serde, in documentation order.
    pub const ALL: [SerdeName; 6] = [
        SerdeName::Bytes,
        SerdeName::String,
        SerdeName::U64,
        SerdeName::I64,
        SerdeName::Json,
        SerdeName::Postcard,
    ];

    /// Parses a config value.
    pub fn parse(s: &str) -> Option<Self> {
        SerdeName::ALL.into_iter().find(|n| n.as_str() == s)
    }

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            SerdeName::Bytes => "bytes",
            SerdeName::String => "string",
            SerdeName::U64 => "u64",
            SerdeName::I64 => "i64",
            SerdeName::Json => "json",
            SerdeName::Postcard => "postcard",
        }
    }

    /// Encodes a command-line text (a number for `u64`/`i64`, JSON text for `json`) as this
    /// serde's bytes.
    pub fn encode_text(self, text: &str) -> Result<Vec<u8>, SerdeError> {
        let bad = |m: String| SerdeError {
            serde: self.as_str(),
            message: m,
        };
        match self {
            SerdeName::Bytes | SerdeName::String => Ok(text.as_bytes().to_vec()),
            SerdeName::U64 => text
                .parse::<u64>()
                .map(|n| U64Serde.encode(&n))
                .map_err(|e| bad(format!("{text:?}: {e}")))?,
            SerdeName::I64 => text
                .parse::<i64>()
                .map(|n| I64Serde.encode(&n))
                .map_err(|e| bad(format!("{text:?}: {e}")))?,
            SerdeName::Json => {
                let v: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| bad(format!("{text:?}: {e}")))?;
                JsonSerde::<serde_json::Value>::new().encode(&v)
            }
            SerdeName::Postcard => Err(bad(
                "postcard values cannot be typed on the command line".into()
            )),
        }
    }

    /// Renders bytes of this serde as text: numbers in decimal, strings as is, JSON as
    /// compact JSON, bytes and postcard as lossy UTF-8 / hex.
    pub fn decode_text(self, bytes: &[u8]) -> Result<String, SerdeError> {
        match self {
            SerdeName::Bytes => Ok(match std::str::from_utf8(bytes) {
                Ok(s) => s.to_string(),
                Err(_) => hex(bytes),
            }),
            SerdeName::String => StringSerde.decode(bytes),
            SerdeName::U64 => U64Serde.decode(bytes).map(|n| n.to_string()),
            SerdeName::I64 => I64Serde.decode(bytes).map(|n| n.to_string()),
            SerdeName::Json => JsonSerde::<serde_json::Value>::new()
                .decode(bytes)
                .map(|v| v.to_string()),
            SerdeName::Postcard => Ok(hex(bytes)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl fmt::Display for SerdeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("serde `{serde}`: {message}")]
pub struct SerdeError {
    /// The serde's name.
    pub serde: &'static str,
    /// What went wrong.
    pub message: String,
}

/// Encodes and decodes values of `T`.
pub trait Serde<T>: Send + Sync {
    /// The config name of this serde.
    fn name(&self) -> SerdeName;
    /// `value` as bytes.
    fn encode(&self, value: &T) -> Result<Vec<u8>, SerdeError>;
    /// Bytes back to a value; malformed input is an error, never a panic.
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError>;
    /// Appends `value`'s bytes to `out` (the typed store encodes into reused buffers; the
    /// default calls [`encode`](Self::encode)).
    fn encode_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        out.extend_from_slice(&self.encode(value)?);
        Ok(())
    }
    /// Owned bytes back to a value; serdes whose value is the bytes (`bytes`, `string`) take
    /// them without a copy. The default calls [`decode`](Self::decode).
    fn decode_owned(&self, bytes: Vec<u8>) -> Result<T, SerdeError> {
        self.decode(&bytes)
    }
    /// Whether [`decode_owned`](Self::decode_owned) saves a copy over `decode`, so a typed
    /// read should ask the store for an owned value rather than a borrowed one.
    fn prefers_owned(&self) -> bool {
        false
    }
}

/// The `bytes` serde.
pub struct BytesSerde;
/// The `string` serde.
pub struct StringSerde;
/// The `u64` serde.
pub struct U64Serde;
/// The `i64` serde.
pub struct I64Serde;
/// The `json` serde.
pub struct JsonSerde<T>(PhantomData<fn() -> T>);
/// The `postcard` serde.
pub struct PostcardSerde<T>(PhantomData<fn() -> T>);

impl<T> JsonSerde<T> {
    /// A JSON serde for `T`.
    pub fn new() -> Self {
        JsonSerde(PhantomData)
    }
}
impl<T> Default for JsonSerde<T> {
    fn default() -> Self {
        Self::new()
    }
}
impl<T> PostcardSerde<T> {
    /// A postcard serde for `T`.
    pub fn new() -> Self {
        PostcardSerde(PhantomData)
    }
}
impl<T> Default for PostcardSerde<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl Serde<Vec<u8>> for BytesSerde {
    fn name(&self) -> SerdeName {
        SerdeName::Bytes
    }
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, SerdeError> {
        Ok(value.clone())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, SerdeError> {
        Ok(bytes.to_vec())
    }
    fn encode_into(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        out.extend_from_slice(value);
        Ok(())
    }
    fn decode_owned(&self, bytes: Vec<u8>) -> Result<Vec<u8>, SerdeError> {
        Ok(bytes)
    }
    fn prefers_owned(&self) -> bool {
        true
    }
}

impl Serde<String> for StringSerde {
    fn name(&self) -> SerdeName {
        SerdeName::String
    }
    fn encode(&self, value: &String) -> Result<Vec<u8>, SerdeError> {
        Ok(value.as_bytes().to_vec())
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, SerdeError> {
        self.decode_owned(bytes.to_vec())
    }
    fn encode_into(&self, value: &String, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }
    fn decode_owned(&self, bytes: Vec<u8>) -> Result<String, SerdeError> {
        String::from_utf8(bytes).map_err(|e| SerdeError {
            serde: "string",
            message: format!("invalid UTF-8: {e}"),
        })
    }
    fn prefers_owned(&self) -> bool {
        true
    }
}

fn eight(serde: &'static str, bytes: &[u8]) -> Result<[u8; 8], SerdeError> {
    bytes.try_into().map_err(|_| SerdeError {
        serde,
        message: format!("expected 8 bytes, got {}", bytes.len()),
    })
}

impl Serde<u64> for U64Serde {
    fn name(&self) -> SerdeName {
        SerdeName::U64
    }
    fn encode(&self, value: &u64) -> Result<Vec<u8>, SerdeError> {
        Ok(value.to_be_bytes().to_vec())
    }
    fn decode(&self, bytes: &[u8]) -> Result<u64, SerdeError> {
        Ok(u64::from_be_bytes(eight("u64", bytes)?))
    }
    fn encode_into(&self, value: &u64, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        out.extend_from_slice(&value.to_be_bytes());
        Ok(())
    }
}

impl Serde<i64> for I64Serde {
    fn name(&self) -> SerdeName {
        SerdeName::I64
    }
    fn encode(&self, value: &i64) -> Result<Vec<u8>, SerdeError> {
        Ok(((*value as u64) ^ (1 << 63)).to_be_bytes().to_vec())
    }
    fn decode(&self, bytes: &[u8]) -> Result<i64, SerdeError> {
        Ok((u64::from_be_bytes(eight("i64", bytes)?) ^ (1 << 63)) as i64)
    }
    fn encode_into(&self, value: &i64, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        out.extend_from_slice(&((*value as u64) ^ (1 << 63)).to_be_bytes());
        Ok(())
    }
}

impl<T: Serialize + DeserializeOwned> Serde<T> for JsonSerde<T> {
    fn name(&self) -> SerdeName {
        SerdeName::Json
    }
    fn encode(&self, value: &T) -> Result<Vec<u8>, SerdeError> {
        serde_json::to_vec(value).map_err(|e| SerdeError {
            serde: "json",
            message: e.to_string(),
        })
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        serde_json::from_slice(bytes).map_err(|e| SerdeError {
            serde: "json",
            message: e.to_string(),
        })
    }
    fn encode_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        serde_json::to_writer(out, value).map_err(|e| SerdeError {
            serde: "json",
            message: e.to_string(),
        })
    }
}

impl<T: Serialize + DeserializeOwned> Serde<T> for PostcardSerde<T> {
    fn name(&self) -> SerdeName {
        SerdeName::Postcard
    }
    fn encode(&self, value: &T) -> Result<Vec<u8>, SerdeError> {
        postcard::to_stdvec(value).map_err(|e| SerdeError {
            serde: "postcard",
            message: e.to_string(),
        })
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        postcard::from_bytes(bytes).map_err(|e| SerdeError {
            serde: "postcard",
            message: e.to_string(),
        })
    }
}

/// A Rust type that can be a typed store's key or value, given the serde named in config.
///
/// Implemented for `String`, `u64`, `i64`, `Vec<u8>` and `serde_json::Value`. For your own
/// serde types, use [`impl_codec!`](crate::impl_codec) to accept `json` and `postcard`.
pub trait Codec: Sized + 'static {
    /// The serde for `name`, or `None` if this type cannot use it.
    fn serde(name: SerdeName) -> Option<Box<dyn Serde<Self>>>;
}

impl Codec for String {
    fn serde(name: SerdeName) -> Option<Box<dyn Serde<Self>>> {
        match name {
            SerdeName::String => Some(Box::new(StringSerde)),
            SerdeName::Json => Some(Box::new(JsonSerde::new())),
            SerdeName::Postcard => Some(Box::new(PostcardSerde::new())),
            _ => None,
        }
    }
}

impl Codec for u64 {
    fn serde(name: SerdeName) -> Option<Box<dyn Serde<Self>>> {
        match name {
            SerdeName::U64 => Some(Box::new(U64Serde)),
            SerdeName::Json => Some(Box::new(JsonSerde::new())),
            SerdeName::Postcard => Some(Box::new(PostcardSerde::new())),
            _ => None,
        }
    }
}

impl Codec for i64 {
    fn serde(name: SerdeName) -> Option<Box<dyn Serde<Self>>> {
        match name {
            SerdeName::I64 => Some(Box::new(I64Serde)),
            SerdeName::Json => Some(Box::new(JsonSerde::new())),
            SerdeName::Postcard => Some(Box::new(PostcardSerde::new())),
            _ => None,
        }
    }
}

impl Codec for Vec<u8> {
    fn serde(name: SerdeName) -> Option<Box<dyn Serde<Self>>> {
        match name {
            SerdeName::Bytes => Some(Box::new(BytesSerde)),
            SerdeName::Json => Some(Box::new(JsonSerde::new())),
            SerdeName::Postcard => Some(Box::new(PostcardSerde::new())),
            _ => None,
        }
    }
}

impl Codec for serde_json::Value {
    fn serde(name: SerdeName) -> Option<Box<dyn Serde<Self>>> {
        match name {
            SerdeName::Json => Some(Box::new(JsonSerde::new())),
            _ => None,
        }
    }
}

/// Implements [`Codec`] for your `Serialize + DeserializeOwned` types, accepting the `json`
/// and `postcard` serdes.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Session { views: u64 }
/// gregor::impl_codec!(Session);
/// ```
#[macro_export]
macro_rules! impl_codec {
    ($($t:ty),+ $(,)?) => {$(
        impl $crate::serde::Codec for $t {
            fn serde(name: $crate::serde::SerdeName) -> Option<Box<dyn $crate::serde::Serde<Self>>> {
                match name {
                    $crate::serde::SerdeName::Json => Some(Box::new($crate::serde::JsonSerde::<$t>::new())),
                    $crate::serde::SerdeName::Postcard => Some(Box::new($crate::serde::PostcardSerde::<$t>::new())),
                    _ => None,
                }
            }
        }
    )+};
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn u64_encoding_orders_like_numbers(a: u64, b: u64) {
            prop_assert_eq!(a.cmp(&b), U64Serde.encode(&a).unwrap().cmp(&U64Serde.encode(&b).unwrap()));
            prop_assert_eq!(U64Serde.decode(&U64Serde.encode(&a).unwrap()).unwrap(), a);
        }

        #[test]
        fn i64_encoding_orders_like_numbers(a: i64, b: i64) {
            prop_assert_eq!(a.cmp(&b), I64Serde.encode(&a).unwrap().cmp(&I64Serde.encode(&b).unwrap()));
            prop_assert_eq!(I64Serde.decode(&I64Serde.encode(&a).unwrap()).unwrap(), a);
        }

        #[test]
        fn string_decode_never_panics(bytes: Vec<u8>) {
            let r = StringSerde.decode(&bytes);
            prop_assert_eq!(r.is_ok(), std::str::from_utf8(&bytes).is_ok());
        }
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_serde() {
        let e = StringSerde.decode(&[0xff, 0xfe]).unwrap_err();
        assert!(
            e.to_string().contains("string") && e.to_string().contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn wrong_width_numbers_are_errors() {
        assert!(
            U64Serde
                .decode(&[1, 2, 3])
                .unwrap_err()
                .to_string()
                .contains("expected 8 bytes")
        );
        assert!(I64Serde.decode(&[]).is_err());
    }

    #[test]
    fn text_round_trips_through_each_cli_serde() {
        for (name, text) in [
            (SerdeName::U64, "42"),
            (SerdeName::I64, "-7"),
            (SerdeName::String, "héllo"),
            (SerdeName::Json, r#"{"a":1}"#),
        ] {
            let bytes = name.encode_text(text).unwrap();
            assert_eq!(name.decode_text(&bytes).unwrap(), text);
        }
        assert!(
            SerdeName::U64
                .encode_text("x")
                .unwrap_err()
                .to_string()
                .contains("u64")
        );
    }
}
