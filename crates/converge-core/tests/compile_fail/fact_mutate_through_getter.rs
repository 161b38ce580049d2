//! Forgery: rewrite the content of a promoted fact through its getter.
//!
//! Must fail: `Fact::content` returns a shared reference; it cannot be written through.

use converge_core::Fact;
use serde_json::Value;

fn tamper(fact: &mut Fact, content: Value) {
    *fact.content() = content;
}

fn main() {
    let _ = tamper;
}
