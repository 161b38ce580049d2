//! Forgery: call `Fact::promote`, the constructor the promotion gate uses, directly.
//!
//! Must fail: `Fact::promote` is `pub(crate)`; only `PromotionGate::promote` may call it. (Its
//! third argument, `PromotionContext`, is not even nameable outside the crate; `anything`
//! stands in for it.)

use converge_core::{Fact, Proposal, Validated};

fn anything<T>() -> T {
    panic!("never called: the program must not compile")
}

fn forge(proposal: Proposal<Validated>) -> Fact {
    Fact::promote(proposal, 0, anything())
}

fn main() {
    let _ = forge;
}
