//! Fault injection: a journal wrapper that fails one chosen append.
//!
//! It exists so tests (of this crate and of drivers built on it) can check that a run stops
//! with an error and leaves a journal that still verifies, whichever step fails. It injects
//! nothing but append failures and is not meant for production use.

use converge_core::{Digest, EventBatch};

use super::{
    Journal, JournalError, RecordedRun, RunId, RunStatus, RunSummary, StoredEvent, Verification,
};
use crate::record::{RunHeader, StepInput};

/// Fault injection for tests: a journal whose `k`-th [`Journal::append`] call (0-based,
/// counted across runs) fails with [`JournalError::Injected`]. Every other call goes through.
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
}

impl<J: Journal> FailingJournal<J> {
    /// Fails append call `fail_at` without writing anything.
    pub fn new(inner: J, fail_at: u64) -> FailingJournal<J> {
        FailingJournal {
            inner,
            fail_at,
            calls: 0,
            write_first: false,
        }
    }

    /// Commits append call `fail_at`, then reports it failed.
    pub fn after_write(inner: J, fail_at: u64) -> FailingJournal<J> {
        FailingJournal {
            write_first: true,
            ..FailingJournal::new(inner, fail_at)
        }
    }

    /// Append calls so far (failed ones included).
    pub fn appends(&self) -> u64 {
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

impl<J: Journal> Journal for FailingJournal<J> {
    fn create_run(&mut self, run: &RunId, header: &RunHeader) -> Result<(), JournalError> {
        self.inner.create_run(run, header)
    }

    fn append(
        &mut self,
        run: &RunId,
        step: u64,
        input: &StepInput,
        events: &EventBatch,
    ) -> Result<(), JournalError> {
        let call = self.calls;
        self.calls += 1;
        if call != self.fail_at {
            return self.inner.append(run, step, input, events);
        }
        if self.write_first {
            self.inner.append(run, step, input, events)?;
        }
        Err(JournalError::Injected { call })
    }

    fn set_status(
        &mut self,
        run: &RunId,
        status: RunStatus,
        root_hash: Digest,
    ) -> Result<(), JournalError> {
        self.inner.set_status(run, status, root_hash)
    }

    fn runs(&self) -> Result<Vec<RunSummary>, JournalError> {
        self.inner.runs()
    }

    fn summary(&self, run: &RunId) -> Result<RunSummary, JournalError> {
        self.inner.summary(run)
    }

    fn header(&self, run: &RunId) -> Result<RunHeader, JournalError> {
        self.inner.header(run)
    }

    fn load(&self, run: &RunId) -> Result<RecordedRun, JournalError> {
        self.inner.load(run)
    }

    fn events(&self, run: &RunId, from: u64) -> Result<Vec<StoredEvent>, JournalError> {
        self.inner.events(run, from)
    }

    fn events_page(
        &self,
        run: &RunId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        self.inner.events_page(run, from, limit)
    }

    fn verify(&self, run: &RunId) -> Result<Verification, JournalError> {
        self.inner.verify(run)
    }
}
