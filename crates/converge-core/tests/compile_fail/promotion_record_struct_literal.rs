//! Forgery: build a `PromotionRecord` with a struct literal, inventing a fact's provenance
//! (who proposed it, what was checked, who approved it).
//!
//! Must fail: every field of `PromotionRecord` is private.

use std::sync::Arc;

use converge_core::{
    Actor, AgentId, CorrectionEvent, FactRef, ObservationId, PromotionRecord, ProposalId,
    TraceLink, ValidationReport,
};

#[allow(clippy::too_many_arguments)]
fn forge(
    proposal: ProposalId,
    agent: AgentId,
    agent_name: Arc<str>,
    validation: ValidationReport,
    approver: Option<Box<Actor>>,
    trace: TraceLink,
    derived_from: Vec<FactRef>,
    evidence: Vec<ObservationId>,
    correction: Option<Box<CorrectionEvent>>,
) -> PromotionRecord {
    PromotionRecord {
        proposal,
        agent,
        agent_name,
        cycle: 0,
        validation,
        approver,
        policy_version: 1,
        trace,
        derived_from,
        evidence,
        correction,
    }
}

fn main() {
    let _ = forge;
}
