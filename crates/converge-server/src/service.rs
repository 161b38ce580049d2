//! The service behind the routes: who owns which run, which runs this process is driving,
//! and cached reads of each run.
//!
//! Each run in use or recently read has a [`Slot`] ([`crate::slots`]): a lock held by
//! whoever drives it (submit, resume, decide, cancel), the active drive's cancel handle, a
//! watch of how many of its events are committed, and caches. Driving happens on a blocking
//! thread with its own single-threaded async runtime and its own journal connection, so
//! journal writes (fsync) never stall the threads answering requests. Reads go through small pools of connections and are cached by
//! the run's committed event count: a run's events never change once committed, so a cache
//! keyed by that count is exact, whoever wrote them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_core::{Actor, Decision, EventRecord, Observer, ProposalId, Retry};
use converge_runtime::{
    Cancel, DurableError, Holder, Inspection, Journal, JournalError, RunId, RunStatus, RunSummary,
    Runtime, StoredEvent,
};
use serde::Deserialize;
use tokio::sync::{OwnedMutexGuard, oneshot, watch};

use crate::error::{ApiError, ErrorCode};
use crate::job::{self, BuildError, Calls};
use crate::metrics::Metrics;
use crate::slots::{Slot, Slots};
use crate::store::{Ownership, Store, StoreError};
use crate::token_cache::{self, TokenCache};
use crate::{Drivers, ServerConfig};

/// The server's state, shared by every request.
pub(crate) struct Service {
    pub(crate) config: ServerConfig,
    stores: Pool<Store>,
    journals: Pool<Box<dyn Journal + Send>>,
    slots: Mutex<Slots>,
    pub(crate) metrics: Metrics,
    /// Runs driven at once: more would only contend for the cores and the journal's writer
    /// lock, and slow every reader down with them.
    drives: Arc<tokio::sync::Semaphore>,
    /// Drives taken and not ended (running, or waiting for a turn): at most `admitted_max`.
    admitted: Arc<std::sync::atomic::AtomicUsize>,
    /// Most drives taken at once: beyond, a drive is refused at once (429) rather than left
    /// to wait behind others' runs without an answer.
    admitted_max: usize,
    /// Live tokens kept while revocations are heard (PostgreSQL only).
    pub(crate) tokens: Arc<TokenCache>,
}

/// What a run's job goes by: its name and its objective, as far as its header says.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobNames {
    pub(crate) name: Option<String>,
    pub(crate) objective: Option<String>,
}

/// One committed event, ready to send.
#[derive(Debug)]
pub(crate) struct EventEntry {
    pub(crate) seq: u64,
    /// The event's kind (`fact_promoted`, …).
    pub(crate) kind: String,
    /// `{"seq","step","hash","event"}` with the event exactly as hashed.
    pub(crate) json: String,
}

/// What a drive does.
pub(crate) enum Op {
    Start(RunId),
    Resume(RunId),
    Decide(RunId, Decision),
    Retry(RunId, Retry),
    CancelParked {
        run: RunId,
        by: String,
        reason: String,
    },
    /// Cancels a run that is going, whoever drives it: its lease is taken over.
    CancelGoing {
        run: RunId,
        by: String,
        reason: String,
    },
}

impl Service {
    pub(crate) fn open(config: ServerConfig) -> Result<Service, StoreError> {
        // Creating the store creates the journal and the server's tables.
        let stores = Pool::new(Store::open(&config.db)?);
        let journals = Pool::new(config.db.open()?);
        // Connections are opened up front and kept: a request never waits for one to open.
        for _ in 1..POOL_WARM {
            stores.give(Store::connect(&config.db)?);
            journals.give(config.db.open()?);
        }
        let drives = std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2));
        let tokens = Arc::new(TokenCache::default());
        if let converge_runtime::Location::Postgres(url) = &config.db {
            token_cache::hear_revocations(url, Arc::downgrade(&tokens)).map_err(|error| {
                StoreError::Invalid(format!(
                    "cannot start listening for token revocations: {error}"
                ))
            })?;
        }
        Ok(Service {
            config,
            stores,
            journals,
            slots: Mutex::new(Slots::default()),
            metrics: Metrics::new(),
            drives: Arc::new(tokio::sync::Semaphore::new(drives)),
            admitted: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            admitted_max: drives * DRIVES_QUEUED_PER_TURN,
            tokens,
        })
    }

    /// Runs `f` on a pooled store connection, on a blocking thread.
    pub(crate) async fn store<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let service = self.clone();
        blocking(move || {
            let mut store = match service.stores.take() {
                Some(store) => store,
                None => Store::connect(&service.config.db).map_err(ApiError::internal)?,
            };
            let result = f(&mut store);
            service.stores.give(store);
            result.map_err(store_error)
        })
        .await
    }

    /// Runs `f` on a pooled journal connection, on a blocking thread.
    pub(crate) async fn journal<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Journal) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let service = self.clone();
        blocking(move || {
            let journal = match service.journals.take() {
                Some(journal) => journal,
                None => service.config.db.open().map_err(ApiError::internal)?,
            };
            let result = f(&*journal);
            service.journals.give(journal);
            result
        })
        .await
    }

    /// The slot of `run`, made on first use.
    pub(crate) fn slot(&self, run: &RunId) -> Arc<Slot> {
        lock(&self.slots).get_or_make(run)
    }

    /// On a shared database, wakes the readers of each run another process commits to
    /// (a worker, another replica) as soon as the database announces it, so that event
    /// streams follow within milliseconds rather than at the next look. A thread of its own
    /// with one listening connection; it ends with the service.
    pub(crate) fn follow_news(self: &Arc<Self>) -> Result<(), ApiError> {
        if let converge_runtime::Location::Sqlite(_) = self.config.db {
            return Ok(());
        }
        let mut wakeups =
            converge_runtime::Wakeups::new(&self.config.db, converge_runtime::News::Events)
                .map_err(ApiError::internal)?;
        let service = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("converge-news".to_owned())
            .spawn(move || {
                loop {
                    let news = wakeups.wait(NEWS_WAIT);
                    let Some(service) = service.upgrade() else {
                        return;
                    };
                    match news {
                        Ok(runs) => {
                            let slots = lock(&service.slots);
                            for run in runs {
                                if let Some(slot) = slots.get(&run) {
                                    // Readers look at the journal again.
                                    slot.committed.send_modify(|_| {});
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!("not hearing of other processes' commits: {error}");
                            drop(service);
                            std::thread::sleep(NEWS_WAIT);
                        }
                    }
                }
            })
            .map_err(ApiError::internal)?;
        Ok(())
    }

    /// The run's job name and objective: read from its header the first time (a run is
    /// listed whether or not its header can be read), then kept, since a header never
    /// changes once written.
    pub(crate) fn job_names(&self, journal: &(impl Journal + ?Sized), run: &RunId) -> JobNames {
        let slot = self.slot(run);
        if let Some(names) = slot.job.get() {
            return names.clone();
        }
        let Ok(header) = journal.header(run) else {
            return JobNames::default();
        };
        slot.job
            .get_or_init(|| JobNames {
                name: converge_runtime::spec::JobSpec::name_of_run(&header),
                objective: converge_runtime::spec::JobSpec::objective_of_run(&header),
            })
            .clone()
    }

    /// The journal summary of a run.
    pub(crate) async fn summary(self: &Arc<Self>, run: &RunId) -> Result<RunSummary, ApiError> {
        let run = run.clone();
        self.journal(move |journal| journal.summary(&run).map_err(journal_error))
            .await
    }

    /// The run re-derived from its journal, cached until it commits another event.
    pub(crate) async fn inspection(
        self: &Arc<Self>,
        run: &RunId,
    ) -> Result<Arc<Inspection>, ApiError> {
        let slot = self.slot(run);
        let run = run.clone();
        self.journal(move |journal| {
            let summary = journal.summary(&run).map_err(journal_error)?;
            if let Some((events, seen)) = &*lock(&slot.view)
                && *events == summary.events
                && seen.summary.status == summary.status
            {
                return Ok(seen.clone());
            }
            let seen = Arc::new(with_offline_runtime(&slot, journal, &run, |runtime| {
                runtime.inspect(journal, &run).map_err(durable_error)
            })?);
            *lock(&slot.view) = Some((seen.summary.events, seen.clone()));
            Ok(seen)
        })
        .await
    }

    /// The run's committed events from `from` on (at most `limit`), read from the journal
    /// only when it has committed more than the cache holds.
    pub(crate) async fn events(
        self: &Arc<Self>,
        run: &RunId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<EventEntry>>, RunSummary), ApiError> {
        let slot = self.slot(run);
        let run = run.clone();
        self.journal(move |journal| {
            let summary = journal.summary(&run).map_err(journal_error)?;
            let cached = lock(&slot.events).len() as u64;
            if summary.events > cached {
                let fresh = journal.events(&run, cached).map_err(journal_error)?;
                let mut events = lock(&slot.events);
                for stored in fresh {
                    if stored.seq == events.len() as u64 {
                        events.push(Arc::new(EventEntry::of(&stored)?));
                    }
                }
                slot.committed.send_if_modified(|seen| {
                    let grew = (events.len() as u64) > *seen;
                    if grew {
                        *seen = events.len() as u64;
                    }
                    grew
                });
            }
            let events = lock(&slot.events);
            let start = usize::try_from(from)
                .unwrap_or(usize::MAX)
                .min(events.len());
            let end = start.saturating_add(limit).min(events.len());
            Ok((events[start..end].to_vec(), summary))
        })
        .await
    }

    /// Whether this process is driving the run.
    pub(crate) fn driving(&self, run: &RunId) -> bool {
        lock(&self.slots)
            .get(run)
            .is_some_and(|slot| slot.driving.load(Ordering::SeqCst))
    }

    /// Asks the drive in progress to cancel; false when nothing is driving the run here.
    pub(crate) fn cancel_drive(&self, run: &RunId, by: &str, reason: &str) -> bool {
        let slot = self.slot(run);
        let cancel = lock(&slot.cancel).clone();
        match cancel {
            Some(cancel) => {
                cancel.cancel(by, reason);
                true
            }
            None => false,
        }
    }

    /// The drive lock, if nobody holds it.
    pub(crate) fn try_drive(&self, run: &RunId) -> Option<OwnedMutexGuard<()>> {
        self.slot(run).drive.clone().try_lock_owned().ok()
    }

    /// Builds the runtime a drive of an existing run needs (models called live).
    pub(crate) async fn live_runtime(self: &Arc<Self>, run: &RunId) -> Result<Runtime, ApiError> {
        let run = run.clone();
        let providers = self.config.providers.clone();
        self.journal(move |journal| {
            job::runtime_of(
                journal,
                &run,
                Calls::Live {
                    providers: providers.as_deref(),
                },
            )
            .map_err(build_error)
        })
        .await
    }

    /// Starts driving a run on its own thread, holding `guard` until it stops. The answer
    /// comes as soon as the drive's first step is committed (or it failed before): the run
    /// goes on in the background. `cancel` may be pre-cancelled (to halt a run on resuming).
    /// The drive starts whether or not the answer is awaited.
    pub(crate) fn drive(
        self: &Arc<Self>,
        guard: OwnedMutexGuard<()>,
        mut runtime: Runtime,
        op: Op,
        cancel: Cancel,
    ) -> impl Future<Output = Result<(), ApiError>> + use<> {
        let admitted = self.admitted.fetch_add(1, Ordering::SeqCst);
        if admitted >= self.admitted_max {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            let busy = ApiError::busy(format!(
                "the server is driving or queueing {admitted} runs, its most; nothing was \
                 started: try again in a few seconds"
            ));
            return futures_util::future::Either::Left(std::future::ready(Err(busy)));
        }
        let (answer, answered) = oneshot::channel();
        let first = Arc::new(Mutex::new(Some(answer)));
        let run = op.run().clone();
        let slot = self.slot(&run);
        slot.driving.store(true, Ordering::SeqCst);
        *lock(&slot.cancel) = Some(cancel.clone());
        runtime.set_cancel(cancel.clone());
        runtime.observe(Committed {
            committed: slot.committed.clone(),
            first: first.clone(),
        });
        let service = self.clone();
        self.metrics.drives_started();
        tokio::task::spawn_blocking(move || {
            let outcome = drive_on_this_thread(&service, runtime, op, &cancel);
            service.admitted.fetch_sub(1, Ordering::SeqCst);
            *lock(&slot.cancel) = None;
            slot.driving.store(false, Ordering::SeqCst);
            service.metrics.drives_ended();
            drop(guard);
            let waiting = lock(&first).take();
            match (outcome, waiting) {
                (Ok(_), Some(answer)) => {
                    let _ = answer.send(Ok(()));
                }
                (Err(error), Some(answer)) => {
                    let _ = answer.send(Err(error));
                }
                (Ok(_), None) => {}
                (Err(error), None) => {
                    tracing::warn!(run = %run, "the drive stopped with an error: {}", error.message);
                }
            }
        });
        futures_util::future::Either::Right(async move {
            answered
                .await
                .unwrap_or_else(|_| Err(ApiError::internal("the drive ended without an answer")))
        })
    }

    /// Runs that were submitted here and left running by a process that stopped: driven on
    /// to their next stop.
    pub(crate) async fn resume_interrupted(self: &Arc<Self>) -> Result<usize, ApiError> {
        let owned = self.store(|store| store.all_runs()).await?;
        let mut resumed = 0;
        for owner in owned {
            let summary = match self.summary(&owner.run).await {
                Ok(summary) => summary,
                Err(_) => continue,
            };
            if summary.status != RunStatus::Running {
                continue;
            }
            if self.admitted.load(Ordering::SeqCst) >= self.admitted_max {
                tracing::warn!(
                    run = %owner.run,
                    "left running: the server already drives or queues its most runs; \
                     resume it later"
                );
                continue;
            }
            let Some(guard) = self.try_drive(&owner.run) else {
                continue;
            };
            match self.live_runtime(&owner.run).await {
                Ok(runtime) => {
                    // Nobody waits for the answer: the run goes on in the background.
                    drop(self.drive(guard, runtime, Op::Resume(owner.run.clone()), Cancel::new()));
                    resumed += 1;
                }
                Err(error) => {
                    tracing::warn!(run = %owner.run, "cannot resume: {}", error.message);
                }
            }
        }
        Ok(resumed)
    }
}

impl Op {
    fn run(&self) -> &RunId {
        match self {
            Op::Start(run) | Op::Resume(run) | Op::Decide(run, _) | Op::Retry(run, _) => run,
            Op::CancelParked { run, .. } | Op::CancelGoing { run, .. } => run,
        }
    }
}

/// Drives one operation to its end on the calling (blocking) thread; when workers drive
/// the server's runs, only records it (a submission, a decision, a retry) and leaves the run
/// to them.
fn drive_on_this_thread(
    service: &Service,
    mut runtime: Runtime,
    op: Op,
    cancel: &Cancel,
) -> Result<(), ApiError> {
    let mut journal = match service.journals.take() {
        Some(journal) => journal,
        None => service.config.db.open().map_err(ApiError::internal)?,
    };
    runtime.set_holder(Holder::this_process("converge serve"));
    let outcome = match (service.config.drivers, op) {
        (Drivers::Workers, Op::Start(run)) => runtime
            .submit_durable(&mut journal, &run)
            .map_err(durable_error),
        (Drivers::Workers, Op::Decide(run, decision)) => runtime
            .record_decisions(&mut journal, &run, vec![decision])
            .map_err(durable_error),
        (Drivers::Workers, Op::Retry(run, retry)) => runtime
            .record_retry(&mut journal, &run, retry)
            .map_err(durable_error),
        (_, op) => drive_here(service, &mut runtime, &mut journal, op, cancel),
    };
    // A journal that failed in storage may be poisoned: it is not handed to anyone else.
    if outcome.is_ok() {
        service.journals.give(journal);
    }
    outcome
}

/// Drives `op` in this process, once a turn is free.
fn drive_here(
    service: &Service,
    runtime: &mut Runtime,
    journal: &mut Box<dyn Journal + Send>,
    op: Op,
    cancel: &Cancel,
) -> Result<(), ApiError> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ApiError::internal)?;
    // Waiting for a turn holds this thread only; the request thread is not blocked.
    let _turn = tokio
        .block_on(service.drives.clone().acquire_owned())
        .map_err(ApiError::internal)?;
    let run = op.run().clone();
    let result = tokio.block_on(async {
        match op {
            Op::Start(run) => runtime.run_durable(journal, &run).await,
            Op::Resume(run) => runtime.resume_durable(journal, &run).await,
            Op::Decide(run, decision) => {
                runtime.decide_durable(journal, &run, vec![decision]).await
            }
            Op::Retry(run, retry) => runtime.retry_durable(journal, &run, retry).await,
            Op::CancelParked { run, by, reason } => {
                runtime.cancel_durable(journal, &run, &by, &reason)
            }
            Op::CancelGoing { run, by, reason } => {
                cancel.cancel(&by, &reason);
                runtime
                    .cancel_going_durable(journal, &run, &by, &reason)
                    .await
            }
        }
    });
    let result = result.map_err(durable_error)?;
    // A cancellation that came after the drive's last check found the run parked: it still
    // stops the run, as the 202 that accepted it promised.
    if let (converge_core::StopReason::AwaitingApproval { .. }, Some(cancelled)) =
        (&result.stop_reason, cancel.cancellation())
    {
        runtime
            .cancel_durable(journal, &run, &cancelled.by, &cancelled.reason)
            .map_err(durable_error)?;
    }
    Ok(())
}

/// Tells the slot about each committed event, and answers the request that started the drive
/// at the first one.
struct Committed {
    committed: watch::Sender<u64>,
    first: Arc<Mutex<Option<Answer>>>,
}

/// Where the request that started a drive waits for its answer.
type Answer = oneshot::Sender<Result<(), ApiError>>;

impl Observer for Committed {
    fn on_event(&mut self, record: &EventRecord) {
        self.committed.send_replace(record.seq + 1);
        if let Some(answer) = lock(&self.first).take() {
            let _ = answer.send(Ok(()));
        }
    }
}

impl EventEntry {
    fn of(stored: &StoredEvent) -> Result<EventEntry, ApiError> {
        #[derive(Deserialize)]
        struct Kind {
            event: String,
        }
        let body = std::str::from_utf8(&stored.body).map_err(ApiError::internal)?;
        let kind: Kind = serde_json::from_str(body).map_err(ApiError::internal)?;
        let json = format!(
            r#"{{"seq":{},"step":{},"hash":"{}","event":{body}}}"#,
            stored.seq, stored.step, stored.hash
        );
        Ok(EventEntry {
            seq: stored.seq,
            kind: kind.event,
            json,
        })
    }
}

/// A decision on one pending proposal, as the approver's request names it.
pub(crate) fn decision(
    proposal: ProposalId,
    hash: converge_core::Digest,
    actor: &str,
    reject: Option<String>,
) -> Result<Decision, ApiError> {
    let actor = Actor::human(actor).map_err(ApiError::internal)?;
    Ok(match reject {
        None => Decision::approve(proposal, hash, actor),
        Some(reason) => Decision::reject(proposal, hash, actor, reason),
    })
}

/// Connections opened when the service starts.
const POOL_WARM: usize = 8;
/// Idle connections kept at most (more are opened under load, and closed after).
const POOL_MAX: usize = 64;

/// A small pool: connections are taken and given back.
struct Pool<T> {
    idle: Mutex<Vec<T>>,
}

impl<T> Pool<T> {
    fn new(first: T) -> Pool<T> {
        Pool {
            idle: Mutex::new(vec![first]),
        }
    }

    fn take(&self) -> Option<T> {
        lock(&self.idle).pop()
    }

    fn give(&self, item: T) {
        let mut idle = lock(&self.idle);
        if idle.len() < POOL_MAX {
            idle.push(item);
        }
    }
}

/// Locks a mutex; a panic elsewhere while holding it leaves plain data, still usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `f` given the runtime that re-derives `run` without calling any model: built from its
/// header's spec the first time, then kept in its slot.
pub(crate) fn with_offline_runtime<R>(
    slot: &Slot,
    journal: &(impl Journal + ?Sized),
    run: &RunId,
    f: impl FnOnce(&Runtime) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let kept = lock(&slot.offline).take();
    let runtime = match kept {
        Some(runtime) => runtime,
        None => job::runtime_of(journal, run, Calls::Offline).map_err(build_error)?,
    };
    let result = f(&runtime);
    *lock(&slot.offline) = Some(runtime);
    result
}

/// Runs blocking work off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ApiError> + Send + 'static,
) -> Result<R, ApiError> {
    // The blocking thread answers for the same request: errors logged there name its id.
    let id = crate::error::request_id();
    tokio::task::spawn_blocking(move || crate::error::REQUEST_ID.sync_scope(id, f))
        .await
        .unwrap_or_else(|error| Err(ApiError::internal(error)))
}

pub(crate) fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::RunExists(id) => {
            ApiError::conflict(ErrorCode::RunExists, format!("run {id:?} already exists"))
        }
        StoreError::Invalid(message) => ApiError::invalid(message),
        other => ApiError::internal(other),
    }
}

pub(crate) fn journal_error(error: JournalError) -> ApiError {
    match error {
        // Ownership was checked before any journal read: a run the tenant owns but the
        // journal lacks was never created (its submission failed).
        JournalError::UnknownRun { run } => ApiError::no_run(run.as_str()),
        // Which process holds the lease, and on which host, is the server's business.
        JournalError::Leased { .. } => ApiError::conflict(
            ErrorCode::RunBusy,
            "the run is being driven by another process; try again once it stops",
        ),
        other => ApiError::internal(other),
    }
}

pub(crate) fn build_error(error: BuildError) -> ApiError {
    match error {
        BuildError::Spec(message) | BuildError::Providers(message) => ApiError::invalid(message),
        BuildError::Journal(error) => journal_error(error),
        other => ApiError::internal(other),
    }
}

pub(crate) fn durable_error(error: DurableError) -> ApiError {
    match error {
        DurableError::Journal(error) => journal_error(error),
        DurableError::Finished { reason, .. } => ApiError::conflict(
            ErrorCode::Stopped,
            format!("the run has already stopped: {reason}"),
        ),
        DurableError::NotAwaitingApproval { .. } => ApiError::conflict(
            ErrorCode::NotAwaitingApproval,
            "the run is not awaiting approval",
        ),
        DurableError::NotRetryable { refusal, .. } => {
            ApiError::conflict(ErrorCode::NotRetryable, refusal.to_string())
        }
        DurableError::NotStopped { .. } => ApiError::conflict(
            ErrorCode::NotRetryable,
            "the run has not stopped: it is being driven, or its driver stopped before it did \
             (resume it)",
        ),
        DurableError::Engine(error) => ApiError::invalid(error.to_string()),
        other => ApiError::internal(other),
    }
}

/// Drives that may wait for each turn (each core's drive): together with those running, the
/// most a server takes at once. With bounded evaluations a drive's first step takes at most
/// a few seconds of work, so the last admitted waits a few seconds, not minutes.
const DRIVES_QUEUED_PER_TURN: usize = 4;

/// How long the news thread waits for an announcement before checking the service is
/// still there.
const NEWS_WAIT: Duration = Duration::from_secs(1);

/// How long a reader waits between looks at a run driven by another process.
pub(crate) const POLL: Duration = Duration::from_millis(500);

/// The run a tenant names `id` — its run id (`acme-release-1`) or the part after the
/// tenant's prefix (`release-1`) — or the 404 every tenant gets for a run that is not theirs.
pub(crate) async fn owned(
    service: &Arc<Service>,
    tenant: &str,
    id: &str,
) -> Result<Ownership, ApiError> {
    let key = crate::store::within(tenant, id).to_owned();
    // The journal run id a claim gives the tenant's `key` (see `api::runs`).
    if let Ok(run) = RunId::new(&format!("{tenant}-{key}")) {
        let slot = lock(&service.slots).get(&run).cloned();
        if let Some(slot) = slot
            && let Some(owner) = &*lock(&slot.owner)
            && owner.tenant == tenant
            && owner.id == key
        {
            return Ok(owner.clone());
        }
    }
    let tenant = tenant.to_owned();
    let owner = service
        .store(move |store| store.owned(&tenant, &key))
        .await?
        .ok_or_else(|| ApiError::no_run(id))?;
    *lock(&service.slot(&owner.run).owner) = Some(owner.clone());
    Ok(owner)
}

/// Forgets the ownership of a run whose submission failed, in the store and in its slot.
pub(crate) async fn disown(service: &Arc<Service>, run: &RunId) {
    if let Some(slot) = lock(&service.slots).get(run) {
        *lock(&slot.owner) = None;
    }
    let forget = run.clone();
    let _ = service.store(move |store| store.unclaim(&forget)).await;
}
