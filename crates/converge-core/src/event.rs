//! Events: the typed, hash-chained record of everything a run does.
//!
//! Every step of the state machine emits [`Event`]s. Each is sealed into an [`EventRecord`]
//! whose hash chains it to the previous one; the head of the chain is the run's root hash.
//! Observers, journals and streams all consume this one stream. Events carry hashes, not raw
//! content, so their encoding is deterministic whatever the content.

use serde::Serialize;

use crate::approval::{DecisionRefusal, Verdict};
use crate::authority::{Actor, AuthorityScope};
use crate::budget::Budget;
use crate::digest::Digest;
use crate::effect::TokenUsage;
use crate::gate::Rejection;
use crate::id::{AgentId, ObservationId, ProposalId};
use crate::invariant::InvariantClass;
use crate::key::ContextKey;
use crate::observation::{Replayability, TraceLink};
use crate::proposal::FactRef;
use crate::result::StopReason;

/// An agent as registered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentInfo {
    /// Its id.
    pub id: AgentId,
    /// Its name.
    pub name: String,
    /// Keys that wake it.
    pub dependencies: Vec<ContextKey>,
    /// Keys it was granted.
    pub grant: AuthorityScope,
}

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The run started.
    RunStarted {
        /// Registered agents and their grants.
        agents: Vec<AgentInfo>,
        /// Facts in the initial context.
        initial_facts: usize,
        /// The budgets.
        budget: Budget,
    },
    /// A stopped run was resumed with decisions.
    RunResumed {
        /// Cycles executed before.
        cycle: u32,
        /// Decisions supplied.
        decisions: usize,
    },
    /// A stopped run was continued by a human's decision to retry failed agents: their
    /// quarantine is lifted and they are considered in the next cycle.
    RunRetried {
        /// Cycles executed before.
        cycle: u32,
        /// Who decided.
        actor: Actor,
        /// The agents retried, in id order.
        agents: Vec<AgentId>,
        /// Why.
        reason: String,
    },
    /// A cycle started with these agents.
    CycleStarted {
        /// The cycle.
        cycle: u32,
        /// The agents to execute, in id order.
        agents: Vec<AgentId>,
    },
    /// An agent returned an effect.
    AgentExecuted {
        /// The cycle.
        cycle: u32,
        /// The agent.
        agent: AgentId,
        /// Proposals in the effect.
        proposals: u32,
        /// Observations in the effect.
        observations: u32,
        /// Tokens spent.
        usage: TokenUsage,
    },
    /// An agent panicked, timed out or otherwise failed.
    AgentFailed {
        /// The cycle.
        cycle: u32,
        /// The agent.
        agent: AgentId,
        /// What happened.
        message: String,
        /// Tokens it spent before failing (counted against the budget like any other).
        usage: TokenUsage,
        /// Whether the agent is quarantined for the rest of the run.
        quarantined: bool,
    },
    /// An observation was recorded.
    ObservationRecorded {
        /// Its id.
        observation: ObservationId,
        /// Its kind.
        kind: String,
        /// Where it came from.
        trace: TraceLink,
        /// How it can be replayed.
        replayability: Replayability,
        /// SHA-256 of its canonical payload.
        payload_hash: Digest,
    },
    /// A proposal was rejected.
    ProposalRejected {
        /// The cycle.
        cycle: u32,
        /// The proposal.
        proposal: ProposalId,
        /// The key as proposed.
        key: String,
        /// The fact id as proposed.
        id: String,
        /// Why.
        rejection: Rejection,
    },
    /// A proposal was parked for human approval.
    ApprovalRequested {
        /// The cycle.
        cycle: u32,
        /// The proposal.
        proposal: ProposalId,
        /// The fact it would become.
        fact: FactRef,
        /// The hash a decision must name.
        hash: Digest,
    },
    /// A human decided on a parked proposal.
    ApprovalDecided {
        /// The proposal.
        proposal: ProposalId,
        /// Who decided.
        actor: Actor,
        /// What they decided.
        verdict: Verdict,
    },
    /// A decision was refused and changed nothing.
    DecisionRefused {
        /// The proposal it named.
        proposal: ProposalId,
        /// Who sent it.
        actor: Actor,
        /// Why it was refused.
        refusal: DecisionRefusal,
    },
    /// A proposal became a fact.
    FactPromoted {
        /// The cycle.
        cycle: u32,
        /// The fact.
        fact: FactRef,
        /// Its version (0 unless a correction).
        version: u32,
        /// SHA-256 of its canonical content.
        content_hash: Digest,
        /// The proposal it came from.
        proposal: ProposalId,
        /// Who approved it, if approval was required.
        approver: Option<Actor>,
    },
    /// An invariant was violated.
    InvariantViolated {
        /// The cycle.
        cycle: u32,
        /// The invariant.
        invariant: String,
        /// Its class.
        class: InvariantClass,
        /// Its reason.
        detail: String,
    },
    /// An invariant could not be evaluated.
    InvariantUnevaluable {
        /// The cycle.
        cycle: u32,
        /// The invariant.
        invariant: String,
        /// Its class.
        class: InvariantClass,
        /// Why.
        detail: String,
    },
    /// A cycle ended.
    CycleFinished {
        /// The cycle.
        cycle: u32,
        /// Facts promoted.
        promoted: u32,
        /// Proposals rejected.
        rejected: u32,
        /// Proposals parked for approval.
        parked: u32,
    },
    /// The run stopped.
    RunStopped {
        /// Cycles executed.
        cycles: u32,
        /// Current facts in the context.
        facts: usize,
        /// Why.
        reason: StopReason,
    },
}

/// An event sealed into the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    /// Position in the run, from 0.
    pub seq: u64,
    /// `SHA-256(previous hash, seq, event JSON)`.
    pub hash: Digest,
    /// The event.
    pub event: Event,
}

impl EventRecord {
    /// The hash a record with this predecessor, position and event must have.
    pub fn chain_hash(previous: Digest, seq: u64, event: &Event) -> Digest {
        let mut json = Vec::with_capacity(256);
        chain_hash_into(previous, seq, event, &mut json)
    }

    /// The exact bytes of `event` that the chain hashes: compact JSON. A journal that stores
    /// these bytes can verify its chain with [`EventRecord::link_hash`] alone.
    pub fn encode(event: &Event) -> Vec<u8> {
        let mut json = Vec::with_capacity(256);
        encode_into(event, &mut json);
        json
    }

    /// The hash of one link from its predecessor, position and encoded event.
    pub fn link_hash(previous: Digest, seq: u64, encoded: &[u8]) -> Digest {
        Digest::of_parts(&[previous.as_bytes(), &seq.to_le_bytes(), encoded])
    }
}

/// Events taken together from a run ([`crate::Run::take_events`]), each with the exact bytes
/// the chain hashed, and the hash the first one chains from.
///
/// Only the core makes one, so whoever holds one knows, without hashing anything again, that
/// every record's hash is [`EventRecord::link_hash`] of its predecessor's hash, its seq and its
/// bytes, and that the records follow each other without a gap. A journal checks only that
/// the batch continues its stored chain ([`EventBatch::first_seq`], [`EventBatch::previous`])
/// and stores the bytes as they are.
///
/// ```
/// use converge_core::agents::SeedAgent;
/// use converge_core::{Context, Digest, Engine, EventRecord};
///
/// let mut engine = Engine::new();
/// engine.register(SeedAgent::new("seed-1", "hello"));
/// let mut run = engine.start(Context::new())?;
/// let batch = run.take_events();
/// assert_eq!((batch.first_seq(), batch.previous()), (0, Digest::zero()));
/// let (record, bytes) = batch.iter().next().unwrap();
/// assert_eq!(record.hash, EventRecord::link_hash(Digest::zero(), 0, bytes));
/// assert_eq!(batch.head(), record.hash);
/// # Ok::<(), converge_core::EngineError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    previous: Digest,
    first_seq: u64,
    records: Vec<EventRecord>,
    /// How many of the first records had their encodings handed to an [`EncodingSink`]
    /// instead: `bytes` holds the others'.
    handed: usize,
    /// The encodings of the records past the handed ones, one after the other.
    bytes: Vec<u8>,
    /// Where each held encoding ends in `bytes`: `ends[i]` is `records[handed + i]`'s.
    ends: Vec<usize>,
}

impl EventBatch {
    /// Seals taken records with the encodings kept for the newest of them (`kept`); older
    /// records are encoded here. The kept buffer is reused as it is when it covers every
    /// record, so a wide batch is not copied.
    pub(crate) fn new(
        previous: Digest,
        first_seq: u64,
        records: Vec<EventRecord>,
        kept: Kept,
    ) -> EventBatch {
        let Kept {
            mut bytes,
            ends,
            start,
            handed,
        } = kept;
        // Encodings are handed over only while every pending event's is kept or handed, so
        // the records are the handed ones, then those encoded before encodings were kept (if
        // none was handed), then the kept ones.
        let handed = handed.min(records.len());
        let held = &records[handed..];
        let kept_count = ends.len().min(held.len());
        let unkept = held.len() - kept_count;
        let mut ends: Vec<usize> = Vec::from(ends);
        ends.truncate(kept_count);
        if unkept > 0 || start > 0 {
            // Records taken before encodings were kept (or after some were polled): their
            // encodings go first, then the kept ones, shifted to follow them.
            let mut joined = Vec::with_capacity(bytes.len().saturating_sub(start));
            let mut joined_ends = Vec::with_capacity(held.len());
            for record in &held[..unkept] {
                append_encoded(&record.event, &mut joined);
                joined_ends.push(joined.len());
            }
            let shift = joined.len();
            let kept_end = ends.last().copied().unwrap_or(start);
            joined.extend_from_slice(bytes.get(start..kept_end).unwrap_or_default());
            joined_ends.extend(ends.iter().map(|end| end - start + shift));
            bytes = joined;
            ends = joined_ends;
        }
        EventBatch {
            previous,
            first_seq,
            records,
            handed,
            bytes,
            ends,
        }
    }

    /// The hash the first record chains from: the hash of the event before it, or
    /// [`Digest::zero`] at the start of a run.
    pub fn previous(&self) -> Digest {
        self.previous
    }

    /// The seq of the first record (of the next event, when the batch is empty).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The hash of the last record: the chain's head after this batch.
    pub fn head(&self) -> Digest {
        self.records
            .last()
            .map_or(self.previous, |record| record.hash)
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, in seq order.
    pub fn records(&self) -> &[EventRecord] {
        &self.records
    }

    /// How many of the first records had their encodings handed to the run's
    /// [`EncodingSink`] while it went on ([`crate::Run::hand_encoded_events_to`]): the batch
    /// holds the encodings of the others only. Zero for a run without a sink.
    pub fn handed(&self) -> usize {
        self.handed
    }

    /// Each record whose encoding the batch holds (every record past the first
    /// [`EventBatch::handed`]) with that encoding ([`EventRecord::encode`]), in seq order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&EventRecord, &[u8])> + '_ {
        self.records[self.handed..]
            .iter()
            .enumerate()
            .map(|(index, record)| (record, self.held(index..index + 1)))
    }

    /// The encodings of the records in `records` (indexes into [`EventBatch::records`]),
    /// one after the other, as they are held: a journal compresses consecutive records
    /// straight from here. Empty for an empty or out-of-range `records`, and for one that
    /// starts among the handed records.
    ///
    /// ```
    /// use converge_core::agents::SeedAgent;
    /// use converge_core::{Context, Engine};
    ///
    /// let mut engine = Engine::new();
    /// engine.register(SeedAgent::new("seed-1", "hello"));
    /// let mut run = engine.start(Context::new())?;
    /// run.keep_encoded_events();
    /// let batch = run.take_events();
    /// let joined: Vec<u8> = batch.iter().flat_map(|(_, bytes)| bytes.to_vec()).collect();
    /// assert_eq!(batch.encoded(0..batch.len()), joined.as_slice());
    /// # Ok::<(), converge_core::EngineError>(())
    /// ```
    pub fn encoded(&self, records: std::ops::Range<usize>) -> &[u8] {
        match (
            records.start.checked_sub(self.handed),
            records.end.checked_sub(self.handed),
        ) {
            (Some(start), Some(end)) => self.held(start..end),
            _ => &[],
        }
    }

    /// The held encodings `held` (indexes past the handed records), one after the other.
    fn held(&self, records: std::ops::Range<usize>) -> &[u8] {
        if records.start >= records.end || records.end > self.ends.len() {
            return &[];
        }
        let start = match records.start {
            0 => 0,
            first => self.ends[first - 1],
        };
        &self.bytes[start..self.ends[records.end - 1]]
    }

    /// The records, without their encodings.
    pub fn into_records(self) -> Vec<EventRecord> {
        self.records
    }
}

/// Takes a run's event encodings in groups while the run goes on: what lets a journal
/// compress a wide cycle's events on another core while the core is still merging it, and
/// reuse one group's memory for the next, instead of holding every encoding until the step
/// is taken ([`crate::Run::hand_encoded_events_to`]).
///
/// The run fills a group with the encodings of consecutive events and hands it over once
/// the next encoding would not fit ([`EncodingSink::fits`]); the last group stays with the
/// run until its events are taken, in the [`EventBatch`].
///
/// See [`crate::Run::hand_encoded_events_to`] for one in use.
pub trait EncodingSink: Send + Sync {
    /// Whether an encoding of `len` bytes may join a group holding `count` encodings (at
    /// least one) of `bytes` bytes in all.
    fn fits(&self, count: usize, bytes: usize, len: usize) -> bool;

    /// Takes a full group, and gives back an empty buffer for the next one (a reused one
    /// keeps a wide cycle from touching new memory for every group).
    fn take(&mut self, group: Encodings) -> Vec<u8>;
}

/// The encodings of consecutive events, one after the other: a group handed to an
/// [`EncodingSink`]. Only the core makes one, so its bytes are exactly those the chain hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encodings {
    first_seq: u64,
    bytes: Vec<u8>,
    /// Where each encoding ends in `bytes`.
    ends: Vec<usize>,
}

impl Encodings {
    /// The seq of the first event.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// How many encodings the group holds (at least one).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the group holds none (never, for a group a run handed over).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Every encoding, one after the other.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where each encoding ends in [`Encodings::bytes`].
    pub fn ends(&self) -> &[usize] {
        &self.ends
    }

    /// The buffer, emptied, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        let mut bytes = self.bytes;
        bytes.clear();
        bytes
    }
}

/// Receives every event of a run, in order.
pub trait Observer {
    /// Called once per event.
    fn on_event(&mut self, record: &EventRecord);
}

/// Collects every record.
impl Observer for Vec<EventRecord> {
    fn on_event(&mut self, record: &EventRecord) {
        self.push(record.clone());
    }
}

fn encode_into(event: &Event, buffer: &mut Vec<u8>) {
    buffer.clear();
    append_encoded(event, buffer);
}

/// Appends `event`'s encoding to `buffer`.
fn append_encoded(event: &Event, buffer: &mut Vec<u8>) {
    let start = buffer.len();
    // Serializing a typed event into memory cannot fail: every map key is a string.
    if serde_json::to_writer(&mut *buffer, event).is_err() {
        buffer.truncate(start);
    }
}

/// Bytes [`Kept::reserve`] expects an encoded event to take at most, as a rule: an agent's
/// `agent_executed` takes about 100, a `fact_promoted` about 300.
const ENCODED_EVENT_BYTES_GUESS: usize = 320;

/// The encodings of a run's pending events, kept for [`crate::Run::take_events`]: one
/// buffer and where each encoding ends, so a cycle of many events allocates once, not once
/// per event. They belong to the newest pending events (a run starts keeping them at some
/// point and then keeps every one).
#[derive(Debug, Default)]
pub(crate) struct Kept {
    bytes: Vec<u8>,
    /// Where each kept encoding ends in `bytes`, oldest first.
    ends: std::collections::VecDeque<usize>,
    /// Where the oldest kept encoding starts (past the ones whose events were polled).
    start: usize,
    /// How many pending events, older than the kept ones, had their encodings handed to a
    /// sink.
    pub(crate) handed: usize,
}

impl Kept {
    /// How many encodings are kept.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Room for `events` more encodings. Their bytes get room for a generous guess of their
    /// size (`bytes`: whether to reserve it; not when a sink takes them in groups): room
    /// never written is never touched, while a buffer grown by doubling writes each byte
    /// twice over.
    pub(crate) fn reserve(&mut self, events: usize, bytes: bool) {
        self.ends.reserve(events);
        if bytes {
            self.bytes
                .reserve(events.saturating_mul(ENCODED_EVENT_BYTES_GUESS));
        }
    }

    /// Hands the kept encodings but the newest to `sink` when the newest does not fit their
    /// group; `next_seq` follows the newest's event. Only a buffer holding nothing but
    /// kept encodings is handed over (none was polled).
    pub(crate) fn hand_over_full(&mut self, sink: &mut dyn EncodingSink, next_seq: u64) {
        let count = self.ends.len();
        if count < 2 || self.start != 0 {
            return;
        }
        let (group_end, newest_end) = (self.ends[count - 2], self.ends[count - 1]);
        if sink.fits(count - 1, group_end, newest_end - group_end) {
            return;
        }
        let newest = self.bytes.split_off(group_end);
        let ends: Vec<usize> = self.ends.drain(..count - 1).collect();
        let group = Encodings {
            first_seq: next_seq - count as u64,
            bytes: std::mem::take(&mut self.bytes),
            ends,
        };
        let mut next = sink.take(group);
        next.clear();
        next.extend_from_slice(&newest);
        self.bytes = next;
        self.ends[0] = newest.len();
        self.handed += count - 1;
    }

    /// One kept encoding: `bytes`, the newest pending event's.
    pub(crate) fn of_one(bytes: Vec<u8>) -> Kept {
        let end = bytes.len();
        Kept {
            bytes,
            ends: std::collections::VecDeque::from([end]),
            start: 0,
            handed: 0,
        }
    }

    /// Drops the oldest kept encoding (its event was taken on its own). Once none is left the
    /// buffer starts over, so a run whose events are only ever polled holds no more bytes
    /// than its pending events' encodings.
    pub(crate) fn pop_front(&mut self) {
        if let Some(end) = self.ends.pop_front() {
            self.start = end;
        }
        if self.ends.is_empty() {
            self.bytes.clear();
            self.start = 0;
        }
    }
}

/// Hashes one link, encoding the event into `buffer`.
fn chain_hash_into(previous: Digest, seq: u64, event: &Event, buffer: &mut Vec<u8>) -> Digest {
    encode_into(event, buffer);
    EventRecord::link_hash(previous, seq, buffer)
}

/// The running head of a hash chain, with a reusable encoding buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) next_seq: u64,
    pub(crate) head: Digest,
    buffer: Vec<u8>,
    /// The seq of the event whose encoding `buffer` holds, if any.
    buffered: Option<u64>,
}

impl Chain {
    pub(crate) fn new() -> Chain {
        Chain {
            next_seq: 0,
            head: Digest::zero(),
            buffer: Vec::with_capacity(256),
            buffered: None,
        }
    }

    /// Hands over the bytes hashed for event `seq` when they are still at hand (it was the
    /// newest event sealed without keeping them), leaving a fresh buffer.
    pub(crate) fn take_encoding_of(&mut self, seq: u64) -> Option<Vec<u8>> {
        if self.buffered != Some(seq) {
            return None;
        }
        self.buffered = None;
        Some(std::mem::replace(&mut self.buffer, Vec::with_capacity(256)))
    }

    /// Seals the next event; with `keep`, the bytes it hashed are appended to it.
    pub(crate) fn seal(&mut self, event: Event, keep: Option<&mut Kept>) -> EventRecord {
        let seq = self.next_seq;
        let hash = match keep {
            Some(kept) => {
                let start = kept.bytes.len();
                append_encoded(&event, &mut kept.bytes);
                kept.ends.push_back(kept.bytes.len());
                EventRecord::link_hash(self.head, seq, &kept.bytes[start..])
            }
            None => {
                self.buffered = Some(seq);
                chain_hash_into(self.head, seq, &event, &mut self.buffer)
            }
        };
        self.next_seq += 1;
        self.head = hash;
        EventRecord { seq, hash, event }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polled_encodings_leave_no_bytes_behind() {
        let mut chain = Chain::new();
        let mut kept = Kept::default();
        for cycle in 0..1000 {
            let event = Event::RunResumed {
                cycle,
                decisions: 0,
            };
            chain.seal(event, Some(&mut kept));
            // Taken on its own as soon as it is sealed, as an observer polling the run does.
            kept.pop_front();
        }
        assert_eq!(kept.len(), 0);
        assert!(kept.bytes.is_empty(), "{} bytes kept", kept.bytes.len());
    }
}
