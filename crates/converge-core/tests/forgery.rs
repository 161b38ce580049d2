//! Governance types cannot be forged by code outside the crate.
//!
//! A [`converge_core::Fact`] exists only because the promotion gate admitted a validated
//! proposal; an [`converge_core::AuthorityGrant`] only because the engine registered an agent.
//! Each program under `tests/compile_fail/` tries one way to obtain such a value without going
//! through the engine (a struct literal, a crate-private constructor, `Default`, `Deserialize`,
//! `Clone`, a private field or method) and must be rejected by the compiler with the error
//! recorded next to it in the matching `.stderr` file.

#[test]
fn governance_types_cannot_be_forged() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
}
