//! Forgery: read a `Fact` back from JSON, bypassing the gate.
//!
//! Must fail: `Fact` is `Serialize` only. A recorded run is reloaded by replaying its inputs
//! through the gate, never by deserializing facts.

use converge_core::Fact;

fn main() {
    let _fact = serde_json::from_str::<Fact>(r#"{"key":"seeds","id":"s1"}"#);
}
