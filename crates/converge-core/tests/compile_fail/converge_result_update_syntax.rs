//! Forgery: copy a real result's private resume state into a fabricated result with
//! struct-update syntax.
//!
//! Must fail: struct-update syntax moves the private `suspended` field, which code outside the
//! crate may not touch.

use converge_core::{ConvergeResult, StopReason};

fn forge(real: ConvergeResult) -> ConvergeResult {
    ConvergeResult {
        converged: true,
        stop_reason: StopReason::Converged,
        ..real
    }
}

fn main() {
    let _ = forge;
}
