//! Authority: who may write which keys, and who may approve.
//!
//! An agent asks for an [`AuthorityScope`]; the engine alone mints the matching
//! [`AuthorityGrant`] when it registers the agent. Proposals outside the grant are rejected and
//! recorded, whatever the agent's input said: this is also how an LLM agent is contained.
//! [`Actor`] names whoever approves a proposal; only a human actor may.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::AgentId;
use crate::key::ContextKey;

/// The set of keys an agent asks to write. There is no default: an empty scope is spelled
/// [`AuthorityScope::none`].
///
/// ```
/// use converge_core::{AuthorityScope, ContextKey};
///
/// let scope = AuthorityScope::keys([ContextKey::Hypotheses, ContextKey::Signals]);
/// assert!(scope.allows(ContextKey::Signals));
/// assert!(!scope.allows(ContextKey::Constraints));
/// assert!(!AuthorityScope::none().allows(ContextKey::Seeds));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthorityScope {
    /// Sorted and without duplicates: a set, in the few bytes its keys take (a scope is held
    /// by every registered agent; a one-key `BTreeSet` allocates a node of eleven).
    #[serde(deserialize_with = "sorted_keys")]
    keys: Box<[ContextKey]>,
}

/// A stored scope's keys as a set: sorted, duplicates dropped.
fn sorted_keys<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Box<[ContextKey]>, D::Error> {
    let keys = BTreeSet::<ContextKey>::deserialize(deserializer)?;
    Ok(keys.into_iter().collect())
}

impl AuthorityScope {
    /// A scope covering exactly these keys.
    pub fn keys(keys: impl IntoIterator<Item = ContextKey>) -> AuthorityScope {
        let mut keys: Vec<ContextKey> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        AuthorityScope {
            keys: keys.into_boxed_slice(),
        }
    }

    /// A scope covering no key: the agent may observe but never propose.
    pub fn none() -> AuthorityScope {
        AuthorityScope {
            keys: Box::default(),
        }
    }

    /// Whether a proposal into `key` is within this scope.
    pub fn allows(&self, key: ContextKey) -> bool {
        self.keys.binary_search(&key).is_ok()
    }

    /// The keys, in order.
    pub fn iter(&self) -> impl Iterator<Item = ContextKey> + '_ {
        self.keys.iter().copied()
    }
}

/// The engine's grant of an [`AuthorityScope`] to one registered agent.
///
/// Cannot be constructed, cloned, defaulted or deserialized outside this crate: authority only
/// comes from registration.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct AuthorityGrant {
    agent: AgentId,
    scope: AuthorityScope,
}

impl AuthorityGrant {
    pub(crate) fn mint(agent: AgentId, scope: AuthorityScope) -> AuthorityGrant {
        AuthorityGrant { agent, scope }
    }

    /// The agent holding the grant.
    pub fn agent(&self) -> AgentId {
        self.agent
    }

    /// The keys granted.
    pub fn scope(&self) -> &AuthorityScope {
        &self.scope
    }
}

/// What kind of actor made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A named person. Only humans may approve or reject a parked proposal.
    Human,
    /// An automated agent.
    Agent,
    /// The runtime itself.
    System,
}

/// Someone or something that decides: an approver, an agent, the system.
///
/// ```
/// use converge_core::{Actor, ActorKind};
///
/// let alice = Actor::human("alice@example.com").unwrap();
/// assert_eq!(alice.kind(), ActorKind::Human);
/// assert!(Actor::human("  ").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "ActorRepr")]
pub struct Actor {
    name: String,
    kind: ActorKind,
}

/// Longest accepted actor name, in bytes.
pub const ACTOR_NAME_LEN_MAX: usize = 256;

impl Actor {
    /// A human actor. The name must be non-blank, at most 256 bytes, without control characters.
    pub fn human(name: &str) -> Result<Actor, ActorError> {
        Actor::new(name, ActorKind::Human)
    }

    /// An actor of any kind.
    pub fn new(name: &str, kind: ActorKind) -> Result<Actor, ActorError> {
        if name.trim().is_empty() {
            return Err(ActorError::Blank);
        }
        if name.len() > ACTOR_NAME_LEN_MAX || name.chars().any(char::is_control) {
            return Err(ActorError::Invalid {
                name: name.chars().take(64).collect(),
            });
        }
        Ok(Actor {
            name: name.to_owned(),
            kind,
        })
    }

    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The actor's kind.
    pub fn kind(&self) -> ActorKind {
        self.kind
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActorRepr {
    name: String,
    kind: ActorKind,
}

impl TryFrom<ActorRepr> for Actor {
    type Error = ActorError;

    fn try_from(repr: ActorRepr) -> Result<Self, Self::Error> {
        Actor::new(&repr.name, repr.kind)
    }
}

/// Why an actor name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActorError {
    /// The name is empty or whitespace.
    #[error("actor name is blank")]
    Blank,
    /// The name is too long or has control characters.
    #[error(
        "actor name {name:?} is longer than {ACTOR_NAME_LEN_MAX} bytes or has control characters"
    )]
    Invalid {
        /// The start of the refused name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scope is a set however it is given or read: sorted, each key once, and it writes
    /// back in that order.
    #[test]
    fn a_scope_is_a_set_whatever_its_input() {
        let given =
            AuthorityScope::keys([ContextKey::Signals, ContextKey::Seeds, ContextKey::Signals]);
        let read: AuthorityScope =
            serde_json::from_str(r#"["signals", "seeds", "seeds"]"#).expect("a scope");
        assert_eq!(given, read);
        assert_eq!(
            serde_json::to_string(&read).expect("written"),
            r#"["seeds","signals"]"#
        );
        assert!(read.allows(ContextKey::Seeds) && read.allows(ContextKey::Signals));
        assert!(!read.allows(ContextKey::Hypotheses));
        assert_eq!(read.iter().count(), 2);
        let custom = ContextKey::custom("zeta").expect("a custom key");
        let mixed = AuthorityScope::keys([custom, ContextKey::Seeds]);
        assert!(mixed.allows(custom) && !AuthorityScope::none().allows(custom));
    }
}
