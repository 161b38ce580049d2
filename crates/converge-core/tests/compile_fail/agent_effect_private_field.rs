//! Forgery: reach into an effect's private proposal list (to reorder, drop or replace what the
//! agent produced, bypassing the methods).
//!
//! Must fail: the `proposals` field of `AgentEffect` is private; `proposals()` is read-only.

use converge_core::AgentEffect;

fn tamper(effect: &mut AgentEffect) {
    effect.proposals.clear();
}

fn main() {
    let _ = tamper;
}
