//! Compact stored forms of a document's fields, read back in both the
//! compact form and the one earlier versions wrote (issue 12.2: Redis bytes
//! per held document). A SHA-256 in hex is stored as its 32 bytes, a time as
//! milliseconds since the epoch; field names are one letter (with the long
//! names as serde aliases, see [`super::DocState`]).
//!
//! Invariant: decoding never depends on which form was written, so a state
//! written by an older tidemark is read as it is and rewritten compactly the
//! next time each document is written.

/// A hex string (a content hash) stored as bytes; a string that is not
/// even-length hex is stored as it is. Reads bytes or a string.
pub(super) mod hex_bytes {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
        match hex::decode(text) {
            Ok(bytes) if !text.is_empty() && text.bytes().all(|b| !b.is_ascii_uppercase()) => s.serialize_bytes(&bytes),
            _ => s.serialize_str(text),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        struct HexOrText;
        impl Visitor<'_> for HexOrText {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("hash bytes or a hex string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<String, E> {
                Ok(hex::encode(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
        }
        d.deserialize_any(HexOrText)
    }
}

/// A UTC time stored as milliseconds since the epoch; reads that or an RFC 3339 string.
pub(super) mod millis {
    use chrono::{DateTime, Utc};
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(t.timestamp_millis())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        struct MillisOrText;
        impl Visitor<'_> for MillisOrText {
            type Value = DateTime<Utc>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("milliseconds since the epoch or an RFC 3339 time")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                DateTime::from_timestamp_millis(v).ok_or_else(|| E::custom(format!("time out of range: {v} ms")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                let v = i64::try_from(v).map_err(|_| E::custom(format!("time out of range: {v} ms")))?;
                self.visit_i64(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| E::custom(format!("time {v:?}: {e}")))
            }
        }
        d.deserialize_any(MillisOrText)
    }
}
