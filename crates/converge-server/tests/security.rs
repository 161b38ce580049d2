//! The API's security requirements, each as a test over real connections to a server started
//! in-process: authentication, roles, tenant isolation, bound and single-use decisions, body
//! limits, connection timeouts, and secrets kept out of answers and logs.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    SEEDS_ONLY, SseStream, TestResult, TestServer, answer, assert_error, kinds, release_spec,
};
use converge_server::{Role, Tokens};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two proposals parked for approval at once.
const TWO_RELEASES: &str = "\
version: 1
intent: {objective: ship two releases}
keys:
  - name: releases
    approval: true
seeds:
  - {key: releases, id: r1, content: one}
  - {key: releases, id: r2, content: two}
";

/// Everything the server (and anything else in this test process) logs, from the first test
/// that asks for it on.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    let log = captured_log();
    let bytes = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The request id a response carries.
fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Sends a request of any method with an optional JSON body; status and JSON body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> TestResult<(StatusCode, Value)> {
    let mut request = server.request(method, path, token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    answer(request.send().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_live_token_answer_401() -> TestResult {
    let server = TestServer::start().await?;
    server.submit(SEEDS_ONLY, Some("mine")).await?;
    let unknown = format!("cvg_{}", "A".repeat(43));
    let revoked = {
        let mut tokens = Tokens::open(server.db.clone())?;
        let issued = tokens.create("acme", "carol", Role::Admin)?;
        // Live first: the same token works until it is revoked.
        let whoami = server.get_ok("/v1/whoami", &issued.secret).await?;
        assert_eq!(whoami["name"], "carol");
        tokens.revoke(&issued.info.id)?;
        issued.secret
    };

    let headers: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("empty", Some(String::new())),
        ("basic auth", Some("Basic YWxpY2U6cGFzc3dvcmQ=".to_owned())),
        ("bearer without token", Some("Bearer".to_owned())),
        ("short token", Some("Bearer cvg_short".to_owned())),
        (
            "wrong prefix",
            Some(format!("Bearer xyz_{}", &server.sam[4..])),
        ),
        (
            "truncated token",
            Some(format!("Bearer {}", &server.sam[..server.sam.len() - 1])),
        ),
        ("unknown token", Some(format!("Bearer {unknown}"))),
        ("revoked token", Some(format!("Bearer {revoked}"))),
    ];
    let routes = [
        (Method::GET, "/v1/whoami"),
        (Method::GET, "/v1/runs"),
        (Method::GET, "/v1/runs/mine"),
        (Method::GET, "/v1/runs/mine/events"),
        (Method::POST, "/v1/runs/mine/cancel"),
    ];
    for (what, header) in &headers {
        for (method, path) in &routes {
            let mut request = server.client.request(method.clone(), server.url(path));
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            let response = request.send().await?;
            let content_type = response.headers()["content-type"].to_str()?.to_owned();
            assert!(content_type.starts_with("application/json"), "{what}");
            let (status, body) = answer(response).await?;
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        // A decision is refused from its headers alone: its body is never read, so even one
        // that would not parse answers 401, not 422.
        for (path, body) in [
            ("/v1/runs/mine/approvals/c1.a0.p0/approve", "{not json"),
            (
                "/v1/runs/mine/approvals/c1.a0.p0/reject",
                "{\"unknown\": 1}",
            ),
        ] {
            let mut request = server
                .client
                .post(server.url(path))
                .header("content-type", "application/json")
                .body(body);
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            let (status, answered) = answer(request.send().await?).await?;
            assert_error(status, &answered, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        // A submission is refused before anything starts.
        let mut request = server
            .client
            .post(server.url("/v1/runs"))
            .header("content-type", "application/yaml")
            .body(SEEDS_ONLY);
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let (status, body) = answer(request.send().await?).await?;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1), "{listed}");
    let run = server.get_ok("/v1/runs/mine", &server.vic).await?;
    assert_eq!(run["status"], "stopped", "nothing cancelled it: {run}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_what_the_table_says_and_nothing_more() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("rel").await?;
    let approve = format!("/v1/runs/rel/approvals/{proposal}/approve");
    let reject = format!("/v1/runs/rel/approvals/{proposal}/reject");
    let approval = json!({"hash": hash});
    let rejection = json!({"hash": hash, "reason": "not now"});

    let forbidden = |status: StatusCode, body: &Value, needs: &str| {
        let message = assert_error(status, body, StatusCode::FORBIDDEN, "forbidden");
        assert!(message.contains(needs), "{message}");
    };

    // Every role reads.
    for token in [&server.vic, &server.sam, &server.alice, &server.root] {
        for path in [
            "/v1/runs",
            "/v1/runs/rel",
            "/v1/runs/rel/facts",
            "/v1/runs/rel/facts/changes/pr-1412",
            "/v1/runs/rel/rejections",
            "/v1/runs/rel/approvals",
            "/v1/runs/rel/decisions",
            "/v1/runs/rel/events",
            "/v1/runs/rel/replay",
            "/v1/runs/rel/verify",
            "/v1/runs/rel/audit",
        ] {
            server.get_ok(path, token).await?;
        }
    }

    // A viewer changes nothing.
    let response = server
        .submit_as(&server.vic, "application/yaml", SEEDS_ONLY, None)
        .await?;
    let (status, body) = answer(response).await?;
    forbidden(status, &body, "submitter");
    for (path, body) in [(&approve, &approval), (&reject, &rejection)] {
        let (status, answer) = server.post(path, &server.vic, body).await?;
        forbidden(status, &answer, "approver");
    }
    for path in ["/v1/runs/rel/cancel", "/v1/runs/rel/resume"] {
        let (status, body) = call(&server, Method::POST, path, &server.vic, None).await?;
        forbidden(status, &body, "submitter");
    }

    // A submitter does not decide.
    for (path, body) in [(&approve, &approval), (&reject, &rejection)] {
        let (status, answer) = server.post(path, &server.sam, body).await?;
        forbidden(status, &answer, "approver");
    }

    // An approver does not submit, cancel or resume.
    let response = server
        .submit_as(&server.alice, "application/yaml", SEEDS_ONLY, None)
        .await?;
    let (status, body) = answer(response).await?;
    forbidden(status, &body, "submitter");
    for path in ["/v1/runs/rel/cancel", "/v1/runs/rel/resume"] {
        let (status, body) = call(&server, Method::POST, path, &server.alice, None).await?;
        forbidden(status, &body, "submitter");
    }

    // None of that changed anything or was recorded as a decision.
    let run = server.get_ok("/v1/runs/rel", &server.vic).await?;
    assert_eq!(run["status"], "awaiting_approval", "{run}");
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1));
    let decisions = server.get_ok("/v1/runs/rel/decisions", &server.vic).await?;
    assert_eq!(decisions["decisions"], json!([]));

    // An admin does all of it.
    let (status, accepted) = server.post(&approve, &server.root, &approval).await?;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["decision"]["actor"], "root");
    let run = server.settle("rel").await?;
    assert_eq!(run["stop_reason"]["stop"], "converged", "{run}");
    let response = server
        .submit_as(
            &server.root,
            "application/yaml",
            &release_spec(),
            Some("rel2"),
        )
        .await?;
    let (status, body) = answer(response).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["submitted_by"], "root");
    let run = server.settle("rel2").await?;
    assert_eq!(run["status"], "awaiting_approval");
    let (status, body) = call(
        &server,
        Method::POST,
        "/v1/runs/rel2/resume",
        &server.root,
        None,
    )
    .await?;
    assert_error(status, &body, StatusCode::CONFLICT, "awaiting_approval");
    let (status, body) = call(
        &server,
        Method::POST,
        "/v1/runs/rel2/cancel",
        &server.root,
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run = server.settle("rel2").await?;
    assert!(
        run["stop_reason"]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("cancelled by root")),
        "{run}"
    );
    Ok(())
}

/// A request as olga (tenant `other`): status, content type and JSON body.
async fn ask(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<&Value>,
    stream: bool,
) -> TestResult<(StatusCode, String, Value)> {
    let mut request = server.request(method, path, &server.olga);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    if stream {
        request = request.header("accept", "text/event-stream");
    }
    let response = request.send().await?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (status, body) = answer(response).await?;
    Ok((status, content_type, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_run_answers_exactly_like_a_run_that_does_not_exist() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("rel").await?;
    let before = server.get_ok("/v1/runs/rel", &server.vic).await?;

    // Every route that names a run, with a body that would be valid for acme.
    let approval = json!({"hash": hash});
    let rejection = json!({"hash": hash, "reason": "mine now"});
    let routes: Vec<(Method, String, Option<&Value>, bool)> = vec![
        (Method::GET, "/v1/runs/{run}".into(), None, false),
        (Method::GET, "/v1/runs/{run}/facts".into(), None, false),
        (
            Method::GET,
            "/v1/runs/{run}/facts/changes/pr-1412".into(),
            None,
            false,
        ),
        (Method::GET, "/v1/runs/{run}/events".into(), None, false),
        (Method::GET, "/v1/runs/{run}/events".into(), None, true),
        (Method::GET, "/v1/runs/{run}/rejections".into(), None, false),
        (Method::GET, "/v1/runs/{run}/approvals".into(), None, false),
        (Method::GET, "/v1/runs/{run}/decisions".into(), None, false),
        (Method::GET, "/v1/runs/{run}/replay".into(), None, false),
        (Method::GET, "/v1/runs/{run}/verify".into(), None, false),
        (Method::GET, "/v1/runs/{run}/audit".into(), None, false),
        (
            Method::POST,
            format!("/v1/runs/{{run}}/approvals/{proposal}/approve"),
            Some(&approval),
            false,
        ),
        (
            Method::POST,
            format!("/v1/runs/{{run}}/approvals/{proposal}/reject"),
            Some(&rejection),
            false,
        ),
        (Method::POST, "/v1/runs/{run}/cancel".into(), None, false),
        (Method::POST, "/v1/runs/{run}/resume".into(), None, false),
    ];
    for (method, template, body, stream) in routes {
        let theirs = template.replace("{run}", "rel");
        let missing = template.replace("{run}", "ghost");
        let (status, content_type, answer_theirs) =
            ask(&server, method.clone(), &theirs, body, stream).await?;
        let (status_missing, content_type_missing, answer_missing) =
            ask(&server, method.clone(), &missing, body, stream).await?;
        let what = format!("{method} {theirs} (stream: {stream})");
        let message = assert_error(status, &answer_theirs, StatusCode::NOT_FOUND, "not_found");
        let message_missing = assert_error(
            status_missing,
            &answer_missing,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_eq!(content_type, content_type_missing, "{what}");
        assert_eq!(
            message.replace("rel", "ID"),
            message_missing.replace("ghost", "ID"),
            "{what}: the same answer as for a run that does not exist"
        );
        let mut keys: Vec<&String> = answer_theirs["error"]
            .as_object()
            .ok_or("no error")?
            .keys()
            .collect();
        keys.sort();
        assert_eq!(keys, ["code", "message", "request_id"], "{what}");
        for private in ["acme", "sam", "release", "awaiting"] {
            assert!(
                !message.contains(private),
                "{what} reveals {private:?}: {message}"
            );
        }
    }

    // Nothing of acme's changed, and nothing was recorded.
    let after = server.get_ok("/v1/runs/rel", &server.vic).await?;
    assert_eq!(after["status"], "awaiting_approval");
    assert_eq!(after["events"], before["events"]);
    let decisions = server.get_ok("/v1/runs/rel/decisions", &server.vic).await?;
    assert_eq!(decisions["decisions"], json!([]), "{decisions}");

    // The other tenant's listing shows none of acme's runs.
    let listed = server.get_ok("/v1/runs", &server.olga).await?;
    assert_eq!(listed, json!({"runs": []}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ids_belong_to_their_tenant() -> TestResult {
    let server = TestServer::start().await?;
    let acme = server.submit(SEEDS_ONLY, Some("shared")).await?;
    server.settle(&acme).await?;

    // The same id in another tenant is another run.
    let response = server
        .submit_as(
            &server.olga,
            "application/yaml",
            &release_spec(),
            Some("shared"),
        )
        .await?;
    let (status, body) = answer(response).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["tenant"], "other");
    let mut other = Value::Null;
    for _ in 0..500 {
        other = server.get_ok("/v1/runs/shared", &server.olga).await?;
        if other["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(other["status"], "awaiting_approval", "{other}");
    assert_eq!(other["submitted_by"], "olga");

    let mine = server.get_ok("/v1/runs/shared", &server.vic).await?;
    assert_eq!(mine["tenant"], "acme");
    assert_eq!(mine["status"], "stopped");
    assert_ne!(mine["root_hash"], other["root_hash"]);
    let acme_facts = server.get_ok("/v1/runs/shared/facts", &server.vic).await?;
    let other_facts = server.get_ok("/v1/runs/shared/facts", &server.olga).await?;
    assert_ne!(acme_facts, other_facts);

    // Each tenant lists its own run only; an acme approver cannot reach the other's proposal.
    for (token, tenant) in [(&server.vic, "acme"), (&server.olga, "other")] {
        let listed = server.get_ok("/v1/runs", token).await?;
        let runs = listed["runs"].as_array().ok_or("no runs")?;
        assert_eq!(runs.len(), 1, "{listed}");
        assert_eq!(runs[0]["tenant"], tenant);
    }
    let pending = server
        .get_ok("/v1/runs/shared/approvals", &server.olga)
        .await?;
    let proposal = pending["pending"][0]["proposal"]
        .as_str()
        .ok_or("no proposal")?;
    let hash = pending["pending"][0]["hash"].as_str().ok_or("no hash")?;
    let (status, body) = server
        .post(
            &format!("/v1/runs/shared/approvals/{proposal}/approve"),
            &server.alice,
            &json!({"hash": hash}),
        )
        .await?;
    // acme's "shared" converged: alice's request names acme's run, never the other's.
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let still = server.get_ok("/v1/runs/shared", &server.olga).await?;
    assert_eq!(still["status"], "awaiting_approval");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoever_submitted_a_run_cannot_approve_it() -> TestResult {
    let server = TestServer::start().await?;
    // An approver token with the submitter's name.
    let sam_approver = server.token("acme", "sam", Role::Approver)?;
    let (proposal, hash) = server.release("rel").await?;

    for (verdict, body) in [
        ("approve", json!({"hash": hash})),
        ("reject", json!({"hash": hash, "reason": "mine"})),
    ] {
        let (status, answer) = server
            .post(
                &format!("/v1/runs/rel/approvals/{proposal}/{verdict}"),
                &sam_approver,
                &body,
            )
            .await?;
        assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
    }
    let decisions = server.get_ok("/v1/runs/rel/decisions", &server.vic).await?;
    let decisions = decisions["decisions"].as_array().ok_or("no decisions")?;
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    for (decision, verdict) in decisions.iter().zip(["approve", "reject"]) {
        assert_eq!(decision["actor"], "sam");
        assert_eq!(decision["verdict"], verdict);
        assert_eq!(decision["outcome"], "refused");
        assert_eq!(decision["refusal"], "self_approval");
        assert_eq!(decision["proposal"], proposal.as_str());
    }
    let run = server.get_ok("/v1/runs/rel", &server.vic).await?;
    assert_eq!(run["status"], "awaiting_approval");
    assert!(
        !kinds(&server.events("rel").await?).contains(&"approval_decided".to_owned()),
        "nothing reached the journal"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_approval_is_accepted_when_the_server_allows_it() -> TestResult {
    let server = TestServer::start_with(|config| config.allow_self_approval = true).await?;
    let sam_approver = server.token("acme", "sam", Role::Approver)?;
    let (proposal, hash) = server.release("rel").await?;
    let (status, accepted) = server
        .post(
            &format!("/v1/runs/rel/approvals/{proposal}/approve"),
            &sam_approver,
            &json!({"hash": hash}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["decision"]["actor"], "sam");
    assert_eq!(accepted["decision"]["outcome"], "accepted");
    let run = server.settle("rel").await?;
    assert_eq!(run["stop_reason"]["stop"], "converged");
    let fact = server
        .get_ok("/v1/runs/rel/facts/releases/release-2-4-0", &server.vic)
        .await?;
    assert_eq!(fact["approver"]["name"], "sam");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_bound_to_the_pending_proposal_and_its_hash() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("rel").await?;
    let approve = |proposal: &str| format!("/v1/runs/rel/approvals/{proposal}/approve");

    // One hex digit changed.
    let mut edited = hash.clone().into_bytes();
    edited[17] = if edited[17] == b'0' { b'1' } else { b'0' };
    let edited = String::from_utf8(edited)?;
    let (status, body) = server
        .post(&approve(&proposal), &server.alice, &json!({"hash": edited}))
        .await?;
    assert_error(status, &body, StatusCode::CONFLICT, "hash_mismatch");
    // Not a hash at all.
    let (status, body) = server
        .post(&approve(&proposal), &server.alice, &json!({"hash": "nope"}))
        .await?;
    assert_error(status, &body, StatusCode::CONFLICT, "hash_mismatch");
    // A proposal that was never parked, and one that is no proposal id.
    for wrong in ["c9.a9.p9", "not-a-proposal"] {
        let (status, body) = server
            .post(&approve(wrong), &server.alice, &json!({"hash": hash}))
            .await?;
        assert_error(status, &body, StatusCode::CONFLICT, "not_pending");
    }
    // The same, as rejections.
    let (status, body) = server
        .post(
            &format!("/v1/runs/rel/approvals/{proposal}/reject"),
            &server.bob,
            &json!({"hash": edited, "reason": "edited"}),
        )
        .await?;
    assert_error(status, &body, StatusCode::CONFLICT, "hash_mismatch");

    let decisions = server.get_ok("/v1/runs/rel/decisions", &server.vic).await?;
    let refusals: Vec<(&str, &str, &str)> = decisions["decisions"]
        .as_array()
        .ok_or("no decisions")?
        .iter()
        .map(|decision| {
            assert_eq!(decision["outcome"], "refused", "{decision}");
            (
                decision["actor"].as_str().unwrap_or_default(),
                decision["proposal"].as_str().unwrap_or_default(),
                decision["refusal"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        refusals,
        [
            ("alice", proposal.as_str(), "hash_mismatch"),
            ("alice", proposal.as_str(), "hash_mismatch"),
            ("alice", "c9.a9.p9", "not_pending"),
            ("alice", "not-a-proposal", "not_pending"),
            ("bob", proposal.as_str(), "hash_mismatch"),
        ]
    );
    let recorded_hash = &decisions["decisions"][0]["hash"];
    assert_eq!(recorded_hash, edited.as_str(), "the hash as it was sent");

    // Still pending; the right request is accepted.
    let run = server.get_ok("/v1/runs/rel", &server.vic).await?;
    assert_eq!(run["status"], "awaiting_approval");
    let (status, body) = server
        .post(&approve(&proposal), &server.alice, &json!({"hash": hash}))
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_decision_cannot_be_replayed() -> TestResult {
    let server = TestServer::start().await?;
    let id = server.submit(TWO_RELEASES, Some("two")).await?;
    let run = server.settle(&id).await?;
    assert_eq!(run["status"], "awaiting_approval", "{run}");
    let approvals = server.get_ok("/v1/runs/two/approvals", &server.vic).await?;
    let pending = approvals["pending"].as_array().ok_or("no pending")?.clone();
    assert_eq!(pending.len(), 2, "{approvals}");
    let path = |pending: &Value, verdict: &str| {
        format!(
            "/v1/runs/two/approvals/{}/{verdict}",
            pending["proposal"].as_str().unwrap_or_default()
        )
    };
    let first = json!({"hash": pending[0]["hash"]});

    let (status, body) = server
        .post(&path(&pending[0], "approve"), &server.alice, &first)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run = server.settle("two").await?;
    assert_eq!(
        run["status"], "awaiting_approval",
        "the second is still parked: {run}"
    );

    // The same request again, by the same approver and by another; and as a rejection.
    for token in [&server.alice, &server.bob] {
        let (status, body) = server
            .post(&path(&pending[0], "approve"), token, &first)
            .await?;
        assert_error(status, &body, StatusCode::CONFLICT, "not_pending");
    }
    let (status, body) = server
        .post(
            &path(&pending[0], "reject"),
            &server.bob,
            &json!({"hash": pending[0]["hash"], "reason": "changed my mind"}),
        )
        .await?;
    assert_error(status, &body, StatusCode::CONFLICT, "not_pending");

    let decisions = server.get_ok("/v1/runs/two/decisions", &server.vic).await?;
    let outcomes: Vec<(&str, Option<&str>)> = decisions["decisions"]
        .as_array()
        .ok_or("no decisions")?
        .iter()
        .map(|decision| {
            (
                decision["outcome"].as_str().unwrap_or_default(),
                decision["refusal"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("accepted", None),
            ("refused", Some("not_pending")),
            ("refused", Some("not_pending")),
            ("refused", Some("not_pending")),
        ]
    );
    let decided = kinds(&server.events("two").await?)
        .iter()
        .filter(|kind| *kind == "approval_decided")
        .count();
    assert_eq!(decided, 1);

    // The other proposal is still decidable.
    let (status, body) = server
        .post(
            &path(&pending[1], "approve"),
            &server.bob,
            &json!({"hash": pending[1]["hash"]}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run = server.settle("two").await?;
    assert_eq!(run["stop_reason"]["stop"], "converged", "{run}");

    // Once the run has stopped, a replay is refused too.
    let (status, body) = server
        .post(&path(&pending[0], "approve"), &server.alice, &first)
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let decisions = server.get_ok("/v1/runs/two/decisions", &server.vic).await?;
    let last = decisions["decisions"]
        .as_array()
        .and_then(|decisions| decisions.last().cloned())
        .ok_or("no decisions")?;
    assert_eq!(last["outcome"], "refused", "{last}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_of_one_proposal_accept_exactly_one() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("rel").await?;
    let path = format!("/v1/runs/rel/approvals/{proposal}/approve");
    let body = json!({"hash": hash});
    let attempts = (0..8).map(|n| {
        let token = if n % 2 == 0 {
            &server.alice
        } else {
            &server.bob
        };
        server.post(&path, token, &body)
    });
    let answers = join_all(attempts).await;

    let mut accepted = 0;
    for answer in answers {
        let (status, body) = answer?;
        match status {
            StatusCode::OK => accepted += 1,
            StatusCode::CONFLICT => {
                let code = body["error"]["code"].as_str().unwrap_or_default();
                assert!(
                    ["run_busy", "not_pending", "not_awaiting_approval"].contains(&code),
                    "{body}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted, 1, "exactly one approval is accepted");

    let run = server.settle("rel").await?;
    assert_eq!(run["stop_reason"]["stop"], "converged", "{run}");
    let decisions = server.get_ok("/v1/runs/rel/decisions", &server.vic).await?;
    let decisions = decisions["decisions"].as_array().ok_or("no decisions")?;
    assert_eq!(
        decisions.len(),
        8,
        "every attempt is recorded: {decisions:?}"
    );
    assert_eq!(
        decisions
            .iter()
            .filter(|decision| decision["outcome"] == "accepted")
            .count(),
        1
    );
    assert!(
        decisions
            .iter()
            .filter(|decision| decision["outcome"] == "refused")
            .all(|decision| decision["refusal"].is_string())
    );
    let decided = kinds(&server.events("rel").await?)
        .iter()
        .filter(|kind| *kind == "approval_decided")
        .count();
    assert_eq!(decided, 1, "one decision in the journal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_needs_a_reason() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("rel").await?;
    let path = format!("/v1/runs/rel/approvals/{proposal}/reject");
    for body in [
        json!({"hash": hash, "reason": ""}),
        json!({"hash": hash, "reason": "  \n\t "}),
        json!({"hash": hash}),
        json!({"hash": hash, "reason": null}),
    ] {
        let (status, answer) = server.post(&path, &server.alice, &body).await?;
        assert_error(status, &answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    let run = server.get_ok("/v1/runs/rel", &server.vic).await?;
    assert_eq!(run["status"], "awaiting_approval");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_json_fields_are_refused_by_name() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("rel").await?;
    let cases = [
        (
            format!("/v1/runs/rel/approvals/{proposal}/approve"),
            json!({"hash": hash, "approved_by": "ceo"}),
            "approved_by",
        ),
        (
            format!("/v1/runs/rel/approvals/{proposal}/reject"),
            json!({"hash": hash, "reason": "no", "force": true}),
            "force",
        ),
        (
            "/v1/runs/rel/cancel".to_owned(),
            json!({"reason": "stop", "as_user": "alice"}),
            "as_user",
        ),
    ];
    for (path, body, field) in cases {
        let token = if path.ends_with("cancel") {
            &server.sam
        } else {
            &server.alice
        };
        let (status, answer) = server.post(&path, token, &body).await?;
        let message = assert_error(status, &answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        assert!(message.contains(field), "names {field}: {message}");
    }
    let run = server.get_ok("/v1/runs/rel", &server.vic).await?;
    assert_eq!(run["status"], "awaiting_approval", "nothing was applied");
    assert_eq!(
        server.get_ok("/v1/runs/rel/decisions", &server.vic).await?["decisions"],
        json!([])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_deeper_than_64_levels_is_refused() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, _) = server.release("rel").await?;
    let path = format!("/v1/runs/rel/approvals/{proposal}/approve");
    let nested = |levels: usize| {
        format!(
            r#"{{"hash": {}{}}}"#,
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    };
    let send = |body: String| {
        server
            .request(Method::POST, &path, &server.alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // 65 levels in all (the object and 64 arrays).
    let (status, body) = answer(send(nested(65)).await?).await?;
    let message = assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        message.contains("nested") && message.contains("64"),
        "names the depth: {message}"
    );
    // 64 levels pass the depth check (and then fail as the wrong type).
    let (status, body) = answer(send(nested(64)).await?).await?;
    let message = assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(!message.contains("nested"), "{message}");
    // Very deep: still a clean 422, not a crash.
    let (status, body) = answer(send(nested(100_000)).await?).await?;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");

    // A JSON job spec too.
    let spec = format!(
        r#"{{"version": 1, "intent": {{"objective": "x"}}, "seeds": [{{"key": "seeds", "id": "deep", "content": {}1{}}}]}}"#,
        "[".repeat(70),
        "]".repeat(70)
    );
    let response = server
        .submit_as(&server.sam, "application/json", &spec, None)
        .await?;
    let (status, body) = answer(response).await?;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_answer_413_on_every_route() -> TestResult {
    let server = TestServer::start_with(|config| config.max_body = 4096).await?;
    let (proposal, hash) = server.release("rel").await?;
    let approve = format!("/v1/runs/rel/approvals/{proposal}/approve");
    // Valid bodies, padded past the limit.
    let padded_spec = format!("{}{}", release_spec(), "#".repeat(5000));
    let padded_json = format!(r#"{{"hash": "{hash}"{}}}"#, " ".repeat(5000));
    let big = "x".repeat(5000);

    let cases: Vec<(Method, &str, &str, &str, &str)> = vec![
        (
            Method::POST,
            "/v1/runs",
            "application/yaml",
            &padded_spec,
            &server.sam,
        ),
        (Method::GET, "/v1/runs", "text/plain", &big, &server.vic),
        (
            Method::GET,
            "/v1/runs/rel/facts",
            "text/plain",
            &big,
            &server.vic,
        ),
        (
            Method::POST,
            &approve,
            "application/json",
            &padded_json,
            &server.alice,
        ),
        (
            Method::POST,
            "/v1/runs/rel/cancel",
            "application/json",
            &padded_json,
            &server.sam,
        ),
        (Method::GET, "/healthz", "text/plain", &big, &server.vic),
    ];
    for (method, path, content_type, body, token) in &cases {
        assert!(body.len() > 4096 && body.len() < 12_000);
        // With a Content-Length.
        let response = server
            .request(method.clone(), path, token)
            .header("content-type", *content_type)
            .body(body.to_string())
            .send()
            .await?;
        let (status, answer) = answer(response).await?;
        assert_error(status, &answer, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    }
    // Streamed without a length: refused once the limit is crossed, wherever the body is read.
    for (method, path, content_type, body, token) in &cases[..1] {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .as_bytes()
            .chunks(1000)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let response = server
            .request(method.clone(), path, token)
            .header("content-type", *content_type)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await?;
        let (status, answer) = answer(response).await?;
        assert_error(status, &answer, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    }
    // Nothing was submitted, decided or cancelled; a body within the limit still works.
    let run = server.get_ok("/v1/runs/rel", &server.vic).await?;
    assert_eq!(run["status"], "awaiting_approval");
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1));
    let (status, body) = server
        .post(&approve, &server.alice, &json!({"hash": hash}))
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

/// A streamed (chunked) decision body over the limit is a 413 with the `too_large` code, like
/// every other body over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_decision_over_the_limit_answers_413_too_large() -> TestResult {
    let server = TestServer::start_with(|config| config.max_body = 4096).await?;
    let (proposal, hash) = server.release("rel").await?;
    let body = format!(r#"{{"hash": "{hash}"{}}}"#, " ".repeat(5000));
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .as_bytes()
        .chunks(1000)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    let response = server
        .request(
            Method::POST,
            &format!("/v1/runs/rel/approvals/{proposal}/approve"),
            &server.alice,
        )
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await?;
    let (status, answer) = answer(response).await?;
    assert_error(status, &answer, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_must_be_sent_as_json() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("rel").await?;
    let path = format!("/v1/runs/rel/approvals/{proposal}/approve");
    let body = json!({"hash": hash}).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = server
            .request(Method::POST, &path, &server.alice)
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, answer) = answer(request.send().await?).await?;
        assert_error(
            status,
            &answer,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    let run = server.get_ok("/v1/runs/rel", &server.vic).await?;
    assert_eq!(run["status"], "awaiting_approval");
    Ok(())
}

/// Reads from a raw connection until the server closes it; what it sent and how long it
/// took. Fails if it is still open after `limit`.
async fn read_until_closed(
    stream: &mut TcpStream,
    limit: Duration,
) -> TestResult<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buffer),
        )
        .await
        {
            Err(_) => {
                return Err(format!(
                    "the connection is still open after {limit:?}; received {:?}",
                    String::from_utf8_lossy(&received)
                )
                .into());
            }
            Ok(Ok(0) | Err(_)) => return Ok((received, started.elapsed())),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() -> TestResult {
    let server =
        TestServer::start_with(|config| config.header_timeout = Duration::from_secs(1)).await?;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(3)).await?;
    assert!(
        took >= Duration::from_millis(900),
        "not before the timeout: {took:?}"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || text.starts_with("HTTP/1.1 408"),
        "nothing but a 408 before closing: {text:?}"
    );

    // A client that connects and sends nothing at all is disconnected too.
    let mut silent = TcpStream::connect(&address).await?;
    let (received, _) = read_until_closed(&mut silent, Duration::from_secs(3)).await?;
    let text = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || text.starts_with("HTTP/1.1 408"),
        "nothing but a 408 before closing: {text:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() -> TestResult {
    let server =
        TestServer::start_with(|config| config.header_timeout = Duration::from_secs(1)).await?;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    // Read the whole answer, then stay silent.
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                return Err::<(), std::io::Error>(std::io::ErrorKind::UnexpectedEof.into());
            }
            received.extend_from_slice(&buffer[..read]);
            if received.ends_with(br#"{"status":"ok"}"#) {
                return Ok(());
            }
        }
    })
    .await;
    assert!(
        matches!(answered, Ok(Ok(()))),
        "answered and kept open: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(received.starts_with(b"HTTP/1.1 200"));
    let (after, _) = read_until_closed(&mut stream, Duration::from_secs(3)).await?;
    assert!(after.is_empty(), "{:?}", String::from_utf8_lossy(&after));
    Ok(())
}

/// Sends headers announcing a 100-byte body and 10 bytes of it, then stalls; what the server
/// sent before closing, and when it closed.
async fn stall_body(server: &TestServer, path: &str) -> TestResult<(String, Duration)> {
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"hash\": ",
        server.root
    );
    stream.write_all(head.as_bytes()).await?;
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(3)).await?;
    Ok((String::from_utf8_lossy(&received).into_owned(), took))
}

/// Routes that read a body: a submission, and a decision on run `x` (which exists, so that the
/// decision gets as far as reading its body; a run that does not exist is a 404 at once).
const STALLED_ROUTES: [&str; 2] = ["/v1/runs", "/v1/runs/x/approvals/c1.a1.p0/approve"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_body_is_cut_off() -> TestResult {
    let server =
        TestServer::start_with(|config| config.body_timeout = Duration::from_secs(1)).await?;
    server.release("x").await?;
    for path in STALLED_ROUTES {
        let (text, took) = stall_body(&server, path).await?;
        // Closed within the bound (checked by `stall_body`), not before the timeout, and with
        // at most an error answer: the request was never handled.
        assert!(
            took >= Duration::from_millis(900),
            "{path}: closed after {took:?}"
        );
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{path}: closed after {took:?} having sent {text:?}"
        );
    }
    // Nothing was submitted or decided: only run `x`, still waiting for its decision.
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    let runs = listed["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 1, "{listed}");
    assert_eq!(runs[0]["status"], "awaiting_approval", "{listed}");
    Ok(())
}

/// The timeout answer, when there is one, says what happened: 408 (not a generic 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_times_out_answers_408() -> TestResult {
    let server =
        TestServer::start_with(|config| config.body_timeout = Duration::from_secs(1)).await?;
    server.release("x").await?;
    for path in STALLED_ROUTES {
        let (text, took) = stall_body(&server, path).await?;
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{path}: closed after {took:?} having sent {text:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_never_contain_a_token() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("rel").await?;
    let secrets = [
        &server.sam,
        &server.alice,
        &server.bob,
        &server.vic,
        &server.root,
        &server.olga,
    ];
    let revoked = {
        let mut tokens = Tokens::open(server.db.clone())?;
        let issued = tokens.create("acme", "dave", Role::Approver)?;
        tokens.revoke(&issued.info.id)?;
        issued.secret
    };
    let approve = format!("/v1/runs/rel/approvals/{proposal}/approve");

    let mut answers: Vec<(StatusCode, String)> = Vec::new();
    let keep = |response: reqwest::Response| async move {
        let status = response.status();
        let headers = format!("{:?}", response.headers());
        let body = response.text().await?;
        TestResult::Ok((status, format!("{headers}\n{body}")))
    };
    // 401: revoked, and one character off a live token.
    let (head, last) = server.alice.split_at(server.alice.len() - 1);
    let off_by_one = format!("{head}{}", if last == "A" { "B" } else { "A" });
    for token in [&revoked, &off_by_one] {
        let response = server
            .request(Method::GET, "/v1/runs/rel", token)
            .send()
            .await?;
        answers.push(keep(response).await?);
    }
    // 403: roles and self-approval.
    let response = server
        .submit_as(&server.vic, "application/yaml", SEEDS_ONLY, None)
        .await?;
    answers.push(keep(response).await?);
    let sam_approver = server.token("acme", "sam", Role::Approver)?;
    let response = server
        .request(Method::POST, &approve, &sam_approver)
        .header("content-type", "application/json")
        .body(json!({"hash": hash}).to_string())
        .send()
        .await?;
    answers.push(keep(response).await?);
    // 404: another tenant, no run, no fact, no route.
    for (path, token) in [
        ("/v1/runs/rel", &server.olga),
        ("/v1/runs/ghost", &server.sam),
        ("/v1/runs/rel/facts/releases/nope", &server.sam),
        ("/v1/nothing", &server.sam),
    ] {
        let response = server.request(Method::GET, path, token).send().await?;
        answers.push(keep(response).await?);
    }
    // 409 and 422.
    let response = server
        .request(Method::POST, &approve, &server.alice)
        .header("content-type", "application/json")
        .body(json!({"hash": "0".repeat(64)}).to_string())
        .send()
        .await?;
    answers.push(keep(response).await?);
    let response = server
        .submit_as(
            &server.sam,
            "application/yaml",
            &release_spec(),
            Some("rel"),
        )
        .await?;
    answers.push(keep(response).await?);
    let response = server
        .submit_as(
            &server.sam,
            "application/yaml",
            "version: 1\nbogus: {}\n",
            None,
        )
        .await?;
    answers.push(keep(response).await?);
    let response = server
        .request(Method::POST, &approve, &server.alice)
        .header("content-type", "application/json")
        .body(r#"{"hash": 1, "x": 2}"#)
        .send()
        .await?;
    answers.push(keep(response).await?);

    let statuses: Vec<u16> = answers.iter().map(|(status, _)| status.as_u16()).collect();
    assert_eq!(
        statuses,
        [401, 401, 403, 403, 404, 404, 404, 404, 409, 409, 422, 422]
    );
    for (status, text) in &answers {
        for secret in secrets
            .iter()
            .copied()
            .chain([&revoked, &sam_approver, &off_by_one])
        {
            assert!(
                !text.contains(&secret[4..]) && !text.contains(&secret[4..24]),
                "a {status} answer contains a token: {text}"
            );
        }
        assert!(
            !text.contains("cvg_"),
            "a {status} answer quotes a token: {text}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_has_one_line_per_request_and_no_token() -> TestResult {
    let _ = captured_log();
    let server = TestServer::start().await?;
    server.submit(SEEDS_ONLY, Some("logged")).await?;
    server.settle("logged").await?;

    let mut expected = Vec::new();
    let response = server
        .request(Method::GET, "/v1/runs/logged", &server.sam)
        .send()
        .await?;
    expected.push((request_id(&response), "GET", "/v1/runs/{run}", 200));
    let response = server
        .request(
            Method::GET,
            "/v1/runs/logged/events?from=2&limit=3",
            &server.vic,
        )
        .send()
        .await?;
    expected.push((request_id(&response), "GET", "/v1/runs/{run}/events", 200));
    // A token's secret in a query (a client's mistake) is not logged either.
    let response = server
        .submit_as(
            &server.sam,
            "application/yaml",
            "version: 1\nbogus: 1\n",
            Some(&server.bob[..40]),
        )
        .await?;
    expected.push((request_id(&response), "POST", "/v1/runs", 422));
    let response = server
        .request(Method::GET, "/v1/runs/logged", &server.olga)
        .send()
        .await?;
    expected.push((request_id(&response), "GET", "/v1/runs/{run}", 404));
    let response = server
        .client
        .get(server.url("/v1/runs"))
        .header("authorization", format!("Bearer {}x", server.alice))
        .send()
        .await?;
    expected.push((request_id(&response), "GET", "/v1/runs", 401));
    let mut stream = SseStream::open(&server, "logged", &server.root, Some(1)).await?;
    stream.rest().await?;

    // Lines are written as the requests end; allow the last one to land.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = log_text();
        if expected.iter().all(|(id, ..)| log.contains(id.as_str())) || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (id, method, route, status) in &expected {
        assert!(!id.is_empty());
        let line = log
            .lines()
            .find(|line| line.contains(&format!("request_id={id}")))
            .ok_or_else(|| format!("no log line for request {id}"))?;
        for part in [
            format!("method={method}"),
            format!("route={route}"),
            format!("status={status}"),
        ] {
            assert!(line.contains(&part), "{part} in {line}");
        }
        assert!(!line.contains("logged"), "no run ids or queries: {line}");
    }
    for secret in [
        &server.sam,
        &server.alice,
        &server.bob,
        &server.vic,
        &server.root,
        &server.olga,
    ] {
        assert!(
            !log.contains(&secret[4..24]),
            "the log contains a token's secret"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_is_an_opaque_500_with_its_detail_in_the_log() -> TestResult {
    let _ = captured_log();
    let server = TestServer::start().await?;
    // A run in the journal that was not made from a job spec (as a program embedding the
    // runtime makes them), claimed by acme in the server's table.
    embedded_run(&server, "embedded").await?;
    let run_view = server.get_ok("/v1/runs/embedded", &server.vic).await?;
    assert_eq!(run_view["status"], "stopped");
    let response = server
        .request(Method::GET, "/v1/runs/embedded/facts", &server.vic)
        .send()
        .await?;
    let id = request_id(&response);
    let (status, body) = answer(response).await?;
    let message = assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert_eq!(body["error"]["request_id"], id.as_str());
    for detail in ["job spec", "acme", "embedded", "sqlite", "journal"] {
        assert!(
            !message.to_lowercase().contains(detail),
            "opaque: {message}"
        );
    }
    // The detail is in the log (whose lines must be found by the answer's request id: see
    // `an_internal_errors_detail_is_logged_under_its_request_id`).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = log_text();
        let detailed = log.lines().any(|line| {
            line.contains("internal error")
                && line.contains("acme-embedded")
                && line.contains("job spec")
        });
        if detailed {
            break;
        }
        assert!(Instant::now() < deadline, "no detail in the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Claims a run in acme named `id` that the journal has but that was not made from a job spec:
/// reading its facts needs its runtime, which the server cannot rebuild (an internal error).
async fn embedded_run(server: &TestServer, id: &str) -> TestResult {
    let run = converge_runtime::RunId::new(&format!("acme-{id}"))?;
    let loaded = converge_runtime::spec::JobSpec::parse(SEEDS_ONLY, "embedded.yaml")
        .map_err(|error| error.to_string())?;
    let mut runtime = loaded.spec.build().map_err(|error| error.to_string())?;
    let mut journal = converge_runtime::SqliteJournal::open(&server.db)?;
    runtime.run_durable(&mut journal, &run).await?;
    drop(journal);
    let connection = rusqlite::Connection::open(&server.db)?;
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.execute(
        "INSERT INTO server_runs (run, tenant, id, submitted_by, submitted_ms) \
         VALUES (?1, 'acme', ?2, 'sam', 0)",
        [run.as_str(), id],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_errors_detail_is_logged_under_its_request_id() -> TestResult {
    let _ = captured_log();
    let server = TestServer::start().await?;
    embedded_run(&server, "correlated").await?;
    let response = server
        .request(Method::GET, "/v1/runs/correlated/facts", &server.vic)
        .send()
        .await?;
    let id = request_id(&response);
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = log_text();
        let detailed = log.lines().any(|line| {
            line.contains(&format!("request_id={id}")) && line.contains("acme-correlated")
        });
        if detailed {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "no detail under {id} in the log: {:?}",
            log.lines()
                .filter(|line| line.contains("acme-correlated"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
