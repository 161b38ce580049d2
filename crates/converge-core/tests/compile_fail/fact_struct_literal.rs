//! Forgery: build a `Fact` with a struct literal, claiming any content and provenance.
//!
//! Must fail: every field of `Fact` is private, so only the crate (the promotion gate, via
//! `Fact::promote`) can assemble one.

use converge_core::{Confidence, ContextKey, Digest, Fact, FactId, PromotionRecord};
use serde_json::Value;

fn forge(id: FactId, content: Value, record: PromotionRecord) -> Fact {
    Fact {
        key: ContextKey::Seeds,
        id,
        version: 0,
        content_hash: Digest::of_json(&content),
        content,
        confidence: Confidence::CERTAIN,
        record,
    }
}

fn main() {
    let _ = forge;
}
