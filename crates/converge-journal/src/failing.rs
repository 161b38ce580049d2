//! Fault injection: a journal wrapper that fails one chosen write of a run's record.
//!
//! It exists so tests (of this crate and of drivers built on it) can check that a run stops
//! with an error and leaves a journal that still verifies, whichever write fails. It injects
//! nothing but failures of [`Journal::append`], [`Journal::append_steps`] and
//! [`Journal::commit_outcomes`] (and, when asked, of every [`Journal::renew`]) and is not
//! meant for production use.

use converge_core::EventBatch;

use crate::record::{OutcomeRecord, RunHeader, StepInput};
use crate::{AfterSteps, Holder, Journal, JournalError, Lease, PendingStep, RunId};

/// Fault injection for tests: a journal whose `k`-th record write — [`Journal::append`], [`Journal::append_steps`] or
/// [`Journal::commit_outcomes`] call, 0-based, counted across runs — fails with
/// [`JournalError::Injected`]. Every other call goes through.
///
/// [`FailingJournal::new`] fails *before* writing (the step is absent, as after a crash
/// before commit); [`FailingJournal::after_write`] commits the step and *then* reports the
/// failure (the step is present although the caller saw an error, as after a failed fsync
/// whose data reached the disk anyway). A driver must be correct in both cases.
#[derive(Debug)]
pub struct FailingJournal<J> {
    inner: J,
    fail_at: u64,
    calls: u64,
    write_first: bool,
    /// Whether every lease renewal fails (it is not counted as a write).
    refuse_renewals: bool,
}

impl<J: Journal> FailingJournal<J> {
    /// Fails write call `fail_at` without writing anything.
    pub fn new(inner: J, fail_at: u64) -> FailingJournal<J> {
        FailingJournal {
            inner,
            fail_at,
            calls: 0,
            write_first: false,
            refuse_renewals: false,
        }
    }

    /// Fails no write, but every lease renewal, with [`JournalError::Injected`] (its `call`
    /// the writes made so far), as when the journal fails while a drive holds steps back.
    pub fn refusing_renewals(inner: J) -> FailingJournal<J> {
        FailingJournal {
            refuse_renewals: true,
            ..FailingJournal::new(inner, u64::MAX)
        }
    }

    /// Commits write call `fail_at`, then reports it failed.
    pub fn after_write(inner: J, fail_at: u64) -> FailingJournal<J> {
        FailingJournal {
            write_first: true,
            ..FailingJournal::new(inner, fail_at)
        }
    }

    /// Record writes so far (failed ones included).
    pub fn writes(&self) -> u64 {
        self.calls
    }

    /// The wrapped journal.
    pub fn inner(&self) -> &J {
        &self.inner
    }

    /// Unwraps the journal.
    pub fn into_inner(self) -> J {
        self.inner
    }
}

impl<J: Journal> FailingJournal<J> {
    /// Counts a write and says whether it is the one to fail.
    fn count(&mut self) -> Option<u64> {
        let call = self.calls;
        self.calls += 1;
        (call == self.fail_at).then_some(call)
    }
}

impl<J: Journal> Journal for FailingJournal<J> {
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

    fn claim(
        &mut self,
        holder: &Holder,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Lease>, JournalError> {
        self.inner.claim(holder, now_ms, limit)
    }

    fn renew(&mut self, lease: &mut Lease, now_ms: u64) -> Result<(), JournalError> {
        if self.refuse_renewals {
            return Err(JournalError::Injected { call: self.calls });
        }
        self.inner.renew(lease, now_ms)
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
        let Some(call) = self.count() else {
            return self.inner.commit_outcomes(lease, step, cycle, outcomes);
        };
        if self.write_first {
            self.inner.commit_outcomes(lease, step, cycle, outcomes)?;
        }
        Err(JournalError::Injected { call })
    }

    fn append(
        &mut self,
        lease: &Lease,
        step: u64,
        input: &StepInput,
        events: &EventBatch,
    ) -> Result<(), JournalError> {
        let Some(call) = self.count() else {
            return self.inner.append(lease, step, input, events);
        };
        if self.write_first {
            self.inner.append(lease, step, input, events)?;
        }
        Err(JournalError::Injected { call })
    }

    fn append_steps(
        &mut self,
        lease: &Lease,
        first: u64,
        steps: &[PendingStep],
        after: AfterSteps,
    ) -> Result<(), JournalError> {
        let Some(call) = self.count() else {
            return self.inner.append_steps(lease, first, steps, after);
        };
        if self.write_first {
            self.inner.append_steps(lease, first, steps, after)?;
        }
        Err(JournalError::Injected { call })
    }

    crate::forward_journal!(reads to inner);
}
