//! Forgery: build a `PromotionGate` of one's own, with policies of one's choosing.
//!
//! Must fail: `PromotionGate::new` is `pub(crate)`; only the engine builds a gate. (Its
//! `GateLimits` argument is not even nameable outside the crate; `anything` stands in for it.)

use std::collections::BTreeMap;

use converge_core::{ContextKey, PromotionGate, ValidationPolicy};

fn anything<T>() -> T {
    panic!("never called: the program must not compile")
}

fn forge(policies: &BTreeMap<ContextKey, ValidationPolicy>) -> PromotionGate<'_> {
    PromotionGate::new(policies, anything())
}

fn main() {
    let _ = forge;
}
