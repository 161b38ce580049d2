//! Forgery: call `AuthorityGrant::mint`, the engine's constructor, directly.
//!
//! Must fail: `AuthorityGrant::mint` is `pub(crate)`.

use converge_core::{AgentId, AuthorityGrant, AuthorityScope, ContextKey};

fn forge(agent: AgentId) -> AuthorityGrant {
    AuthorityGrant::mint(agent, AuthorityScope::keys([ContextKey::Constraints]))
}

fn main() {
    let _ = forge;
}
