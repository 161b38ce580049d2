//! Forgery: hand a fact back from an agent, skipping the gate.
//!
//! Must fail: `AgentEffect` has no way to hold a fact; there is no `with_fact`.

use converge_core::{AgentEffect, Fact};

fn smuggle(fact: Fact) -> AgentEffect {
    AgentEffect::empty().with_fact(fact)
}

fn main() {
    let _ = smuggle;
}
