//! Context keys: the named partitions of a context.
//!
//! A [`ContextKey`] is either one of the nine well-known keys or a user-defined key with a
//! validated name. Keys are `Copy` and totally ordered without any global interner: a custom
//! name lives inline, so ordering and equality never depend on registration order.
//! This module does not decide who may write a key; that is [`crate::AuthorityScope`].

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted custom key name, in bytes.
pub const KEY_NAME_LEN_MAX: usize = 32;

/// A partition of the context.
///
/// Well-known keys order before custom keys; custom keys order by name.
///
/// ```
/// use converge_core::ContextKey;
///
/// let risks = ContextKey::custom("risks").unwrap();
/// assert_eq!(risks.to_string(), "risks");
/// assert_eq!("seeds".parse::<ContextKey>().unwrap(), ContextKey::Seeds);
/// assert!(ContextKey::Diagnostic < risks);
/// assert!(ContextKey::custom("Not A Name").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContextKey {
    /// Starting material of a job.
    Seeds,
    /// Candidate explanations or insights.
    Hypotheses,
    /// Candidate plans of action.
    Strategies,
    /// Rules the outcome must respect.
    Constraints,
    /// Observed indicators.
    Signals,
    /// Competing actors or options.
    Competitors,
    /// Assessments of other facts.
    Evaluations,
    /// Recommendations put forward for a decision.
    Proposals,
    /// Diagnostic findings produced by agents.
    Diagnostic,
    /// A user-defined key.
    Custom(CustomKey),
}

const WELL_KNOWN: [(ContextKey, &str); 9] = [
    (ContextKey::Seeds, "seeds"),
    (ContextKey::Hypotheses, "hypotheses"),
    (ContextKey::Strategies, "strategies"),
    (ContextKey::Constraints, "constraints"),
    (ContextKey::Signals, "signals"),
    (ContextKey::Competitors, "competitors"),
    (ContextKey::Evaluations, "evaluations"),
    (ContextKey::Proposals, "proposals"),
    (ContextKey::Diagnostic, "diagnostic"),
];

/// Number of well-known keys; they occupy the dense indices `0..WELL_KNOWN_COUNT`.
pub(crate) const WELL_KNOWN_COUNT: usize = WELL_KNOWN.len();

impl ContextKey {
    /// The nine well-known keys, in their order.
    pub fn well_known() -> impl Iterator<Item = ContextKey> {
        WELL_KNOWN.iter().map(|(key, _)| *key)
    }

    /// A user-defined key. The name must be 1 to 32 bytes of lowercase ASCII letters, digits,
    /// `_` or `-`, start with a letter, and not be the name of a well-known key.
    pub fn custom(name: &str) -> Result<ContextKey, KeyError> {
        CustomKey::new(name).map(ContextKey::Custom)
    }

    /// The key's name as written in specs, events and journals.
    pub fn name(&self) -> &str {
        match self {
            ContextKey::Custom(custom) => custom.as_str(),
            well_known => WELL_KNOWN[well_known.dense_index().unwrap_or_default()].1,
        }
    }

    /// Index of a well-known key in `0..WELL_KNOWN_COUNT`; `None` for custom keys.
    #[inline]
    pub(crate) fn dense_index(&self) -> Option<usize> {
        let index = match self {
            ContextKey::Seeds => 0,
            ContextKey::Hypotheses => 1,
            ContextKey::Strategies => 2,
            ContextKey::Constraints => 3,
            ContextKey::Signals => 4,
            ContextKey::Competitors => 5,
            ContextKey::Evaluations => 6,
            ContextKey::Proposals => 7,
            ContextKey::Diagnostic => 8,
            ContextKey::Custom(_) => return None,
        };
        Some(index)
    }
}

impl fmt::Display for ContextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ContextKey {
    type Err = KeyError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match WELL_KNOWN.iter().find(|(_, known)| *known == name) {
            Some((key, _)) => Ok(*key),
            None => ContextKey::custom(name),
        }
    }
}

impl Serialize for ContextKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ContextKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The validated name of a user-defined key, stored inline so keys stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomKey {
    len: u8,
    bytes: [u8; KEY_NAME_LEN_MAX],
}

impl CustomKey {
    fn new(name: &str) -> Result<CustomKey, KeyError> {
        validate_key_name(name)?;
        let mut bytes = [0; KEY_NAME_LEN_MAX];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        let len = u8::try_from(name.len()).map_err(|_| KeyError::TooLong { len: name.len() })?;
        Ok(CustomKey { len, bytes })
    }

    /// The key's name.
    pub fn as_str(&self) -> &str {
        // Only validated ASCII is ever stored, so this cannot fail.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl PartialOrd for CustomKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CustomKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for CustomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

fn validate_key_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() {
        return Err(KeyError::Empty);
    }
    if name.len() > KEY_NAME_LEN_MAX {
        return Err(KeyError::TooLong { len: name.len() });
    }
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    let starts_with_letter = name.starts_with(|c: char| c.is_ascii_lowercase());
    if !starts_with_letter || !name.chars().all(valid_char) {
        return Err(KeyError::InvalidName {
            name: name.to_owned(),
        });
    }
    if WELL_KNOWN.iter().any(|(_, known)| *known == name) {
        return Err(KeyError::Reserved {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Why a key name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The name is empty.
    #[error("key name is empty")]
    Empty,
    /// The name is longer than [`KEY_NAME_LEN_MAX`].
    #[error("key name is {len} bytes long; the limit is {KEY_NAME_LEN_MAX}")]
    TooLong {
        /// Length of the refused name.
        len: usize,
    },
    /// The name has a character outside `[a-z0-9_-]` or does not start with a letter.
    #[error(
        "key name {name:?} must start with a lowercase letter and use only a-z, 0-9, '_' or '-'"
    )]
    InvalidName {
        /// The refused name.
        name: String,
    },
    /// The name belongs to a well-known key; use that key instead.
    #[error("key name {name:?} is a well-known key and cannot be used for a custom key")]
    Reserved {
        /// The refused name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse() {
        for key in ContextKey::well_known().chain([ContextKey::custom("risks").unwrap()]) {
            assert_eq!(key.name().parse::<ContextKey>().unwrap(), key);
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let check = |name: &str, expected: KeyError| {
            assert_eq!(ContextKey::custom(name).unwrap_err(), expected, "{name:?}");
        };
        check("", KeyError::Empty);
        check(&"a".repeat(33), KeyError::TooLong { len: 33 });
        check(
            "Risks",
            KeyError::InvalidName {
                name: "Risks".into(),
            },
        );
        check(
            "9lives",
            KeyError::InvalidName {
                name: "9lives".into(),
            },
        );
        check("a b", KeyError::InvalidName { name: "a b".into() });
        check(
            "seeds",
            KeyError::Reserved {
                name: "seeds".into(),
            },
        );
    }

    #[test]
    fn order_is_well_known_first_then_by_name() {
        let b = ContextKey::custom("b").unwrap();
        let a = ContextKey::custom("a").unwrap();
        let mut keys = vec![b, ContextKey::Diagnostic, a, ContextKey::Seeds];
        keys.sort();
        assert_eq!(keys, vec![ContextKey::Seeds, ContextKey::Diagnostic, a, b]);
    }

    #[test]
    fn serde_uses_the_name() {
        let key = ContextKey::custom("risk-register").unwrap();
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"risk-register\"");
        assert_eq!(
            serde_json::from_str::<ContextKey>("\"hypotheses\"").unwrap(),
            ContextKey::Hypotheses
        );
        assert!(serde_json::from_str::<ContextKey>("\"Bad Name\"").is_err());
    }
}
