//! The journal's rules over any storage: what every backend writes and checks, written once.
//!
//! A backend ([`crate::SqliteJournal`], [`crate::PostgresJournal`]) provides transactions
//! ([`Tx`]: a dozen plain row operations on the four tables `runs`, `steps`, `outcomes` and
//! `events`) and runs each operation below in one of them: a write in one serialized write
//! transaction that locks the run's row first, a read in one snapshot. Everything else — the
//! order of steps, the leases, the record chain, chunking and compressing events, checking a
//! run before it is handed back — is here, so the two backends store the same bytes, keep
//! the same guarantees and refuse the same things.
//!
//! Each operation takes what it needs by value (an [`Append`] is prepared before its
//! transaction begins), so a backend may run it on another thread.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use converge_core::{Digest, Event, EventBatch};
use serde_json::Value;

use crate::check::{
    Break, ChainWalk, Entry, Head, RecordHeads, StepOutcomes, StepRow, StepSpan, check_links,
    check_outcomes, check_steps, check_tail_steps, split_chunk,
};
use crate::lease::{Holder, LEASE_TTL_MS, Lease};
use crate::link::{header_link, input_link, outcomes_digest, step_link};
use crate::pack::{Group, Index, Unpacked};
use crate::parallel;
use crate::record::{OutcomeRecord, RunHeader, StepInput};
use crate::{AfterSteps, ClaimedRun, PackedEvents, PendingStep, RunSteps};
use crate::{
    BreakReason, JournalError, OpenCycle, Place, RecordedRun, RecordedStep, RunId, RunStatus,
    RunSummary, StoredEvent, Verification,
};

/// One stored chunk of consecutive events, as a backend reads it. `ends` and `bodies` are
/// present when the read asked for bodies.
pub(crate) struct ChunkRow<'r> {
    pub(crate) first_seq: i64,
    pub(crate) step: i64,
    pub(crate) count: i64,
    pub(crate) hashes: &'r [u8],
    pub(crate) ends: Option<&'r [u8]>,
    pub(crate) bodies: Option<&'r [u8]>,
}

/// The head of a stored chunk, as [`Tx::chunk_at`] reads it.
pub(crate) struct ChunkHead {
    pub(crate) first_seq: i64,
    pub(crate) step: i64,
    pub(crate) count: i64,
    /// The chunk's hashes, when asked for.
    pub(crate) hashes: Vec<u8>,
}

/// One stored part of a step's outcomes.
pub(crate) struct PartRow {
    pub(crate) step: i64,
    pub(crate) part: i64,
    pub(crate) cycle: i64,
    /// The agents' indices, 4 little-endian bytes each.
    pub(crate) agents: Vec<u8>,
    /// With [`Tx::parts`]: the packed outcomes (empty with [`Tx::committed`]).
    pub(crate) ends: Vec<u8>,
    pub(crate) bodies: Vec<u8>,
}

/// A new `outcomes` row: one part of a step's outcomes.
pub(crate) struct NewPart<'a> {
    pub(crate) step: i64,
    pub(crate) part: i64,
    pub(crate) cycle: i64,
    /// The agents' indices, 4 little-endian bytes each.
    pub(crate) agents: &'a [u8],
    pub(crate) ends: &'a [u8],
    pub(crate) bodies: &'a [u8],
}

/// A new `steps` row.
pub(crate) struct NewStep<'a> {
    pub(crate) step: i64,
    pub(crate) kind: &'a str,
    pub(crate) input: &'a str,
    pub(crate) first_seq: i64,
    pub(crate) events: i64,
    pub(crate) input_link: Digest,
    pub(crate) link: Digest,
}

/// A run's heads and status after a step.
pub(crate) struct NewHead<'a> {
    pub(crate) steps: i64,
    pub(crate) events: i64,
    pub(crate) root_hash: String,
    pub(crate) record_hash: String,
    pub(crate) status: &'a str,
    pub(crate) stop_reason: Option<&'a str>,
    /// The token of the lease given up with the new head (checked under the row's lock
    /// earlier in the transaction), if it is.
    pub(crate) release: Option<&'a str>,
}

/// The row operations of one transaction. Numbers are SQL integers; the rules above check
/// and convert them. A write transaction locks a run's row when [`Tx::run`] reads it.
pub(crate) trait Tx {
    /// The run's row.
    fn run(&mut self, run: &str) -> Result<Option<RunRow>, JournalError>;
    /// Every run's row, in creation order.
    fn runs(&mut self) -> Result<Vec<RunRow>, JournalError>;
    /// The rows of those of `runs` that exist, in any order (one statement where a round
    /// trip costs).
    fn runs_named(&mut self, runs: &[&str]) -> Result<Vec<RunRow>, JournalError>;
    /// [`Tx::runs_named`] without locks, and without the header and its link (both empty:
    /// [`SUMMARY_COLUMNS`]): what summaries read.
    fn summaries_named(&mut self, runs: &[&str]) -> Result<Vec<RunRow>, JournalError>;
    /// [`Tx::runs_named`], each row with the parts committed for the run's next step (as
    /// [`Tx::committed`] reads them; one statement where a round trip costs).
    ///
    /// Read with the rows' locks, in a backend whose statements each see what was committed
    /// before they began, the parts may miss what a transaction that held the lock committed
    /// meanwhile; the caller relies on the lease: a run whose row still has the caller's
    /// token was written by no one else since, and the caller's own writes were committed
    /// before it asked.
    fn runs_named_committed(
        &mut self,
        runs: &[&str],
    ) -> Result<Vec<(RunRow, Vec<PartRow>)>, JournalError> {
        let rows = self.runs_named(runs)?;
        let mut read = Vec::with_capacity(rows.len());
        for row in rows {
            let parts = self.committed(&row.id, row.steps)?;
            read.push((row, parts));
        }
        Ok(read)
    }
    /// Inserts a new, running run with no steps.
    fn insert_run(
        &mut self,
        run: &str,
        header: &str,
        header_link: &str,
    ) -> Result<(), JournalError>;
    /// Records `lease` as the run's.
    fn store_lease(&mut self, lease: &Lease) -> Result<(), JournalError>;
    /// Up to `limit` runs that are running with no lease or one expired at `now_ms`, oldest
    /// first; in a write transaction, locked, skipping runs another transaction has locked.
    fn runnable(&mut self, now_ms: i64, limit: i64) -> Result<Vec<String>, JournalError>;
    /// Leases to `holder`, until `expires_ms`, runs that are [`Tx::runnable`] at `now_ms`,
    /// oldest first, one for each of `tokens` (the first run gets the first token), and
    /// returns their rows as the leases left them, in that order. A backend where a round
    /// trip costs does it in one statement.
    fn lease_runnable(
        &mut self,
        now_ms: i64,
        holder: &Holder,
        expires_ms: u64,
        tokens: &[String],
    ) -> Result<Vec<RunRow>, JournalError> {
        let limit = i64::try_from(tokens.len()).unwrap_or(i64::MAX);
        let ids = self.runnable(now_ms, limit)?;
        let mut rows = Vec::with_capacity(ids.len());
        for (id, token) in ids.into_iter().zip(tokens) {
            let run = RunId::new(&id).map_err(|error| JournalError::Corrupt {
                detail: error.to_string(),
            })?;
            self.store_lease(&Lease {
                run: run.clone(),
                token: token.clone(),
                holder: holder.clone(),
                expires_ms,
            })?;
            rows.push(self.run(&id)?.ok_or(JournalError::UnknownRun { run })?);
        }
        Ok(rows)
    }
    /// Up to `limit` running runs leased by processes of `host` with a lease live at
    /// `now_ms`, oldest first, unlocked: their ids, holder pids and lease tokens.
    fn leased_on(
        &mut self,
        host: &str,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64, String)>, JournalError>;
    /// Moves the run's lease expiry.
    fn renew_lease(&mut self, run: &str, expires_ms: i64) -> Result<(), JournalError>;
    /// Clears the run's lease if its token is `token`.
    fn clear_lease(&mut self, run: &str, token: &str) -> Result<(), JournalError>;
    /// Notes that the run inserted in this transaction is runnable, for those who wait for
    /// runs to drive (nothing, by default).
    fn submitted(&mut self, run: &str) {
        let _ = run;
    }
    /// Reads ahead, in one statement where a round trip costs, what loading the run reads
    /// next: its step rows, its chunks' hashes from the first on and its outcome parts, each
    /// handed out once by the read that asks for it (nothing, by default).
    fn read_ahead(&mut self, run: &str) -> Result<(), JournalError> {
        let _ = run;
        Ok(())
    }
    /// The run's step rows, in step order.
    fn steps(&mut self, run: &str) -> Result<Vec<StepRow>, JournalError>;
    /// The ranges of the run's steps from `from` on, in step order, until `each` says stop.
    fn step_spans(
        &mut self,
        run: &str,
        from: i64,
        each: &mut dyn FnMut(StepSpan) -> bool,
    ) -> Result<(), JournalError>;
    /// The last step at or before `at_most` whose first seq is at or before `seq`.
    fn step_holding(
        &mut self,
        run: &str,
        at_most: i64,
        seq: i64,
    ) -> Result<Option<i64>, JournalError>;
    /// The last chunk starting at or before `seq`, with its hashes if `hashes`.
    fn chunk_at(
        &mut self,
        run: &str,
        seq: i64,
        hashes: bool,
    ) -> Result<Option<ChunkHead>, JournalError>;
    /// The chunks starting at or after `from`, in seq order, with their bodies if `bodies`,
    /// until `each` returns `Ok(false)`.
    fn chunks(
        &mut self,
        run: &str,
        from: i64,
        bodies: bool,
        each: &mut dyn FnMut(ChunkRow<'_>) -> Result<bool, JournalError>,
    ) -> Result<(), JournalError>;
    /// Every outcome part of the run, in step and part order.
    fn parts(&mut self, run: &str) -> Result<Vec<PartRow>, JournalError>;
    /// The parts committed for one step, without their outcomes.
    fn committed(&mut self, run: &str, step: i64) -> Result<Vec<PartRow>, JournalError>;
    /// Inserts one part of outcomes.
    fn insert_part(&mut self, run: &str, part: &NewPart<'_>) -> Result<(), JournalError>;
    /// Inserts one step row.
    fn insert_step(&mut self, run: &str, step: &NewStep<'_>) -> Result<(), JournalError>;
    /// Inserts one chunk of events.
    fn insert_chunk(&mut self, run: &str, chunk: &ChunkRow<'_>) -> Result<(), JournalError>;
    /// Moves the run's heads and status, and clears the lease when the head says so.
    fn advance(&mut self, run: &str, head: &NewHead<'_>) -> Result<(), JournalError>;
}

/// Whether a backend's handle may write: not when it was opened for reading only, nor once a
/// write failed in storage (whether that write committed is unknown, so the handle never
/// retries; reopening and loading tells). Refusals (out of order, unknown run…) do not
/// poison it.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    /// Opened for reading only: where, for the refusal.
    read_only: Option<std::path::PathBuf>,
    /// The storage failure that poisoned the handle.
    poisoned: Option<String>,
}

impl Writes {
    /// A handle opened for reading only, at `place`.
    pub(crate) fn read_only(place: impl Into<std::path::PathBuf>) -> Writes {
        Writes {
            read_only: Some(place.into()),
            poisoned: None,
        }
    }

    /// Refuses a write the handle may not make.
    pub(crate) fn admit(&self) -> Result<(), JournalError> {
        if let Some(path) = &self.read_only {
            return Err(JournalError::ReadOnly { path: path.clone() });
        }
        match &self.poisoned {
            Some(detail) => Err(JournalError::Poisoned {
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Passes a write's outcome on, poisoning the handle if it failed in storage.
    pub(crate) fn settle<T>(
        &mut self,
        outcome: Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        if let Err(error @ JournalError::Storage { .. }) = &outcome {
            self.poisoned = Some(error.to_string());
        }
        outcome
    }
}

/// The columns of a `runs` row, in [`RunRow`] order.
pub(crate) const RUN_COLUMNS: &str = "id, header, header_link, status, stop_reason, steps, \
                                      events, root_hash, record_hash, lease_token, \
                                      lease_holder, lease_host, lease_pid, lease_expires_ms";

/// [`RUN_COLUMNS`] for a summary: the header and its link read as empty text. A header (the
/// job spec, about a kilobyte) is what a page of summaries would otherwise mostly read.
pub(crate) const SUMMARY_COLUMNS: &str = "id, CAST('' AS TEXT) AS header, \
                                          CAST('' AS TEXT) AS header_link, \
                                          status, stop_reason, steps, events, root_hash, \
                                          record_hash, lease_token, lease_holder, lease_host, \
                                          lease_pid, lease_expires_ms";

/// A `runs` row as stored.
pub(crate) struct RunRow {
    pub(crate) id: String,
    pub(crate) header: String,
    pub(crate) header_link: String,
    pub(crate) status: String,
    pub(crate) stop_reason: Option<String>,
    pub(crate) steps: i64,
    pub(crate) events: i64,
    pub(crate) root_hash: String,
    pub(crate) record_hash: String,
    pub(crate) lease_token: Option<String>,
    pub(crate) lease_holder: Option<String>,
    pub(crate) lease_host: Option<String>,
    pub(crate) lease_pid: Option<i64>,
    pub(crate) lease_expires_ms: Option<i64>,
}

impl RunRow {
    fn digest(&self, text: &str, what: &str) -> Result<Digest, JournalError> {
        text.parse().map_err(|_| JournalError::Corrupt {
            detail: format!("run {} has a {what} that is not 64 hex digits", self.id),
        })
    }

    fn head(&self) -> Result<Head, JournalError> {
        Ok(Head {
            steps: unsigned(self.steps, "step count")?,
            events: unsigned(self.events, "event count")?,
            root: self.digest(&self.root_hash, "root hash")?,
        })
    }

    fn header(&self) -> Result<RunHeader, JournalError> {
        serde_json::from_str(&self.header).map_err(|error| JournalError::Corrupt {
            detail: format!("run {} has an unreadable header: {error}", self.id),
        })
    }

    fn status(&self) -> Result<RunStatus, JournalError> {
        let corrupt = || JournalError::Corrupt {
            detail: format!(
                "run {} has status \"{}\" with an unreadable or misplaced stop reason",
                self.id, self.status
            ),
        };
        match (self.status.as_str(), &self.stop_reason) {
            ("running", None) => Ok(RunStatus::Running),
            ("awaiting_approval", None) => Ok(RunStatus::AwaitingApproval),
            ("stopped", Some(reason)) => {
                let reason: Value = serde_json::from_str(reason).map_err(|_| corrupt())?;
                Ok(RunStatus::Stopped { reason })
            }
            _ => Err(corrupt()),
        }
    }

    /// The lease's holder and expiry, when the run is leased.
    fn lease(&self) -> Result<Option<(Holder, u64)>, JournalError> {
        let (Some(name), Some(host), Some(pid), Some(expires_ms)) = (
            &self.lease_holder,
            &self.lease_host,
            self.lease_pid,
            self.lease_expires_ms,
        ) else {
            return Ok(None);
        };
        let holder = Holder {
            name: name.clone(),
            host: host.clone(),
            pid: u32::try_from(pid).map_err(|_| JournalError::Corrupt {
                detail: format!("run {} has lease pid {pid}", self.id),
            })?,
        };
        Ok(Some((holder, unsigned(expires_ms, "lease expiry")?)))
    }

    pub(crate) fn summary(&self) -> Result<RunSummary, JournalError> {
        let head = self.head()?;
        Ok(RunSummary {
            id: RunId::new(&self.id).map_err(|error| JournalError::Corrupt {
                detail: error.to_string(),
            })?,
            status: self.status()?,
            steps: head.steps,
            events: head.events,
            root_hash: head.root,
            record_hash: self.digest(&self.record_hash, "record hash")?,
            lease: self.lease()?,
        })
    }

    /// Refuses a write under a lease that is no longer the run's.
    fn check_lease(&self, lease: &Lease) -> Result<(), JournalError> {
        if self.lease_token.as_deref() == Some(lease.token.as_str()) {
            Ok(())
        } else {
            Err(JournalError::LeaseLost {
                run: lease.run.clone(),
            })
        }
    }
}

fn read_run(tx: &mut dyn Tx, run: &RunId) -> Result<RunRow, JournalError> {
    tx.run(run.as_str())?
        .ok_or_else(|| JournalError::UnknownRun { run: run.clone() })
}

/// Creates a run leased to `lease`'s holder.
pub(crate) fn create_run(
    tx: &mut dyn Tx,
    header: &str,
    link: &str,
    lease: &Lease,
) -> Result<(), JournalError> {
    let run = &lease.run;
    if tx.run(run.as_str())?.is_some() {
        return Err(JournalError::RunExists { run: run.clone() });
    }
    tx.insert_run(run.as_str(), header, link)?;
    tx.store_lease(lease)
}

/// Creates a run that no one leases, runnable at once: [`crate::Journal::submit_run`].
pub(crate) fn submit_run(
    tx: &mut dyn Tx,
    run: &RunId,
    header: &str,
    link: &str,
) -> Result<(), JournalError> {
    if tx.run(run.as_str())?.is_some() {
        return Err(JournalError::RunExists { run: run.clone() });
    }
    tx.insert_run(run.as_str(), header, link)?;
    tx.submitted(run.as_str());
    Ok(())
}

/// The text and link of a new run's header.
pub(crate) fn new_header(
    run: &RunId,
    header: &RunHeader,
) -> Result<(String, String), JournalError> {
    let header = to_json(header)?;
    let link = header_link(run.as_str(), &header).to_string();
    Ok((header, link))
}

/// Takes the run's lease unless another live holder has it.
pub(crate) fn acquire(tx: &mut dyn Tx, lease: &Lease, now_ms: u64) -> Result<(), JournalError> {
    let row = read_run(tx, &lease.run)?;
    if let Some(leased) = row.summary()?.driven_by(&lease.holder, now_ms) {
        return Err(leased);
    }
    tx.store_lease(lease)
}

/// Takes the run's lease whoever holds it: [`crate::Journal::preempt`]. The row is locked
/// first, so a commit of the previous holder is either before (and kept) or refused.
pub(crate) fn preempt(tx: &mut dyn Tx, lease: &Lease) -> Result<(), JournalError> {
    read_run(tx, &lease.run)?;
    tx.store_lease(lease)
}

/// How many runs leased by processes of this host a claim looks through for dead ones.
const LEASED_HERE_SCAN_MAX: i64 = 1024;

/// Leases to `holder` the runs no one drives: [`crate::Journal::claim`].
pub(crate) fn claim(
    tx: &mut dyn Tx,
    holder: &Holder,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<Lease>, JournalError> {
    Ok(claim_rows(tx, holder, now_ms, limit)?
        .into_iter()
        .map(|(lease, _)| lease)
        .collect())
}

/// [`claim`], each lease with the run's row as the lease left it when the claim read it.
fn claim_rows(
    tx: &mut dyn Tx,
    holder: &Holder,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<(Lease, Option<RunRow>)>, JournalError> {
    let now = signed(now_ms)?;
    // The runs are not known yet: each lease takes the run the claim gives it.
    let unnamed = RunId::new("claim").map_err(|error| JournalError::Corrupt {
        detail: error.to_string(),
    })?;
    let offered: Vec<Lease> = (0..limit.min(CLAIM_RUNS_MAX))
        .map(|_| Lease::new(&unnamed, holder, now_ms))
        .collect();
    let tokens: Vec<String> = offered.iter().map(|lease| lease.token.clone()).collect();
    let expires_ms = now_ms.saturating_add(LEASE_TTL_MS);
    let rows = tx.lease_runnable(now, holder, expires_ms, &tokens)?;
    let mut claimed = Vec::with_capacity(tokens.len());
    for (row, offer) in rows.into_iter().zip(offered) {
        let run = RunId::new(&row.id).map_err(|error| JournalError::Corrupt {
            detail: error.to_string(),
        })?;
        claimed.push((Lease { run, ..offer }, Some(row)));
    }
    // Runs whose driver died on this host are free at once, as `acquire` frees them: each is
    // locked, then taken only if its lease is still the dead one's (a racing claimer that
    // took it first has a live lease).
    if claimed.len() < limit {
        let host = Holder::this_host();
        for (id, pid, token) in tx.leased_on(&host, now, LEASED_HERE_SCAN_MAX)? {
            if claimed.len() >= limit {
                break;
            }
            let gone = u32::try_from(pid).is_ok_and(|pid| Holder::gone_here(&host, pid));
            if gone && tx.run(&id)?.and_then(|row| row.lease_token) == Some(token) {
                let run = RunId::new(&id).map_err(|error| JournalError::Corrupt {
                    detail: error.to_string(),
                })?;
                let lease = Lease::new(&run, holder, now_ms);
                tx.store_lease(&lease)?;
                claimed.push((lease, None));
            }
        }
    }
    Ok(claimed)
}

/// Most runs one claim leases.
const CLAIM_RUNS_MAX: usize = 256;

/// Claims runs and loads each under the claim: [`crate::Journal::claim_loaded`]. A run that
/// cannot be read is returned with its error; a storage failure ends the transaction.
pub(crate) fn claim_loaded(
    tx: &mut dyn Tx,
    holder: &Holder,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<ClaimedRun>, JournalError> {
    let leases = claim_rows(tx, holder, now_ms, limit)?;
    let mut claimed = Vec::with_capacity(leases.len());
    for (lease, row) in leases {
        let loaded = match row {
            Some(row) => load_row(tx, lease.run(), row),
            None => load(tx, lease.run()),
        };
        let recorded = match loaded {
            Err(error @ JournalError::Storage { .. }) => return Err(error),
            loaded => loaded,
        };
        claimed.push(ClaimedRun { lease, recorded });
    }
    Ok(claimed)
}

/// Extends a held lease to `now_ms` plus its time to live; returns the new expiry.
pub(crate) fn renew(tx: &mut dyn Tx, lease: &Lease, now_ms: u64) -> Result<u64, JournalError> {
    let expires_ms = now_ms.saturating_add(LEASE_TTL_MS);
    read_run(tx, &lease.run)?.check_lease(lease)?;
    tx.renew_lease(lease.run.as_str(), signed(expires_ms)?)?;
    Ok(expires_ms)
}

/// Gives a held lease up.
pub(crate) fn release(tx: &mut dyn Tx, lease: &Lease) -> Result<(), JournalError> {
    tx.clear_lease(lease.run.as_str(), &lease.token)
}

/// Outcomes to commit ahead of their step, encoded before the transaction.
pub(crate) struct Outcomes {
    lease: Lease,
    step: u64,
    cycle: u32,
    encoded: Vec<(u32, Vec<u8>)>,
}

impl Outcomes {
    pub(crate) fn prepare(
        lease: &Lease,
        step: u64,
        cycle: u32,
        outcomes: &[(u32, OutcomeRecord)],
    ) -> Result<Outcomes, JournalError> {
        Ok(Outcomes {
            lease: lease.clone(),
            step,
            cycle,
            encoded: encode_outcomes(outcomes)?,
        })
    }

    pub(crate) fn commit(&self, tx: &mut dyn Tx) -> Result<(), JournalError> {
        let run = &self.lease.run;
        let row = read_run(tx, run)?;
        row.check_lease(&self.lease)?;
        let head = row.head()?;
        if row.status()? != RunStatus::Running {
            return Err(JournalError::InvalidStep {
                run: run.clone(),
                step: self.step,
                detail: "outcomes are committed only while a run is running",
            });
        }
        if self.step != head.steps {
            return Err(JournalError::OutOfOrder {
                run: run.clone(),
                expected: head.steps,
                got: self.step,
            });
        }
        let parts = tx.committed(run.as_str(), signed(self.step)?)?;
        let committed = committed_agents(run, self.step, Some(self.cycle), parts)?;
        let fresh = self
            .encoded
            .iter()
            .filter(|(agent, _)| !committed.agents.contains(agent));
        insert_outcomes(tx, run, self.step, self.cycle, committed.next_part, fresh)
    }
}

/// One step, prepared for its transaction: everything that needs no storage is done first.
pub(crate) struct Append {
    lease: Lease,
    step: u64,
    kind: &'static str,
    /// The start's header, checked against the run's.
    start: Option<RunHeader>,
    /// Whether the step retries failed agents: the one step a stopped run accepts.
    retry: bool,
    /// The input as stored: shared with the step when it was prepared before the commit.
    input: Arc<EncodedInput>,
    chunks: Vec<Chunk>,
    first_seq: u64,
    count: u64,
    previous: Digest,
    head: Digest,
    status: &'static str,
    stop_reason: Option<String>,
}

/// Where a run's record stands inside a write transaction, as the steps written so far in
/// it left it: what the next step must continue, and the head the run is advanced to.
struct Tip {
    steps: u64,
    events: u64,
    /// The event chain's head.
    root: Digest,
    /// The record chain's head: the last step's link, or the header's link.
    previous: Digest,
    status: String,
    stop_reason: Option<String>,
}

impl Tip {
    /// Where the run's row stands.
    fn of(row: &RunRow) -> Result<Tip, JournalError> {
        let head = row.head()?;
        let previous = if head.steps == 0 {
            row.digest(&row.header_link, "header link")?
        } else {
            row.digest(&row.record_hash, "record hash")?
        };
        Ok(Tip {
            steps: head.steps,
            events: head.events,
            root: head.root,
            previous,
            status: row.status.clone(),
            stop_reason: row.stop_reason.clone(),
        })
    }

    fn new_head(&self) -> Result<NewHead<'_>, JournalError> {
        Ok(NewHead {
            steps: signed(self.steps)?,
            events: signed(self.events)?,
            root_hash: self.root.to_string(),
            record_hash: self.previous.to_string(),
            status: &self.status,
            stop_reason: self.stop_reason.as_deref(),
            release: None,
        })
    }
}

/// What a step written reads of the outcomes committed ahead of it.
enum Read {
    /// The parts committed for it: read now (`None`), or read with the run's row.
    Committed(Option<Vec<PartRow>>),
    /// Nothing: a step after the transaction's first has none.
    Nothing,
}

/// Consecutive steps of one run, prepared for one transaction: [`crate::Journal::append_steps`].
pub(crate) struct Appends {
    lease: Lease,
    appends: Vec<Append>,
    /// Whether the lease is given up in the same transaction.
    release: bool,
}

impl Appends {
    pub(crate) fn prepare(
        lease: &Lease,
        first: u64,
        steps: &[PendingStep],
        after: AfterSteps,
    ) -> Result<Appends, JournalError> {
        let appends = steps
            .iter()
            .zip(first..)
            .map(|(pending, step)| {
                let input = match &pending.encoded {
                    Some(encoded) => Arc::clone(encoded),
                    None => Arc::new(EncodedInput::of(&pending.input)?),
                };
                Append::prepare_encoded(
                    lease,
                    step,
                    &pending.input,
                    input,
                    &pending.events,
                    &pending.packed,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Appends {
            lease: lease.clone(),
            appends,
            release: after == AfterSteps::Release,
        })
    }

    /// Each run's steps prepared for one transaction of them all
    /// ([`crate::Journal::append_steps_of_runs`]); the first refusal refuses the group.
    pub(crate) fn prepare_runs(runs: &[RunSteps]) -> Result<Vec<Appends>, JournalError> {
        runs.iter()
            .map(|run| Appends::prepare(&run.lease, run.first, &run.steps, run.after))
            .collect()
    }

    /// Locks the run's row once, checks the lease once, writes every step in order (each
    /// checked against the record the ones before it left) and the run's last head, then
    /// gives the lease up if asked: all of it or, on any refusal or failure, none.
    pub(crate) fn commit(self, tx: &mut dyn Tx) -> Result<(), JournalError> {
        let row = read_run(tx, &self.lease.run)?;
        self.commit_locked(tx, row, None)
    }

    /// [`Appends::commit`], the run's row already read and locked, with the parts committed
    /// for its next step when they were read with it.
    fn commit_locked(
        self,
        tx: &mut dyn Tx,
        row: RunRow,
        mut committed: Option<Vec<PartRow>>,
    ) -> Result<(), JournalError> {
        let run = self.lease.run.clone();
        row.check_lease(&self.lease)?;
        let mut tip = Tip::of(&row)?;
        let wrote = !self.appends.is_empty();
        for (index, append) in self.appends.into_iter().enumerate() {
            let read = match index {
                0 => Read::Committed(committed.take()),
                _ => Read::Nothing,
            };
            append.write(tx, &row, &mut tip, read)?;
        }
        let token = self.release.then_some(self.lease.token.as_str());
        if wrote {
            // The lease goes with the last head: one statement fewer.
            let head = NewHead {
                release: token,
                ..tip.new_head()?
            };
            tx.advance(run.as_str(), &head)?;
        } else if let Some(token) = token {
            tx.clear_lease(run.as_str(), token)?;
        }
        Ok(())
    }
}

/// Commits the steps of several runs in one transaction:
/// [`crate::Journal::append_steps_of_runs`]. Every row is locked first, in one read, in the
/// order of the runs' ids; any refusal refuses the whole group.
pub(crate) fn append_group(tx: &mut dyn Tx, group: Vec<Appends>) -> Result<(), JournalError> {
    let mut names: Vec<&str> = group
        .iter()
        .map(|appends| appends.lease.run.as_str())
        .collect();
    names.sort_unstable();
    if names.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(JournalError::InvalidStep {
            run: group[0].lease.run.clone(),
            step: 0,
            detail: "a run appears twice in one group of runs",
        });
    }
    // The parts read with the locks are those the lease's holder committed (see
    // `Tx::runs_named_committed`): a row with another token refuses its run before they count.
    let mut rows: BTreeMap<String, (RunRow, Vec<PartRow>)> = tx
        .runs_named_committed(&names)?
        .into_iter()
        .map(|(row, parts)| (row.id.clone(), (row, parts)))
        .collect();
    for appends in group {
        let run = &appends.lease.run;
        let (row, parts) = rows
            .remove(run.as_str())
            .ok_or_else(|| JournalError::UnknownRun { run: run.clone() })?;
        appends.commit_locked(tx, row, Some(parts))?;
    }
    Ok(())
}

impl Append {
    pub(crate) fn prepare(
        lease: &Lease,
        step: u64,
        input: &StepInput,
        events: &EventBatch,
    ) -> Result<Append, JournalError> {
        let encoded = Arc::new(EncodedInput::of(input)?);
        let packed = PackedEvents::default();
        Append::prepare_encoded(lease, step, input, encoded, events, &packed)
    }

    /// [`Append::prepare`] of an input already encoded (`encoded` is `input`'s), with the
    /// packed groups of the encodings its events handed over.
    fn prepare_encoded(
        lease: &Lease,
        step: u64,
        input: &StepInput,
        encoded: Arc<EncodedInput>,
        events: &EventBatch,
        packed: &PackedEvents,
    ) -> Result<Append, JournalError> {
        let run = &lease.run;
        let chunks =
            chunks(events, packed).map_err(|(seq, detail)| JournalError::ChainMismatch {
                run: run.clone(),
                seq,
                detail,
            })?;
        let status = status_after(events);
        let stop_reason = match &status {
            Some(RunStatus::Stopped { reason }) => Some(to_json(reason)?),
            _ => None,
        };
        Ok(Append {
            lease: lease.clone(),
            step,
            kind: input.kind(),
            start: match input {
                StepInput::Start { header } => Some(header.clone()),
                _ => None,
            },
            retry: input.retry_into_core().is_some(),
            input: encoded,
            chunks,
            first_seq: events.first_seq(),
            count: events.len() as u64,
            previous: events.previous(),
            head: events.head(),
            status: status.as_ref().map_or("running", RunStatus::name),
            stop_reason,
        })
    }

    /// Commits the step alone: [`crate::Journal::append`].
    pub(crate) fn commit(self, tx: &mut dyn Tx) -> Result<(), JournalError> {
        let lease = self.lease.clone();
        Appends {
            lease,
            appends: vec![self],
            release: false,
        }
        .commit(tx)
    }

    /// Writes the step's rows after the steps `tip` stands at, and moves `tip` past it.
    /// Only the transaction's first step can have outcomes committed ahead (they are
    /// committed for the run's next step only), so only its are read (`read`).
    fn write(
        self,
        tx: &mut dyn Tx,
        row: &RunRow,
        tip: &mut Tip,
        read: Read,
    ) -> Result<(), JournalError> {
        let run = &self.lease.run;
        let step = self.step;
        self.check(row, tip)?;
        let input_link = input_link(
            tip.previous,
            step,
            self.kind,
            &self.input.stored,
            self.input.digest,
        );
        let next_seq = tip.events + self.count;
        let link = step_link(input_link, tip.events, self.count, self.head);
        let committed = match read {
            Read::Committed(None) => {
                let parts = tx.committed(run.as_str(), signed(step)?)?;
                committed_agents(run, step, self.input.cycle, parts)?
            }
            Read::Committed(Some(parts)) => committed_agents(run, step, self.input.cycle, parts)?,
            Read::Nothing => Committed {
                agents: BTreeSet::new(),
                next_part: 0,
            },
        };
        if let Some(cycle) = self.input.cycle {
            if committed.agents.is_empty() {
                insert_parts(tx, run, step, cycle, committed.next_part, &self.input.parts)?;
            } else {
                let fresh = self
                    .input
                    .encoded
                    .iter()
                    .filter(|(agent, _)| !committed.agents.contains(agent));
                insert_outcomes(tx, run, step, cycle, committed.next_part, fresh)?;
            }
        } else if !committed.agents.is_empty() {
            return Err(JournalError::InvalidStep {
                run: run.clone(),
                step,
                detail: "outcomes were committed for this step, but it is not a cycle",
            });
        }
        tx.insert_step(
            run.as_str(),
            &NewStep {
                step: signed(step)?,
                kind: self.kind,
                input: &self.input.stored,
                first_seq: signed(tip.events)?,
                events: signed(self.count)?,
                input_link,
                link,
            },
        )?;
        for chunk in &self.chunks {
            let (ends, bodies) = &*chunk.sealed;
            tx.insert_chunk(
                run.as_str(),
                &ChunkRow {
                    first_seq: signed(chunk.first_seq)?,
                    step: signed(step)?,
                    count: signed(chunk.count as u64)?,
                    hashes: &chunk.hashes,
                    ends: Some(ends),
                    bodies: Some(bodies),
                },
            )?;
        }
        *tip = Tip {
            steps: step + 1,
            events: next_seq,
            root: self.head,
            previous: link,
            status: self.status.to_owned(),
            stop_reason: self.stop_reason,
        };
        Ok(())
    }

    /// Checks everything about the step that does not depend on storage beyond the run's
    /// row: the run is not stopped (unless the step retries its failed agents), the step is
    /// its next one, a start is step 0 with the run's header, and the events continue its
    /// chain.
    fn check(&self, row: &RunRow, head: &Tip) -> Result<(), JournalError> {
        let run = &self.lease.run;
        let step = self.step;
        if head.status == "stopped" && !self.retry {
            return Err(JournalError::RunStopped { run: run.clone() });
        }
        if step != head.steps {
            return Err(JournalError::OutOfOrder {
                run: run.clone(),
                expected: head.steps,
                got: step,
            });
        }
        let invalid = |detail| JournalError::InvalidStep {
            run: run.clone(),
            step,
            detail,
        };
        match (step, &self.start) {
            (0, Some(header)) if *header != row.header()? => {
                return Err(invalid("the start's header differs from the run's"));
            }
            (0, Some(_)) => {}
            (0, None) => return Err(invalid("step 0 must be the run's start")),
            (_, Some(_)) => return Err(invalid("only step 0 may be a start")),
            _ => {}
        }
        if self.first_seq != head.events {
            return Err(JournalError::ChainMismatch {
                run: run.clone(),
                seq: self.first_seq,
                detail: format!("the next seq is {}", head.events),
            });
        }
        if self.previous != head.root {
            return Err(JournalError::ChainMismatch {
                run: run.clone(),
                seq: self.first_seq,
                detail: format!(
                    "it chains from {}, not from the stored head {}",
                    self.previous, head.root
                ),
            });
        }
        Ok(())
    }
}

/// Every run, in creation order.
pub(crate) fn runs(tx: &mut dyn Tx) -> Result<Vec<RunSummary>, JournalError> {
    tx.runs()?.iter().map(RunRow::summary).collect()
}

/// A backend: runs each journal operation in one transaction of its storage. Every
/// backend is a [`Journal`] through this.
pub(crate) trait Backend {
    /// Runs `op` in one write transaction and commits it; refuses when the handle cannot
    /// write (read-only, or poisoned by an earlier storage failure).
    fn write<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut dyn Tx) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError>;

    /// Runs `op` in one read transaction: every row it reads comes from one snapshot.
    fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Tx) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError>;

    /// Runs `op`, which reads with exactly one statement, where a backend can do so without
    /// a transaction (one statement sees one snapshot); by default, as [`Backend::read`].
    fn read_one<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Tx) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.read(op)
    }
}

/// Implements [`Journal`] for a [`Backend`]: each operation prepared outside its transaction
/// and run in one. (A macro rather than a blanket implementation, which would overlap the
/// implementations for `&mut J` and `Box<J>`.)
macro_rules! journal_through_backend {
    ($journal:ty) => {
        impl $crate::Journal for $journal {
            fn create_run(
                &mut self,
                run: &$crate::RunId,
                header: &$crate::RunHeader,
                holder: &$crate::Holder,
                now_ms: u64,
            ) -> Result<$crate::Lease, $crate::JournalError> {
                let (header, link) = $crate::store::new_header(run, header)?;
                let lease = $crate::Lease::new(run, holder, now_ms);
                let created = lease.clone();
                self.write(move |tx| $crate::store::create_run(tx, &header, &link, &created))?;
                Ok(lease)
            }

            fn acquire(
                &mut self,
                run: &$crate::RunId,
                holder: &$crate::Holder,
                now_ms: u64,
            ) -> Result<$crate::Lease, $crate::JournalError> {
                let lease = $crate::Lease::new(run, holder, now_ms);
                let taken = lease.clone();
                self.write(move |tx| $crate::store::acquire(tx, &taken, now_ms))?;
                Ok(lease)
            }

            fn preempt(
                &mut self,
                run: &$crate::RunId,
                holder: &$crate::Holder,
                now_ms: u64,
            ) -> Result<$crate::Lease, $crate::JournalError> {
                let lease = $crate::Lease::new(run, holder, now_ms);
                let taken = lease.clone();
                self.write(move |tx| $crate::store::preempt(tx, &taken))?;
                Ok(lease)
            }

            fn renew(
                &mut self,
                lease: &mut $crate::Lease,
                now_ms: u64,
            ) -> Result<(), $crate::JournalError> {
                let held = lease.clone();
                lease.expires_ms = self.write(move |tx| $crate::store::renew(tx, &held, now_ms))?;
                Ok(())
            }

            fn claim(
                &mut self,
                holder: &$crate::Holder,
                now_ms: u64,
                limit: usize,
            ) -> Result<Vec<$crate::Lease>, $crate::JournalError> {
                let holder = holder.clone();
                self.write(move |tx| $crate::store::claim(tx, &holder, now_ms, limit))
            }

            fn claim_loaded(
                &mut self,
                holder: &$crate::Holder,
                now_ms: u64,
                limit: usize,
            ) -> Result<Vec<$crate::ClaimedRun>, $crate::JournalError> {
                let holder = holder.clone();
                self.write(move |tx| $crate::store::claim_loaded(tx, &holder, now_ms, limit))
            }

            fn release(&mut self, lease: &$crate::Lease) -> Result<(), $crate::JournalError> {
                let held = lease.clone();
                self.write(move |tx| $crate::store::release(tx, &held))
            }

            fn submit_run(
                &mut self,
                run: &$crate::RunId,
                header: &$crate::RunHeader,
                _holder: &$crate::Holder,
                _now_ms: u64,
            ) -> Result<(), $crate::JournalError> {
                let (header, link) = $crate::store::new_header(run, header)?;
                let run = run.clone();
                self.write(move |tx| $crate::store::submit_run(tx, &run, &header, &link))
            }

            fn commit_outcomes(
                &mut self,
                lease: &$crate::Lease,
                step: u64,
                cycle: u32,
                outcomes: &[(u32, $crate::OutcomeRecord)],
            ) -> Result<(), $crate::JournalError> {
                let outcomes = $crate::store::Outcomes::prepare(lease, step, cycle, outcomes)?;
                self.write(move |tx| outcomes.commit(tx))
            }

            fn append(
                &mut self,
                lease: &$crate::Lease,
                step: u64,
                input: &$crate::StepInput,
                events: &converge_core::EventBatch,
            ) -> Result<(), $crate::JournalError> {
                let append = $crate::store::Append::prepare(lease, step, input, events)?;
                self.write(move |tx| append.commit(tx))
            }

            fn append_steps(
                &mut self,
                lease: &$crate::Lease,
                first: u64,
                steps: &[$crate::PendingStep],
                after: $crate::AfterSteps,
            ) -> Result<(), $crate::JournalError> {
                let appends = $crate::store::Appends::prepare(lease, first, steps, after)?;
                self.write(move |tx| appends.commit(tx))
            }

            fn append_steps_of_runs(
                &mut self,
                runs: &[$crate::RunSteps],
            ) -> Vec<Result<(), $crate::JournalError>> {
                let each = |journal: &mut Self, run: &$crate::RunSteps| {
                    $crate::Journal::append_steps(
                        journal, &run.lease, run.first, &run.steps, run.after,
                    )
                };
                if runs.len() < 2 {
                    return runs.iter().map(|run| each(self, run)).collect();
                }
                let prepared = $crate::store::Appends::prepare_runs(runs);
                let together = match prepared {
                    Ok(group) => self.write(move |tx| $crate::store::append_group(tx, group)),
                    Err(refused) => Err(refused),
                };
                match together {
                    Ok(()) => runs.iter().map(|_| Ok(())).collect(),
                    // Nothing of the group was kept: each on its own, for its own answer
                    // (a handle a storage failure poisoned refuses each at once).
                    Err(_) => runs.iter().map(|run| each(self, run)).collect(),
                }
            }

            fn append_steps_of_runs_and_claim(
                &mut self,
                runs: &[$crate::RunSteps],
                holder: &$crate::Holder,
                now_ms: u64,
                limit: usize,
            ) -> $crate::GroupAndClaim {
                let prepared = $crate::store::Appends::prepare_runs(runs);
                // Nothing to claim, or a run refused before any transaction: as
                // `append_steps_of_runs` would, then a claim of its own.
                let together = match prepared {
                    Ok(group) if limit > 0 => {
                        let holder = holder.clone();
                        Some(self.write(move |tx| {
                            $crate::store::append_group(tx, group)?;
                            $crate::store::claim_loaded(tx, &holder, now_ms, limit)
                        }))
                    }
                    _ => None,
                };
                match together {
                    Some(Ok(claimed)) => $crate::GroupAndClaim {
                        committed: runs.iter().map(|_| Ok(())).collect(),
                        claimed: Ok(claimed),
                    },
                    // Nothing of the group was kept: each run on its own, then the claim
                    // (a handle a storage failure poisoned refuses each at once).
                    _ => {
                        let committed = $crate::Journal::append_steps_of_runs(self, runs);
                        let claimed = match limit {
                            0 => Ok(Vec::new()),
                            _ => $crate::Journal::claim_loaded(self, holder, now_ms, limit),
                        };
                        $crate::GroupAndClaim { committed, claimed }
                    }
                }
            }

            fn runs(&self) -> Result<Vec<$crate::RunSummary>, $crate::JournalError> {
                self.read($crate::store::runs)
            }

            fn summary(
                &self,
                run: &$crate::RunId,
            ) -> Result<$crate::RunSummary, $crate::JournalError> {
                let run = run.clone();
                self.read_one(move |tx| $crate::store::summary(tx, &run))
            }

            fn summaries(
                &self,
                runs: &[$crate::RunId],
            ) -> Result<Vec<Option<$crate::RunSummary>>, $crate::JournalError> {
                let runs = runs.to_vec();
                self.read_one(move |tx| $crate::store::summaries(tx, &runs))
            }

            fn header(
                &self,
                run: &$crate::RunId,
            ) -> Result<$crate::RunHeader, $crate::JournalError> {
                let run = run.clone();
                self.read_one(move |tx| $crate::store::header(tx, &run))
            }

            fn load(
                &self,
                run: &$crate::RunId,
            ) -> Result<$crate::RecordedRun, $crate::JournalError> {
                let run = run.clone();
                self.read(move |tx| $crate::store::load(tx, &run))
            }

            fn events(
                &self,
                run: &$crate::RunId,
                from: u64,
            ) -> Result<Vec<$crate::StoredEvent>, $crate::JournalError> {
                $crate::Journal::events_page(self, run, from, usize::MAX)
            }

            fn events_page(
                &self,
                run: &$crate::RunId,
                from: u64,
                limit: usize,
            ) -> Result<Vec<$crate::StoredEvent>, $crate::JournalError> {
                let run = run.clone();
                self.read(move |tx| $crate::store::tail(tx, &run, from, limit))
            }

            fn verify(
                &self,
                run: &$crate::RunId,
            ) -> Result<$crate::Verification, $crate::JournalError> {
                let run = run.clone();
                self.read(move |tx| $crate::store::verify(tx, &run))
            }
        }
    };
}
pub(crate) use journal_through_backend;

/// One run's summary.
pub(crate) fn summary(tx: &mut dyn Tx, run: &RunId) -> Result<RunSummary, JournalError> {
    tx.summaries_named(&[run.as_str()])?
        .first()
        .ok_or_else(|| JournalError::UnknownRun { run: run.clone() })?
        .summary()
}

/// The summaries of `runs`, in their order, in one read; `None` for a run not held.
pub(crate) fn summaries(
    tx: &mut dyn Tx,
    runs: &[RunId],
) -> Result<Vec<Option<RunSummary>>, JournalError> {
    let names: Vec<&str> = runs.iter().map(RunId::as_str).collect();
    let rows: BTreeMap<String, RunRow> = tx
        .summaries_named(&names)?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    runs.iter()
        .map(|run| rows.get(run.as_str()).map(RunRow::summary).transpose())
        .collect()
}

/// What one run was created with.
pub(crate) fn header(tx: &mut dyn Tx, run: &RunId) -> Result<RunHeader, JournalError> {
    read_run(tx, run)?.header()
}

/// Loads a run for re-deriving: [`crate::Journal::load`].
pub(crate) fn load(tx: &mut dyn Tx, run: &RunId) -> Result<RecordedRun, JournalError> {
    let row = read_run(tx, run)?;
    load_row(tx, run, row)
}

/// [`load`], the run's row already read.
fn load_row(tx: &mut dyn Tx, run: &RunId, row: RunRow) -> Result<RecordedRun, JournalError> {
    tx.read_ahead(run.as_str())?;
    let mut hashes: Vec<Vec<Digest>> = Vec::new();
    let Scanned {
        row,
        inputs,
        open,
        checked,
    } = scan_row(tx, run, row, false, |step, entry| {
        let index = usize::try_from(step).unwrap_or(usize::MAX);
        if hashes.len() <= index {
            hashes.resize_with(index.saturating_add(1), Vec::new);
        }
        if let Some(slot) = hashes.get_mut(index) {
            slot.push(entry.hash);
        }
    })?;
    checked.map_err(|(at, reason)| JournalError::Broken {
        run: run.clone(),
        at,
        reason,
    })?;
    hashes.resize_with(inputs.len(), Vec::new);
    let mut first_seq = 0;
    let steps = inputs
        .into_iter()
        .zip(hashes)
        .enumerate()
        .map(|(step, (input, hashes))| {
            let recorded = RecordedStep {
                step: step as u64,
                input,
                first_seq,
                hashes,
            };
            first_seq += recorded.hashes.len() as u64;
            recorded
        })
        .collect();
    let summary = row.summary()?;
    Ok(RecordedRun {
        id: summary.id,
        header: row.header()?,
        status: summary.status,
        root_hash: summary.root_hash,
        record_hash: summary.record_hash,
        steps,
        open,
        lease: summary.lease,
    })
}

/// Checks a whole run from its stored bytes: [`crate::Journal::verify`].
pub(crate) fn verify(tx: &mut dyn Tx, run: &RunId) -> Result<Verification, JournalError> {
    // The status check needs the last event only when it stops the run: keep that one body
    // (events are encoded with their kind first), not a copy of every body.
    let mut last_stop: Option<Vec<u8>> = None;
    let Scanned { row, checked, .. } = scan(tx, run, true, |_, entry| {
        last_stop = entry
            .body
            .filter(|body| body.starts_with(br#"{"event":"run_stopped""#))
            .map(<[u8]>::to_vec);
    })?;
    let head = row.head()?;
    let checked = checked.and_then(|()| {
        check_status(&row, last_stop.as_deref(), head.events)
            .map_err(|detail| (Place::Run, BreakReason::StatusMismatch { detail }))
    });
    Ok(match checked {
        Ok(()) => Verification::Intact {
            steps: head.steps,
            events: head.events,
            root_hash: head.root,
            record_hash: row.digest(&row.record_hash, "record hash")?,
        },
        Err((at, reason)) => Verification::Broken { at, reason },
    })
}

/// What [`scan`] found.
struct Scanned {
    row: RunRow,
    /// The inputs of the intact steps, cycles with their outcomes.
    inputs: Vec<StepInput>,
    /// Outcomes committed ahead of the next step.
    open: Option<OpenCycle>,
    /// The first bad place, if any.
    checked: Result<(), (Place, BreakReason)>,
}

/// Checks the whole run: the header link, every step row, every stored event hash (with
/// `bodies`, recomputed from the stored bytes), the outcomes of each cycle against its
/// batch, and the record chain's links over all of them. `keep` receives each intact event
/// with its step, in seq order. The first bad place, in record order, is `checked`'s error.
fn scan(
    tx: &mut dyn Tx,
    run: &RunId,
    bodies: bool,
    keep: impl FnMut(u64, &Entry<'_>),
) -> Result<Scanned, JournalError> {
    let row = read_run(tx, run)?;
    scan_row(tx, run, row, bodies, keep)
}

/// [`scan`], the run's row already read.
fn scan_row(
    tx: &mut dyn Tx,
    run: &RunId,
    row: RunRow,
    bodies: bool,
    mut keep: impl FnMut(u64, &Entry<'_>),
) -> Result<Scanned, JournalError> {
    let head = row.head()?;
    let header = row.header()?;
    let step_rows = tx.steps(run.as_str())?;
    let mut steps = check_steps(&step_rows, &head, &header, true);
    let inputs = std::mem::take(&mut steps.inputs);
    let mut walk = ChainWalk::new(&steps, head);
    let mut last_hashes: BTreeMap<u64, Digest> = BTreeMap::new();
    let events_checked = walk_chunks(tx, run, 0, &mut walk, bodies, 0, |step, entry| {
        last_hashes.insert(step, entry.hash);
        keep(step, entry);
    })?;
    let events_checked = events_checked.and_then(|()| walk.finish());
    let mut breaks: Vec<(Place, BreakReason)> = Vec::new();
    if let Err(broken) = events_checked {
        breaks.push(place_of(broken));
    }

    let stored = read_outcomes(tx, run)?;
    let FiledOutcomes {
        by_step: outcomes,
        open,
        broken,
    } = sort_outcomes(stored, &inputs, head.steps);
    breaks.extend(broken);
    let mut heads = Vec::with_capacity(inputs.len());
    let mut event_head = Digest::zero();
    for step in 0..inputs.len() as u64 {
        if let Some(hash) = last_hashes.get(&step) {
            event_head = *hash;
        }
        heads.push(event_head);
    }
    let record_heads = RecordHeads {
        run: run.as_str(),
        header: &row.header,
        header_link: row.digest(&row.header_link, "header link")?,
        record_hash: row.digest(&row.record_hash, "record hash")?,
    };
    let all_valid = steps.broken.is_none() && inputs.len() == step_rows.len();
    let valid = if all_valid {
        step_rows.len()
    } else {
        inputs.len()
    };
    if let Some(broken) = check_links(&record_heads, &step_rows, valid, &outcomes, &heads) {
        breaks.push(broken);
    }
    let inputs = match attach_outcomes(inputs, &outcomes) {
        Ok(inputs) => inputs,
        Err((inputs, broken)) => {
            breaks.push(broken);
            inputs
        }
    };
    let checked = match breaks.into_iter().min_by_key(|(place, _)| place.order()) {
        Some(broken) => Err(broken),
        None => Ok(()),
    };
    Ok(Scanned {
        row,
        inputs,
        open,
        checked,
    })
}

/// The stored events from seq `from` on, at most `limit` of them, checked without reading
/// the run before them.
///
/// Reads the run row, the chunk holding `from` (its step names the step to start from), the
/// step ranges from the one holding `from` to the one holding the last event returned (or to
/// the run's last step when the read reaches the head), the stored hash of event `from - 1`,
/// and the chunks from the one holding `from` to the one holding the last event returned.
/// Each event returned is checked as [`verify`] checks it: no gap, nothing beyond the head,
/// filed under the step whose range holds it, its hash recomputed over its stored bytes
/// chained from the stored hash before it; a read that reaches the head also checks the last
/// steps and the root hash. Events before `from` are not checked.
pub(crate) fn tail(
    tx: &mut dyn Tx,
    run: &RunId,
    from: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, JournalError> {
    let row = read_run(tx, run)?;
    let head = row.head()?;
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let end = head.events.min(from.saturating_add(limit));
    if from >= end {
        return Ok(Vec::new());
    }
    let from_sql = signed(from)?;
    // The chunk holding `from` (the last one starting at or before it) and its step.
    let hint = tx.chunk_at(run.as_str(), from_sql, false)?;
    let (chunk_start, filed) = hint
        .as_ref()
        .map_or((from_sql, i64::MAX), |chunk| (chunk.first_seq, chunk.step));
    // Where the stored events before `from` end, when they end before it: not even event 0
    // is stored without a chunk at or before `from`.
    let gap = match &hint {
        None => Some(0),
        Some(chunk) => {
            let chunk_end = unsigned(chunk.first_seq, "seq")?
                .saturating_add(unsigned(chunk.count, "event count")?);
            (chunk_end <= from).then_some(chunk_end)
        }
    };

    // The step holding `from`: the last step at or before the one the chunk is filed under
    // that starts at or before `from` (the filed step itself, unless misfiled).
    let mut spans = Vec::new();
    if let Some(first_step) = tx.step_holding(run.as_str(), filed, from_sql)? {
        tx.step_spans(run.as_str(), first_step, &mut |span| {
            let covers_end = span.first_seq.saturating_add(span.events) >= end;
            spans.push(span);
            !(covers_end && end < head.events)
        })?;
    }
    let steps = check_tail_steps(spans, &head, from, end);
    if let Some(seq) = gap {
        return Err(broken(
            run,
            Break {
                seq,
                step: steps.step_of(seq),
                reason: BreakReason::Missing,
            },
        ));
    }

    // The stored hash the first event chains from: in the chunk holding `from` when it
    // starts earlier (the walk picks it up), otherwise in the chunk before.
    let previous = if from == 0 || chunk_start < from_sql {
        Digest::zero()
    } else {
        stored_hash(tx, run, from - 1)?.map_err(|error| broken(run, error))?
    };
    let mut walk = ChainWalk::tail(&steps, head, from, previous, end);
    let mut events = Vec::new();
    let checked = walk_chunks(
        tx,
        run,
        chunk_start,
        &mut walk,
        true,
        from,
        |step, entry| {
            if let Some(body) = entry.body {
                events.push(StoredEvent {
                    seq: entry.seq,
                    step,
                    hash: entry.hash,
                    body: body.to_vec(),
                });
            }
        },
    )?;
    checked
        .and_then(|()| walk.finish())
        .map_err(|error| broken(run, error))?;
    Ok(events)
}

fn broken(run: &RunId, broken: Break) -> JournalError {
    let (at, reason) = place_of(broken);
    JournalError::Broken {
        run: run.clone(),
        at,
        reason,
    }
}

/// Feeds the stored chunks starting at or after `start`, in seq order, to `walk` until it is
/// past its limit or breaks; `keep` receives each intact event with the step it is filed
/// under. Events before `from` are skipped (the one just before gives the walk its starting
/// hash). Returns the first break.
fn walk_chunks(
    tx: &mut dyn Tx,
    run: &RunId,
    start: i64,
    walk: &mut ChainWalk<'_>,
    bodies: bool,
    from: u64,
    mut keep: impl FnMut(u64, &Entry<'_>),
) -> Result<Result<(), Break>, JournalError> {
    let mut outcome = Ok(());
    tx.chunks(run.as_str(), start, bodies, &mut |chunk| {
        if walk.past_limit() {
            return Ok(false);
        }
        let first_seq = unsigned(chunk.first_seq, "seq")?;
        let filed = unsigned(chunk.step, "step")?;
        let count = unsigned(chunk.count, "event count")?;
        let inflated = match (chunk.ends, chunk.bodies) {
            (Some(ends), Some(compressed)) if bodies => {
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                match Unpacked::new(count, ends, compressed) {
                    Ok(unpacked) => Some((ends, unpacked)),
                    Err(detail) => {
                        outcome = Err(walk.malformed(first_seq, detail));
                        return Ok(false);
                    }
                }
            }
            _ => None,
        };
        let parts = inflated
            .as_ref()
            .map(|(ends, unpacked)| (*ends, unpacked.bytes()));
        let entries = match split_chunk(first_seq, count, chunk.hashes, parts) {
            Ok(entries) => entries,
            Err(detail) => {
                outcome = Err(walk.malformed(first_seq, detail));
                return Ok(false);
            }
        };
        for entry in &entries {
            if entry.seq < from {
                walk.skip(entry);
                continue;
            }
            match walk.feed(filed, entry) {
                Ok(true) => keep(filed, entry),
                Ok(false) => return Ok(false),
                Err(broken) => {
                    outcome = Err(broken);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    Ok(outcome)
}

/// The stored hash of event `seq`, read from the chunk holding it without its bodies.
fn stored_hash(
    tx: &mut dyn Tx,
    run: &RunId,
    seq: u64,
) -> Result<Result<Digest, Break>, JournalError> {
    let missing = |at| Break {
        seq: at,
        step: None,
        reason: BreakReason::Missing,
    };
    // Without a chunk starting at or before `seq`, not even event 0 is stored.
    let Some(chunk) = tx.chunk_at(run.as_str(), signed(seq)?, true)? else {
        return Ok(Err(missing(0)));
    };
    let first_seq = unsigned(chunk.first_seq, "seq")?;
    let count = unsigned(chunk.count, "event count")?;
    let entries = match split_chunk(first_seq, count, &chunk.hashes, None) {
        Ok(entries) => entries,
        Err(detail) => {
            return Ok(Err(Break {
                seq: first_seq,
                step: None,
                reason: BreakReason::Malformed { detail },
            }));
        }
    };
    Ok(entries
        .iter()
        .find(|entry| entry.seq == seq)
        .map(|entry| entry.hash)
        .ok_or_else(|| missing(first_seq.saturating_add(count))))
}

/// Splits a batch into the chunks it is stored as: runs of consecutive events bounded like
/// every stored group ([`Group::fits`]), each with at least one event. The events whose
/// encodings the batch handed over come first, as the groups `packed` holds, which must be
/// exactly those. `Err` names the event at fault and why: one too large for a chunk's
/// 32-bit offsets (over 4 GiB), or one the packed groups do not match.
fn chunks(events: &EventBatch, packed: &PackedEvents) -> Result<Vec<Chunk>, (u64, String)> {
    let records = events.records();
    let mut chunks = Vec::with_capacity(packed.groups.len());
    let mut next = 0;
    for group in &packed.groups {
        let first_seq = events.first_seq() + next as u64;
        if group.first_seq != first_seq || group.count == 0 || next + group.count > events.handed()
        {
            return Err((
                first_seq,
                "its encoding was not among the packed groups given with the step".to_owned(),
            ));
        }
        let mut hashes = Vec::with_capacity(group.count * 32);
        for record in &records[next..next + group.count] {
            hashes.extend_from_slice(record.hash.as_bytes());
        }
        chunks.push(Chunk {
            first_seq,
            count: group.count,
            hashes,
            sealed: Arc::clone(&group.sealed),
        });
        next += group.count;
    }
    if next != events.handed() {
        return Err((
            events.first_seq() + next as u64,
            "its encoding was handed over, but is not among the packed groups given with the \
             step"
                .to_owned(),
        ));
    }
    // Each later chunk's records, as indexes into the batch: their bytes lie one after the
    // other in it, and are compressed from there.
    let too_large = |seq| {
        (
            seq,
            "the event is larger than the 4 GiB a journal stores".to_owned(),
        )
    };
    let mut packing: Vec<(usize, u64, usize, Vec<u8>, Index)> = Vec::new();
    for (index, (record, body)) in (events.handed()..).zip(events.iter()) {
        if !packing
            .last()
            .is_some_and(|(_, _, _, _, group)| group.fits(body.len()))
        {
            packing.push((index, record.seq, 0, Vec::new(), Index::default()));
        }
        if let Some((_, _, count, hashes, group)) = packing.last_mut() {
            *count += 1;
            hashes.extend_from_slice(record.hash.as_bytes());
            group.push(body.len()).map_err(|()| too_large(record.seq))?;
        }
    }
    // A second group starts only once the first is full, so groups are worth a thread each.
    chunks.extend(parallel::map(
        packing,
        1,
        |(first, first_seq, count, hashes, group)| Chunk {
            first_seq,
            count,
            hashes,
            sealed: Arc::new(group.seal(events.encoded(first..first + count))),
        },
    ));
    Ok(chunks)
}

/// Consecutive events as one `events` row, their bodies compressed.
struct Chunk {
    first_seq: u64,
    count: usize,
    hashes: Vec<u8>,
    /// The group's end offsets and compressed bodies.
    sealed: Arc<(Vec<u8>, Vec<u8>)>,
}

/// The status a run has after a step that emitted `events`: set by a `run_stopped` event,
/// `None` (running) otherwise.
fn status_after(events: &EventBatch) -> Option<RunStatus> {
    events
        .records()
        .iter()
        .rev()
        .find_map(|record| match &record.event {
            Event::RunStopped { reason, .. } => Some(RunStatus::after(reason)),
            _ => None,
        })
}

/// Checks the stored status against the run's last stored event (`last`: its body when it is
/// a `run_stopped` event): `stopped` with its reason after a `run_stopped` event for good,
/// `awaiting_approval` after one awaiting approval, `running` otherwise.
fn check_status(row: &RunRow, last: Option<&[u8]>, events: u64) -> Result<(), String> {
    let stopped_by: Option<Value> = last
        .filter(|_| events > 0)
        .and_then(|body| serde_json::from_slice::<Value>(body).ok())
        .filter(|event| event.get("event").and_then(Value::as_str) == Some("run_stopped"))
        .and_then(|event| event.get("reason").cloned());
    let expected = match &stopped_by {
        None => RunStatus::Running,
        Some(reason) if reason.get("stop").and_then(Value::as_str) == Some("awaiting_approval") => {
            RunStatus::AwaitingApproval
        }
        Some(reason) => RunStatus::Stopped {
            reason: reason.clone(),
        },
    };
    let stored = row.status().map_err(|error| error.to_string())?;
    if stored == expected {
        Ok(())
    } else {
        let describe = |status: &RunStatus| match status {
            RunStatus::Stopped { reason } => format!("stopped ({reason})"),
            other => other.name().to_owned(),
        };
        Err(format!(
            "it is stored as {}, but the last event says {}",
            describe(&stored),
            describe(&expected)
        ))
    }
}

/// A step's input as stored: the text of its row, its outcomes, its cycle number.
type SplitInput<'i> = (String, &'i [(u32, OutcomeRecord)], Option<u32>);

/// Splits a step's input into the text stored in its row (a cycle's without its outcomes),
/// its outcomes, and its cycle number when it is a cycle.
fn split_outcomes(input: &StepInput) -> Result<SplitInput<'_>, JournalError> {
    match input {
        StepInput::Cycle {
            cycle,
            batch,
            outcomes,
        } => {
            // The stored text is the input's without its outcomes: written by hand rather
            // than by copying the input, whose outcomes can be megabytes.
            #[derive(serde::Serialize)]
            #[serde(rename_all = "snake_case")]
            enum Stored<'a> {
                Cycle { cycle: u32, batch: &'a [u32] },
            }
            let stored = to_json(&Stored::Cycle {
                cycle: *cycle,
                batch,
            })?;
            Ok((stored, outcomes.as_slice(), Some(*cycle)))
        }
        other => Ok((to_json(other)?, &[], None)),
    }
}

/// A step's input as it is stored: the text of its row, its cycle (for a cycle), and its
/// outcomes encoded, digested and packed. Made during the commit, or before it
/// ([`crate::PreparedInput`]) by a driver with a core to spare.
#[derive(Debug, Clone)]
pub(crate) struct EncodedInput {
    /// The text stored in the step's row (a cycle's without its outcomes).
    stored: String,
    cycle: Option<u32>,
    /// Each outcome's bytes, by agent index, for a step some of whose outcomes were
    /// committed ahead of it.
    encoded: Vec<(u32, Vec<u8>)>,
    /// What the input's link binds of the outcomes.
    digest: Digest,
    /// Every outcome packed, for the usual case that none was committed ahead of the step.
    parts: Vec<Packed>,
}

impl EncodedInput {
    /// `input` encoded for storage.
    pub(crate) fn of(input: &StepInput) -> Result<EncodedInput, JournalError> {
        let (stored, outcomes, cycle) = split_outcomes(input)?;
        let encoded = encode_outcomes(outcomes)?;
        let digest = outcomes_digest(
            encoded
                .iter()
                .map(|(agent, body)| (*agent, body.as_slice())),
        );
        let parts = pack_outcomes(encoded.iter())?;
        Ok(EncodedInput {
            stored,
            cycle,
            encoded,
            digest,
            parts,
        })
    }
}

/// Each outcome's stored bytes, by agent index, in increasing index order.
fn encode_outcomes(outcomes: &[(u32, OutcomeRecord)]) -> Result<Vec<(u32, Vec<u8>)>, JournalError> {
    let mut encoded = parallel::map(
        outcomes.iter().collect(),
        ENCODE_PER_THREAD_MIN,
        |(agent, outcome)| {
            serde_json::to_vec(outcome)
                .map(|body| (*agent, body))
                .map_err(|error| JournalError::Corrupt {
                    detail: format!("cannot encode an outcome as JSON: {error}"),
                })
        },
    )
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    encoded.sort_by_key(|(agent, _)| *agent);
    Ok(encoded)
}

/// Fewest outcomes worth encoding or reading on a thread of their own.
const ENCODE_PER_THREAD_MIN: usize = 2048;

/// The agents whose outcomes are already committed for a step, and the next part number.
struct Committed {
    agents: BTreeSet<u32>,
    next_part: i64,
}

fn agent_indices(agents: &[u8]) -> impl Iterator<Item = u32> + '_ {
    agents
        .chunks_exact(4)
        .map(|agent| u32::from_le_bytes([agent[0], agent[1], agent[2], agent[3]]))
}

/// Which agents have outcomes committed for `step`, from the parts committed for it; with
/// `cycle`, refuses parts recorded for another cycle.
fn committed_agents(
    run: &RunId,
    step: u64,
    cycle: Option<u32>,
    parts: Vec<PartRow>,
) -> Result<Committed, JournalError> {
    let mut committed = Committed {
        agents: BTreeSet::new(),
        next_part: 0,
    };
    for part in parts {
        if cycle.is_some_and(|cycle| i64::from(cycle) != part.cycle) {
            return Err(JournalError::InvalidStep {
                run: run.clone(),
                step,
                detail: "outcomes committed for this step belong to another cycle",
            });
        }
        committed.next_part = committed.next_part.max(part.part.saturating_add(1));
        committed.agents.extend(agent_indices(&part.agents));
    }
    Ok(committed)
}

/// Inserts outcomes as parts of at most [`crate::pack::GROUP_RECORDS_MAX`] records and
/// [`crate::pack::GROUP_BYTES_MAX`] bytes, numbered from `first_part`.
fn insert_outcomes<'o>(
    tx: &mut dyn Tx,
    run: &RunId,
    step: u64,
    cycle: u32,
    first_part: i64,
    outcomes: impl Iterator<Item = &'o (u32, Vec<u8>)>,
) -> Result<(), JournalError> {
    insert_parts(tx, run, step, cycle, first_part, &pack_outcomes(outcomes)?)
}

/// Inserts packed outcome parts, numbered from `first_part`.
fn insert_parts(
    tx: &mut dyn Tx,
    run: &RunId,
    step: u64,
    cycle: u32,
    first_part: i64,
    parts: &[Packed],
) -> Result<(), JournalError> {
    for (index, packed) in parts.iter().enumerate() {
        let part = NewPart {
            step: signed(step)?,
            part: first_part.saturating_add(index as i64),
            cycle: i64::from(cycle),
            agents: &packed.agents,
            ends: &packed.ends,
            bodies: &packed.bodies,
        };
        tx.insert_part(run.as_str(), &part)?;
    }
    Ok(())
}

/// One part of a step's outcomes, packed: what [`insert_parts`] stores.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    /// The agents' indices, 4 little-endian bytes each.
    agents: Vec<u8>,
    ends: Vec<u8>,
    bodies: Vec<u8>,
}

/// Encoded outcomes packed into parts, each compressed (on as many cores as there are full
/// parts); [`insert_parts`] numbers them.
fn pack_outcomes<'o>(
    outcomes: impl Iterator<Item = &'o (u32, Vec<u8>)>,
) -> Result<Vec<Packed>, JournalError> {
    let mut parts: Vec<(Vec<u8>, Group)> = Vec::new();
    for (agent, body) in outcomes {
        if !parts
            .last()
            .is_some_and(|(_, group)| group.fits(body.len()))
        {
            parts.push((Vec::new(), Group::default()));
        }
        if let Some((agents, group)) = parts.last_mut() {
            agents.extend_from_slice(&agent.to_le_bytes());
            group.push(body).map_err(|()| JournalError::Corrupt {
                detail: format!("agent {agent}'s outcome is larger than the journal stores"),
            })?;
        }
    }
    Ok(parallel::map(parts, 1, |(agents, group)| {
        let (ends, bodies) = group.seal();
        Packed {
            agents,
            ends,
            bodies,
        }
    }))
}

/// One stored part of outcomes, unpacked.
struct StoredPart {
    step: u64,
    cycle: u32,
    outcomes: StepOutcomes,
}

/// Every stored outcome part of a run, unpacked; a part that cannot be read is reported at
/// the step it is filed under.
fn read_outcomes(
    tx: &mut dyn Tx,
    run: &RunId,
) -> Result<Result<Vec<StoredPart>, (Place, BreakReason)>, JournalError> {
    let rows = tx.parts(run.as_str())?;
    // Parts are split only when full, so two or more are worth a thread each.
    let unpacked = parallel::map(rows, 1, |row| {
        let step = unsigned(row.step, "step number")?;
        let unreadable = |detail: String| {
            Ok(Err((
                Place::Input { step },
                BreakReason::Outcomes {
                    detail: format!("a stored part cannot be read: {detail}"),
                },
            )))
        };
        if !row.agents.len().is_multiple_of(4) {
            return unreadable("its agent list is cut short".to_owned());
        }
        let count = row.agents.len() / 4;
        let unpacked = match Unpacked::new(count, &row.ends, &row.bodies) {
            Ok(unpacked) => unpacked,
            Err(detail) => return unreadable(detail),
        };
        let outcomes = agent_indices(&row.agents)
            .zip(unpacked.iter().map(<[u8]>::to_vec))
            .collect();
        Ok(Ok(StoredPart {
            step,
            cycle: u32::try_from(row.cycle).unwrap_or(0),
            outcomes,
        }))
    });
    let mut parts = Vec::with_capacity(unpacked.len());
    for part in unpacked {
        match part? {
            Ok(part) => parts.push(part),
            Err(broken) => return Ok(Err(broken)),
        }
    }
    Ok(Ok(parts))
}

/// What the stored outcome parts of a run hold, filed by step.
struct FiledOutcomes {
    /// The outcomes of each step below the run's next one, as stored, in agent order: what
    /// the record chain's links cover.
    by_step: BTreeMap<u64, StepOutcomes>,
    /// The outcomes committed ahead of the run's next step.
    open: Option<OpenCycle>,
    /// The first place where the stored outcomes do not fit their steps.
    broken: Option<(Place, BreakReason)>,
}

/// Files stored outcome parts by step (in agent order), the next step's as the open cycle,
/// and checks each committed cycle's against its batch. A bad step does not hide the others:
/// the record chain is still checked over every step's outcomes as stored.
fn sort_outcomes(
    parts: Result<Vec<StoredPart>, (Place, BreakReason)>,
    inputs: &[StepInput],
    next_step: u64,
) -> FiledOutcomes {
    let mut filed = FiledOutcomes {
        by_step: BTreeMap::new(),
        open: None,
        broken: None,
    };
    let parts = match parts {
        Ok(parts) => parts,
        Err(broken) => {
            filed.broken = Some(broken);
            return filed;
        }
    };
    let mut cycles: BTreeMap<u64, (u32, bool)> = BTreeMap::new();
    for part in parts {
        let entry = cycles.entry(part.step).or_insert((part.cycle, true));
        entry.1 &= entry.0 == part.cycle;
        filed
            .by_step
            .entry(part.step)
            .or_default()
            .extend(part.outcomes);
    }
    let mut breaks: Vec<(Place, BreakReason)> = Vec::new();
    let outcomes_break =
        |step, detail: String| (Place::Input { step }, BreakReason::Outcomes { detail });
    for (step, outcomes) in &mut filed.by_step {
        outcomes.sort_by_key(|(agent, _)| *agent);
        let (cycle, one_cycle) = cycles.get(step).copied().unwrap_or((0, false));
        if !one_cycle {
            breaks.push(outcomes_break(
                *step,
                "its parts name different cycles".to_owned(),
            ));
            continue;
        }
        let input = usize::try_from(*step)
            .ok()
            .and_then(|index| inputs.get(index));
        match input {
            Some(StepInput::Cycle {
                cycle: recorded,
                batch,
                ..
            }) if *recorded == cycle => {
                if let Err(detail) = check_outcomes(batch, outcomes) {
                    breaks.push(outcomes_break(*step, detail));
                }
            }
            // A step the step checks did not accept: that break comes first.
            None if *step < next_step => {}
            _ if *step == next_step => {}
            _ => breaks.push(outcomes_break(
                *step,
                format!("outcomes of cycle {cycle} are filed under this step"),
            )),
        }
    }
    if let Some(outcomes) = filed.by_step.remove(&next_step) {
        let cycle = cycles.get(&next_step).map_or(0, |(cycle, _)| *cycle);
        match open_cycle(next_step, cycle, outcomes) {
            Ok(open) => filed.open = Some(open),
            Err(detail) => breaks.push(outcomes_break(next_step, detail)),
        }
    }
    filed.broken = breaks.into_iter().min_by_key(|(place, _)| place.order());
    filed
}

/// Reads the outcomes committed ahead of the step that will hold them.
fn open_cycle(step: u64, cycle: u32, outcomes: StepOutcomes) -> Result<OpenCycle, String> {
    let mut records = Vec::with_capacity(outcomes.len());
    let mut previous = None;
    for (agent, body) in outcomes {
        if previous == Some(agent) {
            return Err(format!("agent {agent}'s outcome is stored twice"));
        }
        previous = Some(agent);
        let record: OutcomeRecord = serde_json::from_slice(&body)
            .map_err(|error| format!("agent {agent}'s outcome cannot be read: {error}"))?;
        records.push((agent, record));
    }
    Ok(OpenCycle {
        step,
        cycle,
        outcomes: records,
    })
}

/// Puts each committed cycle's stored outcomes back into its input. An outcome that cannot
/// be read breaks the record at its step's input; the inputs before it are returned with the
/// break.
#[allow(clippy::type_complexity)]
fn attach_outcomes(
    inputs: Vec<StepInput>,
    outcomes: &BTreeMap<u64, StepOutcomes>,
) -> Result<Vec<StepInput>, (Vec<StepInput>, (Place, BreakReason))> {
    let mut attached = Vec::with_capacity(inputs.len());
    for (step, input) in (0u64..).zip(inputs) {
        let StepInput::Cycle { cycle, batch, .. } = input else {
            attached.push(input);
            continue;
        };
        let stored = outcomes.get(&step).map(Vec::as_slice).unwrap_or(&[]);
        let read = parallel::map(
            stored.iter().collect(),
            ENCODE_PER_THREAD_MIN,
            |(agent, body)| {
                serde_json::from_slice::<OutcomeRecord>(body)
                    .map(|record| (*agent, record))
                    .map_err(|error| format!("agent {agent}'s outcome cannot be read: {error}"))
            },
        );
        let mut records = Vec::with_capacity(stored.len());
        for outcome in read {
            match outcome {
                Ok(outcome) => records.push(outcome),
                Err(detail) => {
                    let at = (Place::Input { step }, BreakReason::Outcomes { detail });
                    return Err((attached, at));
                }
            }
        }
        attached.push(StepInput::Cycle {
            cycle,
            batch,
            outcomes: records,
        });
    }
    Ok(attached)
}

/// Where an event-level break lies in the record: an unreadable input at its step's input, a
/// chain that does not end at the stored root hash at the run's heads, anything else at the
/// event.
fn place_of(broken: Break) -> (Place, BreakReason) {
    let place = match (&broken.reason, broken.step) {
        (BreakReason::StepUnreadable { .. }, Some(step)) => Place::Input { step },
        (BreakReason::RootMismatch, _) => Place::Run,
        _ => Place::Event {
            step: broken.step,
            seq: broken.seq,
        },
    };
    (place, broken.reason)
}

fn to_json(value: &impl serde::Serialize) -> Result<String, JournalError> {
    serde_json::to_string(value).map_err(|error| JournalError::Corrupt {
        detail: format!("cannot encode a record as JSON: {error}"),
    })
}

/// A number as stored: SQL integers are signed.
pub(crate) fn signed(value: u64) -> Result<i64, JournalError> {
    i64::try_from(value).map_err(|_| JournalError::Corrupt {
        detail: format!("{value} is beyond what the journal stores"),
    })
}

/// A stored number read back.
pub(crate) fn unsigned(value: i64, what: &str) -> Result<u64, JournalError> {
    u64::try_from(value).map_err(|_| JournalError::Corrupt {
        detail: format!("stored {what} {value} is negative"),
    })
}
