//! Forgery: fabricate a `ConvergeResult` naming only its public fields.
//!
//! Must fail: a struct with a private field (`suspended`) cannot be built with a literal
//! outside its crate, even if that field is left out.

use converge_core::{Context, ConvergeResult, Digest, RunStats, StopReason};

fn main() {
    let _result = ConvergeResult {
        context: Context::new(),
        converged: true,
        cycles: 0,
        stop_reason: StopReason::Converged,
        stats: RunStats::default(),
        root_hash: Digest::of_bytes(b"forged"),
        rejections: Vec::new(),
        failures: Vec::new(),
    };
}
