//! Group commit: a worker's slots commit the steps of the runs they drive through one
//! committer, which writes the steps of every run that is waiting in one transaction
//! ([`Journal::append_steps_of_runs`]).
//!
//! A slot that ends a drive of rule agents has one transaction to make: its held-back steps
//! and its lease given up. On a busy worker several slots reach that point while another
//! slot's commit waits for the database's WAL flush; the committer takes all of them at once,
//! so they cost one transaction, one flush and one round of news instead of one each. Each
//! run is still locked and fenced by its own lease in that transaction, a crash keeps all of
//! it or none, and a slot's call returns only once its steps are committed (or refused):
//! nothing it does next — an agent with side effects, events shown to observers — runs
//! before then. A group with a refused run is committed run by run instead.
//!
//! A slot whose drive ends (its steps go with its lease given up) while the worker still
//! claims asks for its next run with them: the committer claims one run for each such slot
//! of the group in the same transaction ([`Journal::append_steps_of_runs_and_claim`]), in one
//! statement, and hands each its run read under the claim. A run that ends and the next one
//! begun cost one transaction and one flush together, and a slot that gets no run claims on
//! its own as before. A claimed run whose slot is gone is let go at once.
//!
//! What it does not do: hold a commit back to wait for company (a lone commit goes at once),
//! route anything else than [`Journal::append_steps`] (renewals, outcomes committed ahead, a
//! slot's own claims and reads stay on the slot's own connection), or take steps of more
//! than [`GROUPED_EVENTS_MAX`] events, which the slot commits itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use converge_core::EventBatch;
use converge_journal::{
    AfterSteps, ClaimedRun, GroupAndClaim, Holder, Journal, JournalError, Lease, Location,
    OutcomeRecord, PendingStep, RunHeader, RunId, RunSteps, StepInput, wall_clock_ms,
};

/// Most runs committed in one transaction.
pub(crate) const GROUP_RUNS_MAX: usize = 64;

/// Most events a slot's steps may hold to go through the committer. Larger ones are committed
/// on the slot's own connection: what grouping saves (a transaction's fixed cost) is small
/// beside their own writing, and handing them over would copy them.
pub(crate) const GROUPED_EVENTS_MAX: usize = 4096;

/// One slot's steps, whether it wants its next run claimed with them, and where its answer
/// goes.
struct Request {
    steps: RunSteps,
    next: bool,
    answer: mpsc::SyncSender<Answer>,
}

/// A slot's answer: its steps committed (or why not), and its next run if it asked for one
/// and one was claimed.
type Answer = (Result<(), JournalError>, Option<ClaimedRun>);

/// The committer's thread, with the journal connection it commits on.
pub(crate) struct Committer {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the committer's thread; it opens its journal at its first request, and claims
    /// runs for `holder`.
    pub(crate) fn start(location: &Location, holder: &Holder) -> std::io::Result<Committer> {
        let (requests, queue) = mpsc::channel::<Request>();
        let location = location.clone();
        let holder = holder.clone();
        let thread = std::thread::Builder::new()
            .name("converge-commit".to_owned())
            .spawn(move || commit_all(&location, &holder, &queue))?;
        Ok(Committer {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// A handle slots commit through.
    pub(crate) fn handle(&self) -> Option<CommitHandle> {
        self.requests
            .clone()
            .map(|requests| CommitHandle { requests })
    }
}

impl Committer {
    /// Waits for the thread to end, once every handle is gone (the slots ended).
    pub(crate) fn finish(mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Takes the requests as they come, each time with every one waiting behind it.
fn commit_all(location: &Location, holder: &Holder, queue: &mpsc::Receiver<Request>) {
    let mut journal: Option<Box<dyn Journal + Send>> = None;
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_RUNS_MAX {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let open = match journal.as_mut() {
            Some(open) => open,
            None => match location.open() {
                Ok(opened) => journal.insert(opened),
                Err(error) => {
                    for request in group {
                        let _ = request.answer.send((Err(unopened(&error)), None));
                    }
                    continue;
                }
            },
        };
        let wanted = group.iter().filter(|request| request.next).count();
        let mut steps = Vec::with_capacity(group.len());
        let mut waiting = Vec::with_capacity(group.len());
        for request in group {
            steps.push(request.steps);
            waiting.push((request.next, request.answer));
        }
        let GroupAndClaim {
            committed, claimed, ..
        } = open.append_steps_of_runs_and_claim(&steps, holder, wall_clock_ms(), wanted);
        // A failed write poisons the handle: open the journal again for the next group.
        let failed = committed
            .iter()
            .any(|answer| failed_in_storage(answer.as_ref().err()))
            || failed_in_storage(claimed.as_ref().err());
        // A claim that failed leaves each slot to claim on its own.
        let mut claimed = claimed.unwrap_or_default().into_iter();
        for ((next, waiter), answer) in waiting.into_iter().zip(committed) {
            let run = if next { claimed.next() } else { None };
            if let Err(mpsc::SendError((_, Some(run)))) = waiter.send((answer, run)) {
                // The slot is gone (stopped at once): its run is free for others now rather
                // than once the claim's lease expires.
                let _ = open.release(&run.lease);
            }
        }
        if failed {
            journal = None;
        }
    }
}

/// Whether `error` is a failure of the storage, which leaves the handle poisoned.
fn failed_in_storage(error: Option<&JournalError>) -> bool {
    matches!(
        error,
        Some(JournalError::Storage { .. } | JournalError::Poisoned { .. })
    )
}

/// The error each waiting slot gets when the committer cannot open the journal.
fn unopened(error: &JournalError) -> JournalError {
    JournalError::Unsupported {
        detail: format!("cannot open the journal to commit: {error}"),
    }
}

/// A slot's way to the committer.
#[derive(Clone)]
pub(crate) struct CommitHandle {
    requests: mpsc::Sender<Request>,
}

impl CommitHandle {
    /// Commits one run's steps with whatever else is waiting, and with `next` claims the
    /// slot's next run in the same transaction; returns once they are committed or refused.
    fn append_steps(&self, steps: RunSteps, next: bool) -> Answer {
        let gone = || JournalError::Unsupported {
            detail: "the worker's committer stopped".to_owned(),
        };
        let (answer, answered) = mpsc::sync_channel(1);
        let request = Request {
            steps,
            next,
            answer,
        };
        if self.requests.send(request).is_err() {
            return (Err(gone()), None);
        }
        answered.recv().unwrap_or_else(|_| (Err(gone()), None))
    }
}

/// A slot's journal: its own connection for everything, the committer for
/// [`Journal::append_steps`].
pub(crate) struct Grouped<'j> {
    pub(crate) journal: &'j mut Box<dyn Journal + Send>,
    pub(crate) committer: &'j CommitHandle,
    /// Whether the worker drains: a drive that ends then asks for no next run.
    pub(crate) draining: &'j AtomicBool,
    /// The next run, claimed with the commit that ended the drive.
    pub(crate) next: Option<ClaimedRun>,
}

impl Journal for Grouped<'_> {
    fn create_run(
        &mut self,
        run: &RunId,
        header: &RunHeader,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError> {
        self.journal.create_run(run, header, holder, now_ms)
    }

    fn acquire(
        &mut self,
        run: &RunId,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError> {
        self.journal.acquire(run, holder, now_ms)
    }

    fn preempt(
        &mut self,
        run: &RunId,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<Lease, JournalError> {
        self.journal.preempt(run, holder, now_ms)
    }

    fn renew(&mut self, lease: &mut Lease, now_ms: u64) -> Result<(), JournalError> {
        self.journal.renew(lease, now_ms)
    }

    fn claim(
        &mut self,
        holder: &Holder,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Lease>, JournalError> {
        self.journal.claim(holder, now_ms, limit)
    }

    fn claim_loaded(
        &mut self,
        holder: &Holder,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ClaimedRun>, JournalError> {
        self.journal.claim_loaded(holder, now_ms, limit)
    }

    fn release(&mut self, lease: &Lease) -> Result<(), JournalError> {
        self.journal.release(lease)
    }

    fn submit_run(
        &mut self,
        run: &RunId,
        header: &RunHeader,
        holder: &Holder,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        self.journal.submit_run(run, header, holder, now_ms)
    }

    fn commit_outcomes(
        &mut self,
        lease: &Lease,
        step: u64,
        cycle: u32,
        outcomes: &[(u32, OutcomeRecord)],
    ) -> Result<(), JournalError> {
        self.journal.commit_outcomes(lease, step, cycle, outcomes)
    }

    fn append(
        &mut self,
        lease: &Lease,
        step: u64,
        input: &StepInput,
        events: &EventBatch,
    ) -> Result<(), JournalError> {
        self.journal.append(lease, step, input, events)
    }

    fn append_steps(
        &mut self,
        lease: &Lease,
        first: u64,
        steps: &[PendingStep],
        after: AfterSteps,
    ) -> Result<(), JournalError> {
        let events: usize = steps.iter().map(|step| step.events().len()).sum();
        if events > GROUPED_EVENTS_MAX {
            return self.journal.append_steps(lease, first, steps, after);
        }
        let next = after == AfterSteps::Release
            && self.next.is_none()
            && !self.draining.load(Ordering::SeqCst);
        let steps = RunSteps {
            lease: lease.clone(),
            first,
            steps: steps.to_vec(),
            after,
        };
        let (committed, claimed) = self.committer.append_steps(steps, next);
        self.next = self.next.take().or(claimed);
        committed
    }

    fn append_steps_of_runs(&mut self, runs: &[RunSteps]) -> Vec<Result<(), JournalError>> {
        self.journal.append_steps_of_runs(runs)
    }

    fn append_steps_of_runs_and_claim(
        &mut self,
        runs: &[RunSteps],
        holder: &Holder,
        now_ms: u64,
        limit: usize,
    ) -> GroupAndClaim {
        self.journal
            .append_steps_of_runs_and_claim(runs, holder, now_ms, limit)
    }

    converge_journal::forward_journal!(reads to journal);
}
