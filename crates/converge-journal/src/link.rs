//! The record chain: how everything stored for a run is bound into one hash.
//!
//! The core chains a run's events ([`converge_core::EventRecord::link_hash`]). The journal
//! chains the rest around them, so that no stored byte of a run can change without a stored
//! hash disagreeing: the run header, each step's input and its agents' outcomes, and the head
//! of the event chain after each step. Each link covers the link before it *as stored*, so a
//! checker recomputing every link from stored values names the first altered entry rather
//! than everything after it. The construction is specified in `docs/journal.md`, and
//! `tools/verify-journal.py` recomputes it with Python's standard library alone.
//!
//! This module is pure: stores feed it bytes. It knows nothing of SQLite.

use converge_core::Digest;

/// The first part of a run's header link: names the format, so a link of one edition is
/// never mistaken for another's.
pub(crate) const FORMAT_TAG: &[u8] = b"converge-journal-2";

/// The link of a run's header: binds the run id and the header's stored text.
pub(crate) fn header_link(run: &str, header: &str) -> Digest {
    Digest::of_parts(&[FORMAT_TAG, run.as_bytes(), header.as_bytes()])
}

/// The digest of a step's outcomes: each agent index (`u32` little-endian) and its stored
/// outcome bytes, in increasing agent order. A step without outcomes has the digest of no
/// parts (the SHA-256 of nothing).
pub(crate) fn outcomes_digest<'a>(outcomes: impl IntoIterator<Item = (u32, &'a [u8])>) -> Digest {
    let outcomes: Vec<([u8; 4], &[u8])> = outcomes
        .into_iter()
        .map(|(agent, body)| (agent.to_le_bytes(), body))
        .collect();
    let parts: Vec<&[u8]> = outcomes
        .iter()
        .flat_map(|(agent, body)| [agent.as_slice(), body])
        .collect();
    Digest::of_parts(&parts)
}

/// The link of step `step`'s input: chains from the link before it (the header's for step 0)
/// and binds the step number, its kind, its stored input text and its outcomes' digest.
pub(crate) fn input_link(
    previous: Digest,
    step: u64,
    kind: &str,
    input: &str,
    outcomes: Digest,
) -> Digest {
    Digest::of_parts(&[
        previous.as_bytes(),
        b"input",
        &step.to_le_bytes(),
        kind.as_bytes(),
        input.as_bytes(),
        outcomes.as_bytes(),
    ])
}

/// The link that closes a step: chains from its input link and binds the range of events the
/// step holds and the event chain's head after them.
pub(crate) fn step_link(input_link: Digest, first_seq: u64, events: u64, head: Digest) -> Digest {
    Digest::of_parts(&[
        input_link.as_bytes(),
        b"events",
        &first_seq.to_le_bytes(),
        &events.to_le_bytes(),
        head.as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_changes_the_link() {
        let base = input_link(Digest::zero(), 1, "cycle", "{}", outcomes_digest([]));
        let variants = [
            input_link(
                header_link("r", "{}"),
                1,
                "cycle",
                "{}",
                outcomes_digest([]),
            ),
            input_link(Digest::zero(), 2, "cycle", "{}", outcomes_digest([])),
            input_link(Digest::zero(), 1, "stop", "{}", outcomes_digest([])),
            input_link(Digest::zero(), 1, "cycle", "{ }", outcomes_digest([])),
            input_link(
                Digest::zero(),
                1,
                "cycle",
                "{}",
                outcomes_digest([(0, b"x".as_slice())]),
            ),
        ];
        for variant in variants {
            assert_ne!(variant, base);
        }
        assert_ne!(
            outcomes_digest([(0, b"ab".as_slice())]),
            outcomes_digest([(1, b"ab".as_slice())])
        );
        assert_ne!(
            step_link(base, 0, 1, Digest::zero()),
            step_link(base, 1, 0, Digest::zero())
        );
    }
}
