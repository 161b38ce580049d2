//! Newtype identifiers: facts, agents, proposals and observations.
//!
//! Fact ids are chosen by agents and validated by the gate. Agent, proposal and observation ids
//! are assigned by the engine from positions in the run (registration order, cycle, merge
//! order), so the same run always names the same thing the same way. None of them is a bare
//! string in an API.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted fact id, in bytes.
pub const FACT_ID_LEN_MAX: usize = 128;

/// The id of a fact, unique within its key.
///
/// 1 to 128 bytes of ASCII letters, digits and `-_.:/@`; cheap to clone.
///
/// ```
/// use converge_core::FactId;
///
/// let id = FactId::new("hyp-1").unwrap();
/// assert_eq!(id.as_str(), "hyp-1");
/// assert!(FactId::new("has space").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FactId(Arc<str>);

impl FactId {
    /// Validates and wraps a fact id.
    pub fn new(id: &str) -> Result<FactId, IdError> {
        validate_fact_id(id)?;
        Ok(FactId(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_fact_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > FACT_ID_LEN_MAX {
        return Err(IdError::TooLong { len: id.len() });
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || "-_.:/@".contains(c);
    if let Some(bad) = id.chars().find(|c| !valid(*c)) {
        return Err(IdError::InvalidChar {
            id: id.to_owned(),
            bad,
        });
    }
    Ok(())
}

impl Borrow<str> for FactId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for FactId {
    type Err = IdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        FactId::new(id)
    }
}

impl Serialize for FactId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FactId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        FactId::new(&id).map_err(serde::de::Error::custom)
    }
}

/// Why a fact id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id is empty.
    #[error("fact id is empty")]
    Empty,
    /// The id is longer than [`FACT_ID_LEN_MAX`].
    #[error("fact id is {len} bytes long; the limit is {FACT_ID_LEN_MAX}")]
    TooLong {
        /// Length of the refused id.
        len: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9-_.:/@]`.
    #[error("fact id {id:?} contains {bad:?}; use only ASCII letters, digits and -_.:/@")]
    InvalidChar {
        /// The refused id.
        id: String,
        /// The first refused character.
        bad: char,
    },
    /// A proposal or observation id that does not read `c<cycle>.a<agent>.<p|o><seq>`.
    #[error("{text:?} is not a {kind} id (expected c<cycle>.a<agent>.{prefix}<n>)")]
    Malformed {
        /// The refused text.
        text: String,
        /// What was being parsed.
        kind: &'static str,
        /// The expected sequence prefix.
        prefix: char,
    },
}

/// An agent's identity in one engine: its registration position.
///
/// Effects merge in `AgentId` order, never in completion order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AgentId(pub(crate) u32);

impl AgentId {
    /// The registration position (0 for the first agent registered).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a{}", self.0)
    }
}

/// Generates an engine-assigned id of the form `c<cycle>.a<agent>.<prefix><seq>`.
macro_rules! positional_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            cycle: u32,
            agent: AgentId,
            seq: u32,
        }

        impl $name {
            pub(crate) fn new(cycle: u32, agent: AgentId, seq: u32) -> Self {
                Self { cycle, agent, seq }
            }

            /// The cycle in which the agent produced it.
            pub fn cycle(&self) -> u32 {
                self.cycle
            }

            /// The agent that produced it.
            pub fn agent(&self) -> AgentId {
                self.agent
            }

            /// Its position in the agent's effect.
            pub fn seq(&self) -> u32 {
                self.seq
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "c{}.{}.{}{}", self.cycle, self.agent, $prefix, self.seq)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_positional(text, $prefix)
                    .map(|(cycle, agent, seq)| Self { cycle, agent: AgentId(agent), seq })
                    .ok_or_else(|| IdError::Malformed {
                        text: text.to_owned(),
                        kind: $kind,
                        prefix: $prefix,
                    })
            }
        }

        impl Serialize for $name {
            /// The same text as its `Display`, written without the formatting machinery:
            /// every event names one, so this is on the engine's hot path.
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut text = PositionalText::default();
                text.push(b'c');
                text.number(self.cycle);
                text.push(b'.');
                text.push(b'a');
                text.number(self.agent.0);
                text.push(b'.');
                text.push_char($prefix);
                text.number(self.seq);
                serializer.serialize_str(text.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

positional_id!(
    /// The id of a proposal: `c<cycle>.a<agent>.p<n>`, assigned by the engine at merge.
    ///
    /// An approval decision names a proposal by this id and its hash.
    ///
    /// ```
    /// use converge_core::ProposalId;
    ///
    /// let id: ProposalId = "c3.a1.p0".parse().unwrap();
    /// assert_eq!((id.cycle(), id.agent().index(), id.seq()), (3, 1, 0));
    /// assert_eq!(id.to_string(), "c3.a1.p0");
    /// ```
    ProposalId,
    'p',
    "proposal"
);

positional_id!(
    /// The id of an observation: `c<cycle>.a<agent>.o<n>`, assigned by the engine at merge.
    ObservationId,
    'o',
    "observation"
);

/// The text of a positional id, built on the stack: `c`, `.a`, `.`, a prefix and three
/// numbers of at most ten digits fit 36 bytes.
struct PositionalText {
    bytes: [u8; 36],
    len: usize,
}

impl Default for PositionalText {
    fn default() -> Self {
        PositionalText {
            bytes: [0; 36],
            len: 0,
        }
    }
}

impl PositionalText {
    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    fn push_char(&mut self, letter: char) {
        let mut bytes = [0u8; 4];
        letter
            .encode_utf8(&mut bytes)
            .bytes()
            .for_each(|byte| self.push(byte));
    }

    fn number(&mut self, mut value: u32) {
        let mut digits = [0u8; 10];
        let mut count = 0;
        loop {
            digits[count] = b'0' + (value % 10) as u8;
            count += 1;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        digits[..count]
            .iter()
            .rev()
            .for_each(|&digit| self.push(digit));
    }

    fn as_str(&self) -> &str {
        // Only ASCII letters, digits and dots are pushed.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

fn parse_positional(text: &str, prefix: char) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.');
    let cycle = parts.next()?.strip_prefix('c')?.parse().ok()?;
    let agent = parts.next()?.strip_prefix('a')?.parse().ok()?;
    let seq = parts.next()?.strip_prefix(prefix)?.parse().ok()?;
    parts.next().is_none().then_some((cycle, agent, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fact_ids_are_validated() {
        assert!(FactId::new("risk:42/a.b@c_d-e").is_ok());
        assert_eq!(FactId::new(""), Err(IdError::Empty));
        assert_eq!(
            FactId::new(&"x".repeat(129)),
            Err(IdError::TooLong { len: 129 })
        );
        assert_eq!(
            FactId::new("a b"),
            Err(IdError::InvalidChar {
                id: "a b".into(),
                bad: ' '
            })
        );
    }

    #[test]
    fn positional_ids_round_trip() {
        let id = ProposalId::new(7, AgentId(12), 3);
        assert_eq!(id.to_string().parse::<ProposalId>().unwrap(), id);
        let obs = ObservationId::new(1, AgentId(0), 0);
        assert_eq!(obs.to_string(), "c1.a0.o0");
        assert!("c1.a0.p0".parse::<ObservationId>().is_err());
        assert!("c1.a0.p0.x".parse::<ProposalId>().is_err());
        assert!("c-1.a0.p0".parse::<ProposalId>().is_err());
    }

    #[test]
    fn positional_ids_serialize_as_their_display() {
        for (cycle, agent, seq) in [
            (0, 0, 0),
            (7, 12, 3),
            (10, 100, 1000),
            (u32::MAX, u32::MAX, u32::MAX),
        ] {
            let proposal = ProposalId::new(cycle, AgentId(agent), seq);
            let observation = ObservationId::new(cycle, AgentId(agent), seq);
            for (json, text) in [
                (serde_json::to_string(&proposal), proposal.to_string()),
                (serde_json::to_string(&observation), observation.to_string()),
            ] {
                assert_eq!(json.unwrap(), format!("\"{text}\""));
            }
        }
        assert_eq!(
            serde_json::to_string(&ProposalId::new(u32::MAX, AgentId(u32::MAX), u32::MAX)).unwrap(),
            "\"c4294967295.a4294967295.p4294967295\""
        );
    }
}
