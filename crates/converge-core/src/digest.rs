//! SHA-256 digests over a canonical JSON encoding.
//!
//! Content hashes, proposal hashes and the event hash chain all use [`Digest`]. The canonical
//! encoding sorts object keys itself, so a hash never depends on a map's iteration order or
//! on which `serde_json` features another crate in the build enabled.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest, shown and serialized as 64 lowercase hex digits.
///
/// ```
/// use converge_core::Digest;
///
/// let a = Digest::of_json(&serde_json::json!({"b": 1, "a": [true, null]}));
/// let b: Digest = a.to_string().parse().unwrap();
/// assert_eq!(a, b);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of the canonical encoding of a JSON value.
    pub fn of_json(value: &Value) -> Digest {
        let mut bytes = Vec::with_capacity(64);
        write_canonical(value, &mut bytes);
        Digest::of_bytes(&bytes)
    }

    /// The digest of raw bytes.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest of several byte strings, each prefixed by its length so that no two
    /// different sequences share an encoding.
    pub fn of_parts(parts: &[&[u8]]) -> Digest {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Digest(hasher.finalize().into())
    }

    /// The all-zero digest that starts every hash chain.
    pub const fn zero() -> Digest {
        Digest([0; 32])
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A digest from its raw bytes, as stored by [`Digest::as_bytes`]. Like parsing its hex
    /// text, this asserts nothing about what was hashed.
    ///
    /// ```
    /// use converge_core::Digest;
    ///
    /// let digest = Digest::of_bytes(b"converge");
    /// assert_eq!(Digest::from_bytes(*digest.as_bytes()), digest);
    /// ```
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &hex::encode(self.0)[..12])
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| DigestError {
            text: text.to_owned(),
        })?;
        Ok(Digest(bytes))
    }
}

/// Text that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a SHA-256 digest (64 hex digits)")]
pub struct DigestError {
    text: String,
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; 64];
        // 32 bytes always fit 64 hex digits, and hex digits are ASCII.
        hex::encode_to_slice(self.0, &mut text).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Appends the canonical encoding of `value`: compact JSON with object keys sorted by their
/// UTF-8 bytes. Numbers and strings use `serde_json`'s own deterministic formatting.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (index, (name, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(name.clone()), out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a scalar into a Vec cannot fail: there is no I/O and no non-string map key.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// The length in bytes of the canonical encoding of `value`.
pub(crate) fn canonical_len(value: &Value) -> usize {
    let mut bytes = Vec::new();
    write_canonical(value, &mut bytes);
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_encoding_sorts_keys_at_every_depth() {
        let mut out = Vec::new();
        write_canonical(
            &json!({"b": {"z": 1, "a": "x\"y"}, "a": [2.5, null, false]}),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":[2.5,null,false],"b":{"a":"x\"y","z":1}}"#
        );
    }

    #[test]
    fn equal_values_have_equal_digests_and_different_values_differ() {
        assert_eq!(
            Digest::of_json(&json!({"a": 1, "b": 2})),
            Digest::of_json(&json!({"b": 2, "a": 1}))
        );
        assert_ne!(Digest::of_json(&json!("1")), Digest::of_json(&json!(1)));
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            Digest::of_parts(&[b"ab", b"c"]),
            Digest::of_parts(&[b"a", b"bc"])
        );
    }

    #[test]
    fn bad_hex_is_refused() {
        assert!("zz".parse::<Digest>().is_err());
        assert!("00".parse::<Digest>().is_err());
    }
}
