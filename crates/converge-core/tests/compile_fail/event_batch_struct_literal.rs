//! Forgery: assemble an `EventBatch` whose hashes do not cover its bytes.
//!
//! Must fail: every field of `EventBatch` is private, so only a run can make one, and a
//! journal may store its bytes without hashing them again.

use converge_core::{Digest, EventBatch, EventRecord};

fn forge(records: Vec<EventRecord>, bytes: Vec<u8>, ends: Vec<usize>) -> EventBatch {
    EventBatch {
        previous: Digest::zero(),
        first_seq: 0,
        records,
        handed: 0,
        bytes,
        ends,
    }
}

fn main() {
    let _ = forge;
}
