//! Forgery: build a `PromotionGate` with a struct literal.
//!
//! Must fail twice over: the fields of `PromotionGate` are private (E0451), and the type of
//! `limits` (`GateLimits`) is private to the crate, so no value of it may appear outside.
//! (`anything` stands in for such a value.)

use std::collections::BTreeMap;

use converge_core::{ContextKey, PromotionGate, ValidationPolicy};

fn anything<T>() -> T {
    panic!("never called: the program must not compile")
}

fn forge(policies: &BTreeMap<ContextKey, ValidationPolicy>) -> PromotionGate<'_> {
    PromotionGate {
        policies,
        limits: anything(),
    }
}

fn main() {
    let _ = forge;
}
