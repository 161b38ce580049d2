//! Integrity checks of a stored run, shared by every journal store.
//!
//! Given a run's recorded head (step count, event count, root hash), its step rows in step
//! order and its event chunks in seq order, these checks find the first entry that is
//! missing, altered or out of place, recomputing the chain with [`EventRecord::link_hash`]
//! over the stored bytes when they are read. They are pure — the store feeds them rows — and
//! they deliberately do not re-derive anything through the core: checking that the inputs
//! reproduce the chain is replay's job.
//!
//! A whole run is checked from step 0 and seq 0 ([`check_steps`], [`ChainWalk::new`]). A tail
//! of it — what reading events from a seq on needs — is checked from the step holding that
//! seq ([`check_tail_steps`]) and from the stored hash before it ([`ChainWalk::tail`]), so
//! its cost follows the events read, not the run.

use std::collections::BTreeMap;

use converge_core::{Digest, EventRecord};

use crate::link::{header_link, input_link, outcomes_digest, step_link};
use crate::record::{RunHeader, StepInput};
use crate::store::unsigned;
use crate::{BreakReason, JournalError, Place};

/// The head of a run as its run row records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub(crate) steps: u64,
    pub(crate) events: u64,
    pub(crate) root: Digest,
}

/// The first bad entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Break {
    pub(crate) seq: u64,
    pub(crate) step: Option<u64>,
    pub(crate) reason: BreakReason,
}

/// One stored step row.
pub(crate) struct StepRow {
    pub(crate) step: u64,
    pub(crate) kind: String,
    pub(crate) input: String,
    pub(crate) first_seq: u64,
    pub(crate) events: u64,
    pub(crate) input_link: Digest,
    pub(crate) link: Digest,
}

impl StepRow {
    /// A step row from its stored columns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn read(
        run: &str,
        step: i64,
        kind: String,
        input: String,
        first_seq: i64,
        events: i64,
        input_link: &[u8],
        link: &[u8],
    ) -> Result<StepRow, JournalError> {
        let digest = |bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes)
                .map(Digest::from_bytes)
                .map_err(|_| JournalError::Corrupt {
                    detail: format!("a stored link of run {run} is not 32 bytes"),
                })
        };
        Ok(StepRow {
            step: unsigned(step, "step number")?,
            kind,
            input,
            first_seq: unsigned(first_seq, "first seq")?,
            events: unsigned(events, "event count")?,
            input_link: digest(input_link)?,
            link: digest(link)?,
        })
    }
}

/// One stored step's place in the chain, without its input.
pub(crate) struct StepSpan {
    pub(crate) step: u64,
    pub(crate) first_seq: u64,
    pub(crate) events: u64,
}

/// What the step rows say: the readable prefix and the first step-level break.
pub(crate) struct Steps {
    /// The inputs of the valid prefix (only when asked to keep them).
    pub(crate) inputs: Vec<StepInput>,
    /// The number of the first step in `ranges`.
    first_step: u64,
    /// `(first_seq, events)` of each step of the valid prefix.
    ranges: Vec<(u64, u64)>,
    pub(crate) broken: Option<Break>,
}

impl Steps {
    fn starting_at(first_step: u64) -> Steps {
        Steps {
            inputs: Vec::new(),
            first_step,
            ranges: Vec::new(),
            broken: None,
        }
    }

    /// The step whose range holds `seq`, among the valid prefix.
    pub(crate) fn step_of(&self, seq: u64) -> Option<u64> {
        let index = self
            .ranges
            .partition_point(|&(first, count)| first.saturating_add(count) <= seq);
        let (first, _) = self.ranges.get(index)?;
        (*first <= seq).then_some(self.first_step + index as u64)
    }

    /// The step the next row must be.
    fn next_step(&self) -> u64 {
        self.first_step + self.ranges.len() as u64
    }

    /// Checks that `span` is the next step and starts where the last one ended (`next_seq`).
    fn expect(&self, span: &StepSpan, next_seq: u64, head: &Head) -> Result<(), Break> {
        let expected = self.next_step();
        let at = |reason| Break {
            seq: next_seq,
            step: Some(expected),
            reason,
        };
        if expected >= head.steps || span.step != expected {
            return Err(at(BreakReason::StepMissing));
        }
        if span.first_seq != next_seq {
            return Err(at(BreakReason::StepRange));
        }
        Ok(())
    }

    /// After the last row of a walk to the run's head: every step is there and the ranges end
    /// at the head's event count.
    fn check_end(&mut self, next_seq: u64, head: &Head) {
        let next_step = self.next_step();
        if next_step < head.steps {
            self.broken = Some(Break {
                seq: next_seq,
                step: Some(next_step),
                reason: BreakReason::StepMissing,
            });
        } else if next_seq != head.events {
            self.broken = Some(Break {
                seq: next_seq.min(head.events),
                step: next_step.checked_sub(1),
                reason: BreakReason::StepRange,
            });
        }
    }
}

/// Checks step rows given in step order.
pub(crate) fn check_steps<'r>(
    rows: impl IntoIterator<Item = &'r StepRow>,
    head: &Head,
    header: &RunHeader,
    keep_inputs: bool,
) -> Steps {
    let mut steps = Steps::starting_at(0);
    let mut next_seq = 0u64;
    for row in rows {
        let span = StepSpan {
            step: row.step,
            first_seq: row.first_seq,
            events: row.events,
        };
        if let Err(broken) = steps.expect(&span, next_seq, head) {
            steps.broken = Some(broken);
            return steps;
        }
        let input = match read_input(row, header) {
            Ok(input) => input,
            Err(detail) => {
                steps.broken = Some(Break {
                    seq: next_seq,
                    step: Some(row.step),
                    reason: BreakReason::StepUnreadable { detail },
                });
                return steps;
            }
        };
        if keep_inputs {
            steps.inputs.push(input);
        }
        steps.ranges.push((row.first_seq, row.events));
        next_seq = next_seq.saturating_add(row.events);
    }
    steps.check_end(next_seq, head);
    steps
}

/// Checks the step spans that hold the events from `from` up to `end`, given in step order
/// from a step that starts at or before `from`. Reaching the run's head (`end` equal to its
/// event count), the spans must go on to its last step and end at its event count; short of
/// it, they must cover `end`. Inputs are not read: [`check_steps`] reads them.
pub(crate) fn check_tail_steps(
    spans: impl IntoIterator<Item = StepSpan>,
    head: &Head,
    from: u64,
    end: u64,
) -> Steps {
    let mut spans = spans.into_iter().peekable();
    let Some(first) = spans.peek() else {
        let mut steps = Steps::starting_at(0);
        steps.broken = Some(Break {
            seq: from,
            step: None,
            reason: BreakReason::StepMissing,
        });
        return steps;
    };
    let mut steps = Steps::starting_at(first.step);
    let mut next_seq = first.first_seq;
    for span in spans {
        if let Err(broken) = steps.expect(&span, next_seq, head) {
            steps.broken = Some(broken);
            return steps;
        }
        steps.ranges.push((span.first_seq, span.events));
        next_seq = next_seq.saturating_add(span.events);
    }
    if end >= head.events {
        steps.check_end(next_seq, head);
    } else if next_seq < end {
        steps.broken = Some(Break {
            seq: next_seq,
            step: Some(steps.next_step()),
            reason: BreakReason::StepMissing,
        });
    }
    steps
}

fn read_input(row: &StepRow, header: &RunHeader) -> Result<StepInput, String> {
    let input: StepInput = serde_json::from_str(&row.input).map_err(|error| error.to_string())?;
    if input.kind() != row.kind {
        return Err(format!(
            "it is filed as {:?} but holds a {:?} input",
            row.kind,
            input.kind()
        ));
    }
    match (&input, row.step) {
        (StepInput::Start { header: stored }, 0) if stored != header => {
            Err("its header differs from the run's".to_owned())
        }
        (StepInput::Start { .. }, 0) => Ok(input),
        (_, 0) => Err("step 0 is not the run's start".to_owned()),
        (StepInput::Start { .. }, _) => Err("only step 0 may be a start".to_owned()),
        _ => Ok(input),
    }
}

/// One stored event as a chunk row holds it: its position, its stored hash and, when the
/// bodies were read, the bytes the hash covers.
pub(crate) struct Entry<'r> {
    pub(crate) seq: u64,
    pub(crate) hash: Digest,
    pub(crate) body: Option<&'r [u8]>,
}

/// Splits one stored chunk of `count` events starting at `first_seq` into its entries.
/// `hashes` holds 32 bytes per event; `ends`, 4 bytes per event (the little-endian end offset
/// of each body in `bodies`). Without `bodies` (a load that does not re-hash), `ends` is not
/// consulted. A chunk whose parts do not fit together breaks at its first event.
pub(crate) fn split_chunk<'r>(
    first_seq: u64,
    count: u64,
    hashes: &'r [u8],
    bodies: Option<(&'r [u8], &'r [u8])>,
) -> Result<Vec<Entry<'r>>, String> {
    let count = usize::try_from(count).map_err(|_| format!("it claims {count} events"))?;
    if count == 0 || hashes.len() != count.saturating_mul(32) {
        return Err(format!(
            "it claims {count} events but stores {} bytes of hashes",
            hashes.len()
        ));
    }
    let hashes = hashes.chunks_exact(32).map(|bytes| {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(bytes);
        Digest::from_bytes(hash)
    });
    let Some((ends, bodies)) = bodies else {
        return Ok(hashes
            .zip(first_seq..)
            .map(|(hash, seq)| Entry {
                seq,
                hash,
                body: None,
            })
            .collect());
    };
    if ends.len() != count.saturating_mul(4) {
        return Err(format!(
            "it claims {count} events but stores {} bytes of offsets",
            ends.len()
        ));
    }
    let mut entries = Vec::with_capacity(count);
    let mut start = 0usize;
    for ((hash, seq), end) in hashes.zip(first_seq..).zip(ends.chunks_exact(4)) {
        let end = u32::from_le_bytes([end[0], end[1], end[2], end[3]]) as usize;
        let body = bodies
            .get(start..end)
            .ok_or_else(|| format!("event {seq}'s body offsets {start}..{end} are out of place"))?;
        entries.push(Entry {
            seq,
            hash,
            body: Some(body),
        });
        start = end;
    }
    if start != bodies.len() {
        return Err(format!(
            "its bodies hold {} bytes after the last event",
            bodies.len() - start
        ));
    }
    Ok(entries)
}

/// Walks stored events in seq order. With bodies, it recomputes the chain; without, it checks
/// that the stored hashes are complete, in place and end at the root hash (re-deriving the
/// run then checks every one of them).
pub(crate) struct ChainWalk<'s> {
    steps: &'s Steps,
    head: Head,
    /// Events at or after this seq are not checked: the steps are broken there, or the walk
    /// was asked to stop there.
    limit: u64,
    /// Whether the walk goes to the run's head (and so must end at its root hash).
    to_head: bool,
    next: u64,
    previous: Digest,
}

impl<'s> ChainWalk<'s> {
    /// A walk of the whole run, from seq 0.
    pub(crate) fn new(steps: &'s Steps, head: Head) -> ChainWalk<'s> {
        ChainWalk::tail(steps, head, 0, Digest::zero(), u64::MAX)
    }

    /// A walk from seq `from`, whose predecessor's stored hash is `previous` (the zero digest
    /// for seq 0), up to seq `end` (exclusive; the run's head when `end` reaches it). Events
    /// before `from` are passed to [`ChainWalk::skip`], not fed.
    pub(crate) fn tail(
        steps: &'s Steps,
        head: Head,
        from: u64,
        previous: Digest,
        end: u64,
    ) -> ChainWalk<'s> {
        let to_head = end >= head.events;
        let broken = steps.broken.as_ref().map_or(u64::MAX, |broken| broken.seq);
        ChainWalk {
            steps,
            head,
            limit: if to_head { broken } else { broken.min(end) },
            to_head,
            next: from,
            previous,
        }
    }

    /// Passes over a stored event before the walk's start; the one just before it gives the
    /// hash the walk's first event chains from.
    pub(crate) fn skip(&mut self, entry: &Entry<'_>) {
        if entry.seq.checked_add(1) == Some(self.next) {
            self.previous = entry.hash;
        }
    }

    /// Whether the walk has reached a step-level break, past which nothing is checked.
    pub(crate) fn past_limit(&self) -> bool {
        self.next >= self.limit
    }

    /// A chunk starting at `first_seq` that cannot be split into events: the chain breaks at
    /// its first event (or earlier, at a gap before it).
    pub(crate) fn malformed(&self, first_seq: u64, detail: String) -> Break {
        let (seq, reason) = if first_seq > self.next {
            (self.next, BreakReason::Missing)
        } else {
            (first_seq, BreakReason::Malformed { detail })
        };
        Break {
            seq,
            step: self.steps.step_of(seq),
            reason,
        }
    }

    /// Checks the next stored event, filed under step `filed_under`. `Ok(true)` means it is
    /// intact; `Ok(false)` that it lies past a step-level break and was not checked.
    pub(crate) fn feed(&mut self, filed_under: u64, entry: &Entry<'_>) -> Result<bool, Break> {
        let expected = self.next;
        if expected >= self.limit {
            return Ok(false);
        }
        let at = |seq, reason| Break {
            seq,
            step: self.steps.step_of(seq),
            reason,
        };
        let seq = entry.seq;
        if seq > expected {
            return Err(at(expected, BreakReason::Missing));
        }
        if seq < expected || seq >= self.head.events {
            return Err(at(seq, BreakReason::Unexpected));
        }
        if self.steps.step_of(seq) != Some(filed_under) {
            return Err(at(seq, BreakReason::WrongStep { filed_under }));
        }
        if let Some(body) = entry.body
            && EventRecord::link_hash(self.previous, seq, body) != entry.hash
        {
            return Err(at(seq, BreakReason::HashMismatch));
        }
        self.previous = entry.hash;
        self.next += 1;
        Ok(true)
    }

    /// After the last row: the chain must reach the end of the walk and, for a walk to the
    /// run's head, end at the root hash.
    pub(crate) fn finish(self) -> Result<(), Break> {
        let end = self.limit.min(self.head.events);
        if self.next < end {
            return Err(Break {
                seq: self.next,
                step: self.steps.step_of(self.next),
                reason: BreakReason::Missing,
            });
        }
        if let Some(broken) = &self.steps.broken {
            return Err(broken.clone());
        }
        if self.to_head && self.previous != self.head.root {
            let last = self.head.events.saturating_sub(1);
            return Err(Break {
                seq: last,
                step: self.steps.step_of(last),
                reason: BreakReason::RootMismatch,
            });
        }
        Ok(())
    }
}

/// The outcomes stored for one step: each agent index with its stored bytes.
pub(crate) type StepOutcomes = Vec<(u32, Vec<u8>)>;

/// What the record chain is checked against: the run's stored header and heads.
pub(crate) struct RecordHeads<'a> {
    pub(crate) run: &'a str,
    pub(crate) header: &'a str,
    pub(crate) header_link: Digest,
    pub(crate) record_hash: Digest,
}

/// Checks the record chain over the first `valid` step rows (those the step-level checks
/// accepted): the header link, then each step's input link over its input and outcomes, and
/// its closing link over its event range and the stored event head after it (`heads[s]`);
/// with every step valid, that the last link is the run's record hash. The first bad place
/// wins. `outcomes` holds the stored outcomes by step, in increasing agent order.
pub(crate) fn check_links(
    heads_of_run: &RecordHeads<'_>,
    rows: &[StepRow],
    valid: usize,
    outcomes: &BTreeMap<u64, StepOutcomes>,
    heads: &[Digest],
) -> Option<(Place, BreakReason)> {
    if header_link(heads_of_run.run, heads_of_run.header) != heads_of_run.header_link {
        return Some((Place::Header, BreakReason::LinkMismatch));
    }
    let mut previous = heads_of_run.header_link;
    for row in rows.iter().take(valid) {
        let stored = outcomes.get(&row.step).map(Vec::as_slice).unwrap_or(&[]);
        let digest = outcomes_digest(stored.iter().map(|(agent, body)| (*agent, body.as_slice())));
        if input_link(previous, row.step, &row.kind, &row.input, digest) != row.input_link {
            return Some((Place::Input { step: row.step }, BreakReason::LinkMismatch));
        }
        let head = heads
            .get(usize::try_from(row.step).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(Digest::zero());
        if step_link(row.input_link, row.first_seq, row.events, head) != row.link {
            return Some((Place::Step { step: row.step }, BreakReason::LinkMismatch));
        }
        previous = row.link;
    }
    (valid == rows.len() && previous != heads_of_run.record_hash)
        .then_some((Place::Run, BreakReason::RecordMismatch))
}

/// Checks that a cycle's stored outcomes are exactly one per agent of its batch.
pub(crate) fn check_outcomes(batch: &[u32], outcomes: &[(u32, Vec<u8>)]) -> Result<(), String> {
    let agents: Vec<u32> = outcomes.iter().map(|(agent, _)| *agent).collect();
    if agents == batch {
        return Ok(());
    }
    let missing: Vec<String> = batch
        .iter()
        .filter(|agent| !agents.contains(agent))
        .take(8)
        .map(ToString::to_string)
        .collect();
    Err(if missing.is_empty() {
        "it holds outcomes of agents outside its batch, or one agent twice".to_owned()
    } else {
        format!(
            "agents {} of its batch have no stored outcome",
            missing.join(", ")
        )
    })
}
