//! Forgery: given a gate, call its `promote` to turn a validated proposal into a fact outside
//! the engine (for instance a parked proposal that no human approved).
//!
//! Must fail: `PromotionGate::promote` is `pub(crate)`.

use std::sync::Arc;

use converge_core::{Context, Fact, PromotionGate, Proposal, TraceLink, Validated};

fn forge(
    gate: &PromotionGate<'_>,
    proposal: Proposal<Validated>,
    ctx: &Context,
    trace: TraceLink,
) -> Fact {
    gate.promote(proposal, ctx, trace, 0, Arc::from("forger"), None)
}

fn main() {
    let _ = forge;
}
