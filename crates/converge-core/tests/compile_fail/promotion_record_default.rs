//! Forgery: obtain a `PromotionRecord` from `Default`.
//!
//! Must fail: `PromotionRecord` does not implement `Default`; provenance is never blank.

use converge_core::PromotionRecord;

fn main() {
    let _record = PromotionRecord::default();
}
