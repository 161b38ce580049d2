//! Tampering with a real journal, column by column: every stored column of every table and
//! every kind of field in a step's input, each edited (same-length where the column allows
//! it, so no length check can be what catches it), including edits that point at another
//! existing fact. Each edit must be named by `verify` at the first altered place in record
//! order, and refused by `load` — and so by resume, replay and inspect — unless it is an
//! event body or the run's status, which `load` deliberately does not read (reading events
//! and `verify` do).
//!
//! The run is `examples/release-approval.yaml`, driven durably to its approval and on to its
//! end, and a second run of it where the human rejects the release with a reason. This file
//! does not test the structural cases (deleted rows, gaps, reads from a position):
//! `tests/journal.rs` does.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use converge_core::{Actor, Decision, StopReason};
use converge_runtime::spec::JobSpec;
use converge_runtime::{
    BreakReason, DurableError, JobRecord, Journal, JournalError, Place, ReplayReport, RunId,
    Runtime, SqliteJournal, Verification,
};
use rusqlite::{Connection, params};
use tempfile::TempDir;

/// The example job, as `converge run` keeps it in the run header.
fn job() -> JobRecord {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/release-approval.yaml");
    let path = std::path::absolute(path).unwrap();
    JobRecord {
        source: std::fs::read_to_string(&path).unwrap(),
        path: path.to_string_lossy().into_owned(),
    }
}

fn runtime() -> Runtime {
    let job = job();
    let loaded = JobSpec::parse(&job.source, &job.path).unwrap();
    loaded.spec.build().unwrap().with_job(job)
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(future)
}

/// The run that is approved by alice, and the run that is rejected by bob with a reason.
const APPROVED: &str = "approved";
const REJECTED: &str = "rejected";

fn id(run: &str) -> RunId {
    RunId::new(run).unwrap()
}

/// Records both runs in `dir` and returns the journal file (closed, checkpointed).
fn record(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("journal.db");
    let mut journal = SqliteJournal::open(&path).unwrap();
    for run in [APPROVED, REJECTED] {
        let parked = block_on(runtime().run_durable(&mut journal, &id(run))).unwrap();
        let StopReason::AwaitingApproval { pending } = &parked.stop_reason else {
            panic!("{run}: {:?}", parked.stop_reason);
        };
        let decision = if run == APPROVED {
            Decision::approve(
                pending[0].proposal,
                pending[0].hash,
                Actor::human("alice").unwrap(),
            )
        } else {
            Decision::reject(
                pending[0].proposal,
                pending[0].hash,
                Actor::human("bob").unwrap(),
                "wait for the freeze",
            )
        };
        block_on(runtime().decide_durable(&mut journal, &id(run), vec![decision])).unwrap();
        assert!(matches!(
            journal.verify(&id(run)).unwrap(),
            Verification::Intact { .. }
        ));
    }
    path
}

// ---------------------------------------------------------------------------------------------
// Reading and writing what is stored, as a tamperer does
// ---------------------------------------------------------------------------------------------

/// A raw connection to a copy of the journal, with the append-only triggers dropped.
fn tamperer(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;
         DROP TRIGGER steps_append_only_update; DROP TRIGGER steps_append_only_delete;
         DROP TRIGGER outcomes_append_only_update; DROP TRIGGER outcomes_append_only_delete;",
    )
    .unwrap();
    conn
}

fn inflate(compressed: &[u8]) -> Vec<u8> {
    let mut bodies = Vec::new();
    flate2::read::ZlibDecoder::new(compressed)
        .read_to_end(&mut bodies)
        .unwrap();
    bodies
}

fn deflate(bodies: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bodies).unwrap();
    encoder.finish().unwrap()
}

/// Replaces the first occurrence of `from` in `text` by `to`, which has the same length.
fn same_length(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "{from} -> {to}");
    let at = text
        .windows(from.len())
        .position(|window| window == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} is not stored here"));
    let mut edited = text.to_vec();
    edited[at..at + to.len()].copy_from_slice(to.as_bytes());
    edited
}

fn same_length_text(text: &str, from: &str, to: &str) -> String {
    String::from_utf8(same_length(text.as_bytes(), from, to)).unwrap()
}

/// Flips one hex digit of a 64-digit hash text (keeping it hex).
fn flip_hex(hex: &str) -> String {
    let mut digits: Vec<char> = hex.chars().collect();
    digits[10] = if digits[10] == '0' { '1' } else { '0' };
    digits.into_iter().collect()
}

/// Flips one bit of a blob at `at`.
fn flip_bit(mut blob: Vec<u8>, at: usize) -> Vec<u8> {
    blob[at] ^= 0x01;
    blob
}

/// The step whose input (or outcomes) contains `needle`, first in step order: from the
/// steps' stored text, or from the cycles' inflated outcomes.
fn step_holding(conn: &Connection, run: &str, needle: &str) -> u64 {
    let mut steps = conn
        .prepare("SELECT step, input FROM steps WHERE run = ?1 ORDER BY step")
        .unwrap();
    let inputs: Vec<(i64, String)> = steps
        .query_map([run], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut parts = conn
        .prepare("SELECT step, bodies FROM outcomes WHERE run = ?1 ORDER BY step, part")
        .unwrap();
    let outcomes: Vec<(i64, Vec<u8>)> = parts
        .query_map([run], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let in_input = inputs.iter().find(|(_, input)| input.contains(needle));
    let in_outcomes = outcomes
        .iter()
        .find(|(_, bodies)| String::from_utf8_lossy(&inflate(bodies)).contains(needle));
    [
        in_input.map(|(step, _)| *step),
        in_outcomes.map(|(step, _)| *step),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or_else(|| panic!("no step of {run} holds {needle:?}")) as u64
}

/// The step of kind `kind`, first or last in step order.
fn step_of_kind(conn: &Connection, run: &str, kind: &str, last: bool) -> u64 {
    let order = if last { "DESC" } else { "ASC" };
    conn.query_row(
        &format!("SELECT step FROM steps WHERE run = ?1 AND kind = ?2 ORDER BY step {order}"),
        params![run, kind],
        |row| row.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// `(first_seq, step, count)` of the events row holding seq `seq`.
fn chunk_holding(conn: &Connection, run: &str, seq: u64) -> (u64, u64, u64) {
    conn.query_row(
        "SELECT first_seq, step, count FROM events WHERE run = ?1 AND first_seq <= ?2 \
         ORDER BY first_seq DESC LIMIT 1",
        params![run, seq as i64],
        |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, i64>(2)? as u64,
            ))
        },
    )
    .unwrap()
}

/// The run row's step and event counts.
fn head(conn: &Connection, run: &str) -> (u64, u64) {
    conn.query_row(
        "SELECT steps, events FROM runs WHERE id = ?1",
        [run],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
    )
    .unwrap()
}

/// The first seq of step `step`.
fn first_seq_of(conn: &Connection, run: &str, step: u64) -> u64 {
    conn.query_row(
        "SELECT first_seq FROM steps WHERE run = ?1 AND step = ?2",
        params![run, step as i64],
        |row| row.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// Edits event `seq`'s stored body with `edit`, inside its compressed group.
fn edit_event_body(conn: &Connection, run: &str, seq: u64, edit: impl Fn(&[u8]) -> Vec<u8>) {
    let (first, _, _) = chunk_holding(conn, run, seq);
    let (ends, bodies): (Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT ends, bodies FROM events WHERE run = ?1 AND first_seq = ?2",
            params![run, first as i64],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let end = |i: usize| u32::from_le_bytes(ends[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
    let index = (seq - first) as usize;
    let start = if index == 0 { 0 } else { end(index - 1) };
    let mut inflated = inflate(&bodies);
    let edited = edit(&inflated[start..end(index)]);
    assert_eq!(edited.len(), end(index) - start, "a same-length edit");
    inflated[start..end(index)].copy_from_slice(&edited);
    conn.execute(
        "UPDATE events SET bodies = ?3 WHERE run = ?1 AND first_seq = ?2",
        params![run, first as i64, deflate(&inflated)],
    )
    .unwrap();
}

/// Edits the inflated bodies of the outcome part of `step` that holds `from`, same length.
fn edit_outcome_body(conn: &Connection, run: &str, step: u64, from: &str, to: &str) {
    let mut parts = conn
        .prepare("SELECT part, bodies FROM outcomes WHERE run = ?1 AND step = ?2")
        .unwrap();
    let (part, bodies): (i64, Vec<u8>) = parts
        .query_map(params![run, step as i64], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .find(|(_, bodies)| String::from_utf8_lossy(&inflate(bodies)).contains(from))
        .unwrap_or_else(|| panic!("no outcome of step {step} holds {from:?}"));
    let edited = deflate(&same_length(&inflate(&bodies), from, to));
    conn.execute(
        "UPDATE outcomes SET bodies = ?4 WHERE run = ?1 AND step = ?2 AND part = ?3",
        params![run, step as i64, part, edited],
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

/// What reads the tampered run besides `verify`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Readers {
    /// `load` refuses it (so resume, replay, approve and inspect do).
    LoadRefuses,
    /// An event body: `load` reads none; reading the events refuses it.
    EventsRefuse,
    /// A stored event hash inside a step: `load` hands it over as stored, and replay names
    /// the event whose re-derived hash differs.
    ReplayDiverges,
    /// The run's status: a summary only `verify` checks against the last event.
    VerifyOnly,
}

/// An edit of a run's stored rows, given a raw connection and the run id.
type Edit = Box<dyn Fn(&Connection, &str)>;

/// Where an edit must be named, computed from the untouched rows.
type Expected = Box<dyn Fn(&Connection, &str) -> Place>;

/// One edit: what it changes, the place `verify` must name, and who else must refuse it.
struct Case {
    name: &'static str,
    run: &'static str,
    edit: Edit,
    at: Expected,
    readers: Readers,
}

fn case(
    name: &'static str,
    run: &'static str,
    edit: impl Fn(&Connection, &str) + 'static,
    at: impl Fn(&Connection, &str) -> Place + 'static,
    readers: Readers,
) -> Case {
    Case {
        name,
        run,
        edit: Box::new(edit),
        at: Box::new(at),
        readers,
    }
}

/// Runs `edit` on a fresh copy of the recorded journal and returns the copy's path and the
/// place the case expects (computed from the untouched copy).
fn tampered(dir: &TempDir, original: &Path, case: &Case) -> (PathBuf, Place) {
    let copy = dir.path().join(format!("{}.db", case.name));
    std::fs::copy(original, &copy).unwrap();
    let conn = tamperer(&copy);
    let at = (case.at)(&conn, case.run);
    (case.edit)(&conn, case.run);
    drop(conn);
    (copy, at)
}

fn update_run(conn: &Connection, run: &str, column: &str, edit: impl Fn(String) -> String) {
    let value: String = conn
        .query_row(
            &format!("SELECT {column} FROM runs WHERE id = ?1"),
            [run],
            |row| row.get(0),
        )
        .unwrap();
    conn.execute(
        &format!("UPDATE runs SET {column} = ?2 WHERE id = ?1"),
        params![run, edit(value)],
    )
    .unwrap();
}

fn update_step_blob(conn: &Connection, run: &str, step: u64, column: &str) {
    let value: Vec<u8> = conn
        .query_row(
            &format!("SELECT {column} FROM steps WHERE run = ?1 AND step = ?2"),
            params![run, step as i64],
            |row| row.get(0),
        )
        .unwrap();
    conn.execute(
        &format!("UPDATE steps SET {column} = ?3 WHERE run = ?1 AND step = ?2"),
        params![run, step as i64, flip_bit(value, 5)],
    )
    .unwrap();
}

fn update_step_input(conn: &Connection, run: &str, step: u64, from: &str, to: &str) {
    conn.execute(
        "UPDATE steps SET input = replace(input, ?3, ?4) WHERE run = ?1 AND step = ?2",
        params![run, step as i64, from, to],
    )
    .unwrap();
}

/// The first cycle step whose outcomes hold `needle`.
fn cycle_with(conn: &Connection, run: &str, needle: &str) -> u64 {
    step_holding(conn, run, needle)
}

fn input_of(
    step: impl Fn(&Connection, &str) -> u64 + 'static,
) -> impl Fn(&Connection, &str) -> Place {
    move |conn, run| Place::Input {
        step: step(conn, run),
    }
}

/// The event place of seq `seq`.
fn event_at(conn: &Connection, run: &str, seq: u64) -> Place {
    let (_, step, _) = chunk_holding(conn, run, seq);
    Place::Event {
        step: Some(step),
        seq,
    }
}

/// The seq of the `n`-th event of the first cycle step (inside a chunk, not its first).
fn inside_first_cycle(conn: &Connection, run: &str) -> u64 {
    let step = step_of_kind(conn, run, "cycle", false);
    first_seq_of(conn, run, step) + 1
}

/// The decisions step, which holds the human's decision.
fn decisions(conn: &Connection, run: &str) -> u64 {
    step_of_kind(conn, run, "decisions", false)
}

fn cases() -> Vec<Case> {
    use Readers::*;
    vec![
        // ---- runs ----
        case(
            "runs-header-spec-text",
            APPROVED,
            |conn, run| {
                update_run(conn, run, "header", |header| {
                    same_length_text(&header, "risk == \\\"high\\\"", "risk == \\\"low\\\" ")
                })
            },
            |_, _| Place::Header,
            LoadRefuses,
        ),
        case(
            "runs-header-agents",
            APPROVED,
            |conn, run| {
                update_run(conn, run, "header", |header| {
                    same_length_text(&header, "\"assess-high-risk\"", "\"assess-high-rusk\"")
                })
            },
            |_, _| Place::Header,
            LoadRefuses,
        ),
        case(
            "runs-header-link",
            APPROVED,
            |conn, run| update_run(conn, run, "header_link", |link| flip_hex(&link)),
            |_, _| Place::Header,
            LoadRefuses,
        ),
        case(
            "runs-status",
            APPROVED,
            |conn, run| {
                conn.execute(
                    "UPDATE runs SET status = 'awaiting_approval', stop_reason = NULL \
                     WHERE id = ?1",
                    [run],
                )
                .unwrap();
            },
            |_, _| Place::Run,
            VerifyOnly,
        ),
        case(
            "runs-stop-reason",
            REJECTED,
            |conn, run| {
                update_run(conn, run, "stop_reason", |reason| {
                    // The rejected release leaves the success criterion unmet.
                    same_length_text(&reason, "not met (0 found)", "not met (1 found)")
                })
            },
            |_, _| Place::Run,
            VerifyOnly,
        ),
        case(
            "root-hash",
            APPROVED,
            |conn, run| update_run(conn, run, "root_hash", |hash| flip_hex(&hash)),
            |_, _| Place::Run,
            LoadRefuses,
        ),
        case(
            "runs-record-hash",
            APPROVED,
            |conn, run| update_run(conn, run, "record_hash", |hash| flip_hex(&hash)),
            |_, _| Place::Run,
            LoadRefuses,
        ),
        case(
            "runs-steps",
            APPROVED,
            |conn, run| {
                conn.execute("UPDATE runs SET steps = steps + 1 WHERE id = ?1", [run])
                    .unwrap();
            },
            // The step the row now claims is missing, where its events would start.
            |conn, run| {
                let (steps, events) = head(conn, run);
                Place::Event {
                    step: Some(steps),
                    seq: events,
                }
            },
            LoadRefuses,
        ),
        case(
            "runs-events",
            APPROVED,
            |conn, run| {
                conn.execute("UPDATE runs SET events = events + 1 WHERE id = ?1", [run])
                    .unwrap();
            },
            // The last step's range no longer reaches the head the row claims.
            |conn, run| {
                let (steps, events) = head(conn, run);
                Place::Event {
                    step: Some(steps - 1),
                    seq: events,
                }
            },
            LoadRefuses,
        ),
        // ---- steps: every field kind of an input ----
        case(
            "kind",
            APPROVED,
            |conn, run| {
                let step = decisions(conn, run);
                conn.execute(
                    "UPDATE steps SET kind = 'halt' WHERE run = ?1 AND step = ?2",
                    params![run, step as i64],
                )
                .unwrap();
            },
            input_of(decisions),
            LoadRefuses,
        ),
        case(
            "cycle-number-in-input",
            APPROVED,
            |conn, run| {
                let step = step_of_kind(conn, run, "cycle", true);
                let input: String = conn
                    .query_row(
                        "SELECT input FROM steps WHERE run = ?1 AND step = ?2",
                        params![run, step as i64],
                        |row| row.get(0),
                    )
                    .unwrap();
                // `{"cycle":{"cycle":3,"batch":[3]}}`: the next cycle's number.
                let prefix = "{\"cycle\":{\"cycle\":";
                assert!(input.starts_with(prefix), "{input}");
                let number = &input[prefix.len()..prefix.len() + 1];
                let next = (number.parse::<u8>().unwrap() + 1).to_string();
                let edited = format!("{prefix}{next}{}", &input[prefix.len() + 1..]);
                assert_eq!(edited.len(), input.len());
                conn.execute(
                    "UPDATE steps SET input = ?3 WHERE run = ?1 AND step = ?2",
                    params![run, step as i64, edited],
                )
                .unwrap();
            },
            input_of(|conn, run| step_of_kind(conn, run, "cycle", true)),
            LoadRefuses,
        ),
        case(
            "steps-input-decision-actor",
            APPROVED,
            |conn, run| {
                update_step_input(conn, run, decisions(conn, run), "\"alice\"", "\"alica\"")
            },
            input_of(decisions),
            LoadRefuses,
        ),
        case(
            "steps-input-decision-reason",
            REJECTED,
            |conn, run| {
                update_step_input(conn, run, decisions(conn, run), "the freeze", "the audit ")
            },
            input_of(decisions),
            LoadRefuses,
        ),
        case(
            "steps-input-decision-proposal-hash",
            APPROVED,
            |conn, run| {
                let step = decisions(conn, run);
                let input: String = conn
                    .query_row(
                        "SELECT input FROM steps WHERE run = ?1 AND step = ?2",
                        params![run, step as i64],
                        |row| row.get(0),
                    )
                    .unwrap();
                let at = input.find("\"hash\":\"").unwrap() + 8;
                let hash = &input[at..at + 64];
                update_step_input(conn, run, step, hash, &flip_hex(hash));
            },
            input_of(decisions),
            LoadRefuses,
        ),
        case(
            "steps-first-seq",
            APPROVED,
            |conn, run| {
                let step = decisions(conn, run);
                conn.execute(
                    "UPDATE steps SET first_seq = first_seq + 1 WHERE run = ?1 AND step = ?2",
                    params![run, step as i64],
                )
                .unwrap();
            },
            // Its events no longer start where its range says.
            |conn, run| event_at(conn, run, first_seq_of(conn, run, decisions(conn, run))),
            LoadRefuses,
        ),
        case(
            "steps-events",
            APPROVED,
            |conn, run| {
                let step = decisions(conn, run);
                conn.execute(
                    "UPDATE steps SET events = events + 1 WHERE run = ?1 AND step = ?2",
                    params![run, step as i64],
                )
                .unwrap();
            },
            // Its range now claims the next step's first event, filed under that step.
            |conn, run| {
                let step = decisions(conn, run);
                Place::Event {
                    step: Some(step),
                    seq: first_seq_of(conn, run, step + 1),
                }
            },
            LoadRefuses,
        ),
        case(
            "steps-input-link",
            APPROVED,
            |conn, run| update_step_blob(conn, run, decisions(conn, run), "input_link"),
            input_of(decisions),
            LoadRefuses,
        ),
        case(
            "steps-link",
            APPROVED,
            |conn, run| update_step_blob(conn, run, decisions(conn, run), "link"),
            |conn, run| Place::Step {
                step: decisions(conn, run),
            },
            LoadRefuses,
        ),
        // ---- outcomes ----
        case(
            "outcomes-derived-from-another-fact",
            APPROVED,
            |conn, run| {
                let step = cycle_with(conn, run, "assessment-pr-1412");
                edit_outcome_body(
                    conn,
                    run,
                    step,
                    "\"derived_from\":[{\"key\":\"changes\",\"id\":\"pr-1412\"}]",
                    "\"derived_from\":[{\"key\":\"changes\",\"id\":\"pr-1420\"}]",
                );
            },
            input_of(|conn, run| cycle_with(conn, run, "assessment-pr-1412")),
            LoadRefuses,
        ),
        case(
            "outcomes-content",
            APPROVED,
            |conn, run| {
                let step = cycle_with(conn, run, "assessment-pr-1412");
                edit_outcome_body(
                    conn,
                    run,
                    step,
                    "\"Retry failed card captures\"",
                    "\"Retry failed card capturez\"",
                );
            },
            input_of(|conn, run| cycle_with(conn, run, "assessment-pr-1412")),
            LoadRefuses,
        ),
        case(
            "outcomes-confidence",
            APPROVED,
            |conn, run| {
                let step = cycle_with(conn, run, "assessment-pr-1412");
                edit_outcome_body(
                    conn,
                    run,
                    step,
                    "\"confidence\":\"0.9\"",
                    "\"confidence\":\"0.1\"",
                );
            },
            input_of(|conn, run| cycle_with(conn, run, "assessment-pr-1412")),
            LoadRefuses,
        ),
        case(
            "outcomes-cycle",
            APPROVED,
            |conn, run| {
                let step = step_of_kind(conn, run, "cycle", false);
                conn.execute(
                    "UPDATE outcomes SET cycle = cycle + 1 WHERE run = ?1 AND step = ?2",
                    params![run, step as i64],
                )
                .unwrap();
            },
            input_of(|conn, run| step_of_kind(conn, run, "cycle", false)),
            LoadRefuses,
        ),
        case(
            "cycle-number-of-later-outcomes",
            APPROVED,
            |conn, run| {
                let step = step_of_kind(conn, run, "cycle", true);
                conn.execute(
                    "UPDATE outcomes SET cycle = cycle + 1 WHERE run = ?1 AND step = ?2",
                    params![run, step as i64],
                )
                .unwrap();
            },
            input_of(|conn, run| step_of_kind(conn, run, "cycle", true)),
            LoadRefuses,
        ),
        case(
            "outcomes-agents",
            APPROVED,
            |conn, run| {
                let step = step_of_kind(conn, run, "cycle", false);
                let agents: Vec<u8> = conn
                    .query_row(
                        "SELECT agents FROM outcomes WHERE run = ?1 AND step = ?2 AND part = 0",
                        params![run, step as i64],
                        |row| row.get(0),
                    )
                    .unwrap();
                // Another agent's index in the same number of bytes.
                let edited = flip_bit(agents, 0);
                conn.execute(
                    "UPDATE outcomes SET agents = ?3 WHERE run = ?1 AND step = ?2 AND part = 0",
                    params![run, step as i64, edited],
                )
                .unwrap();
            },
            input_of(|conn, run| step_of_kind(conn, run, "cycle", false)),
            LoadRefuses,
        ),
        case(
            "outcome-ends",
            APPROVED,
            |conn, run| {
                let step = step_of_kind(conn, run, "cycle", false);
                let ends: Vec<u8> = conn
                    .query_row(
                        "SELECT ends FROM outcomes WHERE run = ?1 AND step = ?2 AND part = 0",
                        params![run, step as i64],
                        |row| row.get(0),
                    )
                    .unwrap();
                assert!(ends.len() >= 8, "a part of two outcomes or more");
                conn.execute(
                    "UPDATE outcomes SET ends = ?3 WHERE run = ?1 AND step = ?2 AND part = 0",
                    params![run, step as i64, flip_bit(ends, 0)],
                )
                .unwrap();
            },
            input_of(|conn, run| step_of_kind(conn, run, "cycle", false)),
            LoadRefuses,
        ),
        // ---- events ----
        case(
            "events-hashes",
            APPROVED,
            |conn, run| {
                let seq = inside_first_cycle(conn, run);
                let (first, _, _) = chunk_holding(conn, run, seq);
                let hashes: Vec<u8> = conn
                    .query_row(
                        "SELECT hashes FROM events WHERE run = ?1 AND first_seq = ?2",
                        params![run, first as i64],
                        |row| row.get(0),
                    )
                    .unwrap();
                let edited = flip_bit(hashes, ((seq - first) * 32 + 3) as usize);
                conn.execute(
                    "UPDATE events SET hashes = ?3 WHERE run = ?1 AND first_seq = ?2",
                    params![run, first as i64, edited],
                )
                .unwrap();
            },
            |conn, run| event_at(conn, run, inside_first_cycle(conn, run)),
            ReplayDiverges,
        ),
        case(
            "events-bodies-fact-id",
            APPROVED,
            |conn, run| {
                let seq = fact_promoted(conn, run, "assessment-pr-1412");
                edit_event_body(conn, run, seq, |body| {
                    same_length(body, "pr-1412", "pr-1420")
                });
            },
            |conn, run| event_at(conn, run, fact_promoted(conn, run, "assessment-pr-1412")),
            EventsRefuse,
        ),
        case(
            "events-ends",
            APPROVED,
            |conn, run| {
                let seq = inside_first_cycle(conn, run);
                let (first, _, _) = chunk_holding(conn, run, seq);
                let ends: Vec<u8> = conn
                    .query_row(
                        "SELECT ends FROM events WHERE run = ?1 AND first_seq = ?2",
                        params![run, first as i64],
                        |row| row.get(0),
                    )
                    .unwrap();
                // Event `seq - 1` ends one byte later, so `seq` starts one byte later.
                let index = (seq - first - 1) as usize * 4;
                let end = u32::from_le_bytes(ends[index..index + 4].try_into().unwrap()) + 1;
                let mut edited = ends.clone();
                edited[index..index + 4].copy_from_slice(&end.to_le_bytes());
                conn.execute(
                    "UPDATE events SET ends = ?3 WHERE run = ?1 AND first_seq = ?2",
                    params![run, first as i64, edited],
                )
                .unwrap();
            },
            |conn, run| event_at(conn, run, inside_first_cycle(conn, run) - 1),
            EventsRefuse,
        ),
        case(
            "events-count",
            APPROVED,
            |conn, run| {
                let seq = inside_first_cycle(conn, run);
                let (first, _, _) = chunk_holding(conn, run, seq);
                conn.execute(
                    "UPDATE events SET count = count - 1 WHERE run = ?1 AND first_seq = ?2",
                    params![run, first as i64],
                )
                .unwrap();
            },
            |conn, run| {
                let (first, _, _) = chunk_holding(conn, run, inside_first_cycle(conn, run));
                event_at(conn, run, first)
            },
            LoadRefuses,
        ),
        case(
            "events-step",
            APPROVED,
            |conn, run| {
                let step = decisions(conn, run);
                conn.execute(
                    "UPDATE events SET step = step + 1 WHERE run = ?1 AND step = ?2",
                    params![run, step as i64],
                )
                .unwrap();
            },
            |conn, run| event_at(conn, run, first_seq_of(conn, run, decisions(conn, run))),
            LoadRefuses,
        ),
        case(
            "events-first-seq",
            APPROVED,
            |conn, run| {
                let step = decisions(conn, run);
                conn.execute(
                    "UPDATE events SET first_seq = first_seq + 1 WHERE run = ?1 AND step = ?2",
                    params![run, step as i64],
                )
                .unwrap();
            },
            |conn, run| event_at(conn, run, first_seq_of(conn, run, decisions(conn, run))),
            LoadRefuses,
        ),
    ]
}

/// The seq of the `fact_promoted` event of fact `fact`.
fn fact_promoted(conn: &Connection, run: &str, fact: &str) -> u64 {
    let mut rows = conn
        .prepare("SELECT first_seq, ends, bodies FROM events WHERE run = ?1 ORDER BY first_seq")
        .unwrap();
    let chunks: Vec<(i64, Vec<u8>, Vec<u8>)> = rows
        .query_map([run], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (first, ends, bodies) in chunks {
        let bodies = inflate(&bodies);
        let mut start = 0;
        for (index, end) in ends.chunks_exact(4).enumerate() {
            let end = u32::from_le_bytes(end.try_into().unwrap()) as usize;
            let body = String::from_utf8_lossy(&bodies[start..end]);
            if body.contains("\"fact_promoted\"") && body.contains(&format!("\"{fact}\"")) {
                return first as u64 + index as u64;
            }
            start = end;
        }
    }
    panic!("no fact_promoted event for {fact}");
}

/// Checks one case: `verify` names its place, and each reader refuses it (or, for what a
/// reader deliberately does not read, the reader that does).
fn check(dir: &TempDir, original: &Path, case: &Case) {
    let (copy, at) = tampered(dir, original, case);
    let journal = SqliteJournal::open(&copy).unwrap();
    let run = id(case.run);
    let name = case.name;
    let verified = journal.verify(&run);
    assert!(
        matches!(&verified, Ok(Verification::Broken { at: found, .. }) if *found == at),
        "{name}: expected {at}, verify gave {verified:?}"
    );
    let loaded = journal.load(&run).map(|_| ());
    let broken_at = |error: &JournalError| matches!(error, JournalError::Broken { at: found, .. } if *found == at);
    match case.readers {
        Readers::LoadRefuses => {
            assert!(
                matches!(&loaded, Err(error) if broken_at(error)),
                "{name}: load gave {loaded:?}"
            );
            let replayed = runtime().replay(&journal, &run);
            assert!(
                matches!(&replayed, Err(DurableError::Journal(error)) if broken_at(error)),
                "{name}: replay gave {replayed:?}"
            );
            let inspected = runtime().inspect(&journal, &run).map(|_| ());
            assert!(
                matches!(&inspected, Err(DurableError::Journal(error)) if broken_at(error)),
                "{name}: inspect gave {inspected:?}"
            );
        }
        Readers::EventsRefuse => {
            assert!(
                loaded.is_ok(),
                "{name}: load reads no event body: {loaded:?}"
            );
            let events = journal.events(&run, 0).map(|_| ());
            assert!(
                matches!(&events, Err(error) if broken_at(error)),
                "{name}: events gave {events:?}"
            );
        }
        Readers::ReplayDiverges => {
            assert!(loaded.is_ok(), "{name}: {loaded:?}");
            let replayed = runtime().replay(&journal, &run).unwrap();
            assert!(
                matches!(&replayed, ReplayReport::Diverged(divergence)
                    if divergence.seq == at.seq() && Some(divergence.step) == at.step()),
                "{name}: replay gave {replayed:?}"
            );
        }
        Readers::VerifyOnly => assert!(loaded.is_ok(), "{name}: {loaded:?}"),
    }
}

/// Checks every case whose name starts with `prefix`.
fn check_all(prefix: &str) {
    let dir = TempDir::new().unwrap();
    let original = record(&dir);
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|case| case.name.starts_with(prefix))
        .collect();
    assert!(!cases.is_empty(), "{prefix}");
    for case in &cases {
        check(&dir, &original, case);
    }
}

#[test]
fn edited_run_rows_are_named_at_the_header_or_the_runs_heads() {
    check_all("runs-");
}

#[test]
fn edited_step_rows_are_named_at_their_input_events_or_link() {
    check_all("steps-");
}

#[test]
fn edited_outcomes_are_named_at_their_cycles_input() {
    check_all("outcomes-");
}

#[test]
fn edited_event_rows_are_named_at_the_first_altered_event() {
    check_all("events-");
}

/// The attack: the assessment's provenance pointed at another existing fact, inside
/// the compressed outcome, with nothing else changed. `why` would report the forgery; every
/// reader refuses the run instead.
#[test]
fn a_derivation_pointed_at_another_existing_fact_is_named_at_its_cycle() {
    let dir = TempDir::new().unwrap();
    let original = record(&dir);
    let case = cases()
        .into_iter()
        .find(|case| case.name == "outcomes-derived-from-another-fact")
        .unwrap();
    let (copy, at) = tampered(&dir, &original, &case);
    assert_eq!(at, Place::Input { step: 2 }, "the assessment's cycle");
    let journal = SqliteJournal::open(&copy).unwrap();
    assert_eq!(
        journal.verify(&id(APPROVED)).unwrap(),
        Verification::Broken {
            at,
            reason: BreakReason::LinkMismatch
        }
    );
    // The other run in the same file is untouched and intact.
    assert!(matches!(
        journal.verify(&id(REJECTED)).unwrap(),
        Verification::Intact { .. }
    ));
    let error = journal.load(&id(APPROVED)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "run \"approved\" is broken at the input of step 2: the stored bytes do not hash to \
         the link stored for them (altered entry)"
    );
}

// Edits the journal names at the wrong place, or does not name at all (see the report of
// the change that added this file): each is checked on its own so the cases above stay
// meaningful.

/// `runs.root_hash` is one of the run's heads; every stored event chains intact.
#[test]
fn an_edited_root_hash_is_named_at_the_runs_heads() {
    check_all("root-hash");
}

/// `steps.kind` edited: the step's input no longer matches its kind, an input fault.
#[test]
fn a_step_filed_under_another_kind_is_named_at_its_input() {
    check_all("kind");
}

/// `outcomes.ends` edited so two outcomes' boundary moves (same total length): the stored
/// bytes no longer hash to the input link, which `verify` must say instead of failing with a
/// storage error.
#[test]
fn moved_outcome_offsets_are_named_at_their_input() {
    check_all("outcome-ends");
}

/// A later cycle's number edited, in its input or in its outcomes: the outcomes no longer
/// match that cycle, which is the place to name — not the first cycle, whose stored bytes
/// are intact.
#[test]
fn a_later_cycles_number_edited_is_named_at_that_cycle() {
    check_all("cycle-number-");
}
