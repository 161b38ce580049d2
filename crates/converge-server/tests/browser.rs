//! The run viewer in a real browser.
//!
//! Starts a server in-process, submits `examples/release-approval.yaml` as sam (it stops
//! awaiting approval of the release), a one-seed job that converges at once,
//! `examples/weekly-payouts.yaml` (awaiting approval of four payouts) and
//! `examples/churn-explainer.yaml` (its `llm` agent answered by a scripted model server), then
//! runs `tests/browser/viewer.mjs`: Playwright driving headless Chromium signs in as alice,
//! filters and searches the runs list, checks the run's timeline, facts, details beside the
//! fact, provenance list and graph, and pending approval, approves the release from the page,
//! sees the card give way to the decision, and follows the live event stream until the run
//! converges; then rejects a payout and sees its card give way to the refusal; signed in as
//! sam (a submitter, the only role here offered Cancel), cancels the payouts run; then, as
//! alice again, reads the model exchange a hypothesis of the churn run cites. Finally checks
//! over HTTP that the run converged and that alice's decision was recorded.
//!
//! Needs `node`, `npm` and Chromium (`CONVERGE_CHROMIUM`, or `chromium` on `PATH`); without
//! them the test fails, it never skips. `npm ci` installs the pinned `playwright-core` into
//! `tests/browser/node_modules` the first time. Screenshots of each stage go to
//! `<target dir>/browser-artifacts`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use converge_llm::scripted::{Reply, ScriptedServer, Wire};
use converge_server::{Role, Server, ServerConfig, Tokens};
use serde_json::Value;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BROWSER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn viewer_approves_a_release_and_follows_the_run_live() -> TestResult {
    let chromium = chromium();
    install_node_modules();

    let dir = tempfile::tempdir()?;
    let db = dir.path().join("journal.db");
    let mut tokens = Tokens::open(db.clone())?;
    let submitter = tokens.create("acme", "sam", Role::Submitter)?.secret;
    let approver = tokens.create("acme", "alice", Role::Approver)?.secret;
    let viewer = tokens.create("acme", "vic", Role::Viewer)?.secret;
    // `examples/churn-explainer.yaml`'s `ollama` provider points at a scripted model server
    // through the server's provider file alone.
    let model = ScriptedServer::start(Wire::OpenAi).await?;
    model.push(Reply::answer(churn_answer(), 412, 96).answered_by(SERVED_MODEL));
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        format!("[providers.ollama]\nbase_url = \"{}\"\n", model.base_url()),
    )?;
    let mut config = ServerConfig::new(db.clone());
    config.providers = Some(providers);
    config.allow_commands = true;
    let server = Server::bind(config).await?;
    let base = format!("http://{}", server.local_addr());
    let serving = tokio::spawn(server.serve(std::future::pending::<()>()));

    let client = reqwest::Client::new();
    let run_id = submit(&client, &base, &submitter).await?;
    wait_for_status(&client, &base, &submitter, &run_id, "awaiting_approval").await?;
    let other_run_id = submit_greeting(&client, &base, &submitter).await?;
    wait_for_status(&client, &base, &submitter, &other_run_id, "stopped").await?;
    let payouts_run_id = submit_example(&client, &base, &submitter, "weekly-payouts.yaml").await?;
    wait_for_status(
        &client,
        &base,
        &submitter,
        &payouts_run_id,
        "awaiting_approval",
    )
    .await?;

    let churn_run_id = submit_example(&client, &base, &submitter, "churn-explainer.yaml").await?;
    wait_for_status(&client, &base, &submitter, &churn_run_id, "stopped").await?;
    let retried_run_id = retried_run(&client, &base, &submitter, &approver, dir.path()).await?;
    assert_eq!(
        model.request_count(),
        1,
        "the churn run asks its model once"
    );

    let artifacts = target_dir().join("browser-artifacts");
    let mut script = Command::new("node");
    script
        .arg(Path::new(BROWSER_DIR).join("viewer.mjs"))
        .current_dir(BROWSER_DIR)
        .env("BASE_URL", &base)
        .env("APPROVER_TOKEN", &approver)
        .env("SUBMITTER_TOKEN", &submitter)
        .env("VIEWER_TOKEN", &viewer)
        .env("RUN_ID", &run_id)
        .env("OTHER_RUN_ID", &other_run_id)
        .env("PAYOUTS_RUN_ID", &payouts_run_id)
        .env("CHURN_RUN_ID", &churn_run_id)
        .env("RETRIED_RUN_ID", &retried_run_id)
        .env("SERVED_MODEL", SERVED_MODEL)
        .env("CHROMIUM", &chromium)
        .env("ARTIFACTS", &artifacts);
    let (status, output) =
        tokio::task::spawn_blocking(move || run_with_timeout(script, SCRIPT_TIMEOUT)).await??;
    println!("{output}");
    assert!(
        status.is_some_and(|status| status.success()),
        "the viewer's browser test {} (its output is above; screenshots in {})",
        match status {
            Some(status) => format!("failed ({status})"),
            None => format!(
                "timed out after {} s and was killed",
                SCRIPT_TIMEOUT.as_secs()
            ),
        },
        artifacts.display(),
    );

    let run = get(&client, &format!("{base}/v1/runs/{run_id}"), &submitter).await?;
    assert_eq!(run["status"], "stopped", "the run after approval: {run}");
    assert_eq!(
        run["stop_reason"]["stop"], "converged",
        "the run after approval: {run}"
    );
    let decisions = get(
        &client,
        &format!("{base}/v1/runs/{run_id}/decisions"),
        &submitter,
    )
    .await?;
    let accepted: Vec<&Value> = decisions["decisions"]
        .as_array()
        .ok_or_else(|| format!("no decisions list: {decisions}"))?
        .iter()
        .filter(|decision| decision["outcome"] == "accepted")
        .collect();
    assert_eq!(accepted.len(), 1, "accepted decisions: {decisions}");
    assert_eq!(accepted[0]["actor"], "alice", "the decision: {decisions}");
    assert_eq!(
        accepted[0]["verdict"], "approve",
        "the decision: {decisions}"
    );

    serving.abort();
    Ok(())
}

/// The model that answers the churn run, unlike the `llama3.2` its spec asks for.
const SERVED_MODEL: &str = "llama3.2:3b-instruct-q4_K_M";

/// The scripted model's answer to the churn run: two hypotheses, the first with markup in its
/// claim (the viewer must show it as text).
fn churn_answer() -> String {
    serde_json::json!({"proposals": [
        {"key": "hypotheses", "id": "competitor-pull", "confidence": 0.8,
         "content": {"claim": "<b>The competitor's new stores</b> draw customers away",
                     "signals": ["churn-north", "competitor-launch"]}},
        {"key": "hypotheses", "id": "support-friction", "confidence": 0.4,
         "content": {"claim": "Long support waits push customers out",
                     "signals": ["support-wait"]}}
    ]})
    .to_string()
}

/// Submits the release job as the submitter; answers the new run's id.
async fn submit(client: &reqwest::Client, base: &str, token: &str) -> TestResult<String> {
    submit_example(client, base, token, "release-approval.yaml").await
}

/// Submits `examples/<name>` as the submitter, naming the job after the file; answers the new
/// run's id.
async fn submit_example(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
) -> TestResult<String> {
    let spec = workspace().join("examples").join(name);
    let response = client
        .post(format!("{base}/v1/runs"))
        .query(&[("job", name)])
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body(std::fs::read_to_string(&spec)?)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    assert_eq!(
        status,
        reqwest::StatusCode::CREATED,
        "submitting {}: {body}",
        spec.display()
    );
    let id = body["id"]
        .as_str()
        .ok_or_else(|| format!("no run id in {body}"))?;
    Ok(id.to_owned())
}

/// Submits a job of one seed and no agents (it converges at once); answers its run's id.
async fn submit_greeting(client: &reqwest::Client, base: &str, token: &str) -> TestResult<String> {
    let spec = serde_json::json!({
        "version": 1,
        "intent": {"objective": "Greet the world"},
        "seeds": [{"key": "seeds", "id": "greeting", "content": "hello"}],
    });
    let response = client
        .post(format!("{base}/v1/runs?id=greeting"))
        .bearer_auth(token)
        .json(&spec)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    assert_eq!(
        status,
        reqwest::StatusCode::CREATED,
        "submitting {spec}: {body}"
    );
    let id = body["id"]
        .as_str()
        .ok_or_else(|| format!("no run id in {body}"))?;
    Ok(id.to_owned())
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> TestResult<Value> {
    let response = client.get(url).bearer_auth(token).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    assert!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

/// Polls the run until its status is `status`, so the browser starts from a known state.
async fn wait_for_status(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    run_id: &str,
    status: &str,
) -> TestResult {
    wait_until(client, base, token, run_id, status, |run| {
        run["status"] == status
    })
    .await
}

/// Polls the run until `reached` holds of it (`what` says what for the failure).
async fn wait_until(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    run_id: &str,
    what: &str,
    reached: impl Fn(&Value) -> bool,
) -> TestResult {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let run = get(client, &format!("{base}/v1/runs/{run_id}"), token).await?;
        if reached(&run) {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} is not {what} after {RUN_TIMEOUT:?}: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A run whose agent failed, then was retried by the approver once the cause was fixed, and
/// converged; answers its id.
async fn retried_run(
    client: &reqwest::Client,
    base: &str,
    submitter: &str,
    approver: &str,
    dir: &Path,
) -> TestResult<String> {
    let ready = dir.join("ready");
    let response = client
        .post(format!("{base}/v1/runs?id=alerts&job=alerts.yaml"))
        .bearer_auth(submitter)
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body(common::flaky_spec(&ready))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    assert_eq!(status, reqwest::StatusCode::CREATED, "submitting: {body}");
    let id = body["id"].as_str().ok_or("no run id")?.to_owned();
    wait_for_status(client, base, submitter, &id, "stopped").await?;
    std::fs::write(&ready, "")?;
    let response = client
        .post(format!("{base}/v1/runs/{id}/retry"))
        .bearer_auth(approver)
        .json(&serde_json::json!({"reason": "the feed is ready"}))
        .send()
        .await?;
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    wait_until(client, base, submitter, &id, "converged", |run| {
        run["stop_reason"]["stop"] == "converged"
    })
    .await?;
    Ok(id)
}

/// Chromium's executable: `CONVERGE_CHROMIUM`, or `chromium` on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CONVERGE_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "CONVERGE_CHROMIUM={} is not a file",
            path.display()
        );
        return path;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Chromium is needed to run the viewer's browser test: install it (Debian: \
                 apt-get install chromium) or set CONVERGE_CHROMIUM to its executable"
            )
        })
}

/// Installs the pinned playwright-core with `npm ci` unless it is there already.
fn install_node_modules() {
    require_tool("node");
    if Path::new(BROWSER_DIR)
        .join("node_modules/playwright-core")
        .is_dir()
    {
        return;
    }
    require_tool("npm");
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(BROWSER_DIR);
    let (status, output) = run_with_timeout(npm, SCRIPT_TIMEOUT).expect("running npm ci");
    assert!(
        status.is_some_and(|status| status.success()),
        "`npm ci` in {BROWSER_DIR} failed ({status:?}):\n{output}"
    );
}

fn require_tool(tool: &str) {
    let works = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        works,
        "`{tool}` is needed to run the viewer's browser test: install Node.js and npm \
         (Debian: apt-get install nodejs npm)"
    );
}

/// Runs `command` to completion or kills it after `timeout`. Answers its exit status (`None`
/// when killed) and its standard output, then its standard error.
fn run_with_timeout(
    mut command: Command,
    timeout: Duration,
) -> TestResult<(Option<ExitStatus>, String)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start {command:?}: {error}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    Ok((status, output))
}

fn drain(stream: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_string(&mut text);
        }
        text
    })
}

/// The workspace's target directory: `CARGO_TARGET_DIR`, or `target` in the workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate is in crates/ of the workspace")
}
