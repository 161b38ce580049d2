//! The journal's second edition through the real binary: one driver per run (a `resume` of a
//! run another live process drives is refused at once and executes nothing), and an answer
//! too deep for the journal to record is the agent's recorded failure while the run stays
//! approvable.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{converge, text};
use serde_json::Value;
use tempfile::TempDir;

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", text(&output.stdout)))
}

/// A job whose command agent notes each execution in `executions` and then works a while.
const SLOW_JOB: &str = r#"version: 1
intent:
  objective: Count to two slowly
  budgets: {cycles: 10}
agents:
  - name: first
    kind: rule
    writes: [signals]
    when: "true"
    propose: {key: signals, id: one, content: 1}
  - name: slow
    kind: command
    reads: [signals]
    writes: [hypotheses]
    command: [sh, -c, "echo ran >> executions; sleep 3; cat > /dev/null; echo '{\"proposals\":[{\"key\":\"hypotheses\",\"id\":\"two\",\"content\":2}]}'"]
    timeout_ms: 20000
"#;

fn committed_steps(db: &Path, run: &str) -> u64 {
    let runs = converge(db, &["runs", "--json"]);
    serde_json::from_slice::<Value>(&runs.stdout)
        .ok()
        .and_then(|runs| {
            runs.as_array()?
                .iter()
                .find(|row| row["run"] == run)?
                .get("steps")?
                .as_u64()
        })
        .unwrap_or(0)
}

#[test]
fn a_resume_of_a_run_another_process_drives_is_refused_at_once_and_executes_nothing() {
    let dir = TempDir::new().unwrap();
    let spec = dir.path().join("slow.yaml");
    std::fs::write(&spec, SLOW_JOB).unwrap();
    let db = dir.path().join("journal.db");
    let driver = Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("--db")
        .arg(&db)
        .args(["run", &spec.to_string_lossy(), "--id", "slow-1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Start and the first cycle are committed; the slow agent works in cycle 2.
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_steps(&db, "slow-1") < 2 {
        assert!(Instant::now() < deadline, "the run never reached cycle 2");
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    let resume = converge(&db, &["resume", "slow-1"]);
    let waited = started.elapsed();
    assert_ne!(resume.status.code(), Some(0), "a second driver was let in");
    let message = text(&resume.stderr);
    assert!(
        message.contains("is being driven by converge run (pid ")
            && message.contains(&format!("pid {} ", driver.id())),
        "the refusal names the holder: {message}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "refused at once, not after waiting: {waited:?}"
    );
    for refused in [
        converge(&db, &["approve", "slow-1", "c2.a1.p0", "--as", "alice"]),
        converge(
            &db,
            &[
                "reject", "slow-1", "c2.a1.p0", "--as", "alice", "--reason", "no",
            ],
        ),
    ] {
        assert_ne!(refused.status.code(), Some(0));
        let message = text(&refused.stderr);
        assert!(
            message.contains("is being driven by converge run (pid "),
            "a decision names the holder too: {message}"
        );
    }

    let output = driver.wait_with_output().unwrap();
    assert!(output.status.success(), "the first driver finishes its run");
    assert_eq!(json(&output)["converged"], true);
    let executions = std::fs::read_to_string(dir.path().join("executions")).unwrap();
    assert_eq!(
        executions.lines().count(),
        1,
        "the slow agent ran exactly once"
    );
    let verify = converge(&db, &["verify", "slow-1", "--json"]);
    assert_eq!(json(&verify)["intact"], true, "{}", text(&verify.stdout));
}

/// An agent whose answer nests 120 lists deep, beside a release that needs approval.
const DEEP_JOB: &str = r#"version: 1
intent:
  objective: Ship despite a broken scorer
  budgets: {cycles: 10}
keys:
  - name: releases
    approval: true
agents:
  - name: deep
    kind: command
    writes: [evaluations]
    command: [python3, -c, "import json,sys; sys.stdin.read(); v=0\nfor _ in range(120): v=[v]\nprint(json.dumps({'proposals':[{'key':'evaluations','id':'deep','content':v}]}))"]
  - name: propose-release
    kind: rule
    writes: [releases]
    when: "true"
    propose: {key: releases, id: release-1, content: {ship: true}}
"#;

#[test]
fn an_answer_too_deep_to_record_is_a_failure_and_the_run_stays_approvable() {
    let dir = TempDir::new().unwrap();
    let spec = dir.path().join("deep.yaml");
    std::fs::write(&spec, DEEP_JOB).unwrap();
    let db = dir.path().join("journal.db");
    let run = converge(
        &db,
        &["run", &spec.to_string_lossy(), "--id", "deep-1", "--json"],
    );
    let summary = json(&run);
    assert_eq!(
        summary["stop_reason"]["stop"], "awaiting_approval",
        "{summary}"
    );

    let seen = converge(&db, &["inspect", "deep-1", "--json"]);
    assert!(seen.status.success(), "{}", text(&seen.stderr));
    let seen = json(&seen);
    let failures = seen["failures"].to_string();
    assert!(
        failures.contains("deep") && failures.contains("nests deeper than the 64 levels"),
        "the failure names the agent and the limit: {failures}"
    );
    let pending = seen["pending"][0]["proposal"].as_str().unwrap().to_owned();

    let approve = converge(
        &db,
        &["approve", "deep-1", &pending, "--as", "alice", "--json"],
    );
    assert_eq!(
        approve.status.code(),
        Some(7),
        "converged, with the deep agent's failure: {}",
        text(&approve.stderr)
    );
    let verify = converge(&db, &["verify", "deep-1", "--json"]);
    assert_eq!(json(&verify)["intact"], true, "{}", text(&verify.stdout));
    let replay = converge(&db, &["replay", "deep-1", "--json"]);
    assert_eq!(
        json(&replay)["replay"],
        "identical",
        "{}",
        text(&replay.stdout)
    );
}
