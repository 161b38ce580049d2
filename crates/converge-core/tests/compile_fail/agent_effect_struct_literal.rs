//! Forgery: build an `AgentEffect` with a struct literal (for instance to fake token usage or
//! to stuff it with something other than drafts).
//!
//! Must fail: the fields of `AgentEffect` are private; it is built with its methods.

use converge_core::{AgentEffect, TokenUsage};

fn main() {
    let _effect = AgentEffect {
        proposals: Vec::new(),
        observations: Vec::new(),
        usage: TokenUsage::default(),
    };
}
