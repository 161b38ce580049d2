//! What a drive tells its observers besides the core's events: when each agent of a batch
//! starts executing and when it finishes, before its outcome is committed.
//!
//! The core's events reach observers only once committed, so between a cycle's start and
//! its commit an observer cannot tell that anything runs. An [`ActivityObserver`] can: the
//! driver calls it as it starts and collects each agent. It is told, never asked: nothing it
//! does changes the run, and nothing of it is journaled (a replay executes no agent, so it
//! reports no activity).

use converge_core::Observer;

/// An observer of a run's events that is also told which agents are executing.
///
/// Every agent started is finished exactly once in the same cycle, whether it completed,
/// failed, timed out or was cut short by a cancellation. An agent whose outcome was
/// committed before a crash is not executed again on resume, so it is neither started nor
/// finished.
pub trait ActivityObserver: Observer + Send {
    /// `agent` starts executing in `cycle`.
    fn agent_started(&mut self, cycle: u32, agent: &str) {
        let _ = (cycle, agent);
    }

    /// `agent` has stopped executing in `cycle`; its outcome is not committed yet.
    fn agent_finished(&mut self, cycle: u32, agent: &str) {
        let _ = (cycle, agent);
    }
}

/// A plain observer, told no activity.
pub(crate) struct EventsOnly<O>(pub(crate) O);

impl<O: Observer> Observer for EventsOnly<O> {
    fn on_event(&mut self, record: &converge_core::EventRecord) {
        self.0.on_event(record);
    }
}

impl<O: Observer + Send> ActivityObserver for EventsOnly<O> {}
