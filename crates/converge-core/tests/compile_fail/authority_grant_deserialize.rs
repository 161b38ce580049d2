//! Forgery: read an `AuthorityGrant` from JSON, granting keys from outside the engine.
//!
//! Must fail: `AuthorityGrant` is `Serialize` only.

use converge_core::AuthorityGrant;

fn main() {
    let _grant = serde_json::from_str::<AuthorityGrant>(r#"{"agent":0,"scope":["constraints"]}"#);
}
