//! Forgery: build a `ValidationReport` with a struct literal, claiming validators ran.
//!
//! Must fail: every field of `ValidationReport` is private; only the gate writes reports.

use std::sync::Arc;

use converge_core::{STRUCTURAL_CHECKS, ValidationReport};

fn forge(validators: Vec<Arc<str>>) -> ValidationReport {
    ValidationReport {
        structural: STRUCTURAL_CHECKS,
        validators,
        policy_version: 1,
    }
}

fn main() {
    let _ = forge;
}
