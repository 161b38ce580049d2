//! Forgery: obtain a `ValidationReport` from `Default`.
//!
//! Must fail: `ValidationReport` does not implement `Default`.

use converge_core::ValidationReport;

fn main() {
    let _report = ValidationReport::default();
}
