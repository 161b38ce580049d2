//! Forgery: push a fact into a `Context` directly instead of through the gate.
//!
//! Must fail: `Context::insert` is `pub(crate)`; the context has no public way to add a fact.

use converge_core::{Context, Fact};

fn smuggle(ctx: &mut Context, fact: Fact) {
    ctx.insert(fact);
}

fn main() {
    let _ = smuggle;
}
