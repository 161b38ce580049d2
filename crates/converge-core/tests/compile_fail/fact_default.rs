//! Forgery: obtain a `Fact` from `Default`.
//!
//! Must fail: `Fact` does not implement `Default`; a fact with no provenance cannot exist.

use converge_core::Fact;

fn main() {
    let _fact = Fact::default();
}
