//! Forgery: build an `EventBatch` through its crate-private constructor.
//!
//! Must fail: `EventBatch::new` is `pub(crate)`.

use converge_core::{Digest, EventBatch, EventRecord};

fn forge(records: Vec<EventRecord>) -> EventBatch {
    EventBatch::new(Digest::zero(), 0, records, Default::default())
}

fn main() {
    let _ = forge;
}
