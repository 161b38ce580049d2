//! Forgery: rewrite a hash inside a taken `EventBatch`.
//!
//! Must fail: `EventBatch::records` returns a shared slice; no record can be written through.

use converge_core::{Digest, EventBatch};

fn tamper(batch: &mut EventBatch) {
    batch.records()[0].hash = Digest::zero();
}

fn main() {
    let _ = tamper;
}
