//! Forgery: convert a draft proposal straight into a validated one.
//!
//! Must fail: there is no `From<Proposal<Draft>>` (or any other conversion) for
//! `Proposal<Validated>`; the gate's `validate` is the only path.

use converge_core::{ContextKey, Proposal, Validated};

fn main() {
    let draft = Proposal::new(ContextKey::Seeds, "s1", "unchecked");
    let _validated: Proposal<Validated> = draft.into();
}
