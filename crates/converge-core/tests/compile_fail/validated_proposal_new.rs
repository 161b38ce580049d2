//! Forgery: call `Proposal::new` at the validated type, skipping the gate.
//!
//! Must fail: `new` exists only on `Proposal<Draft>`; `Proposal<Validated>` has no constructor.

use converge_core::{ContextKey, Proposal, Validated};

fn main() {
    let _validated = Proposal::<Validated>::new(ContextKey::Seeds, "s1", "unchecked");
}
