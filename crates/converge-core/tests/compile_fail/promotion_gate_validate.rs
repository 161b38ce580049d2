//! Forgery: given a gate, call its `validate` to obtain a `Proposal<Validated>` outside the
//! engine, with a proposer of one's choosing.
//!
//! Must fail: `PromotionGate::validate` is `pub(crate)`. (Its `Proposer` argument is not even
//! nameable outside the crate; `anything` stands in for it.)

use converge_core::{Context, Draft, PromotionGate, Proposal, ProposalId};

fn anything<T>() -> T {
    panic!("never called: the program must not compile")
}

fn forge(gate: &PromotionGate<'_>, id: ProposalId, draft: Proposal<Draft>, ctx: &Context) {
    let _validated = gate.validate(id, draft, anything(), ctx, |_| None);
}

fn main() {
    let _ = forge;
}
