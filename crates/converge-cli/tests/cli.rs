//! The `converge` binary end to end: the README's path for a new user (run an example,
//! approve its pending proposal, see why a fact is true, replay, verify, export), resuming a
//! run whose process was killed, refusals, and the help text — each through the real binary,
//! a real journal file and real child processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use converge_llm::scripted::{Reply, ScriptedServer, Wire};
use serde_json::Value;
use tempfile::TempDir;

/// The workspace's `examples/` directory.
fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `converge --db <db> <args>`. Every message it prints on stderr must read as words: no
/// Rust debug formatting (see [`assert_plain_words`]).
fn converge(db: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("CONVERGE_DB")
        .output()
        .expect("the converge binary runs");
    assert_plain_words(&String::from_utf8_lossy(&output.stderr));
    output
}

/// Requires `text` (what `converge` printed for people) free of Rust debug formatting —
/// `Some(…)`, `None`, `Ok(…)`, `Err(…)`, `Struct { field: … }` — and of panics.
fn assert_plain_words(text: &str) {
    for debug in [
        "Some(",
        "None",
        "Ok(",
        "Err(",
        " { ",
        "panicked",
        "RUST_BACKTRACE",
    ] {
        assert!(!text.contains(debug), "{debug:?} in: {text}");
    }
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What `converge` printed on stderr, checked by [`assert_plain_words`].
fn stderr(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_plain_words(&text);
    text
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", stdout(output)))
}

fn example(name: &str) -> String {
    examples().join(name).to_string_lossy().into_owned()
}

#[test]
fn a_new_user_runs_an_example_approves_it_and_sees_why_a_fact_is_true() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");

    // Run: the release waits for a human.
    let run = converge(&db, &["run", &example("release-approval.yaml")]);
    assert_eq!(code(&run), 3, "{}{}", stdout(&run), stderr(&run));
    assert!(stdout(&run).contains("run release-approval-1: awaiting approval"));
    assert!(
        stderr(&run).contains("cycle 1:"),
        "plain progress lines off a terminal"
    );

    // Inspect (JSON): the pending proposal, and no release fact yet.
    let seen = json(&converge(&db, &["inspect", "release-approval-1", "--json"]));
    assert_eq!(seen["status"]["status"], "awaiting_approval");
    let pending = &seen["pending"][0];
    assert_eq!(pending["key"], "releases");
    assert_eq!(pending["id"], "release-2-4-0");
    assert_eq!(pending["content"]["ship"], true);
    let proposal = pending["proposal"].as_str().unwrap().to_owned();
    assert!(
        seen["facts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|fact| fact["key"] != "releases")
    );

    // Approve: the run goes on and converges, in this new process.
    let approve = converge(
        &db,
        &["approve", "release-approval-1", &proposal, "--as", "alice"],
    );
    assert_eq!(
        code(&approve),
        0,
        "{}{}",
        stdout(&approve),
        stderr(&approve)
    );
    assert!(stdout(&approve).contains("converged"));
    // An approval is single use.
    let again = converge(
        &db,
        &["approve", "release-approval-1", &proposal, "--as", "alice"],
    );
    assert_eq!(code(&again), 1);
    assert!(
        stderr(&again).contains("not awaiting approval"),
        "{}",
        stderr(&again)
    );

    // Why: the agent, the validations, the approver.
    let why = converge(&db, &["why", "release-approval-1", "release-2-4-0"]);
    assert_eq!(code(&why), 0, "{}", stderr(&why));
    let text = stdout(&why);
    assert!(text.starts_with("releases/release-2-4-0 = "), "{text}");
    assert!(
        text.contains("proposed by agent `propose-release`"),
        "{text}"
    );
    assert!(text.contains("json-schema"), "{text}");
    assert!(text.contains("approved by alice (human)"), "{text}");
    // The facts the rule read are its derivations, each with its own provenance.
    assert!(text.contains("└─ derived from:"), "{text}");
    for source in [
        "changes/pr-1412",
        "ci/unit",
        "evaluations/assessment-pr-1412",
    ] {
        assert!(text.contains(source), "{source} in {text}");
    }
    assert!(
        text.contains("proposed by agent `assess-high-risk`"),
        "{text}"
    );
    let why = json(&converge(
        &db,
        &[
            "why",
            "release-approval-1",
            "releases/release-2-4-0",
            "--json",
        ],
    ));
    assert_eq!(why["approver"]["name"], "alice");
    assert_eq!(why["agent"], "propose-release");
    assert_eq!(why["proposal"], proposal.as_str());

    // The rest of the audit: list, replay, verify, export.
    let runs = json(&converge(&db, &["runs", "--json"]));
    assert_eq!(runs[0]["run"], "release-approval-1");
    assert_eq!(runs[0]["status"]["status"], "stopped");
    let root = runs[0]["root_hash"].as_str().unwrap().to_owned();
    let replay = converge(&db, &["replay", "release-approval-1", "--json"]);
    assert_eq!(code(&replay), 0, "{}", stdout(&replay));
    assert_eq!(json(&replay)["replay"], "identical");
    assert_eq!(json(&replay)["root_hash"], root.as_str());
    let verify = converge(&db, &["verify", "release-approval-1"]);
    assert_eq!(code(&verify), 0);
    assert!(stdout(&verify).contains("intact"));
    let export = json(&converge(
        &db,
        &["export", "release-approval-1", "--format", "json"],
    ));
    assert_eq!(export["root_hash"], root.as_str());
    assert!(
        export["facts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|fact| fact["key"] == "releases" && fact["approver"]["name"] == "alice")
    );
    let dot = stdout(&converge(
        &db,
        &["export", "release-approval-1", "--format", "dot"],
    ));
    assert!(dot.starts_with("digraph \"release-approval-1\" {"), "{dot}");
    assert!(dot.contains("\"releases/release-2-4-0\""), "{dot}");
    assert!(dot.contains("approved by alice"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
}

#[test]
fn a_rejection_needs_a_reason_and_is_recorded() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let run = converge(&db, &["run", &example("release-approval.yaml"), "--json"]);
    assert_eq!(code(&run), 3);
    let proposal = json(&run)["pending"][0]["proposal"]
        .as_str()
        .unwrap()
        .to_owned();
    let run_id = json(&run)["run"].as_str().unwrap().to_owned();

    let bare = converge(&db, &["reject", &run_id, &proposal, "--as", "bob"]);
    assert_eq!(code(&bare), 1);
    assert!(stderr(&bare).contains("--reason"), "{}", stderr(&bare));
    let unknown = converge(&db, &["approve", &run_id, "c9.a9.p9", "--as", "bob"]);
    assert_eq!(code(&unknown), 1);
    assert!(
        stderr(&unknown).contains("not pending"),
        "{}",
        stderr(&unknown)
    );

    let reject = converge(
        &db,
        &[
            "reject",
            &run_id,
            &proposal,
            "--as",
            "bob",
            "--reason",
            "no rollback drill yet",
        ],
    );
    assert_ne!(code(&reject), 3, "{}{}", stdout(&reject), stderr(&reject));
    let seen = json(&converge(&db, &["inspect", &run_id, "--json"]));
    let rejection = seen["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rejection| rejection["proposal"] == proposal.as_str())
        .expect("the rejection is listed");
    assert!(
        rejection.to_string().contains("no rollback drill yet"),
        "{rejection}"
    );
    assert!(
        seen["facts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|fact| fact["key"] != "releases")
    );
}

/// A job whose second agent takes a while, so a run can be killed between its cycles.
const SLOW_JOB: &str = r#"version: 1
intent:
  objective: Count to three slowly
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
    command: [sh, -c, "sleep 2; cat > /dev/null; echo '{\"proposals\":[{\"key\":\"hypotheses\",\"id\":\"two\",\"content\":2}]}'"]
    timeout_ms: 20000
"#;

/// Polls `converge runs` until `run` has committed `steps` steps; `log` is the running
/// process's stderr, shown if it never gets there.
fn wait_for_steps(db: &Path, run: &str, steps: u64, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = converge(db, &["runs", "--json"]);
        let committed = serde_json::from_slice::<Value>(&runs.stdout)
            .ok()
            .and_then(|runs| {
                runs.as_array()?
                    .iter()
                    .find(|row| row["run"] == run)?
                    .get("steps")?
                    .as_u64()
            })
            .unwrap_or(0);
        if committed >= steps {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the run never reached step {steps}; `converge runs`: {}{}; the run's stderr: {}",
            stdout(&runs),
            stderr(&runs),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_run_resumes_to_the_same_root_hash_as_an_uninterrupted_one() {
    let dir = TempDir::new().unwrap();
    let spec = dir.path().join("slow.yaml");
    std::fs::write(&spec, SLOW_JOB).unwrap();
    let spec = spec.to_string_lossy().into_owned();

    let reference_db = dir.path().join("reference.db");
    let reference = converge(&reference_db, &["run", &spec, "--json"]);
    assert_eq!(
        code(&reference),
        0,
        "{}{}",
        stdout(&reference),
        stderr(&reference)
    );
    let expected = json(&reference)["root_hash"].clone();

    let db = dir.path().join("journal.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("--db")
        .arg(&db)
        .args(["run", &spec, "--id", "slow-1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("run.log")).unwrap())
        .spawn()
        .unwrap();
    // Start and the first cycle are committed; the slow agent is sleeping in cycle 2.
    wait_for_steps(&db, "slow-1", 2, &dir.path().join("run.log"));
    child.kill().unwrap();
    child.wait().unwrap();
    let seen = json(&converge(&db, &["inspect", "slow-1", "--json"]));
    assert_eq!(seen["stopped"], false, "{seen}");

    let resume = converge(&db, &["resume", "slow-1", "--json"]);
    assert_eq!(code(&resume), 0, "{}{}", stdout(&resume), stderr(&resume));
    assert_eq!(json(&resume)["root_hash"], expected);
    assert_eq!(json(&resume)["converged"], true);
    let verify = converge(&db, &["verify", "slow-1", "--json"]);
    assert_eq!(json(&verify)["intact"], true);
    assert_eq!(json(&verify)["root_hash"], expected);
    // A finished run does not resume.
    let again = converge(&db, &["resume", "slow-1"]);
    assert_eq!(code(&again), 1);
    assert!(
        stderr(&again).contains("already stopped"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_bad_spec_is_refused_with_its_location_and_nothing_runs() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "version: 1\nintent: {objective: x}\nagents:\n  - name: a\n    kind: oracle\n    writes: [seeds]\n",
    )
    .unwrap();
    let run = converge(&db, &["run", &spec.to_string_lossy()]);
    assert_eq!(code(&run), 1);
    let message = stderr(&run);
    assert!(
        message.contains("bad.yaml:5:11: unknown variant `oracle`"),
        "{message}"
    );
    let runs = json(&converge(&db, &["runs", "--json"]));
    assert_eq!(runs, Value::Array(Vec::new()), "no run was created");

    let missing = converge(&db, &["inspect", "ghost"]);
    assert_eq!(code(&missing), 1);
    assert!(
        stderr(&missing).contains("no run \"ghost\""),
        "{}",
        stderr(&missing)
    );
    let not_a_journal = dir.path().join("notes.txt");
    std::fs::write(&not_a_journal, "hello").unwrap();
    let refused = converge(&not_a_journal, &["runs"]);
    assert_eq!(code(&refused), 1);
    assert!(stderr(&refused).contains("not a Converge journal"));
    assert_eq!(std::fs::read(&not_a_journal).unwrap(), b"hello");
}

#[test]
fn every_example_runs_offline_to_its_documented_stop() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    for (spec, exit) in [
        ("release-approval.yaml", 3),
        ("incident-triage.yaml", 0),
        ("budget-review.yaml", 0),
        ("weekly-payouts.yaml", 3),
    ] {
        // (churn-explainer.yaml needs a model: see the scripted-model test below.)
        let run = converge(&db, &["run", &example(spec), "--json"]);
        assert_eq!(code(&run), exit, "{spec}: {}{}", stdout(&run), stderr(&run));
        let summary = json(&run);
        let run_id = summary["run"].as_str().unwrap();
        assert_eq!(
            code(&converge(&db, &["replay", run_id])),
            0,
            "{spec} replays identically"
        );
    }
    let runs = json(&converge(&db, &["runs", "--json"]));
    assert_eq!(runs.as_array().unwrap().len(), 4);
}

#[test]
fn every_command_has_help_with_examples() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    for command in [
        "run", "runs", "inspect", "why", "approve", "reject", "resume", "replay", "verify",
        "export",
    ] {
        let help = converge(&db, &[command, "--help"]);
        assert_eq!(code(&help), 0, "{command}");
        let text = stdout(&help);
        assert!(text.contains("Examples:"), "{command}: {text}");
        assert!(
            text.contains(&format!("converge {command}")),
            "{command}: {text}"
        );
    }
    let top = stdout(&converge(&db, &["--help"]));
    assert!(top.contains("Exit codes:"), "{top}");
}

#[test]
fn processes_opening_a_new_journal_at_once_all_get_it() {
    for round in 0..5 {
        let dir = TempDir::new().unwrap();
        let db = dir.path().join("shared.db");
        let children: Vec<_> = (0..8)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_converge"))
                    .arg("--db")
                    .arg(&db)
                    .args(["runs", "--json"])
                    .env_remove("CONVERGE_DB")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert_eq!(code(&output), 0, "round {round}: {}", stderr(&output));
            assert_eq!(json(&output), Value::Array(Vec::new()));
        }
    }
}

#[test]
fn the_llm_example_runs_against_a_scripted_model_and_replays_without_it() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let server = tokio.block_on(ScriptedServer::start(Wire::OpenAi)).unwrap();
    let answer = serde_json::json!({"proposals": [
        {"key": "hypotheses", "id": "competitor-pull", "confidence": 0.8,
         "content": {"claim": "The competitor's new stores draw customers away",
                     "signals": ["churn-north", "competitor-launch"]}},
        {"key": "hypotheses", "id": "support-friction", "confidence": 0.4,
         "content": {"claim": "Long support waits push customers out",
                     "signals": ["support-wait"]}}
    ]});
    server.push(Reply::answer(answer.to_string(), 412, 96));
    // Configuration alone points the example's `ollama` provider at the scripted model.
    let providers = dir.path().join("providers.toml");
    let file = format!("[providers.ollama]\nbase_url = \"{}\"\n", server.base_url());
    std::fs::write(&providers, file).unwrap();
    let providers = providers.to_string_lossy().into_owned();

    let run = converge(
        &db,
        &[
            "--providers",
            &providers,
            "run",
            &example("churn-explainer.yaml"),
            "--json",
        ],
    );
    assert_eq!(code(&run), 0, "{}{}", stdout(&run), stderr(&run));
    assert!(server.violations().is_empty(), "{:?}", server.violations());
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let body = requests[0].json().unwrap();
    assert_eq!(body["model"], "llama3.2");
    let prompt = body["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("- competitor-launch: A competitor opened two stores"),
        "{prompt}"
    );

    let seen = json(&converge(&db, &["inspect", "churn-explainer-1", "--json"]));
    let ids: Vec<&str> = seen["facts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|fact| fact["key"] == "hypotheses" || fact["key"] == "strategies")
        .map(|fact| fact["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "competitor-pull",
            "support-friction",
            "address-competitor-pull"
        ]
    );
    let why = converge(
        &db,
        &["why", "churn-explainer-1", "hypotheses/competitor-pull"],
    );
    assert_eq!(code(&why), 0, "{}", stderr(&why));
    assert!(
        stdout(&why).contains("proposed by agent `explainer`"),
        "{}",
        stdout(&why)
    );
    assert!(
        stdout(&why).contains("evidence: c2.a2.o0"),
        "{}",
        stdout(&why)
    );

    // Replay and verify need neither the model nor any provider configuration.
    for command in ["replay", "verify"] {
        let output = Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(["--db", &db.to_string_lossy(), command, "churn-explainer-1"])
            .env("CONVERGE_PROVIDERS", dir.path().join("missing.toml"))
            .output()
            .unwrap();
        assert_eq!(
            code(&output),
            0,
            "{command}: {}{}",
            stdout(&output),
            stderr(&output)
        );
    }
    assert_eq!(
        server.request_count(),
        1,
        "nothing reached the model after the run"
    );
}

/// One HTTP/1.1 request on a fresh loopback connection: (status, body).
fn http(addr: &str, method: &str, path: &str, token: &str, body: &str, kind: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the server accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().expect("a status line");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let value = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, value)
}

#[test]
fn converge_serve_runs_a_job_an_approver_approves_it_and_the_cli_audits_it() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let token = |name: &str, role: &str| {
        let made = converge(
            &db,
            &[
                "token", "create", "--tenant", "acme", "--name", name, "--role", role,
            ],
        );
        assert_eq!(code(&made), 0, "{}", stderr(&made));
        stdout(&made).trim().to_owned()
    };
    let (sam, alice) = (token("sam", "submitter"), token("alice", "approver"));
    let listed = converge(&db, &["token", "list", "--json"]);
    let listed = json(&listed);
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(
        !listed.to_string().contains(&sam[4..]),
        "secrets are never listed"
    );

    let (addr, mut server) = serve(&db, &[]);

    let spec = std::fs::read_to_string(example("release-approval.yaml")).unwrap();
    let (status, run) = http(
        &addr,
        "POST",
        "/v1/runs?id=rel",
        &sam,
        &spec,
        "application/yaml",
    );
    assert_eq!(status, 201, "{run}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pending = loop {
        let (_, pending) = http(
            &addr,
            "GET",
            "/v1/runs/rel/approvals",
            &alice,
            "",
            "text/plain",
        );
        if pending["pending"]
            .as_array()
            .is_some_and(|list| !list.is_empty())
        {
            break pending["pending"][0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the run never parked its release"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let path = format!(
        "/v1/runs/rel/approvals/{}/approve",
        pending["proposal"].as_str().unwrap()
    );
    let body = serde_json::json!({"hash": pending["hash"]}).to_string();
    let (status, decided) = http(&addr, "POST", &path, &alice, &body, "application/json");
    assert_eq!(status, 200, "{decided}");
    let run = loop {
        let (_, run) = http(&addr, "GET", "/v1/runs/rel", &alice, "", "text/plain");
        if run["status"] == "stopped" {
            break run;
        }
        assert!(Instant::now() < deadline, "the run never finished: {run}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(run["stop_reason"]["stop"], "converged", "{run}");

    // One id everywhere: the API names the run as the CLI does, and either form finds it.
    assert_eq!(run["id"], "acme-rel");
    let (status, same) = http(&addr, "GET", "/v1/runs/acme-rel", &alice, "", "text/plain");
    assert_eq!((status, &same["id"]), (200, &run["id"]));

    // A run the CLI makes for the tenant is the tenant's in the API and the viewer too.
    let made = converge(
        &db,
        &["run", &example("budget-review.yaml"), "--tenant", "acme"],
    );
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    assert!(
        stdout(&made).contains("acme-budget-review-1"),
        "{}",
        stdout(&made)
    );
    let (status, listed) = http(&addr, "GET", "/v1/runs", &alice, "", "text/plain");
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|run| run["id"].as_str())
        .collect();
    assert_eq!(ids, ["acme-budget-review-1", "acme-rel"], "{listed}");
    let (status, cli_run) = http(
        &addr,
        "GET",
        "/v1/runs/budget-review-1",
        &alice,
        "",
        "text/plain",
    );
    assert_eq!(
        (status, &cli_run["status"]),
        (200, &Value::from("stopped")),
        "{cli_run}"
    );
    // Another tenant's tokens do not see it, and the id cannot be taken twice.
    let other = converge(
        &db,
        &[
            "token", "create", "--tenant", "zeta", "--name", "zoe", "--role", "viewer",
        ],
    );
    let zoe = stdout(&other).trim().to_owned();
    let (status, _) = http(
        &addr,
        "GET",
        "/v1/runs/acme-budget-review-1",
        &zoe,
        "",
        "text/plain",
    );
    assert_eq!(status, 404);
    let again = converge(
        &db,
        &[
            "run",
            &example("budget-review.yaml"),
            "--tenant",
            "acme",
            "--id",
            "budget-review-1",
        ],
    );
    assert_eq!(code(&again), 1, "{}", stdout(&again));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // The CLI sees the same run in the same journal under the same id.
    let why = converge(&db, &["why", "acme-rel", "release-2-4-0"]);
    assert_eq!(code(&why), 0, "{}", stderr(&why));
    assert!(stdout(&why).contains("alice"), "{}", stdout(&why));
    let verify = converge(&db, &["verify", "acme-rel", "--json"]);
    assert_eq!(json(&verify)["root_hash"], run["root_hash"]);

    // SIGTERM stops it cleanly.
    let pid = server.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = server.wait().unwrap();
    assert_eq!(status.code(), Some(0), "serve exits 0 on SIGTERM");
}

/// Starts `converge serve` on a free loopback port; its address and the child.
fn serve(db: &Path, extra: &[&str]) -> (String, std::process::Child) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("--db")
        .arg(db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("CONVERGE_DB")
        .env("CONVERGE_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stderr.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (addr, server)
}

#[test]
fn a_server_killed_mid_run_resumes_the_run_when_it_starts_again() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let made = converge(
        &db,
        &[
            "token",
            "create",
            "--tenant",
            "ops",
            "--name",
            "ci",
            "--role",
            "submitter",
        ],
    );
    let token = stdout(&made).trim().to_owned();
    // Three cycles of a slow program: the server is killed while the second one runs.
    let spec = r#"version: 1
intent: {objective: survive a crash, budgets: {cycles: 4}}
keys:
  - {name: ticks, description: one per cycle}
seeds:
  - {key: ticks, id: t0, content: {n: 0}}
agents:
  - name: tick
    kind: command
    reads: [ticks]
    writes: [ticks]
    command: [sh, -c, 'cat >/dev/null; sleep 1; n=$(date +%s%N); printf "{\"proposals\":[{\"key\":\"ticks\",\"id\":\"t$n\",\"content\":{\"n\":1}}]}"']
    timeout_ms: 10000
"#;
    let (addr, mut first) = serve(&db, &["--allow-commands"]);
    let (status, run) = http(
        &addr,
        "POST",
        "/v1/runs?id=crash",
        &token,
        spec,
        "application/yaml",
    );
    assert_eq!(status, 201, "{run}");
    std::thread::sleep(Duration::from_millis(1500));
    first.kill().unwrap();
    first.wait().unwrap();
    let before = json(&converge(&db, &["runs", "--json"]));
    let crashed = before
        .as_array()
        .and_then(|runs| runs.iter().find(|run| run["run"] == "ops-crash"))
        .cloned()
        .unwrap_or_else(|| panic!("the run is in the journal: {before}"));
    assert_eq!(crashed["status"]["status"], "running", "{crashed}");

    let (addr, mut second) = serve(&db, &["--allow-commands"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let (_, run) = http(&addr, "GET", "/v1/runs/crash", &token, "", "text/plain");
        if run["status"] == "stopped" || run["status"] == "awaiting_approval" {
            break run;
        }
        assert!(Instant::now() < deadline, "the run was not resumed: {run}");
        std::thread::sleep(Duration::from_millis(100));
    };
    second.kill().unwrap();
    second.wait().unwrap();
    let replay = converge(&db, &["replay", "ops-crash"]);
    assert_eq!(code(&replay), 0, "{}{}", stdout(&replay), stderr(&replay));
    assert!(
        run["steps"].as_u64().unwrap() > crashed["steps"].as_u64().unwrap(),
        "{run}"
    );
}

#[test]
fn a_run_stopped_by_a_failed_agent_names_it_by_its_name() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec = dir.path().join("stops.yaml");
    std::fs::write(
        &spec,
        r#"version: 1
intent:
  objective: Stop at the first failure
runtime:
  on_agent_failure: stop_run
agents:
  - name: seed
    kind: rule
    writes: [signals]
    when: "true"
    propose: {key: signals, id: one, content: 1}
  - name: flaky-scorer
    kind: command
    reads: [signals]
    writes: [evaluations]
    command: [sh, -c, "cat > /dev/null; echo 'the feed is down' >&2; exit 3"]
    timeout_ms: 10000
"#,
    )
    .unwrap();
    let run = converge(&db, &["run", &spec.to_string_lossy()]);
    assert_eq!(code(&run), 6, "{}{}", stdout(&run), stderr(&run));
    let said = stdout(&run);
    assert!(said.contains("agent flaky-scorer failed"), "{said}");
    assert!(!said.contains("agent a1"), "{said}");
    let inspect = converge(&db, &["inspect", "stops-1"]);
    assert!(
        stdout(&inspect).contains("stopped: agent flaky-scorer failed"),
        "{}",
        stdout(&inspect)
    );
}
