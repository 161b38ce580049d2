//! Cancellation: a handle that asks a drive to stop, from anywhere.
//!
//! A [`Cancel`] is shared (cloning it shares it) between whoever may cancel — an HTTP handler,
//! a signal handler, a test — and the [`crate::Runtime`] that drives a run
//! ([`crate::Runtime::with_cancel`], [`crate::Runtime::set_cancel`]). Once cancelled, the driver
//! starts no further step: it halts the run with [`converge_core::StopReason::Halted`] and the
//! reason `cancelled by <by>: <reason>`. A batch in flight is cut short: agents that finished
//! keep their outcomes, the others are dropped (their futures are never polled again, so a
//! command agent's process is killed) and recorded as failed with the same message. A durable
//! driver journals both the cut-short cycle and the halt, so resume, replay and inspect
//! reproduce the cancellation exactly; nothing about it is read from a clock.
//!
//! The first cancellation wins: later calls change nothing, so the recorded reason is the one
//! every observer saw first.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

/// Who cancelled a run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cancellation {
    /// Who cancelled (a user, a service, a token name).
    pub by: String,
    /// Why, in their words.
    pub reason: String,
}

impl Cancellation {
    /// A cancellation by `by` for `reason`.
    pub fn new(by: &str, reason: &str) -> Cancellation {
        Cancellation {
            by: by.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

impl fmt::Display for Cancellation {
    /// `cancelled by <by>: <reason>`: the halt reason and the failure message of agents cut
    /// short.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cancelled by {}: {}", self.by, self.reason)
    }
}

/// A cancellation handle: cheap to clone, shared by its clones, usable from any thread.
///
/// ```
/// use converge_core::agents::{ReactOnceAgent, SeedAgent};
/// use converge_core::{Context, Engine, StopReason};
/// use converge_runtime::{Cancel, Runtime};
///
/// let mut engine = Engine::new();
/// engine.register(SeedAgent::new("seed-1", "initial data"));
/// engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
/// let cancel = Cancel::new();
/// let mut runtime = Runtime::new(engine).with_cancel(cancel.clone());
///
/// // Whoever holds a clone may cancel; the first call wins.
/// assert!(cancel.cancel("alice", "wrong input file"));
/// assert!(!cancel.cancel("bob", "too late"));
/// assert!(cancel.is_cancelled());
///
/// let tokio = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// tokio.block_on(cancel.cancelled()); // already cancelled: completes at once
/// let result = tokio.block_on(runtime.run(Context::new())).unwrap();
/// assert_eq!(
///     result.stop_reason,
///     StopReason::Halted { reason: "cancelled by alice: wrong input file".to_owned() }
/// );
/// assert_eq!(result.cycles, 0, "no agent ran");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    cancellation: OnceLock<Cancellation>,
    notify: Notify,
}

impl Cancel {
    /// A handle that is not cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels, recording who and why. Returns whether this call cancelled: the first call
    /// wins, and later calls (from any clone) change nothing and return `false`.
    pub fn cancel(&self, by: &str, reason: &str) -> bool {
        let first = self
            .inner
            .cancellation
            .set(Cancellation::new(by, reason))
            .is_ok();
        if first {
            self.inner.notify.notify_waiters();
        }
        first
    }

    /// Whether any clone has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancellation.get().is_some()
    }

    /// Who cancelled and why, once cancelled.
    pub fn cancellation(&self) -> Option<&Cancellation> {
        self.inner.cancellation.get()
    }

    /// Completes once cancelled (at once if it already is). The future is `Send` and may be
    /// dropped at any time.
    pub async fn cancelled(&self) {
        let notified = self.inner.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so a cancellation between the check and the wait
        // still wakes this waiter.
        notified.as_mut().enable();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }
}
