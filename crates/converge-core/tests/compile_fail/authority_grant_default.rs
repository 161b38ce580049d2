//! Forgery: obtain an `AuthorityGrant` from `Default`.
//!
//! Must fail: `AuthorityGrant` does not implement `Default`.

use converge_core::AuthorityGrant;

fn main() {
    let _grant = AuthorityGrant::default();
}
