//! What the crash tests that kill a child process at a chosen journal write share: a
//! blocking driver and `KillAt`, a journal that SIGKILLs its own process just before or just
//! after its k-th write.

use std::time::Duration;

use converge_core::EventBatch;
use converge_runtime::{
    AfterSteps, Holder, Journal, JournalError, Lease, OutcomeRecord, PendingStep, RunHeader, RunId,
    StepInput,
};

/// Runs a future on a fresh single-threaded runtime.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// When, relative to the chosen write, the child kills itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Just before the write.
    Before,
    /// Just after it returned.
    After,
}

/// A journal that SIGKILLs its own process at write `at` (0-based, counting every write of
/// the run's record: appends, steps committed together, outcomes), and counts writes.
pub(crate) struct KillAt<J> {
    pub(crate) inner: J,
    pub(crate) at: Option<(u64, Mode)>,
    pub(crate) writes: u64,
}

impl<J: Journal> KillAt<J> {
    fn write<T>(
        &mut self,
        write: impl FnOnce(&mut J) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let this = self.writes;
        self.writes += 1;
        let kill = || {
            let me = rustix::process::getpid();
            let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
            std::thread::sleep(Duration::from_secs(60));
        };
        if self.at == Some((this, Mode::Before)) {
            kill();
        }
        let written = write(&mut self.inner);
        if self.at == Some((this, Mode::After)) {
            kill();
        }
        written
    }
}

impl<J: Journal> Journal for KillAt<J> {
    fn create_run(
        &mut self,
        run: &RunId,
        header: &RunHeader,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError> {
        self.inner.create_run(run, header, holder, now_ms)
    }

    fn acquire(
        &mut self,
        run: &RunId,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError> {
        self.inner.acquire(run, holder, now_ms)
    }

    fn preempt(
        &mut self,
        run: &RunId,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError> {
        self.inner.preempt(run, holder, now_ms)
    }

    fn renew(&mut self, lease: &mut Lease, now_ms: u64) -> Result<(), JournalError> {
        self.inner.renew(lease, now_ms)
    }

    fn claim(
        &mut self,
        holder: &Holder,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Lease>, JournalError> {
        self.inner.claim(holder, now_ms, limit)
    }

    fn release(&mut self, lease: &Lease) -> Result<(), JournalError> {
        self.inner.release(lease)
    }

    fn commit_outcomes(
        &mut self,
        lease: &Lease,
        step: u64,
        cycle: u32,
        outcomes: &[(u32, OutcomeRecord)],
    ) -> Result<(), JournalError> {
        self.write(|inner| inner.commit_outcomes(lease, step, cycle, outcomes))
    }

    fn append(
        &mut self,
        lease: &Lease,
        step: u64,
        input: &StepInput,
        events: &EventBatch,
    ) -> Result<(), JournalError> {
        self.write(|inner| inner.append(lease, step, input, events))
    }

    fn append_steps(
        &mut self,
        lease: &Lease,
        first: u64,
        steps: &[PendingStep],
        after: AfterSteps,
    ) -> Result<(), JournalError> {
        self.write(|inner| inner.append_steps(lease, first, steps, after))
    }

    converge_journal::forward_journal!(reads to inner);
}
