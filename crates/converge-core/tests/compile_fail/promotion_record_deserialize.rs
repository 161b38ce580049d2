//! Forgery: read a `PromotionRecord` from JSON, claiming an approval that never happened.
//!
//! Must fail: `PromotionRecord` is `Serialize` only.

use converge_core::PromotionRecord;

fn main() {
    let _record = serde_json::from_str::<PromotionRecord>(r#"{"approver":"alice"}"#);
}
