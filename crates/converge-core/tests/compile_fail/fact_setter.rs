//! Forgery: rewrite the content of a promoted fact with a setter.
//!
//! Must fail: `Fact` has getters only; there is no `set_content` (nor any other setter).

use converge_core::Fact;
use serde_json::Value;

fn tamper(fact: &mut Fact, content: Value) {
    fact.set_content(content);
}

fn main() {
    let _ = tamper;
}
