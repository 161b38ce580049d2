//! The limits of what a journal records of an agent's answer, enforced where answers enter.
//!
//! Everything an agent returns is journaled before it counts, and must read back: a reader
//! parses each stored outcome with `serde_json`, which refuses input nested deeper than
//! [`READ_DEPTH_MAX`]. An outcome wraps the agent's values in a few levels of its own
//! ([`RECORD_WRAPPING_DEPTH`]), so every JSON value of an answer — a proposal's content, an
//! observation's payload — may nest at most [`VALUE_DEPTH_MAX`] levels, well within what a
//! reader takes. Sizes are bounded the same way, so a hostile or broken agent cannot make the
//! journal store an answer of any size. The driver checks every outcome with
//! [`check_effect`] before anything else sees it; an answer past a limit becomes the agent's
//! recorded failure, with its token usage kept.
//!
//! This module checks; it does not decide what to do about it.

use std::fmt;

use converge_core::AgentEffect;
use serde_json::Value;

/// How deep `serde_json` reads: the limit every reader of a stored outcome has.
pub const READ_DEPTH_MAX: usize = 128;

/// Levels an outcome record adds around an agent's values
/// (`{"completed":{"proposals":[{"content": …`), with room to spare.
pub const RECORD_WRAPPING_DEPTH: usize = 8;

/// Deepest nesting of any JSON value in an answer (a scalar is depth 1, `[1]` depth 2).
pub const VALUE_DEPTH_MAX: usize = 64;

/// Largest answer, as the bytes of its JSON values together.
pub const EFFECT_BYTES_MAX: usize = 16 * 1024 * 1024;

const _: () = assert!(VALUE_DEPTH_MAX + RECORD_WRAPPING_DEPTH <= READ_DEPTH_MAX);

/// How an answer exceeded a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    /// A value nests deeper than [`VALUE_DEPTH_MAX`].
    Depth {
        /// What: `proposal 0's content`, `observation 1's payload`.
        what: String,
    },
    /// The answer is larger than [`EFFECT_BYTES_MAX`].
    Size {
        /// Bytes counted before stopping (just past the limit).
        bytes: usize,
    },
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exceeded::Depth { what } => write!(
                f,
                "{what} nests deeper than the {VALUE_DEPTH_MAX} levels a journal records"
            ),
            Exceeded::Size { bytes } => write!(
                f,
                "it is larger than the {EFFECT_BYTES_MAX} bytes a journal records (at least \
                 {bytes} bytes)"
            ),
        }
    }
}

/// Checks every value of an effect against the limits.
///
/// ```
/// use converge_core::{AgentEffect, ContextKey, Proposal};
/// use converge_runtime::limits::{VALUE_DEPTH_MAX, check_effect};
/// use serde_json::{Value, json};
///
/// let nested = |depth: usize| (1..depth).fold(json!(0), |inner, _| Value::Array(vec![inner]));
/// let effect = |content| AgentEffect::empty()
///     .with_proposal(Proposal::new(ContextKey::Hypotheses, "h", content));
/// assert!(check_effect(&effect(nested(VALUE_DEPTH_MAX))).is_ok());
/// assert!(check_effect(&effect(nested(VALUE_DEPTH_MAX + 1))).is_err());
/// ```
pub fn check_effect(effect: &AgentEffect) -> Result<(), Exceeded> {
    let mut bytes = 0usize;
    for (index, proposal) in effect.proposals().iter().enumerate() {
        measure(proposal.content(), &mut bytes)
            .ok_or_else(|| depth(format!("proposal {index}'s content")))?;
        bytes = bytes.saturating_add(proposal.id().len());
        check_size(bytes)?;
    }
    for (index, observation) in effect.observations().iter().enumerate() {
        measure(observation.payload(), &mut bytes)
            .ok_or_else(|| depth(format!("observation {index}'s payload")))?;
        check_size(bytes)?;
    }
    Ok(())
}

fn depth(what: String) -> Exceeded {
    Exceeded::Depth { what }
}

fn check_size(bytes: usize) -> Result<(), Exceeded> {
    if bytes > EFFECT_BYTES_MAX {
        Err(Exceeded::Size { bytes })
    } else {
        Ok(())
    }
}

/// Adds a value's approximate encoded size to `bytes`; `None` if it nests deeper than
/// [`VALUE_DEPTH_MAX`]. Iterative, so a deep value cannot exhaust the stack; it stops early
/// once past the size limit.
fn measure(value: &Value, bytes: &mut usize) -> Option<()> {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((value, level)) = stack.pop() {
        if level > VALUE_DEPTH_MAX {
            return None;
        }
        *bytes = bytes.saturating_add(match value {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 24,
            Value::String(text) => text.len() + 2,
            Value::Array(items) => {
                stack.extend(items.iter().map(|item| (item, level + 1)));
                items.len() + 2
            }
            Value::Object(fields) => {
                for (name, item) in fields {
                    *bytes = bytes.saturating_add(name.len() + 4);
                    stack.push((item, level + 1));
                }
                2
            }
        });
        if *bytes > EFFECT_BYTES_MAX {
            return Some(());
        }
    }
    Some(())
}
