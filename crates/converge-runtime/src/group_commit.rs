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
//! What it does not do: hold a commit back to wait for company (a lone commit goes at once),
//! route anything but [`Journal::append_steps`] (claims, renewals, outcomes committed ahead
//! and reads stay on the slot's own connection), or take steps of more than
//! [`GROUPED_EVENTS_MAX`] events, which the slot commits itself.

use std::sync::mpsc;
use std::thread::JoinHandle;

use converge_core::EventBatch;
use converge_journal::{
    AfterSteps, ClaimedRun, Holder, Journal, JournalError, Lease, Location, OutcomeRecord,
    PendingStep, RunHeader, RunId, RunSteps, StepInput,
};

/// Most runs committed in one transaction.
pub(crate) const GROUP_RUNS_MAX: usize = 64;

/// Most events a slot's steps may hold to go through the committer. Larger ones are committed
/// on the slot's own connection: what grouping saves (a transaction's fixed cost) is small
/// beside their own writing, and handing them over would copy them.
pub(crate) const GROUPED_EVENTS_MAX: usize = 4096;

/// One slot's steps, and where its answer goes.
struct Request {
    steps: RunSteps,
    answer: mpsc::SyncSender<Result<(), JournalError>>,
}

/// The committer's thread, with the journal connection it commits on.
pub(crate) struct Committer {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the committer's thread; it opens its journal at its first request.
    pub(crate) fn start(location: &Location) -> std::io::Result<Committer> {
        let (requests, queue) = mpsc::channel::<Request>();
        let location = location.clone();
        let thread = std::thread::Builder::new()
            .name("converge-commit".to_owned())
            .spawn(move || commit_all(&location, &queue))?;
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
fn commit_all(location: &Location, queue: &mpsc::Receiver<Request>) {
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
                        let _ = request.answer.send(Err(unopened(&error)));
                    }
                    continue;
                }
            },
        };
        let (steps, waiting): (Vec<RunSteps>, Vec<_>) = group
            .into_iter()
            .map(|request| (request.steps, request.answer))
            .unzip();
        let answers = open.append_steps_of_runs(&steps);
        // A failed write poisons the handle: open the journal again for the next group.
        if answers.iter().any(|answer| {
            matches!(
                answer,
                Err(JournalError::Storage { .. } | JournalError::Poisoned { .. })
            )
        }) {
            journal = None;
        }
        for (waiter, answer) in waiting.into_iter().zip(answers) {
            // A slot that is gone has no one to tell.
            let _ = waiter.send(answer);
        }
    }
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
    /// Commits one run's steps with whatever else is waiting; returns once they are
    /// committed or refused.
    fn append_steps(&self, steps: RunSteps) -> Result<(), JournalError> {
        let gone = || JournalError::Unsupported {
            detail: "the worker's committer stopped".to_owned(),
        };
        let (answer, answered) = mpsc::sync_channel(1);
        self.requests
            .send(Request { steps, answer })
            .map_err(|_| gone())?;
        answered.recv().map_err(|_| gone())?
    }
}

/// A slot's journal: its own connection for everything, the committer for
/// [`Journal::append_steps`].
pub(crate) struct Grouped<'j> {
    pub(crate) journal: &'j mut Box<dyn Journal + Send>,
    pub(crate) committer: &'j CommitHandle,
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
        self.committer.append_steps(RunSteps {
            lease: lease.clone(),
            first,
            steps: steps.to_vec(),
            after,
        })
    }

    fn append_steps_of_runs(&mut self, runs: &[RunSteps]) -> Vec<Result<(), JournalError>> {
        self.journal.append_steps_of_runs(runs)
    }

    converge_journal::forward_journal!(reads to journal);
}
