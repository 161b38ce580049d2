//! Forgery: rewrite the content of a promoted fact by assigning its field.
//!
//! Must fail: the `content` field of `Fact` is private.

use converge_core::Fact;
use serde_json::Value;

fn tamper(fact: &mut Fact, content: Value) {
    fact.content = content;
}

fn main() {
    let _ = tamper;
}
