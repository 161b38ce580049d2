//! The standalone verifier (`tools/verify-journal.py`, Python's standard library only) run on
//! journals these tests produce: on an intact journal it must agree with `verify` on every
//! run's heads, and on tampered copies it must name the same place as `verify`. This is what
//! lets an auditor check a journal without Converge.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use converge_core::{Actor, Decision, StopReason};
use converge_runtime::spec::JobSpec;
use converge_runtime::{JobRecord, Journal, RunId, Runtime, SqliteJournal, Verification};
use rusqlite::{Connection, params};
use tempfile::TempDir;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/verify-journal.py")
}

/// Runs the verifier: its exit code and its output lines.
fn python_verify(path: &Path, run: Option<&str>) -> (i32, Vec<String>) {
    let mut command = Command::new("python3");
    command.arg(script()).arg(path);
    if let Some(run) = run {
        command.arg(run);
    }
    let output = command.output().expect("python3 runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    (
        output.status.code().expect("exited"),
        stdout.lines().map(str::to_owned).collect(),
    )
}

fn runtime() -> Runtime {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/release-approval.yaml");
    let job = JobRecord {
        source: std::fs::read_to_string(&path).unwrap(),
        path: path.to_string_lossy().into_owned(),
    };
    JobSpec::parse(&job.source, &job.path)
        .unwrap()
        .spec
        .build()
        .unwrap()
        .with_job(job)
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(future)
}

const RUNS: [&str; 3] = ["approved", "rejected", "parked"];

/// A journal of three runs of the release example: approved by alice, rejected by bob with a
/// reason, and left awaiting approval.
fn record(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("journal.db");
    let mut journal = SqliteJournal::open(&path).unwrap();
    for run in RUNS {
        let id = RunId::new(run).unwrap();
        let parked = block_on(runtime().run_durable(&mut journal, &id)).unwrap();
        let StopReason::AwaitingApproval { pending } = &parked.stop_reason else {
            panic!("{run}: {:?}", parked.stop_reason);
        };
        let (proposal, hash) = (pending[0].proposal, pending[0].hash);
        let decision = match run {
            "approved" => Decision::approve(proposal, hash, Actor::human("alice").unwrap()),
            "rejected" => Decision::reject(proposal, hash, Actor::human("bob").unwrap(), "not yet"),
            _ => continue,
        };
        block_on(runtime().decide_durable(&mut journal, &id, vec![decision])).unwrap();
    }
    path
}

#[test]
fn an_intact_journal_verifies_with_the_same_heads_as_converge() {
    let dir = TempDir::new().unwrap();
    let path = record(&dir);
    let journal = SqliteJournal::open(&path).unwrap();
    let (code, lines) = python_verify(&path, None);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.len(), RUNS.len(), "{lines:?}");
    for (run, line) in RUNS.iter().zip(&lines) {
        let Verification::Intact {
            steps,
            events,
            root_hash,
            record_hash,
        } = journal.verify(&RunId::new(run).unwrap()).unwrap()
        else {
            panic!("{run} is intact");
        };
        assert_eq!(
            line,
            &format!(
                "{run}: intact — {steps} steps, {events} events, root hash {root_hash}, \
                 record hash {record_hash}"
            )
        );
    }
    let (code, lines) = python_verify(&path, Some("parked"));
    assert_eq!((code, lines.len()), (0, 1), "{lines:?}");
    assert!(lines[0].starts_with("parked: intact"), "{lines:?}");
}

#[test]
fn what_is_not_a_second_edition_journal_is_refused_with_exit_2() {
    let dir = TempDir::new().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database\n".repeat(100)).unwrap();
    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let first = dir.path().join("first-edition.db");
    Connection::open(&first)
        .unwrap()
        .execute_batch(
            "PRAGMA application_id = 1131312743; PRAGMA user_version = 1;
             CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO meta VALUES ('schema_version', '1');",
        )
        .unwrap();
    for path in [&text, &other, &first, &dir.path().join("missing.db")] {
        let before = std::fs::read(path).ok();
        let (code, lines) = python_verify(path, None);
        assert_eq!(code, 2, "{}: {lines:?}", path.display());
        assert_eq!(std::fs::read(path).ok(), before, "read-only");
    }
    let path = record(&dir);
    assert_eq!(python_verify(&path, Some("ghost")).0, 2);
    let usage = Command::new("python3").arg(script()).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// Tampered copies
// ---------------------------------------------------------------------------------------------

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

fn same_length(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = text
        .windows(from.len())
        .position(|window| window == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} is not stored here"));
    let mut edited = text.to_vec();
    edited[at..at + to.len()].copy_from_slice(to.as_bytes());
    edited
}

/// Edits every compressed blob of `table` (in `run`) that holds `from`, same length.
fn edit_compressed(conn: &Connection, table: &str, key: &str, run: &str, from: &str, to: &str) {
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare(&format!("SELECT {key}, bodies FROM {table} WHERE run = ?1"))
        .unwrap()
        .query_map([run], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (row, bodies) = rows
        .into_iter()
        .find(|(_, bodies)| String::from_utf8_lossy(&inflate(bodies)).contains(from))
        .unwrap_or_else(|| panic!("no {table} row holds {from:?}"));
    let edited = deflate(&same_length(&inflate(&bodies), from, to));
    conn.execute(
        &format!("UPDATE {table} SET bodies = ?3 WHERE run = ?1 AND {key} = ?2"),
        params![run, row, edited],
    )
    .unwrap();
}

/// An SQL-level edit of a copy of the journal.
type Edit = Box<dyn Fn(&Connection)>;

/// The tamper cases: a name, the run, and the edit.
fn cases() -> Vec<(&'static str, &'static str, Edit)> {
    vec![
        (
            "header-spec-text",
            "approved",
            Box::new(|conn| {
                let changed = conn
                    .execute(
                        "UPDATE runs SET header = replace(header, 'risk: high,', 'risk: low, ') \
                         WHERE id = 'approved' AND instr(header, 'risk: high,') > 0",
                        [],
                    )
                    .unwrap();
                assert_eq!(changed, 1);
            }),
        ),
        (
            "derived-from-another-fact",
            "approved",
            Box::new(|conn| {
                edit_compressed(
                    conn,
                    "outcomes",
                    "step",
                    "approved",
                    "{\"key\":\"changes\",\"id\":\"pr-1412\"}]",
                    "{\"key\":\"changes\",\"id\":\"pr-1420\"}]",
                )
            }),
        ),
        (
            "decision-actor",
            "approved",
            Box::new(|conn| {
                conn.execute(
                    "UPDATE steps SET input = replace(input, '\"alice\"', '\"alica\"') \
                     WHERE run = 'approved'",
                    [],
                )
                .unwrap();
            }),
        ),
        (
            "decision-reason",
            "rejected",
            Box::new(|conn| {
                conn.execute(
                    "UPDATE steps SET input = replace(input, 'not yet', 'not now') \
                     WHERE run = 'rejected'",
                    [],
                )
                .unwrap();
            }),
        ),
        (
            "event-body",
            "approved",
            Box::new(|conn| {
                edit_compressed(
                    conn,
                    "events",
                    "first_seq",
                    "approved",
                    "\"assessment-pr-1412\"",
                    "\"assessment-pr-1420\"",
                )
            }),
        ),
        (
            "step-link",
            "parked",
            Box::new(|conn| {
                conn.execute(
                    "UPDATE steps SET link = zeroblob(32) WHERE run = 'parked' AND step = 2",
                    [],
                )
                .unwrap();
            }),
        ),
        (
            "record-hash",
            "rejected",
            Box::new(|conn| {
                conn.execute(
                    "UPDATE runs SET record_hash = ?1 WHERE id = 'rejected'",
                    [&"0".repeat(64)],
                )
                .unwrap();
            }),
        ),
        (
            "step-kind",
            "approved",
            Box::new(|conn| {
                conn.execute(
                    "UPDATE steps SET kind = 'halt' WHERE run = 'approved' AND step = 1",
                    [],
                )
                .unwrap();
            }),
        ),
        (
            "root-hash",
            "approved",
            Box::new(|conn| {
                conn.execute(
                    "UPDATE runs SET root_hash = ?1 WHERE id = 'approved'",
                    [&"1".repeat(64)],
                )
                .unwrap();
            }),
        ),
        (
            "later-cycle-number",
            "approved",
            Box::new(|conn| {
                let changed = conn
                    .execute(
                        "UPDATE outcomes SET cycle = cycle + 7 WHERE run = 'approved' \
                         AND step = (SELECT max(step) FROM outcomes WHERE run = 'approved')",
                        [],
                    )
                    .unwrap();
                assert!(changed > 0);
            }),
        ),
        (
            "status",
            "parked",
            Box::new(|conn| {
                conn.execute("UPDATE runs SET status = 'running' WHERE id = 'parked'", [])
                    .unwrap();
            }),
        ),
    ]
}

#[test]
fn tampered_copies_are_named_at_the_same_place_as_converge() {
    let dir = TempDir::new().unwrap();
    let original = record(&dir);
    for (name, run, edit) in cases() {
        let copy = dir.path().join(format!("{name}.db"));
        std::fs::copy(&original, &copy).unwrap();
        let conn = Connection::open(&copy).unwrap();
        conn.execute_batch(
            "DROP TRIGGER steps_append_only_update; DROP TRIGGER events_append_only_update;
             DROP TRIGGER outcomes_append_only_update;",
        )
        .unwrap();
        edit(&conn);
        drop(conn);

        let journal = SqliteJournal::open(&copy).unwrap();
        let Verification::Broken { at, reason } =
            journal.verify(&RunId::new(run).unwrap()).unwrap()
        else {
            panic!("{name}: the edit went unnoticed");
        };
        let (code, lines) = python_verify(&copy, None);
        assert_eq!(code, 1, "{name}: {lines:?}");
        let line = lines
            .iter()
            .find(|line| line.starts_with(&format!("{run}: ")))
            .unwrap_or_else(|| panic!("{name}: {lines:?}"));
        assert!(
            line.starts_with(&format!("{run}: BROKEN at {at}: ")),
            "{name}: Converge says {at} ({reason}), the verifier says {line:?}"
        );
        // The other runs in the file are untouched.
        let broken = lines.iter().filter(|line| line.contains("BROKEN")).count();
        assert_eq!(broken, 1, "{name}: {lines:?}");
    }
}
