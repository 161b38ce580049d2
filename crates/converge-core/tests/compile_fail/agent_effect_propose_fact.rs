//! Forgery: pass a fact where an agent effect expects a proposal.
//!
//! Must fail: `AgentEffect::propose` takes a `Proposal<Draft>` only; a fact is not one.

use converge_core::{AgentEffect, Fact};

fn smuggle(fact: Fact) -> AgentEffect {
    let mut effect = AgentEffect::empty();
    effect.propose(fact);
    effect
}

fn main() {
    let _ = smuggle;
}
