//! Forgery: duplicate a fact taken out of a context.
//!
//! Must fail: `Fact` is not `Clone`, so a promoted fact cannot be copied out of one context
//! and smuggled into another run as if it had been promoted there.

use converge_core::Fact;

fn duplicate(fact: Fact) -> (Fact, Fact) {
    let copy = fact.clone();
    (fact, copy)
}

fn main() {
    let _ = duplicate;
}
