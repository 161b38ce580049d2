//! The promotion gate: the one path from a draft proposal to a fact.
//!
//! The gate checks a [`Proposal<Draft>`] in a fixed order — key, authority, id, confidence,
//! content, evidence, derivation, existing facts, then the key's user validators — and either
//! returns a [`Proposal<Validated>`] or a [`Rejection`] that says exactly why. Rejections are
//! values, recorded by the engine; they are never errors and never dropped. The gate cannot be
//! built outside this crate, and it is the only code that calls `Fact::promote`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::authority::{Actor, AuthorityGrant};
use crate::context::Context;
use crate::digest::{Digest, canonical_len};
use crate::fact::{CorrectionEvent, Fact, PromotionContext};
use crate::id::{FactId, ObservationId, ProposalId};
use crate::key::ContextKey;
use crate::observation::TraceLink;
use crate::proposal::{Confidence, Draft, FactRef, KeyRef, Proposal, Validated};

/// The built-in checks every proposal passes before any user validator runs.
pub const STRUCTURAL_CHECKS: &[&str] = &[
    "key",
    "authority",
    "fact_id",
    "confidence",
    "content",
    "evidence",
    "derivation",
    "uniqueness",
];

/// What the gate checked for one proposal. Built only by the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationReport {
    structural: &'static [&'static str],
    validators: Vec<Arc<str>>,
    policy_version: u32,
}

impl ValidationReport {
    /// The built-in checks that passed (always all of [`STRUCTURAL_CHECKS`]).
    pub fn structural(&self) -> &[&'static str] {
        self.structural
    }

    /// The user validators of the key's policy that passed, in policy order.
    pub fn validators(&self) -> impl Iterator<Item = &str> {
        self.validators.iter().map(|name| &**name)
    }

    /// The version of the policy applied.
    pub fn policy_version(&self) -> u32 {
        self.policy_version
    }
}

/// What a user validator sees of a proposal that passed the structural checks.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The key.
    pub key: ContextKey,
    /// The fact id.
    pub id: &'a FactId,
    /// The content.
    pub content: &'a Value,
    /// The confidence.
    pub confidence: Confidence,
    /// The proposing agent's name.
    pub agent: &'a str,
}

/// A user-supplied check on proposals into a key.
pub trait Validator: Send + Sync {
    /// A stable name, recorded in reports and rejections.
    fn name(&self) -> &str;

    /// `Err(reason)` rejects the proposal. Must be pure and deterministic.
    fn validate(&self, candidate: &Candidate<'_>) -> Result<(), String>;
}

struct FnValidator<F> {
    name: Arc<str>,
    check: F,
}

impl<F> Validator for FnValidator<F>
where
    F: Fn(&Candidate<'_>) -> Result<(), String> + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, candidate: &Candidate<'_>) -> Result<(), String> {
        (self.check)(candidate)
    }
}

/// How proposals into one key are validated, and whether a human must approve them.
///
/// ```
/// use converge_core::ValidationPolicy;
///
/// let policy = ValidationPolicy::new()
///     .with_check("has-owner", |c| {
///         c.content.get("owner").map(|_| ()).ok_or_else(|| "no owner".to_string())
///     })
///     .requiring_approval();
/// assert!(policy.requires_approval());
/// ```
pub struct ValidationPolicy {
    version: u32,
    validators: Vec<Box<dyn Validator>>,
    requires_approval: bool,
}

impl ValidationPolicy {
    /// A policy at version 1 with no user validators and no approval.
    pub fn new() -> ValidationPolicy {
        ValidationPolicy {
            version: 1,
            validators: Vec::new(),
            requires_approval: false,
        }
    }

    /// Sets the version recorded in every fact this policy admits.
    pub fn with_version(mut self, version: u32) -> ValidationPolicy {
        self.version = version;
        self
    }

    /// Adds a validator; validators run in the order added.
    pub fn with_validator(mut self, validator: impl Validator + 'static) -> ValidationPolicy {
        self.validators.push(Box::new(validator));
        self
    }

    /// Adds a validator written as a closure.
    pub fn with_check<F>(self, name: &str, check: F) -> ValidationPolicy
    where
        F: Fn(&Candidate<'_>) -> Result<(), String> + Send + Sync + 'static,
    {
        self.with_validator(FnValidator {
            name: Arc::from(name),
            check,
        })
    }

    /// Requires a named human to approve each proposal before it is promoted.
    pub fn requiring_approval(mut self) -> ValidationPolicy {
        self.requires_approval = true;
        self
    }

    /// Whether proposals must be approved by a human.
    pub fn requires_approval(&self) -> bool {
        self.requires_approval
    }

    /// The policy version.
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        ValidationPolicy::new()
    }
}

impl fmt::Debug for ValidationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.validators.iter().map(|v| v.name()).collect();
        f.debug_struct("ValidationPolicy")
            .field("version", &self.version)
            .field("validators", &names)
            .field("requires_approval", &self.requires_approval)
            .finish()
    }
}

/// Why a proposal was not promoted. A value, recorded as an event and kept in the result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// The key name is not valid.
    InvalidKey {
        /// What is wrong with it.
        detail: String,
    },
    /// The agent was not granted the key.
    Unauthorized {
        /// The key it proposed into.
        key: ContextKey,
    },
    /// The fact id is not valid.
    InvalidId {
        /// What is wrong with it.
        detail: String,
    },
    /// The confidence is NaN, infinite or outside `[0, 1]`.
    InvalidConfidence {
        /// The value, as text (NaN and infinities have no JSON number).
        value: String,
    },
    /// The content is null, an empty string, an empty array or an empty object.
    EmptyContent,
    /// The canonical content is larger than the engine's limit.
    ContentTooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The proposal cites an observation index its effect does not have.
    UnknownEvidence {
        /// The cited index.
        index: u32,
    },
    /// The proposal claims derivation from a fact that does not exist.
    UnknownDerivation {
        /// The cited key.
        key: ContextKey,
        /// The cited id.
        id: String,
    },
    /// A fact with this key and id already exists with the same content.
    Duplicate {
        /// The fact.
        fact: FactRef,
    },
    /// A fact with this key and id already exists with different content; change it with a
    /// correction.
    Conflict {
        /// The fact.
        fact: FactRef,
        /// The content hash of the fact that stands.
        existing_hash: Digest,
    },
    /// Another proposal for this key and id is waiting for approval.
    AwaitingApproval {
        /// The fact.
        fact: FactRef,
        /// The parked proposal.
        pending: ProposalId,
    },
    /// A correction of a fact that does not exist.
    UnknownCorrectionTarget {
        /// The fact.
        fact: FactRef,
    },
    /// A user validator refused the proposal.
    ValidatorFailed {
        /// The validator's name.
        validator: String,
        /// Its reason.
        detail: String,
    },
    /// Promoting the proposal would violate a structural invariant.
    InvariantViolated {
        /// The invariant's name.
        invariant: String,
        /// Its reason.
        detail: String,
    },
    /// A structural invariant could not be evaluated with the proposal in place, so it
    /// cannot be known to hold.
    InvariantUnevaluable {
        /// The invariant's name.
        invariant: String,
        /// Why it could not be evaluated.
        detail: String,
    },
    /// The fact budget was exhausted before this proposal could be promoted.
    FactBudgetExhausted {
        /// The budget.
        limit: u64,
    },
    /// The effect had more proposals than the engine accepts from one execution.
    TooManyProposals {
        /// The limit.
        limit: usize,
    },
    /// The proposal was waiting for approval when the run stopped for another reason; it can
    /// no longer be decided.
    UndecidedAtStop,
    /// A human rejected the proposal.
    RejectedByApprover {
        /// Who rejected it.
        actor: Actor,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::InvalidKey { detail } => write!(f, "invalid key: {detail}"),
            Rejection::Unauthorized { key } => write!(f, "agent is not granted key {key}"),
            Rejection::InvalidId { detail } => write!(f, "invalid fact id: {detail}"),
            Rejection::InvalidConfidence { value } => {
                write!(f, "confidence {value} is not a finite number in [0, 1]")
            }
            Rejection::EmptyContent => f.write_str("content is empty"),
            Rejection::ContentTooLarge { bytes, limit } => {
                write!(f, "content is {bytes} bytes; the limit is {limit}")
            }
            Rejection::UnknownEvidence { index } => write!(f, "cites unknown observation #{index}"),
            Rejection::UnknownDerivation { key, id } => {
                write!(f, "derived from unknown fact {key}/{id}")
            }
            Rejection::Duplicate { fact } => {
                write!(f, "{}/{} already holds this content", fact.key, fact.id)
            }
            Rejection::Conflict { fact, .. } => {
                write!(
                    f,
                    "{}/{} already exists with other content; propose a correction",
                    fact.key, fact.id
                )
            }
            Rejection::AwaitingApproval { fact, pending } => {
                write!(
                    f,
                    "{}/{} is awaiting approval as {pending}",
                    fact.key, fact.id
                )
            }
            Rejection::UnknownCorrectionTarget { fact } => {
                write!(f, "correction of unknown fact {}/{}", fact.key, fact.id)
            }
            Rejection::ValidatorFailed { validator, detail } => {
                write!(f, "validator {validator}: {detail}")
            }
            Rejection::InvariantViolated { invariant, detail } => {
                write!(f, "invariant {invariant}: {detail}")
            }
            Rejection::InvariantUnevaluable { invariant, detail } => {
                write!(f, "invariant {invariant} could not be evaluated: {detail}")
            }
            Rejection::FactBudgetExhausted { limit } => {
                write!(f, "fact budget of {limit} exhausted")
            }
            Rejection::TooManyProposals { limit } => {
                write!(f, "more than {limit} proposals in one effect")
            }
            Rejection::UndecidedAtStop => {
                f.write_str("still awaiting approval when the run stopped")
            }
            Rejection::RejectedByApprover { actor, reason } => {
                write!(f, "rejected by {actor}: {reason}")
            }
        }
    }
}

/// Limits the gate enforces on every proposal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GateLimits {
    pub(crate) content_bytes_max: usize,
}

/// Who proposed, as the gate needs to know.
pub(crate) struct Proposer<'a> {
    pub(crate) grant: &'a AuthorityGrant,
    pub(crate) name: &'a Arc<str>,
    pub(crate) observations: &'a [ObservationId],
}

/// The promotion gate. Only the engine builds one.
pub struct PromotionGate<'a> {
    policies: &'a BTreeMap<ContextKey, ValidationPolicy>,
    limits: GateLimits,
}

impl<'a> PromotionGate<'a> {
    pub(crate) fn new(
        policies: &'a BTreeMap<ContextKey, ValidationPolicy>,
        limits: GateLimits,
    ) -> PromotionGate<'a> {
        PromotionGate { policies, limits }
    }

    /// Whether proposals into `key` must be approved by a human.
    pub fn requires_approval(&self, key: ContextKey) -> bool {
        self.policies
            .get(&key)
            .is_some_and(ValidationPolicy::requires_approval)
    }

    fn policy_version(&self, key: ContextKey) -> u32 {
        self.policies.get(&key).map_or(1, ValidationPolicy::version)
    }

    /// Runs every check on a draft. `pending` names a parked proposal holding the same fact.
    pub(crate) fn validate(
        &self,
        id: ProposalId,
        draft: Proposal<Draft>,
        proposer: &Proposer<'_>,
        ctx: &Context,
        pending: impl Fn(&FactRef) -> Option<ProposalId>,
    ) -> Result<Proposal<Validated>, (Proposal<Draft>, Rejection)> {
        match self.check(id, &draft.state, proposer, ctx, pending) {
            Ok(checked) => Ok(self.finish(id, draft.state, checked)),
            Err(rejection) => Err((draft, rejection)),
        }
    }

    fn check(
        &self,
        id: ProposalId,
        draft: &Draft,
        proposer: &Proposer<'_>,
        ctx: &Context,
        pending: impl Fn(&FactRef) -> Option<ProposalId>,
    ) -> Result<Checked, Rejection> {
        let key = parse_key(&draft.key)?;
        if !proposer.grant.scope().allows(key) {
            return Err(Rejection::Unauthorized { key });
        }
        let fact_id = FactId::new(&draft.id).map_err(|e| Rejection::InvalidId {
            detail: e.to_string(),
        })?;
        let confidence =
            Confidence::new(draft.confidence).map_err(|_| Rejection::InvalidConfidence {
                value: draft.confidence.to_string(),
            })?;
        self.check_content(&draft.content)?;
        let evidence = resolve_evidence(&draft.evidence, proposer.observations)?;
        let derived_from = resolve_derivations(&draft.derived_from, ctx)?;
        let fact = FactRef { key, id: fact_id };
        let content_hash = Digest::of_json(&draft.content);
        check_uniqueness(
            &fact,
            content_hash,
            draft.correction.is_some(),
            ctx,
            pending,
        )?;
        let candidate = Candidate {
            key,
            id: &fact.id,
            content: &draft.content,
            confidence,
            agent: proposer.name,
        };
        let validators = self.run_validators(&candidate)?;
        let _ = id;
        Ok(Checked {
            fact,
            confidence,
            content_hash,
            evidence,
            derived_from,
            validators,
        })
    }

    fn check_content(&self, content: &Value) -> Result<(), Rejection> {
        let empty = match content {
            Value::Null => true,
            Value::String(text) => text.trim().is_empty(),
            Value::Array(items) => items.is_empty(),
            Value::Object(map) => map.is_empty(),
            Value::Bool(_) | Value::Number(_) => false,
        };
        if empty {
            return Err(Rejection::EmptyContent);
        }
        let bytes = canonical_len(content);
        let limit = self.limits.content_bytes_max;
        if bytes > limit {
            return Err(Rejection::ContentTooLarge { bytes, limit });
        }
        Ok(())
    }

    fn run_validators(&self, candidate: &Candidate<'_>) -> Result<Vec<Arc<str>>, Rejection> {
        let Some(policy) = self.policies.get(&candidate.key) else {
            return Ok(Vec::new());
        };
        let mut passed = Vec::with_capacity(policy.validators.len());
        for validator in &policy.validators {
            validator
                .validate(candidate)
                .map_err(|detail| Rejection::ValidatorFailed {
                    validator: validator.name().to_owned(),
                    detail,
                })?;
            passed.push(Arc::from(validator.name()));
        }
        Ok(passed)
    }

    fn finish(&self, id: ProposalId, draft: Draft, checked: Checked) -> Proposal<Validated> {
        let Checked {
            fact,
            confidence,
            content_hash,
            evidence,
            derived_from,
            validators,
        } = checked;
        let report = ValidationReport {
            structural: STRUCTURAL_CHECKS,
            validators,
            policy_version: self.policy_version(fact.key),
        };
        Proposal {
            state: Validated {
                proposal: id,
                key: fact.key,
                id: fact.id,
                content: draft.content,
                content_hash,
                confidence,
                derived_from,
                evidence,
                correction: draft.correction,
                report,
            },
        }
    }

    /// Re-checks what may have changed since validation (another fact may have taken the id
    /// while the proposal waited for approval).
    pub(crate) fn recheck(
        &self,
        proposal: &Proposal<Validated>,
        ctx: &Context,
    ) -> Result<(), Rejection> {
        let fact = FactRef {
            key: proposal.key(),
            id: proposal.id().clone(),
        };
        let correcting = proposal.correction().is_some();
        check_uniqueness(&fact, proposal.content_hash(), correcting, ctx, |_| None)
    }

    /// Turns a validated proposal into a fact. The only caller of `Fact::promote`.
    pub(crate) fn promote(
        &self,
        proposal: Proposal<Validated>,
        ctx: &Context,
        trace: TraceLink,
        cycle: u32,
        agent_name: Arc<str>,
        approver: Option<Actor>,
    ) -> Fact {
        let previous = ctx.fact(proposal.key(), proposal.id().as_str());
        let version = previous.map_or(0, |fact| fact.version() + 1);
        let correction = proposal
            .correction()
            .zip(previous)
            .map(|(reason, previous)| CorrectionEvent {
                fact: FactRef {
                    key: previous.key(),
                    id: previous.id().clone(),
                },
                supersedes_version: previous.version(),
                supersedes_hash: previous.content_hash(),
                reason: reason.to_owned(),
            });
        let policy_version = proposal.report().policy_version();
        let context = PromotionContext {
            agent_name,
            cycle,
            approver,
            policy_version,
            trace,
            correction,
        };
        Fact::promote(proposal, version, context)
    }
}

struct Checked {
    fact: FactRef,
    confidence: Confidence,
    content_hash: Digest,
    evidence: Vec<ObservationId>,
    derived_from: Vec<FactRef>,
    validators: Vec<Arc<str>>,
}

fn parse_key(key: &KeyRef) -> Result<ContextKey, Rejection> {
    match key {
        KeyRef::Key(key) => Ok(*key),
        KeyRef::Name(name) => {
            name.parse()
                .map_err(|e: crate::key::KeyError| Rejection::InvalidKey {
                    detail: e.to_string(),
                })
        }
    }
}

fn resolve_evidence(
    indices: &[u32],
    observations: &[ObservationId],
) -> Result<Vec<ObservationId>, Rejection> {
    indices
        .iter()
        .map(|&index| {
            observations
                .get(index as usize)
                .copied()
                .ok_or(Rejection::UnknownEvidence { index })
        })
        .collect()
}

fn resolve_derivations(
    cited: &[(ContextKey, String)],
    ctx: &Context,
) -> Result<Vec<FactRef>, Rejection> {
    cited
        .iter()
        .map(|(key, id)| match ctx.fact(*key, id) {
            Some(fact) => Ok(FactRef {
                key: *key,
                id: fact.id().clone(),
            }),
            None => Err(Rejection::UnknownDerivation {
                key: *key,
                id: id.clone(),
            }),
        })
        .collect()
}

fn check_uniqueness(
    fact: &FactRef,
    content_hash: Digest,
    correcting: bool,
    ctx: &Context,
    pending: impl Fn(&FactRef) -> Option<ProposalId>,
) -> Result<(), Rejection> {
    if let Some(pending) = pending(fact) {
        return Err(Rejection::AwaitingApproval {
            fact: fact.clone(),
            pending,
        });
    }
    match (ctx.fact(fact.key, fact.id.as_str()), correcting) {
        (Some(existing), _) if existing.content_hash() == content_hash => {
            Err(Rejection::Duplicate { fact: fact.clone() })
        }
        (Some(existing), false) => Err(Rejection::Conflict {
            fact: fact.clone(),
            existing_hash: existing.content_hash(),
        }),
        (None, true) => Err(Rejection::UnknownCorrectionTarget { fact: fact.clone() }),
        _ => Ok(()),
    }
}
