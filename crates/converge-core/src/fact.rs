//! Facts: the governed, append-only truth of a run.
//!
//! A [`Fact`] is constructed only by the promotion gate from a validated proposal. Its fields
//! are private, it has no setters and it is not `Deserialize`: a recorded run is loaded by
//! replaying its inputs through the gate, never by reading facts back.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::authority::Actor;
use crate::digest::Digest;
use crate::gate::ValidationReport;
use crate::id::{AgentId, FactId, ObservationId, ProposalId};
use crate::key::ContextKey;
use crate::observation::TraceLink;
use crate::proposal::{Confidence, FactRef, Proposal, ProposalParts, Validated, proposal_hash};

/// A promoted fact.
#[derive(Debug, PartialEq, Serialize)]
pub struct Fact {
    key: ContextKey,
    id: FactId,
    version: u32,
    content: Value,
    content_hash: Digest,
    confidence: Confidence,
    record: PromotionRecord,
}

impl Fact {
    /// Builds the fact a validated proposal becomes; the gate is the only caller.
    pub(crate) fn promote(
        proposal: Proposal<Validated>,
        version: u32,
        context: PromotionContext,
    ) -> Fact {
        let state = proposal.state;
        let record = PromotionRecord {
            proposal: state.proposal,
            agent: state.proposal.agent(),
            agent_name: context.agent_name,
            cycle: context.cycle,
            validation: state.report,
            approver: context.approver.map(Box::new),
            policy_version: context.policy_version,
            trace: context.trace,
            derived_from: state.derived_from,
            evidence: state.evidence,
            correction: context.correction.map(Box::new),
        };
        Fact {
            key: state.key,
            id: state.id,
            version,
            content: state.content,
            content_hash: state.content_hash,
            confidence: state.confidence,
            record,
        }
    }

    /// The key the fact lives in.
    pub fn key(&self) -> ContextKey {
        self.key
    }

    /// The fact's id, unique within its key.
    pub fn id(&self) -> &FactId {
        &self.id
    }

    /// 0 for the original, n for the n-th correction.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The content.
    pub fn content(&self) -> &Value {
        &self.content
    }

    /// SHA-256 of the canonical encoding of the content.
    pub fn content_hash(&self) -> Digest {
        self.content_hash
    }

    /// The proposer's confidence.
    pub fn confidence(&self) -> Confidence {
        self.confidence
    }

    /// Gives up the content (used when a promotion is undone).
    pub(crate) fn into_content(self) -> Value {
        self.content
    }

    /// The hash of the proposal this fact came from: what an approver approved.
    pub fn proposal_hash(&self) -> Digest {
        let correction = self
            .record
            .correction
            .as_ref()
            .map(|correction| correction.reason.as_str());
        proposal_hash(ProposalParts {
            key: self.key,
            id: &self.id,
            content_hash: self.content_hash,
            confidence: self.confidence,
            derived_from: &self.record.derived_from,
            evidence: &self.record.evidence,
            correction,
        })
    }

    /// Why this fact is true: who proposed it, what was checked, who approved.
    pub fn record(&self) -> &PromotionRecord {
        &self.record
    }
}

/// What the gate knows about a promotion beyond the proposal itself.
pub(crate) struct PromotionContext {
    pub(crate) agent_name: Arc<str>,
    pub(crate) cycle: u32,
    pub(crate) approver: Option<Actor>,
    pub(crate) policy_version: u32,
    pub(crate) trace: TraceLink,
    pub(crate) correction: Option<CorrectionEvent>,
}

/// The provenance of a fact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromotionRecord {
    proposal: ProposalId,
    agent: AgentId,
    agent_name: Arc<str>,
    cycle: u32,
    validation: ValidationReport,
    /// Boxed, as `correction`: most facts have neither, and every fact of a run is kept.
    approver: Option<Box<Actor>>,
    policy_version: u32,
    trace: TraceLink,
    derived_from: Vec<FactRef>,
    evidence: Vec<ObservationId>,
    correction: Option<Box<CorrectionEvent>>,
}

impl PromotionRecord {
    /// The proposal that became this fact.
    pub fn proposal(&self) -> ProposalId {
        self.proposal
    }

    /// The proposing agent.
    pub fn agent(&self) -> AgentId {
        self.agent
    }

    /// The proposing agent's name.
    pub fn agent_name(&self) -> &str {
        &self.agent_name
    }

    /// The cycle in which the fact was promoted.
    pub fn cycle(&self) -> u32 {
        self.cycle
    }

    /// What the gate checked.
    pub fn validation(&self) -> &ValidationReport {
        &self.validation
    }

    /// The human who approved the proposal, when the key's policy required one.
    pub fn approver(&self) -> Option<&Actor> {
        self.approver.as_deref()
    }

    /// The version of the key's validation policy that admitted the fact.
    pub fn policy_version(&self) -> u32 {
        self.policy_version
    }

    /// Where the fact came from.
    pub fn trace(&self) -> &TraceLink {
        &self.trace
    }

    /// The facts the proposer said it was derived from.
    pub fn derived_from(&self) -> &[FactRef] {
        &self.derived_from
    }

    /// The observations the proposer cited.
    pub fn evidence(&self) -> &[ObservationId] {
        &self.evidence
    }

    /// The correction this fact made, if it superseded an earlier version.
    pub fn correction(&self) -> Option<&CorrectionEvent> {
        self.correction.as_deref()
    }
}

/// A correction: a new version of a fact supersedes the previous one, with a reason.
/// The previous version stays in the context's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorrectionEvent {
    /// The corrected fact.
    pub fact: FactRef,
    /// The version that was superseded.
    pub supersedes_version: u32,
    /// The content hash of the superseded version.
    pub supersedes_hash: Digest,
    /// Why it was corrected.
    pub reason: String,
}
