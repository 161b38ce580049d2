//! Forgery: build the `Validated` state itself with a struct literal, claiming that checks
//! passed.
//!
//! Must fail: every field of `Validated` is `pub(crate)`.

use converge_core::{
    Confidence, ContextKey, Digest, FactId, FactRef, ObservationId, ProposalId, Validated,
    ValidationReport,
};
use serde_json::Value;

fn forge(
    proposal: ProposalId,
    id: FactId,
    content: Value,
    derived_from: Vec<FactRef>,
    evidence: Vec<ObservationId>,
    report: ValidationReport,
) -> Validated {
    Validated {
        proposal,
        key: ContextKey::Seeds,
        id,
        content_hash: Digest::of_json(&content),
        content,
        confidence: Confidence::CERTAIN,
        derived_from,
        evidence,
        correction: None,
        report,
    }
}

fn main() {
    let _ = forge;
}
