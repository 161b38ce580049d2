//! Forgery: make up an `AgentId` with the tuple constructor.
//!
//! Must fail: the field of `AgentId` is `pub(crate)`; agent ids are assigned by the engine at
//! registration.

use converge_core::AgentId;

fn main() {
    let _agent = AgentId(3);
}
