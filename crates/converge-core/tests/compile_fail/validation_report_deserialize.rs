//! Forgery: read a `ValidationReport` from JSON, claiming checks that never ran.
//!
//! Must fail: `ValidationReport` is `Serialize` only.

use converge_core::ValidationReport;

fn main() {
    let _report = serde_json::from_str::<ValidationReport>(r#"{"validators":["audit"]}"#);
}
