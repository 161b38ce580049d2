//! Continuing a stopped run, through the real binary: a command agent fails until a marker
//! file exists, the run stops with it failed, `converge retry` re-executes only that agent
//! once the marker is there, and the run finishes; refusals (an agent that did not fail, a run
//! another process holds) name the cause and run nothing; `replay` and `verify` reproduce the
//! retry without running anything; an edited retry record is caught by `verify`. A second test does
//! the same with an `llm` agent whose scripted model server first refuses, then answers.

mod common;

use std::path::Path;
use std::process::Output;

use converge_llm::scripted::{Reply, ScriptedServer, Wire};
use serde_json::{Value, json};
use tempfile::TempDir;

use common::{converge, text};

/// `score` fails until `ready` exists; `steady` always works. Each counts its executions
/// in a file of its own, so the test knows what ran.
const SPEC: &str = r#"version: 1
intent:
  objective: Score the alerts once the feed is ready
seeds:
  - {key: signals, id: disk, content: "disk 91% full"}
agents:
  - name: score
    kind: command
    reads: [signals]
    writes: [evaluations]
    command: [sh, score.sh]
    timeout_ms: 10000
  - name: steady
    kind: command
    reads: [signals]
    writes: [hypotheses]
    command: [sh, steady.sh]
    timeout_ms: 10000
"#;

const SCORE: &str = r#"echo run >> score.calls
cat > /dev/null
if [ ! -f ready ]; then
  echo "the alert feed is not ready" >&2
  exit 3
fi
echo '{"proposals":[{"key":"evaluations","id":"disk-p2","content":"P2","confidence":0.9}]}'
"#;

const STEADY: &str = r#"echo run >> steady.calls
cat > /dev/null
echo '{"proposals":[{"key":"hypotheses","id":"disk-growth","content":"logs grow","confidence":0.5}]}'
"#;

fn job(dir: &Path) -> String {
    std::fs::write(dir.join("score.sh"), SCORE).unwrap();
    std::fs::write(dir.join("steady.sh"), STEADY).unwrap();
    let spec = dir.join("alerts.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    spec.to_string_lossy().into_owned()
}

/// How many times the agent whose counter is `file` executed.
fn calls(dir: &Path, file: &str) -> usize {
    std::fs::read_to_string(dir.join(file))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// What a command printed, required to exit with `code` and to read as words.
fn said(output: &Output, code: i32) -> String {
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(code), "{out}{err}");
    for debug in ["Some(", "None", "Ok(", "Err(", " { ", "panicked", "\\n"] {
        assert!(!out.contains(debug), "{debug:?} in: {out}");
        assert!(!err.contains(debug), "{debug:?} in: {err}");
    }
    format!("{out}{err}")
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", text(&output.stdout)))
}

#[test]
fn a_retry_re_executes_only_the_failed_agent_and_replay_reproduces_it_without_running_it() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec = job(dir.path());

    let run = said(&converge(&db, &["run", &spec, "--id", "alerts-1"]), 7);
    for expected in [
        "converged, but 1 agent failed",
        "failed: agent score in cycle 2:",
        "the alert feed is not ready",
        "failed agents: score; once the cause is fixed, run them again with: converge retry \
         alerts-1",
    ] {
        assert!(run.contains(expected), "{expected:?} in: {run}");
    }
    assert_eq!(
        (
            calls(dir.path(), "score.calls"),
            calls(dir.path(), "steady.calls")
        ),
        (1, 1)
    );

    // `resume` has nothing to do, and says what will.
    let resume = said(&converge(&db, &["resume", "alerts-1"]), 1);
    assert!(
        resume.contains("run alerts-1 has already stopped (converged)")
            && resume.contains("failed agents (score) again with `converge retry alerts-1"),
        "{resume}"
    );

    // Refusals name the cause and the agents that did fail, and run nothing.
    for (agent, expected) in [
        ("steady", "agent \"steady\" has not failed (failed: score)"),
        (
            "scorer",
            "the run has no agent named \"scorer\" (failed: score)",
        ),
    ] {
        let refused = converge(
            &db,
            &[
                "retry", "alerts-1", "--agent", agent, "--as", "alice", "--reason", "try",
            ],
        );
        let words = said(&refused, 1);
        assert!(words.contains(expected), "{expected:?} in: {words}");
    }
    assert_eq!(calls(dir.path(), "score.calls"), 1);

    // A run another live process holds is refused, naming the holder; nothing runs.
    let connection = rusqlite::Connection::open(&db).unwrap();
    let lease = "UPDATE runs SET lease_token = 'held', lease_holder = 'converge worker', \
                 lease_host = 'another-machine', lease_pid = 4242, \
                 lease_expires_ms = 32503680000000 WHERE id = 'alerts-1'";
    connection.execute_batch(lease).unwrap();
    let busy = said(
        &converge(
            &db,
            &["retry", "alerts-1", "--as", "alice", "--reason", "try"],
        ),
        1,
    );
    assert!(
        busy.contains("converge worker (pid 4242 on another-machine)"),
        "{busy}"
    );
    let free = "UPDATE runs SET lease_token = NULL, lease_holder = NULL, lease_host = NULL, \
                lease_pid = NULL, lease_expires_ms = NULL WHERE id = 'alerts-1'";
    connection.execute_batch(free).unwrap();
    drop(connection);
    assert_eq!(calls(dir.path(), "score.calls"), 1);

    std::fs::write(dir.path().join("ready"), "").unwrap();
    let retried = said(
        &converge(
            &db,
            &[
                "retry",
                "alerts-1",
                "--as",
                "alice",
                "--reason",
                "the feed is ready",
            ],
        ),
        0,
    );
    assert!(
        retried.contains("retried agent score: no longer failing")
            && retried.contains("run alerts-1: converged")
            && retried.contains("failed: agent score in cycle 2 (retried since):")
            && !retried.contains("converge retry alerts-1"),
        "{retried}"
    );
    assert_eq!(
        (
            calls(dir.path(), "score.calls"),
            calls(dir.path(), "steady.calls")
        ),
        (2, 1),
        "only the failed agent ran again"
    );

    // A finished run has nothing left to retry.
    let again = said(
        &converge(
            &db,
            &["retry", "alerts-1", "--as", "alice", "--reason", "again"],
        ),
        1,
    );
    assert!(
        again.contains("no agent of the run failed; there is nothing to retry"),
        "{again}"
    );

    let inspect = said(&converge(&db, &["inspect", "alerts-1"]), 0);
    assert!(
        inspect.contains("retries (1):")
            && inspect.contains("after cycle 2, alice retried score: the feed is ready")
            && inspect.contains("disk-p2 = \"P2\""),
        "{inspect}"
    );
    let seen = json_of(&converge(&db, &["inspect", "alerts-1", "--json"]));
    assert_eq!(
        seen["retries"],
        json!([{"step": 4, "after_cycle": 2, "retry": {
            "actor": {"name": "alice", "kind": "human"},
            "agents": ["score"],
            "reason": "the feed is ready"
        }}])
    );
    let why = said(
        &converge(&db, &["why", "alerts-1", "evaluations/disk-p2"]),
        0,
    );
    assert!(
        why.contains("its agent ran again after failing: after cycle 2, alice retried score"),
        "{why}"
    );
    // The JSON form (the API's) names the same retry; a fact whose agent never failed, none.
    let why = json_of(&converge(
        &db,
        &["why", "alerts-1", "evaluations/disk-p2", "--json"],
    ));
    assert_eq!(why["retried"], seen["retries"][0], "{why}");
    let steady = json_of(&converge(
        &db,
        &["why", "alerts-1", "hypotheses/disk-growth", "--json"],
    ));
    assert_eq!(steady["retried"], Value::Null, "{steady}");

    // Replay and verify reproduce the retry from the journal; nothing runs.
    std::fs::remove_file(dir.path().join("ready")).unwrap();
    let replay = said(&converge(&db, &["replay", "alerts-1"]), 0);
    assert!(replay.contains("identical"), "{replay}");
    let verify = said(&converge(&db, &["verify", "alerts-1"]), 0);
    assert!(verify.contains("intact"), "{verify}");
    assert_eq!(
        (
            calls(dir.path(), "score.calls"),
            calls(dir.path(), "steady.calls")
        ),
        (2, 1),
        "replay and verify executed nothing"
    );

    // Whoever edits the recorded reason is found out.
    let connection = rusqlite::Connection::open(&db).unwrap();
    connection
        .execute_batch(
            "DROP TRIGGER steps_append_only_update;
             UPDATE steps SET input = replace(input, 'the feed is ready', 'the feed is READY')
              WHERE run = 'alerts-1' AND kind = 'decisions';",
        )
        .unwrap();
    drop(connection);
    let broken = said(&converge(&db, &["verify", "alerts-1"]), 6);
    assert!(
        broken.contains("BROKEN at the input of step 4"),
        "the edited retry is named: {broken}"
    );
    let refused = converge(&db, &["replay", "alerts-1"]);
    assert_ne!(
        refused.status.code(),
        Some(0),
        "replay refuses an edited retry"
    );
}

/// A job whose one `llm` agent explains the seeded signal, with no retry policy: a refused
/// call fails the agent at once.
fn llm_job(dir: &Path, base_url: &str) -> String {
    let spec = format!(
        r#"version: 1
intent:
  objective: Explain the churn signal
seeds:
  - {{key: signals, id: churn, content: "churn is up 4% in the north region"}}
agents:
  - name: explainer
    kind: llm
    provider: ollama
    base_url: "{base_url}"
    model: small-model
    reads: [signals]
    writes: [hypotheses]
    prompt: "Explain this signal: {{{{ facts.signals | tojson }}}}"
"#
    );
    let path = dir.join("churn.yaml");
    std::fs::write(&path, spec).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn a_run_whose_model_server_refused_goes_on_once_it_answers_and_replays_without_it() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let server = tokio.block_on(ScriptedServer::start(Wire::OpenAi)).unwrap();
    server.push(Reply::error(503, "unavailable", "the model is loading"));
    let spec = llm_job(dir.path(), &server.base_url());

    let run = said(&converge(&db, &["run", &spec, "--id", "churn-1"]), 7);
    assert!(run.contains("failed: agent explainer in cycle 2:"), "{run}");
    assert_eq!(server.request_count(), 1);

    let answer = json!({"proposals": [{
        "key": "hypotheses", "id": "north-churn", "confidence": 0.7,
        "content": "a competitor entered the north"
    }]});
    server.push(Reply::answer(answer.to_string(), 40, 12));
    let retried = converge(
        &db,
        &[
            "retry",
            "churn-1",
            "--agent",
            "explainer",
            "--as",
            "alice",
            "--reason",
            "the model is loaded",
            "--json",
        ],
    );
    assert_eq!(retried.status.code(), Some(0), "{}", text(&retried.stderr));
    let summary = json_of(&retried);
    assert_eq!(summary["converged"], true);
    assert_eq!(summary["stop_reason"], json!({"stop": "converged"}));
    assert_eq!(server.request_count(), 2, "the model was called once more");

    // The server is gone: replay and why use only what the journal recorded.
    drop(server);
    drop(tokio);
    let replay = said(&converge(&db, &["replay", "churn-1"]), 0);
    assert!(replay.contains("identical"), "{replay}");
    let why = said(
        &converge(&db, &["why", "churn-1", "hypotheses/north-churn"]),
        0,
    );
    assert!(
        why.contains("alice retried explainer: the model is loaded"),
        "{why}"
    );
}
