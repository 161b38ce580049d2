//! Forgery: assemble a group of `Encodings` that a run never hashed, to hand a journal bytes
//! its chain does not cover.
//!
//! Must fail: every field of `Encodings` is private, so only a run makes one.

use converge_core::Encodings;

fn forge(bytes: Vec<u8>) -> Encodings {
    let ends = vec![bytes.len()];
    Encodings {
        first_seq: 0,
        bytes,
        ends,
    }
}

fn main() {
    let _ = forge;
}
