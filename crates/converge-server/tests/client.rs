//! A client generated from the live document works: openapi-python-client (pinned;
//! `scripts/test` installs it in the tools' virtual environment) generates a Python package
//! from `/openapi.json` of a server on `127.0.0.1`, and the shipped first integration
//! (`examples/api-client/first_integration.py`) runs on it: submit the release gate, follow
//! its events, approve its pending proposal with a second token, verify and replay the run.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{RELEASE_SPEC_PATH, TestResult, TestServer};

/// The operations the generated client must have, by the document's operation ids (one
/// module each, under their tag).
const OPERATIONS: [&str; 18] = [
    "auth/whoami",
    "runs/submit",
    "runs/list_",
    "runs/get_run",
    "runs/cancel",
    "runs/resume",
    "runs/retry",
    "facts/facts",
    "facts/fact",
    "facts/rejections",
    "approvals/approvals",
    "approvals/approve",
    "approvals/reject",
    "approvals/decisions",
    "events/events",
    "audit/replay",
    "audit/verify",
    "audit/audit",
];

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_runs_the_first_integration() -> TestResult {
    let server = TestServer::start().await?;
    let python = std::env::var("CONVERGE_PYTHON_TOOLS").unwrap_or_else(|_| "python3".to_owned());
    let work = tempfile::tempdir()?;
    // No formatting of the generated code (it would run ruff).
    let config = work.path().join("generator.yaml");
    std::fs::write(&config, "post_hooks: []\n")?;
    let package = work.path().join("converge_client");

    let mut generate = Command::new(&python);
    generate
        .args(["-m", "openapi_python_client", "generate", "--meta", "none"])
        .args(["--url", &server.url("/openapi.json")])
        .arg("--output-path")
        .arg(&package)
        .arg("--config")
        .arg(&config);
    let generated = tokio::task::spawn_blocking(move || generate.output()).await??;
    let generator_said = said(&generated);
    assert!(generated.status.success(), "{generator_said}");
    for operation in OPERATIONS {
        let module = package.join(format!("api/{operation}.py"));
        assert!(
            module.exists(),
            "no {operation} in the client:\n{generator_said}"
        );
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/api-client/first_integration.py");
    let mut integrate = Command::new(&python);
    integrate
        .arg(script)
        .arg(RELEASE_SPEC_PATH)
        .env("PYTHONPATH", work.path())
        .env("CONVERGE_URL", &server.base)
        .env("CONVERGE_TOKEN", &server.sam)
        .env("CONVERGE_APPROVER_TOKEN", &server.alice);
    let ran = tokio::task::spawn_blocking(move || integrate.output()).await??;
    let script_said = said(&ran);
    assert!(ran.status.success(), "{script_said}");
    assert!(script_said.contains("approval_requested"), "{script_said}");
    assert!(
        script_said.contains("is stopped: converged"),
        "{script_said}"
    );
    assert!(script_said.contains("verify: intact=True"), "{script_said}");
    assert!(script_said.contains("replay: identical"), "{script_said}");

    // What the script did is what the server recorded: sam's run, approved by alice.
    let (status, runs) = server.get("/v1/runs", &server.root).await?;
    assert_eq!(status, 200, "{runs}");
    let run = &runs["runs"][0];
    assert_eq!(run["submitted_by"], "sam", "{runs}");
    let id = run["id"].as_str().unwrap_or_default();
    let (_, decisions) = server
        .get(&format!("/v1/runs/{id}/decisions"), &server.root)
        .await?;
    let decision = &decisions["decisions"][0];
    assert_eq!(decision["actor"], "alice", "{decisions}");
    assert_eq!(decision["outcome"], "accepted", "{decisions}");
    Ok(())
}
