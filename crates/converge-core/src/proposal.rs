//! Proposals: what agents suggest, in two states.
//!
//! A [`Proposal<Draft>`] is untrusted input: its key, id and confidence are raw, exactly as an
//! agent (or a language model) produced them. Only the promotion gate turns it into a
//! [`Proposal<Validated>`], with typed fields and a [`ValidationReport`]; only a validated
//! proposal can become a [`crate::Fact`]. Nothing here promotes anything.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::gate::ValidationReport;
use crate::id::{AgentId, FactId, ObservationId, ProposalId};
use crate::key::ContextKey;

/// How sure an agent is of a proposal: a finite number in `[0, 1]`.
///
/// ```
/// use converge_core::Confidence;
///
/// assert_eq!(Confidence::new(0.25).unwrap().value(), 0.25);
/// assert!(Confidence::new(f64::NAN).is_err());
/// assert!(Confidence::new(1.5).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Confidence(f64);

impl Confidence {
    /// Full confidence.
    pub const CERTAIN: Confidence = Confidence(1.0);

    /// Validates a confidence value.
    pub fn new(value: f64) -> Result<Confidence, ConfidenceError> {
        if value.is_finite() && (0.0..=1.0).contains(&value) {
            // Normalize -0.0 so that equal confidences hash equally.
            Ok(Confidence(value + 0.0))
        } else {
            Err(ConfidenceError { value })
        }
    }

    /// The value in `[0, 1]`.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Confidence {
    type Error = ConfidenceError;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Confidence::new(value)
    }
}

impl From<Confidence> for f64 {
    fn from(confidence: Confidence) -> f64 {
        confidence.0
    }
}

/// A confidence that is NaN, infinite or outside `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("confidence {value} is not a finite number in [0, 1]")]
pub struct ConfidenceError {
    value: f64,
}

/// A key as an agent named it: typed, or a raw name still to be validated by the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// An already typed key.
    Key(ContextKey),
    /// A raw key name, validated at the gate.
    Name(String),
}

impl From<ContextKey> for KeyRef {
    fn from(key: ContextKey) -> KeyRef {
        KeyRef::Key(key)
    }
}

impl From<&str> for KeyRef {
    fn from(name: &str) -> KeyRef {
        KeyRef::Name(name.to_owned())
    }
}

impl From<String> for KeyRef {
    fn from(name: String) -> KeyRef {
        KeyRef::Name(name)
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Key(key) => write!(f, "{key}"),
            KeyRef::Name(name) => f.write_str(name),
        }
    }
}

/// A fact named by key and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FactRef {
    /// The fact's key.
    pub key: ContextKey,
    /// The fact's id.
    pub id: FactId,
}

/// The state of a proposal as an agent wrote it: raw and unchecked.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub(crate) key: KeyRef,
    pub(crate) id: String,
    pub(crate) content: Value,
    pub(crate) confidence: f64,
    pub(crate) derived_from: Vec<(ContextKey, String)>,
    pub(crate) evidence: Vec<u32>,
    pub(crate) correction: Option<String>,
}

/// The state of a proposal that passed every check of the gate.
///
/// Cannot be constructed outside this crate.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub(crate) proposal: ProposalId,
    pub(crate) key: ContextKey,
    pub(crate) id: FactId,
    pub(crate) content: Value,
    pub(crate) content_hash: Digest,
    pub(crate) confidence: Confidence,
    pub(crate) derived_from: Vec<FactRef>,
    pub(crate) evidence: Vec<ObservationId>,
    pub(crate) correction: Option<String>,
    pub(crate) report: ValidationReport,
}

/// A suggestion to add a fact, in state `S` ([`Draft`] or [`Validated`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal<S> {
    pub(crate) state: S,
}

impl Proposal<Draft> {
    /// A draft proposal of `content` as fact `id` in `key`, with full confidence.
    ///
    /// Nothing is checked here; the gate checks everything and records what it refuses.
    ///
    /// ```
    /// use converge_core::{ContextKey, Proposal};
    /// use serde_json::json;
    ///
    /// let draft = Proposal::new(ContextKey::Hypotheses, "h1", json!({"claim": "demand is seasonal"}))
    ///     .with_confidence(0.8)
    ///     .derived_from(ContextKey::Seeds, "sales-2025");
    /// assert_eq!(draft.id(), "h1");
    /// ```
    pub fn new(key: impl Into<KeyRef>, id: impl Into<String>, content: impl Into<Value>) -> Self {
        Proposal {
            state: Draft {
                key: key.into(),
                id: id.into(),
                content: content.into(),
                confidence: 1.0,
                derived_from: Vec::new(),
                evidence: Vec::new(),
                correction: None,
            },
        }
    }

    /// Sets the confidence (checked at the gate).
    pub fn with_confidence(mut self, confidence: f64) -> Self {
        self.state.confidence = confidence;
        self
    }

    /// Records that this proposal was derived from an existing fact (checked at the gate).
    pub fn derived_from(mut self, key: ContextKey, id: impl Into<String>) -> Self {
        self.state.derived_from.push((key, id.into()));
        self
    }

    /// Cites an observation of the same effect by its position in
    /// [`crate::AgentEffect::observations`].
    pub fn citing(mut self, observation_index: u32) -> Self {
        self.state.evidence.push(observation_index);
        self
    }

    /// Makes this proposal a correction of the existing fact with the same key and id: if
    /// promoted it supersedes that fact, which stays in the history.
    pub fn correcting(mut self, reason: impl Into<String>) -> Self {
        self.state.correction = Some(reason.into());
        self
    }

    /// The key as the agent named it.
    pub fn key(&self) -> &KeyRef {
        &self.state.key
    }

    /// The fact id as the agent wrote it.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The proposed content.
    pub fn content(&self) -> &Value {
        &self.state.content
    }

    /// The raw confidence.
    pub fn confidence(&self) -> f64 {
        self.state.confidence
    }

    /// The correction reason, if this is a correction.
    pub fn correction(&self) -> Option<&str> {
        self.state.correction.as_deref()
    }

    /// The facts the agent says it derived this from, as written (checked at the gate).
    pub fn derivations(&self) -> impl ExactSizeIterator<Item = (ContextKey, &str)> {
        self.state
            .derived_from
            .iter()
            .map(|(key, id)| (*key, id.as_str()))
    }

    /// The observation indices this draft cites, as written (checked at the gate).
    pub fn citations(&self) -> &[u32] {
        &self.state.evidence
    }
}

impl Proposal<Validated> {
    /// The engine-assigned proposal id.
    pub fn proposal_id(&self) -> ProposalId {
        self.state.proposal
    }

    /// The proposing agent.
    pub fn agent(&self) -> AgentId {
        self.state.proposal.agent()
    }

    /// The key.
    pub fn key(&self) -> ContextKey {
        self.state.key
    }

    /// The fact id.
    pub fn id(&self) -> &FactId {
        &self.state.id
    }

    /// The content.
    pub fn content(&self) -> &Value {
        &self.state.content
    }

    /// The SHA-256 of the canonical content.
    pub fn content_hash(&self) -> Digest {
        self.state.content_hash
    }

    /// The confidence.
    pub fn confidence(&self) -> Confidence {
        self.state.confidence
    }

    /// The proposal hash an approval must name: it binds everything the fact will carry —
    /// key, id, content, confidence, the facts it derives from, the observations it cites
    /// and the correction reason.
    pub fn hash(&self) -> Digest {
        let state = &self.state;
        proposal_hash(ProposalParts {
            key: state.key,
            id: &state.id,
            content_hash: state.content_hash,
            confidence: state.confidence,
            derived_from: &state.derived_from,
            evidence: &state.evidence,
            correction: state.correction.as_deref(),
        })
    }

    /// The facts this proposal says it was derived from.
    pub fn derived_from(&self) -> &[FactRef] {
        &self.state.derived_from
    }

    /// The observations this proposal cites.
    pub fn evidence(&self) -> &[ObservationId] {
        &self.state.evidence
    }

    /// The correction reason, if this is a correction.
    pub fn correction(&self) -> Option<&str> {
        self.state.correction.as_deref()
    }

    /// What the gate checked.
    pub fn report(&self) -> &ValidationReport {
        &self.state.report
    }
}

/// Everything a proposal hash binds.
pub(crate) struct ProposalParts<'a> {
    pub(crate) key: ContextKey,
    pub(crate) id: &'a FactId,
    pub(crate) content_hash: Digest,
    pub(crate) confidence: Confidence,
    pub(crate) derived_from: &'a [FactRef],
    pub(crate) evidence: &'a [ObservationId],
    pub(crate) correction: Option<&'a str>,
}

/// The hash that binds an approval to one exact proposal: every field the fact will carry,
/// each length-prefixed ([`Digest::of_parts`]); each derivation as its key name then its id,
/// and the evidence as observation ids, in order, each list preceded by its length.
pub(crate) fn proposal_hash(parts: ProposalParts<'_>) -> Digest {
    let confidence = parts.confidence.value().to_bits().to_le_bytes();
    let (flag, reason): (&[u8], &[u8]) = match parts.correction {
        None => (b"plain", b""),
        Some(reason) => (b"correction", reason.as_bytes()),
    };
    let evidence: Vec<String> = parts.evidence.iter().map(ToString::to_string).collect();
    let derivation_count = (parts.derived_from.len() as u64).to_le_bytes();
    let evidence_count = (evidence.len() as u64).to_le_bytes();
    let mut all: Vec<&[u8]> = vec![
        parts.key.name().as_bytes(),
        parts.id.as_str().as_bytes(),
        parts.content_hash.as_bytes(),
        &confidence,
        flag,
        reason,
        &derivation_count,
    ];
    for fact in parts.derived_from {
        all.push(fact.key.name().as_bytes());
        all.push(fact.id.as_str().as_bytes());
    }
    all.push(&evidence_count);
    all.extend(evidence.iter().map(String::as_bytes));
    Digest::of_parts(&all)
}
