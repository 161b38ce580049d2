//! Forgery: duplicate an agent's grant (e.g. one borrowed from `Engine::grant`).
//!
//! Must fail: `AuthorityGrant` is not `Clone`; cloning would duplicate authority.

use converge_core::AuthorityGrant;

fn duplicate(grant: &AuthorityGrant) -> AuthorityGrant {
    AuthorityGrant::clone(grant)
}

fn main() {
    let _ = duplicate;
}
