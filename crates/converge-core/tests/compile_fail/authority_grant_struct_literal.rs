//! Forgery: build an `AuthorityGrant` with a struct literal, granting any agent any keys.
//!
//! Must fail: the fields of `AuthorityGrant` are private; only the engine mints grants, at
//! registration.

use converge_core::{AgentId, AuthorityGrant, AuthorityScope, ContextKey};

fn forge(agent: AgentId) -> AuthorityGrant {
    AuthorityGrant {
        agent,
        scope: AuthorityScope::keys([ContextKey::Constraints]),
    }
}

fn main() {
    let _ = forge;
}
