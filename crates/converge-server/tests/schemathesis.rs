//! Property-based testing of the live API against its own document: schemathesis (pinned;
//! `scripts/test` installs it in the tools' virtual environment) runs every check, the
//! stateful phase following the document's links included, with a fixed seed and a bounded
//! number of cases per operation, against a server on `127.0.0.1`. Its hooks
//! (`tests/schemathesis/hooks.py`) submit real job specs, so the operations on a run meet
//! real runs. Any failure (a 5xx, a status or body the document does not describe, an invalid
//! request accepted or a valid one refused) fails this test with schemathesis' report.

mod common;

use std::path::Path;
use std::process::Command;

use common::{RELEASE_SPEC_PATH, TestResult, TestServer};

/// Cases per operation and phase: enough to find what the checks find, bounded so the
/// whole run takes a few minutes on two cores.
const EXAMPLES_PER_OPERATION: &str = "25";

/// The seed, so a failure here reproduces.
const SEED: &str = "20261127";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_api_conforms_to_its_document() -> TestResult {
    let server = TestServer::start().await?;
    let python = std::env::var("CONVERGE_PYTHON_TOOLS").unwrap_or_else(|_| "python3".to_owned());
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/hooks.py");
    let work = tempfile::tempdir()?;
    let mut command = Command::new(&python);
    command
        .args(["-m", "schemathesis.cli", "run"])
        .arg(server.url("/openapi.json"))
        .args(["--url", &server.base])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", EXAMPLES_PER_OPERATION])
        .args(["--seed", SEED])
        .args(["--workers", "2"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "30"])
        .arg("--no-color")
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .env("CONVERGE_JOB_SPEC", RELEASE_SPEC_PATH)
        .env("CONVERGE_SUBMITTER_TOKEN", &server.root)
        .env("CONVERGE_APPROVER_TOKEN", &server.alice)
        .current_dir(work.path());
    let ran = tokio::task::spawn_blocking(move || command.output()).await??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(ran.status.success(), "schemathesis found failures:\n{said}");
    // It ran: every operation was tested, and the stateful phase followed links.
    assert!(said.contains("18 selected"), "{said}");
    assert!(said.contains("Stateful"), "{said}");
    // Runs were submitted with the hooks' specs.
    let (status, runs) = server.get("/v1/runs?limit=1000", &server.root).await?;
    assert_eq!(status, 200, "{runs}");
    let runs = runs["runs"].as_array().cloned().unwrap_or_default();
    assert!(
        runs.len() >= 5,
        "only {} runs were submitted:\n{said}",
        runs.len()
    );
    // Decisions reached the server with the approver's token, each recorded.
    let mut by_approver = 0;
    for run in &runs {
        let id = run["id"].as_str().unwrap_or_default();
        let (_, decisions) = server
            .get(&format!("/v1/runs/{id}/decisions"), &server.root)
            .await?;
        let decisions = decisions["decisions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        by_approver += decisions
            .iter()
            .filter(|decision| decision["actor"] == "alice")
            .count();
    }
    assert!(
        by_approver > 0,
        "no decision came from the approver:\n{said}"
    );
    Ok(())
}
