//! Forgery: read a `Proposal<Validated>` from JSON.
//!
//! Must fail: neither `Proposal` nor `Validated` implements `Deserialize`.

use converge_core::{Proposal, Validated};

fn main() {
    let _validated = serde_json::from_str::<Proposal<Validated>>(r#"{"state":{}}"#);
}
