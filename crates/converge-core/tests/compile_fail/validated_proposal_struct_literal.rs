//! Forgery: wrap a `Validated` state in a `Proposal` with a struct literal.
//!
//! Must fail: the `state` field of `Proposal` is `pub(crate)`; only the gate builds a
//! `Proposal<Validated>`.

use converge_core::{Proposal, Validated};

fn forge(state: Validated) -> Proposal<Validated> {
    Proposal { state }
}

fn main() {
    let _ = forge;
}
