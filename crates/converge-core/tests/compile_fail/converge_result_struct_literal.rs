//! Forgery: fabricate a `ConvergeResult`, which would let a caller hand the engine a resumable
//! run that never happened.
//!
//! Must fail twice over: the `suspended` field of `ConvergeResult` is `pub(crate)` (E0451), and
//! any value for it, even `None`, has a type private to the crate (`Option<Box<RunState>>`).

use converge_core::{Context, ConvergeResult, Digest, RunStats, StopReason};

fn main() {
    let _result = ConvergeResult {
        context: Context::new(),
        converged: false,
        cycles: 0,
        stop_reason: StopReason::AwaitingApproval {
            pending: Vec::new(),
        },
        stats: RunStats::default(),
        root_hash: Digest::of_bytes(b"forged"),
        rejections: Vec::new(),
        failures: Vec::new(),
        suspended: None,
    };
}
