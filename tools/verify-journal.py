#!/usr/bin/env python3
"""Verify a Converge journal (schema version 2) without Converge.

Usage: python3 tools/verify-journal.py JOURNAL.db [RUN]

Every run (or only RUN) is checked from the stored bytes alone, with Python's standard
library, and one line is printed per run:

    RUN: intact — N steps, M events, root hash H, record hash R
    RUN: BROKEN at PLACE: REASON

PLACE is the first altered entry in record order, in the words Converge's `verify` uses:
"the run header", "the input of step S", "event Q (step S)", "the link closing step S",
"the run's heads and status". Exit status: 0 if every run is intact, 1 if any is broken,
2 on a usage error or a file that is not a readable second-edition journal. The file is
opened read-only.

The construction. D(p1, ..., pn) is SHA-256 over each part prefixed by its length as a
64-bit little-endian integer; u64(x) and u32(x) are little-endian integers.

- Event chain (the core's): hash(seq) = D(hash(seq-1), u64(seq), body), with 32 zero bytes
  before event 0. The root hash is the hash of the last event.
- Record chain (the journal's):
    header_link  = D("converge-journal-2", run id, header text)
    outcomes(s)  = D(u32(agent), outcome bytes, ...) in increasing agent order (no parts for
                   a step that is not a cycle)
    input_link(s)= D(previous link, "input", u64(s), kind, input text, outcomes(s)), where
                   the previous link is header_link for step 0, else link(s-1) as stored
    link(s)      = D(input_link(s), "events", u64(first_seq), u64(event count),
                   hash of the last event up to and including step s, or 32 zero bytes)
  runs.record_hash is the link of the last step (header_link when there is none).
- Status: "running" unless the last event is a `run_stopped` event; then
  "awaiting_approval" if its reason's "stop" is "awaiting_approval", else "stopped" with
  stop_reason equal (as JSON) to that reason.

Storage: `events` rows hold several consecutive events each: 32 bytes of hash per event,
u32 end offsets into the inflated bodies, and the bodies concatenated and zlib-compressed.
`outcomes` rows hold a cycle's outcomes the same way, with u32 agent indices. Outcome rows
of step == runs.steps belong to a cycle not yet committed and are not under the chain.
Nothing is inflated past the size its offsets announce.
"""

import hashlib
import json
import sqlite3
import struct
import sys
import zlib

APPLICATION_ID = 0x436E7667
SCHEMA_VERSION = 2
ZERO = bytes(32)
INF = float("inf")


class Broken(Exception):
    """The first bad place: its order key, its words and the reason."""

    def __init__(self, place, reason):
        super().__init__(reason)
        self.place, self.reason = place, reason


def digest(*parts):
    sha = hashlib.sha256()
    for part in parts:
        part = part.encode() if isinstance(part, str) else part
        sha.update(struct.pack("<Q", len(part)) + part)
    return sha.digest()


def u64(value):
    return struct.pack("<Q", value)


# Places, as (order key, words). The order is the record's: the header, then per step its
# input, its events and its closing link, then the run's row.
def header():
    return ((0, 0, 0), "the run header")


def input_of(step):
    return ((step + 1, 0, 0), f"the input of step {step}")


def event(step, seq):
    if step is None:
        return ((INF, 1, seq), f"event {seq}")
    return ((step + 1, 1, seq), f"event {seq} (step {step})")


def closing(step):
    return ((step + 1, 2, 0), f"the link closing step {step}")


def run_row():
    return ((INF, 3, 0), "the run's heads and status")


def unpack(count, ends, compressed):
    """Splits a stored group into its records, inflating no more than its offsets announce."""
    if len(ends) != 4 * count:
        raise ValueError(f"{len(ends)} bytes of offsets for {count} records")
    offsets = list(struct.unpack(f"<{count}I", ends))
    if any(a > b for a, b in zip(offsets, offsets[1:])):
        raise ValueError("record offsets are out of order")
    size = offsets[-1] if offsets else 0
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(compressed, size + 1)
    except zlib.error as error:
        raise ValueError(f"the records do not inflate: {error}") from None
    if len(data) != size:
        raise ValueError(f"the records inflate to {len(data)} bytes, not {size}")
    return [data[a:b] for a, b in zip([0] + offsets, offsets)]


def kind_of(value):
    if value == "stop":
        return "stop"
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return None


def check_steps(rows, head_steps, head_events, header_value):
    """The valid prefix of step rows and their event ranges; the first step-level break."""
    ranges, next_seq = [], 0
    for index, (step, kind, text, first_seq, count, _, _) in enumerate(rows):
        if index >= head_steps or step != index:
            return ranges, Broken(event(index, next_seq), "the step is missing or beyond the run's head")
        if first_seq != next_seq:
            return ranges, Broken(event(index, next_seq), "the step's event range disagrees with the steps before it")
        try:
            value = json.loads(text)
        except ValueError as error:
            return ranges, Broken(input_of(step), f"the step's input cannot be read: {error}")
        if kind_of(value) != kind or (step == 0) != (kind == "start"):
            return ranges, Broken(input_of(step), f"the step's input cannot be read: filed as {kind}")
        if step == 0 and value["start"].get("header") != header_value:
            return ranges, Broken(input_of(0), "the step's input cannot be read: its header differs from the run's")
        ranges.append((first_seq, count))
        next_seq += count
    if len(ranges) < head_steps:
        return ranges, Broken(event(len(ranges), next_seq), "the step is missing or beyond the run's head")
    if next_seq != head_events:
        step = len(ranges) - 1 if ranges else None
        return ranges, Broken(event(step, min(next_seq, head_events)), "the step's event range disagrees with the steps before it")
    return ranges, None


def step_of(ranges, seq):
    for step, (first, count) in enumerate(ranges):
        if first <= seq < first + count:
            return step
    return None


def walk_events(db, run, ranges, steps_broken, head_events, root, heads):
    """Recomputes the event chain, keeping each step's last intact event in `heads`
    (step -> (hash, body)), up to the first break, which it raises."""
    # Past a step-level break, events are not checked: the steps no longer say where they go.
    limit = min(sum(count for _, count in ranges), head_events) if steps_broken else INF
    previous, expected = ZERO, 0
    rows = db.execute("SELECT first_seq, step, count, hashes, ends, bodies FROM events "
                      "WHERE run = ? ORDER BY first_seq", (run,))
    for first_seq, filed, count, hashes, ends, bodies in rows:
        if expected >= limit:
            break
        try:
            if len(hashes) != 32 * count or count <= 0:
                raise ValueError(f"it claims {count} events but stores {len(hashes)} bytes of hashes")
            records = unpack(count, ends, bodies)
        except ValueError as error:
            if first_seq > expected:
                raise Broken(event(step_of(ranges, expected), expected), "no event is stored at this position")
            raise Broken(event(step_of(ranges, first_seq), first_seq), f"the stored events cannot be read: {error}")
        for index, body in enumerate(records):
            seq, stored = first_seq + index, hashes[32 * index:32 * index + 32]
            if expected >= limit:
                break
            if seq > expected:
                raise Broken(event(step_of(ranges, expected), expected), "no event is stored at this position")
            if seq < expected or seq >= head_events:
                raise Broken(event(step_of(ranges, seq), seq), "an event is stored beyond the run's head")
            if step_of(ranges, seq) != filed:
                raise Broken(event(step_of(ranges, seq), seq), f"the event is filed under step {filed}")
            if digest(previous, u64(seq), body) != stored:
                raise Broken(event(filed, seq), "the stored hash does not chain over the stored body (altered entry)")
            heads[filed], previous, expected = (stored, body), stored, expected + 1
    if expected < min(limit, head_events):
        raise Broken(event(step_of(ranges, expected), expected), "no event is stored at this position")
    if steps_broken:
        raise steps_broken
    if previous != root:
        raise Broken(run_row(), "the chain does not end at the run's recorded root hash")


def read_outcomes(db, run, rows, head_steps, committed):
    """Puts the stored outcomes of each committed step in `committed` (step -> [(agent,
    bytes)], in agent order), then checks each cycle's against its batch."""
    by_step = {}
    for step, cycle, agents, ends, bodies in db.execute(
            "SELECT step, cycle, agents, ends, bodies FROM outcomes WHERE run = ? ORDER BY step, part", (run,)):
        try:
            if len(agents) % 4:
                raise ValueError("its agent list is cut short")
            records = unpack(len(agents) // 4, ends, bodies)
        except ValueError as error:
            raise Broken(input_of(step), f"the step's outcomes: a stored part cannot be read: {error}")
        stored_cycle, outcomes = by_step.setdefault(step, (cycle, []))
        if stored_cycle != cycle:
            raise Broken(input_of(step), "the step's outcomes: its parts name different cycles")
        outcomes.extend(zip(struct.unpack(f"<{len(agents) // 4}I", agents), records))
    for step, (cycle, outcomes) in by_step.items():
        outcomes.sort(key=lambda outcome: outcome[0])
        if step != head_steps:
            committed[step] = outcomes
    for step, (cycle, outcomes) in sorted(by_step.items()):
        if step == head_steps:
            continue
        value = json.loads(rows[step][2]).get("cycle") if step < len(rows) else None
        if not isinstance(value, dict) or value.get("cycle") != cycle:
            raise Broken(input_of(step), f"the step's outcomes: outcomes of cycle {cycle} are filed under this step")
        if [agent for agent, _ in outcomes] != value.get("batch"):
            raise Broken(input_of(step), "the step's outcomes: they do not match its batch")


def check_links(run, header_text, header_link, record_hash, rows, valid, outcomes, heads):
    link_mismatch = "the stored bytes do not hash to the link stored for them (altered entry)"
    if digest("converge-journal-2", run, header_text) != header_link:
        raise Broken(header(), link_mismatch)
    previous, event_head = header_link, ZERO
    for step, kind, text, first_seq, count, input_link, link in rows[:valid]:
        parts = [part for agent, body in outcomes.get(step, []) for part in (struct.pack("<I", agent), body)]
        if digest(previous, "input", u64(step), kind, text, digest(*parts)) != input_link:
            raise Broken(input_of(step), link_mismatch)
        event_head = heads.get(step, (event_head,))[0]
        if digest(input_link, "events", u64(first_seq), u64(count), event_head) != link:
            raise Broken(closing(step), link_mismatch)
        previous = link
    if valid == len(rows) and previous != record_hash:
        raise Broken(run_row(), "the record chain does not end at the run's recorded record hash")


def check_status(status, stop_reason, last_body):
    last = json.loads(last_body) if last_body else {}
    reason = last.get("reason") if last.get("event") == "run_stopped" else None
    if reason is None:
        expected = ("running", None)
    elif reason.get("stop") == "awaiting_approval":
        expected = ("awaiting_approval", None)
    else:
        expected = ("stopped", reason)
    stored = (status, json.loads(stop_reason) if stop_reason is not None else None)
    if stored != expected:
        raise Broken(run_row(), f"the stored status disagrees with the events: it is stored as "
                                f"{status}, but the last event says {expected[0]}")


def verify(db, run):
    """Returns the intact line's facts, or raises the first Broken place (smallest order)."""
    (header_text, header_link, status, stop_reason, head_steps, head_events, root, record_hash) = db.execute(
        "SELECT header, header_link, status, stop_reason, steps, events, root_hash, record_hash "
        "FROM runs WHERE id = ?", (run,)).fetchone()
    header_link, root, record_hash = (bytes.fromhex(h) for h in (header_link, root, record_hash))
    rows = db.execute("SELECT step, kind, input, first_seq, events, input_link, link FROM steps "
                      "WHERE run = ? ORDER BY step", (run,)).fetchall()
    ranges, steps_broken = check_steps(rows, head_steps, head_events, json.loads(header_text))
    breaks, heads, outcomes = [], {}, {}
    try:
        walk_events(db, run, ranges, steps_broken, head_events, root, heads)
    except Broken as broken:
        breaks.append(broken)
    try:
        read_outcomes(db, run, rows, head_steps, outcomes)
    except Broken as broken:
        breaks.append(broken)
    try:
        valid = len(rows) if steps_broken is None else len(ranges)
        check_links(run, header_text, header_link, record_hash, rows, valid, outcomes, heads)
    except Broken as broken:
        breaks.append(broken)
    if breaks:
        raise min(breaks, key=lambda broken: broken.place[0])
    last = heads[max(heads)][1] if heads else None
    check_status(status, stop_reason, last)
    return head_steps, head_events, root.hex(), record_hash.hex()


def open_journal(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    if application_id != APPLICATION_ID:
        raise ValueError(f"{path} is not a Converge journal (application id {application_id:#010x})")
    version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if version is None or version[0] != str(SCHEMA_VERSION):
        raise ValueError(f"{path} has journal schema version {version and version[0]}; "
                         f"this verifier reads version {SCHEMA_VERSION}")
    return db


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        db = open_journal(argv[1])
        runs = [row[0] for row in db.execute("SELECT id FROM runs ORDER BY rowid")]
    except (sqlite3.Error, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(argv) == 3:
        if argv[2] not in runs:
            print(f"error: no run {argv[2]!r} in {argv[1]}", file=sys.stderr)
            return 2
        runs = [argv[2]]
    status = 0
    for run in runs:
        try:
            steps, events, root, record = verify(db, run)
            print(f"{run}: intact — {steps} steps, {events} events, root hash {root}, record hash {record}")
        except Broken as broken:
            print(f"{run}: BROKEN at {broken.place[1]}: {broken.reason}")
            status = 1
        except (sqlite3.Error, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            print(f"{run}: BROKEN at the run's heads and status: unreadable ({error})")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
