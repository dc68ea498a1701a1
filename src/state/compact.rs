//! Compact stored forms of a document's fields, read back in both the
//! compact form and the ones earlier versions wrote (issue 12.2: Redis bytes
//! per held document). A SHA-256 in hex is stored as its first
//! [`HASH_BYTES`] bytes; field names are one letter (with the long names as
//! serde aliases, see [`super::DocState`]).
//!
//! Invariant: decoding never depends on which form was written, so a state
//! written by an older tidemark (long names, a hex hash, all 32 bytes of it)
//! is read as it is and rewritten compactly the next time each document is
//! written.

/// Bytes of a content hash kept: 128 bits tell a change from no change
/// with a chance of error of 2^-128 per comparison.
pub(super) const HASH_BYTES: usize = 16;

/// A hex string (a content hash) stored as its first [`HASH_BYTES`] bytes; a
/// string that is not even-length lowercase hex is stored as it is. Reads
/// bytes (as hex) or a string.
pub(super) mod hash_prefix {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
        match hex::decode(text) {
            Ok(bytes) if !text.is_empty() && text.bytes().all(|b| !b.is_ascii_uppercase()) => {
                s.serialize_bytes(&bytes[..bytes.len().min(super::HASH_BYTES)])
            }
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

/// [`hash_prefix`] for a field that may be absent (a permissions
/// fingerprint): absent, or written as nil, is `None`.
pub(super) mod opt_hash_prefix {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(text) => super::hash_prefix::serialize(text, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        struct Maybe;
        impl<'de> Visitor<'de> for Maybe {
            type Value = Option<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("nothing, hash bytes or a hex string")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                super::hash_prefix::deserialize(d).map(Some)
            }
        }
        d.deserialize_option(Maybe)
    }
}
