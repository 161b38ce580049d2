//! Human approval: parked proposals and the decisions that release them.
//!
//! A proposal into a key whose policy requires approval is parked, not promoted. A
//! [`Decision`] names the proposal *and its hash*, comes from a human [`Actor`], and is used
//! once. Anything else is refused with a [`DecisionRefusal`] that is recorded in the run.

use serde::Serialize;

use crate::authority::Actor;
use crate::digest::Digest;
use crate::id::{AgentId, ProposalId};
use crate::proposal::{Confidence, FactRef};

/// A proposal waiting for a human.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingApproval {
    /// The parked proposal.
    pub proposal: ProposalId,
    /// The hash a decision must name.
    pub hash: Digest,
    /// The fact it would become.
    pub fact: FactRef,
    /// The hash of its content.
    pub content_hash: Digest,
    /// Its confidence.
    pub confidence: Confidence,
    /// The proposing agent.
    pub agent: AgentId,
}

/// Approve or reject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Promote the proposal.
    Approve,
    /// Reject it, with a reason.
    Reject {
        /// Why.
        reason: String,
    },
}

/// A human's decision on one exact parked proposal.
///
/// ```
/// use converge_core::{Actor, Decision, Digest, ProposalId};
///
/// let id: ProposalId = "c1.a0.p0".parse().unwrap();
/// let decision = Decision::approve(id, Digest::zero(), Actor::human("alice").unwrap());
/// assert_eq!(decision.proposal(), id);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    proposal: ProposalId,
    hash: Digest,
    actor: Actor,
    verdict: Verdict,
}

impl Decision {
    /// Approves the proposal with this id and hash.
    pub fn approve(proposal: ProposalId, hash: Digest, actor: Actor) -> Decision {
        Decision {
            proposal,
            hash,
            actor,
            verdict: Verdict::Approve,
        }
    }

    /// Rejects the proposal with this id and hash.
    pub fn reject(
        proposal: ProposalId,
        hash: Digest,
        actor: Actor,
        reason: impl Into<String>,
    ) -> Decision {
        Decision {
            proposal,
            hash,
            actor,
            verdict: Verdict::Reject {
                reason: reason.into(),
            },
        }
    }

    /// The proposal decided on.
    pub fn proposal(&self) -> ProposalId {
        self.proposal
    }

    /// The hash the decider saw.
    pub fn hash(&self) -> Digest {
        self.hash
    }

    /// Who decided.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// What they decided.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }
}

/// Why a decision was refused. The decision changes nothing; the refusal is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DecisionRefusal {
    /// No parked proposal has this id.
    UnknownProposal,
    /// The proposal was already decided; decisions are single-use.
    AlreadyDecided,
    /// The hash does not match the parked proposal (it is not what the approver saw).
    StaleHash {
        /// The parked proposal's hash.
        expected: Digest,
    },
    /// Only a human may decide.
    NotHuman,
}
