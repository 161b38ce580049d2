//! The HTTP API end to end, over real connections to a server started in-process: submitting
//! job specs, listing and reading runs, facts with provenance, rejections, approvals and
//! decisions, events as JSON pages and live server-sent events, the audit proof recomputed
//! independently, cancellation, and the operational routes. See `docs/http-api.md`.

mod common;

use std::time::Duration;

use common::{
    DERIVED, SEEDS_ONLY, SseMessage, SseStream, TestResult, TestServer, answer, assert_error,
    check_event_messages, is_hex_digest, kinds,
};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// [`SEEDS_ONLY`] as JSON text.
const SEEDS_ONLY_JSON: &str = r#"{
  "version": 1,
  "intent": {"objective": "greet"},
  "seeds": [{"key": "seeds", "id": "greeting", "content": "hello"}]
}"#;

/// A job whose one rule proposes content its key's schema refuses.
const REJECTING: &str = r#"
version: 1
intent: {objective: reject a note}
keys:
  - name: notes
    schema: {type: object, required: [n], properties: {n: {type: integer}}}
seeds:
  - {key: seeds, id: greeting, content: hello}
agents:
  - name: noter
    kind: rule
    reads: [seeds]
    writes: [notes]
    propose:
      key: notes
      id: bad-note
      content: {x: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_yaml_and_json_lists_newest_first_and_gets_status() -> TestResult {
    let server = TestServer::start().await?;

    let response = server
        .submit_as(&server.sam, "application/yaml", SEEDS_ONLY, None)
        .await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/v1/runs/acme-run-1");
    assert!(response.headers().contains_key("x-request-id"));
    let (_, first) = answer(response).await?;
    assert_eq!(first["id"], "acme-run-1");
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["submitted_by"], "sam");
    assert!(
        first["steps"].as_u64() >= Some(1),
        "answered once the first step is journaled: {first}"
    );
    assert!(first["events"].as_u64() >= Some(1), "{first}");
    assert!(is_hex_digest(
        first["root_hash"].as_str().unwrap_or_default()
    ));

    // The same spec as JSON text (with a charset parameter) is the same job.
    let response = server
        .submit_as(
            &server.sam,
            "application/json; charset=utf-8",
            SEEDS_ONLY_JSON,
            None,
        )
        .await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/v1/runs/acme-run-2");
    let (_, second) = answer(response).await?;
    assert_eq!(second["id"], "acme-run-2");

    let mut settled = Vec::new();
    for id in ["run-1", "run-2"] {
        let run = server.settle(id).await?;
        assert_eq!(run["status"], "stopped", "{run}");
        assert_eq!(run["stop_reason"], json!({"stop": "converged"}), "{run}");
        assert_eq!(run["driving"], false);
        // The run's head is its last event's hash, and its count is the events there are.
        let events = server.events(id).await?;
        assert_eq!(run["events"].as_u64(), Some(events.len() as u64));
        assert_eq!(run["root_hash"], events[events.len() - 1]["hash"]);
        settled.push(run);
    }
    // Same spec, same run: the YAML and the JSON body build the identical job.
    assert_eq!(settled[0]["root_hash"], settled[1]["root_hash"]);
    let yaml_facts = server.get_ok("/v1/runs/run-1/facts", &server.vic).await?;
    let json_facts = server.get_ok("/v1/runs/run-2/facts", &server.vic).await?;
    assert_eq!(yaml_facts, json_facts);

    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    let ids: Vec<&str> = listed["runs"]
        .as_array()
        .ok_or("no runs")?
        .iter()
        .filter_map(|run| run["id"].as_str())
        .collect();
    assert_eq!(ids, ["acme-run-2", "acme-run-1"], "newest first: {listed}");
    assert_eq!(listed["runs"][1], settled[0]);

    let limited = server.get_ok("/v1/runs?limit=1", &server.vic).await?;
    assert_eq!(limited["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(limited["runs"][0]["id"], "acme-run-2");

    let whoami = server.get_ok("/v1/whoami", &server.sam).await?;
    assert_eq!(
        whoami,
        json!({"name": "sam", "tenant": "acme", "role": "submitter"})
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_spec_answers_422_with_its_located_message_and_starts_nothing() -> TestResult {
    let server = TestServer::start().await?;

    let bad_yaml = "version: 1\nintent: {objective: x}\nbogus: 1\n";
    let response = server
        .submit_as(&server.sam, "application/yaml", bad_yaml, None)
        .await?;
    let (status, body) = answer(response).await?;
    let message = assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        message.contains("job.yaml:3:1:") && message.contains("unknown field `bogus`"),
        "the spec's located message: {message}"
    );
    // The test server resolves submitted specs against its journal's directory.
    let jobs_dir = server
        .db
        .parent()
        .map(|dir| dir.to_string_lossy().into_owned())
        .ok_or("no journal directory")?;
    assert!(
        !message.contains(&jobs_dir),
        "the server's directory {jobs_dir} stays private: {message}"
    );

    let bad_json = r#"{"version": 1, "intent": {"objective": "x"}, "agents": 7}"#;
    let response = server
        .submit_as(&server.sam, "application/json", bad_json, None)
        .await?;
    let (status, body) = answer(response).await?;
    let message = assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(message.contains(":1:"), "located: {message}");

    let not_json = "version: 1\n";
    let response = server
        .submit_as(&server.sam, "application/json", not_json, None)
        .await?;
    let (status, body) = answer(response).await?;
    let message = assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(message.contains("not JSON"), "{message}");

    // Command agents are refused unless the server allows them.
    let command = "version: 1\nintent: {objective: x}\nagents:\n  - {name: shell, kind: command, \
                   command: [/bin/true], writes: [hypotheses]}\n";
    let response = server
        .submit_as(&server.sam, "application/yaml", command, None)
        .await?;
    let (status, body) = answer(response).await?;
    let message = assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        message.contains("shell") && message.contains("--allow-commands"),
        "{message}"
    );

    // Nothing was started, and no id was used up.
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"], json!([]), "{listed}");
    let id = server.submit(SEEDS_ONLY, None).await?;
    assert_eq!(id, "acme-run-1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_content_type_answers_415() -> TestResult {
    let server = TestServer::start().await?;
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = server
            .submit_as(&server.sam, content_type, SEEDS_ONLY, None)
            .await?;
        let (status, body) = answer(response).await?;
        let message = assert_error(
            status,
            &body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
        assert!(message.contains("application/yaml"), "{message}");
    }
    // No content type at all.
    let response = server
        .request(Method::POST, "/v1/runs", &server.sam)
        .body(SEEDS_ONLY)
        .send()
        .await?;
    let (status, body) = answer(response).await?;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"], json!([]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ids_are_chosen_with_id_or_numbered_and_never_reused() -> TestResult {
    let server = TestServer::start().await?;
    // The run id is the tenant's prefix and the given id (or `run-N`); either form names it.
    assert_eq!(server.submit(SEEDS_ONLY, None).await?, "acme-run-1");
    assert_eq!(server.submit(SEEDS_ONLY, None).await?, "acme-run-2");
    assert_eq!(
        server.submit(SEEDS_ONLY, Some("nightly_2-4")).await?,
        "acme-nightly_2-4"
    );
    assert_eq!(
        server.submit(SEEDS_ONLY, Some("acme-weekly")).await?,
        "acme-weekly"
    );
    for named in ["weekly", "acme-weekly"] {
        let run = server
            .get_ok(&format!("/v1/runs/{named}"), &server.vic)
            .await?;
        assert_eq!(run["id"], "acme-weekly");
    }

    for taken in ["nightly_2-4", "run-1", "acme-run-2", "weekly"] {
        let response = server
            .submit_as(&server.sam, "application/yaml", SEEDS_ONLY, Some(taken))
            .await?;
        let (status, body) = answer(response).await?;
        assert_error(status, &body, StatusCode::CONFLICT, "run_exists");
    }
    let long = "x".repeat(49);
    for invalid in ["has space", "slash/y", "", long.as_str()] {
        let response = server
            .submit_as(&server.sam, "application/yaml", SEEDS_ONLY, Some(invalid))
            .await?;
        let (status, body) = answer(response).await?;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    // An unknown query parameter is refused, not ignored.
    let response = server
        .request(Method::POST, "/v1/runs?name=x", &server.sam)
        .header("content-type", "application/yaml")
        .body(SEEDS_ONLY)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(4), "{listed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_with_their_job_name_and_objective() -> TestResult {
    let server = TestServer::start().await?;
    let named = server
        .request(Method::POST, "/v1/runs", &server.sam)
        .query(&[("job", "greeting.yaml")])
        .header("content-type", "application/yaml")
        .body(SEEDS_ONLY)
        .send()
        .await?;
    let (status, body) = answer(named).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (&body["job"], &body["objective"]),
        (&json!("greeting.yaml"), &json!("greet")),
        "{body}"
    );
    server.submit(REJECTING, Some("nightly")).await?;
    server.submit(SEEDS_ONLY, None).await?;

    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    let rows: Vec<(&str, &str, &str)> = listed["runs"]
        .as_array()
        .ok_or("no runs")?
        .iter()
        .map(|run| {
            let text = |name: &str| run[name].as_str().unwrap_or("(none)");
            (text("id"), text("job"), text("objective"))
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("acme-run-3", "job.yaml", "greet"),
            ("acme-nightly", "nightly.yaml", "reject a note"),
            ("acme-run-1", "greeting.yaml", "greet"),
        ],
        "newest first, each with the name its spec goes by: {listed}"
    );
    let one = server.get_ok("/v1/runs/nightly", &server.vic).await?;
    assert_eq!(one["job"], "nightly.yaml", "{one}");

    // A job name is a file name: no paths, nothing hidden, nothing past 64 bytes.
    let long = "x".repeat(65);
    for invalid in ["../escape.yaml", "a/b.yaml", ".hidden", "", long.as_str()] {
        let response = server
            .request(Method::POST, "/v1/runs", &server.sam)
            .query(&[("job", invalid)])
            .header("content-type", "application/yaml")
            .body(SEEDS_ONLY)
            .send()
            .await?;
        let (status, body) = answer(response).await?;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(3), "{listed}");
    Ok(())
}

/// A default id that a client already chose explicitly must not make the next default
/// submission fail: ids are numbered by counting the tenant's runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_id_skips_ids_already_taken() -> TestResult {
    let server = TestServer::start().await?;
    // One run in the tenant, explicitly named what the next default would be.
    assert_eq!(
        server.submit(SEEDS_ONLY, Some("run-2")).await?,
        "acme-run-2"
    );
    let id = server.submit(SEEDS_ONLY, None).await?;
    assert_ne!(id, "acme-run-2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_list_with_provenance_and_one_fact_explains_its_sources() -> TestResult {
    let server = TestServer::start().await?;
    let id = server.submit(DERIVED, None).await?;
    server.settle(&id).await?;

    let listed = server
        .get_ok(&format!("/v1/runs/{id}/facts"), &server.vic)
        .await?;
    let facts = listed["facts"].as_array().ok_or("no facts")?;
    for fact in facts {
        for field in [
            "key",
            "id",
            "version",
            "content",
            "confidence",
            "content_hash",
            "agent",
            "cycle",
            "proposal",
            "derived_from",
            "approver",
        ] {
            assert!(fact.get(field).is_some(), "fact without {field}: {fact}");
        }
    }
    let names: Vec<(String, String, String)> = facts
        .iter()
        .map(|fact| {
            (
                fact["key"].as_str().unwrap_or_default().to_owned(),
                fact["id"].as_str().unwrap_or_default().to_owned(),
                fact["agent"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("seeds", "intent.objective", "intent"),
        ("seeds", "greeting", "seeds"),
        ("hypotheses", "from-greeting", "derive"),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(names.contains(&expected), "{expected:?} in {names:?}");
    }

    let derived = server
        .get_ok(
            &format!("/v1/runs/{id}/facts/hypotheses/from-greeting"),
            &server.vic,
        )
        .await?;
    assert_eq!(derived["key"], "hypotheses");
    assert_eq!(derived["id"], "from-greeting");
    assert_eq!(derived["agent"], "derive");
    assert_eq!(derived["cycle"], 2);
    assert_eq!(derived["content"], json!({"echo": "hello"}));
    assert_eq!(
        derived["derived_from"],
        json!([{"key": "seeds", "id": "greeting"}])
    );
    let sources = derived["sources"].as_array().ok_or("no sources")?;
    assert_eq!(sources.len(), 1, "{derived}");
    assert_eq!(sources[0]["key"], "seeds");
    assert_eq!(sources[0]["id"], "greeting");
    assert_eq!(sources[0]["agent"], "seeds");
    assert_eq!(sources[0]["content"], json!({"text": "hello"}));
    assert_eq!(sources[0]["sources"], json!([]));

    for missing in [
        "/facts/hypotheses/no-such-fact",
        "/facts/no_such_key/greeting",
        "/facts/seeds/from-greeting",
    ] {
        let (status, body) = server
            .get(&format!("/v1/runs/{id}{missing}"), &server.vic)
            .await?;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_list_each_refused_proposal_with_the_gates_reason() -> TestResult {
    let server = TestServer::start().await?;
    let clean = server.submit(SEEDS_ONLY, None).await?;
    let rejecting = server.submit(REJECTING, None).await?;
    server.settle(&clean).await?;
    let run = server.settle(&rejecting).await?;
    assert_eq!(run["stop_reason"]["stop"], "converged", "{run}");

    let none = server
        .get_ok(&format!("/v1/runs/{clean}/rejections"), &server.vic)
        .await?;
    assert_eq!(none, json!({"rejections": [], "failures": []}));

    let listed = server
        .get_ok(&format!("/v1/runs/{rejecting}/rejections"), &server.vic)
        .await?;
    assert_eq!(listed["failures"], json!([]), "{listed}");
    let rejections = listed["rejections"].as_array().ok_or("no rejections")?;
    assert_eq!(rejections.len(), 1, "{listed}");
    let rejected = &rejections[0];
    assert_eq!(rejected["key"], "notes");
    assert_eq!(rejected["id"], "bad-note");
    assert_eq!(rejected["content"], json!({"x": 1}));
    assert!(rejected["proposal"].is_string() && rejected["cycle"].is_u64());
    assert_eq!(rejected["rejection"]["kind"], "validator_failed");
    assert_eq!(rejected["rejection"]["validator"], "json-schema");
    assert!(
        rejected["rejection"]["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("\"n\"")),
        "{rejected}"
    );
    // The rejected proposal never became a fact.
    let (status, _) = server
        .get(
            &format!("/v1/runs/{rejecting}/facts/notes/bad-note"),
            &server.vic,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_of_the_listed_hash_promotes_the_fact_with_its_approver() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("release-1").await?;

    let approvals = server
        .get_ok("/v1/runs/release-1/approvals", &server.vic)
        .await?;
    let pending = &approvals["pending"][0];
    assert_eq!(pending["key"], "releases");
    assert_eq!(pending["id"], "release-2-4-0");
    // The agent that proposed it: its id as registered in `run_started`, and its name.
    let started = &server.events("release-1").await?[0]["event"];
    let agent_id = started["agents"]
        .as_array()
        .ok_or("no agents")?
        .iter()
        .find(|agent| agent["name"] == "propose-release")
        .map(|agent| agent["id"].clone())
        .ok_or("no propose-release agent")?;
    assert_eq!(pending["agent"], agent_id, "{pending}");
    assert_eq!(pending["agent_name"], "propose-release", "{pending}");
    assert!(is_hex_digest(&hash), "{pending}");
    assert_eq!(
        pending["content"],
        json!({"version": "2.4.0", "ship": true, "changes": 3, "assessed": "pr-1412"})
    );
    // Parked, not a fact yet.
    let (status, _) = server
        .get(
            "/v1/runs/release-1/facts/releases/release-2-4-0",
            &server.vic,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, accepted) = server
        .post(
            &format!("/v1/runs/release-1/approvals/{proposal}/approve"),
            &server.alice,
            &json!({"hash": hash}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["decision"]["outcome"], "accepted");
    assert_eq!(accepted["decision"]["actor"], "alice");
    assert_eq!(accepted["decision"]["verdict"], "approve");
    assert_eq!(accepted["decision"]["proposal"], proposal.as_str());
    assert_eq!(accepted["decision"]["hash"], hash.as_str());
    assert_eq!(accepted["run"]["id"], "acme-release-1");

    let run = server.settle("release-1").await?;
    assert_eq!(run["status"], "stopped");
    assert_eq!(run["stop_reason"], json!({"stop": "converged"}), "{run}");

    let fact = server
        .get_ok(
            "/v1/runs/release-1/facts/releases/release-2-4-0",
            &server.vic,
        )
        .await?;
    assert_eq!(fact["approver"]["name"], "alice", "{fact}");
    assert_eq!(fact["proposal_hash"], hash.as_str());
    assert_eq!(fact["content"], pending["content"]);
    let approvals = server
        .get_ok("/v1/runs/release-1/approvals", &server.vic)
        .await?;
    assert_eq!(approvals, json!({"pending": []}));

    let decisions = server
        .get_ok("/v1/runs/release-1/decisions", &server.vic)
        .await?;
    let decisions = decisions["decisions"].as_array().ok_or("no decisions")?;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0]["outcome"], "accepted");
    assert_eq!(decisions[0]["actor"], "alice");

    let events = server.events("release-1").await?;
    let decided: Vec<&Value> = events
        .iter()
        .filter(|entry| entry["event"]["event"] == "approval_decided")
        .collect();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["event"]["actor"]["name"], "alice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_with_a_reason_is_recorded_and_the_fact_never_promoted() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("release-1").await?;
    let (status, accepted) = server
        .post(
            &format!("/v1/runs/release-1/approvals/{proposal}/reject"),
            &server.bob,
            &json!({"hash": hash, "reason": "no rollback plan"}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["decision"]["verdict"], "reject");
    assert_eq!(accepted["decision"]["reason"], "no rollback plan");
    let run = server.settle("release-1").await?;
    // Its success criterion needs the release: the run stops on it.
    assert_eq!(run["stop_reason"]["stop"], "invariant_violated", "{run}");

    let rejections = server
        .get_ok("/v1/runs/release-1/rejections", &server.vic)
        .await?;
    let rejected = &rejections["rejections"][0];
    assert_eq!(rejected["id"], "release-2-4-0");
    assert_eq!(rejected["rejection"]["kind"], "rejected_by_approver");
    assert_eq!(rejected["rejection"]["reason"], "no rollback plan");
    assert_eq!(rejected["rejection"]["actor"]["name"], "bob");
    let (status, _) = server
        .get(
            "/v1/runs/release-1/facts/releases/release-2-4-0",
            &server.vic,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

/// A spec whose semantic invariant fails to evaluate once a number is seeded.
const DIVIDES_BY_ZERO: &str = r#"version: 1
intent: {objective: Divide}
keys:
  - name: numbers
seeds:
  - {key: numbers, id: n1, content: {n: 1}}
invariants:
  - name: ratio
    class: semantic
    check: facts.numbers.all(x, x.content.n / 0 >= 0)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invariant_that_cannot_be_evaluated_is_its_own_stop_reason() -> TestResult {
    let server = TestServer::start().await?;
    let id = server.submit(DIVIDES_BY_ZERO, Some("ratio-1")).await?;
    let run = server.settle(&id).await?;
    assert_eq!(run["stop_reason"]["stop"], "invariant_unevaluable", "{run}");
    assert_eq!(run["stop_reason"]["invariant"], "ratio", "{run}");
    let detail = run["stop_reason"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("divided by zero"), "{run}");
    let events = server.events(&id).await?;
    assert!(
        events
            .iter()
            .any(|entry| entry["event"]["event"] == "invariant_unevaluable"),
        "the event is journaled under its own name"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_list_pages_with_a_cursor_past_any_length() -> TestResult {
    let server = TestServer::start().await?;
    let mut submitted = Vec::new();
    for _ in 0..5 {
        submitted.push(server.submit(DERIVED, None).await?);
    }
    let mut listed: Vec<String> = Vec::new();
    let mut path = "/v1/runs?limit=2".to_owned();
    for _ in 0..10 {
        let page = server.get_ok(&path, &server.vic).await?;
        let runs = page["runs"].as_array().ok_or("no runs")?;
        assert!(runs.len() <= 2, "{page}");
        listed.extend(
            runs.iter()
                .filter_map(|run| run["id"].as_str().map(str::to_owned)),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/runs?limit=2&after={next}"),
            None => break,
        }
    }
    let mut newest_first = submitted.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first, "every run once, newest first");
    let response = server
        .request(Method::GET, "/v1/runs?after=garbage", &server.vic)
        .send()
        .await?;
    let (status, body) = answer(response).await?;
    let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(message.contains("after"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_mean_one_thing_everywhere_and_query_errors_name_the_parameter() -> TestResult {
    let server = TestServer::start().await?;
    let id = server.submit(DERIVED, None).await?;
    server.settle(&id).await?;
    for (path, max) in [
        ("/v1/runs".to_owned(), 1000),
        (format!("/v1/runs/{id}/events"), 5000),
        (format!("/v1/runs/{id}/audit"), 5000),
    ] {
        for bad in ["0".to_owned(), (max + 1).to_string()] {
            let response = server
                .request(Method::GET, &format!("{path}?limit={bad}"), &server.vic)
                .send()
                .await?;
            let (status, body) = answer(response).await?;
            let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
            assert!(
                message.contains("limit") && message.contains(&format!("1 to {max}")),
                "{path}?limit={bad}: {message}"
            );
        }
        let one = server
            .get_ok(&format!("{path}?limit=1"), &server.vic)
            .await?;
        let listed = one["runs"]
            .as_array()
            .or_else(|| one["events"].as_array())
            .or_else(|| one["entries"].as_array())
            .map(Vec::len);
        assert_eq!(listed, Some(1), "{path}?limit=1: {one}");
    }
    for query in ["limit=ten", "from=-1", "limit=1&bogus=2"] {
        let response = server
            .request(
                Method::GET,
                &format!("/v1/runs/{id}/events?{query}"),
                &server.vic,
            )
            .send()
            .await?;
        let (status, body) = answer(response).await?;
        let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        let named = query.split('=').next().unwrap_or_default();
        assert!(
            message.contains(named) || message.contains("bogus"),
            "{query}: {message}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_come_as_json_pages() -> TestResult {
    let server = TestServer::start().await?;
    let id = server.submit(DERIVED, None).await?;
    let run = server.settle(&id).await?;
    let total = run["events"].as_u64().ok_or("no event count")?;
    assert!(total > 6, "{run}");

    let all = server.events(&id).await?;
    assert_eq!(all.len() as u64, total);
    for (seq, entry) in all.iter().enumerate() {
        assert_eq!(entry["seq"], seq as u64, "{entry}");
        assert!(entry["step"].is_u64());
        assert!(is_hex_digest(entry["hash"].as_str().unwrap_or_default()));
        assert!(entry["event"]["event"].is_string(), "{entry}");
    }
    assert_eq!(kinds(&all)[0], "run_started");
    assert_eq!(kinds(&all).last().map(String::as_str), Some("run_stopped"));

    // Paging: ?from and ?limit, `next` and `stopped`.
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = server
            .get_ok(
                &format!("/v1/runs/{id}/events?from={from}&limit=5"),
                &server.vic,
            )
            .await?;
        let events = page["events"].as_array().ok_or("no events")?;
        assert!(events.len() <= 5);
        paged.extend(events.iter().cloned());
        let next = page["next"].as_u64().ok_or("no next")?;
        assert_eq!(next, from + events.len() as u64, "{page}");
        let stopped = page["stopped"].as_bool().ok_or("no stopped")?;
        assert_eq!(stopped, next == total, "{page}");
        if stopped {
            break;
        }
        from = next;
    }
    assert_eq!(paged, all);

    // Past the end: empty, `next` stays.
    let page = server
        .get_ok(
            &format!("/v1/runs/{id}/events?from={}", total + 10),
            &server.vic,
        )
        .await?;
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next"], total + 10);

    // A run awaiting approval has not stopped for good.
    server.release("release-1").await?;
    let page = server
        .get_ok("/v1/runs/release-1/events?from=0&limit=5000", &server.vic)
        .await?;
    assert_eq!(page["stopped"], false, "{page}");
    assert_eq!(
        kinds(page["events"].as_array().ok_or("no events")?)
            .iter()
            .filter(|kind| *kind == "approval_requested")
            .count(),
        1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_every_event_then_end_and_resumes_after_last_event_id() -> TestResult
{
    let server = TestServer::start().await?;
    let id = server.submit(DERIVED, None).await?;
    let run = server.settle(&id).await?;
    let total = run["events"].as_u64().ok_or("no event count")?;
    let page = server.events(&id).await?;

    let mut stream = SseStream::open(&server, &id, &server.vic, None).await?;
    let messages = stream.rest().await?;
    let (end, events) = messages.split_last().ok_or("no messages")?;
    let seqs = check_event_messages(events);
    assert_eq!(seqs, (0..total).collect::<Vec<_>>(), "consecutive from 0");
    // The data is the JSON page's entry, exactly.
    for (message, entry) in events.iter().zip(&page) {
        let data: Value = serde_json::from_str(&message.data)?;
        assert_eq!(&data, entry);
    }
    assert_eq!(end.event.as_deref(), Some("end"));
    let end: Value = serde_json::from_str(&end.data)?;
    assert_eq!(end["status"], "stopped");
    assert_eq!(end["stop_reason"], json!({"stop": "converged"}));

    // Reconnecting after N resumes at N+1: nothing missing, nothing repeated.
    for last in [0, 4, total - 2, total - 1] {
        let mut resumed = SseStream::open(&server, &id, &server.vic, Some(last)).await?;
        let messages = resumed.rest().await?;
        let seqs = check_event_messages(&messages[..messages.len() - 1]);
        assert_eq!(seqs, (last + 1..total).collect::<Vec<_>>(), "after {last}");
        assert_eq!(
            &messages[..messages.len() - 1],
            &events[(last + 1) as usize..]
        );
    }
    // ?from=N starts at N.
    let response = server
        .request(
            Method::GET,
            &format!("/v1/runs/{id}/events?from=3"),
            &server.vic,
        )
        .header("accept", "text/event-stream")
        .send()
        .await?;
    let text = response.text().await?;
    assert!(
        text.starts_with("id: 3\n") || text.contains("\nid: 3\n"),
        "{text}"
    );
    assert!(!text.contains("id: 2\n"), "{text}");

    // The last possible seq: nothing after it, never a wrap to the start of the stream.
    let mut past_the_end = SseStream::open(&server, &id, &server.vic, Some(u64::MAX)).await?;
    let messages = past_the_end.rest().await?;
    assert_eq!(messages.len(), 1, "only the end: {messages:?}");
    assert_eq!(messages[0].event.as_deref(), Some("end"));

    // A Last-Event-ID that is not a seq is a bad request.
    let response = server
        .request(Method::GET, &format!("/v1/runs/{id}/events"), &server.vic)
        .header("accept", "text/event-stream")
        .header("last-event-id", "three")
        .send()
        .await?;
    let (status, body) = answer(response).await?;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // A JSON page reads Last-Event-ID the same way: resumes after it, refuses a bad one.
    for (last, expected) in [("2", StatusCode::OK), ("null", StatusCode::BAD_REQUEST)] {
        let response = server
            .request(Method::GET, &format!("/v1/runs/{id}/events"), &server.vic)
            .header("last-event-id", last)
            .send()
            .await?;
        let (status, body) = answer(response).await?;
        assert_eq!(status, expected, "{body}");
        if status == StatusCode::OK {
            assert_eq!(body["events"][0]["seq"], 3, "{body}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_while_awaiting_approval_receives_the_decision_live_and_ends() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("release-1").await?;
    let before = server.get_ok("/v1/runs/release-1", &server.vic).await?;
    let committed = before["events"].as_u64().ok_or("no event count")?;

    let mut stream = SseStream::open(&server, "release-1", &server.vic, None).await?;
    let mut messages: Vec<SseMessage> = Vec::new();
    for _ in 0..committed {
        messages.push(stream.next().await?);
    }
    assert_eq!(
        messages.last().and_then(|message| message.event.as_deref()),
        Some("run_stopped")
    );
    assert!(
        messages
            .iter()
            .any(|message| message.event.as_deref() == Some("approval_requested"))
    );
    // Awaiting approval: the stream stays open and sends nothing more (no `end`).
    assert!(
        stream
            .next_within(Duration::from_millis(300))
            .await
            .is_err(),
        "nothing is sent while the run waits"
    );

    // Another client approves; the stream sees the rest live, then `end`.
    let (status, accepted) = server
        .post(
            &format!("/v1/runs/release-1/approvals/{proposal}/approve"),
            &server.alice,
            &json!({"hash": hash}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    let rest = stream.rest().await?;
    let (end, live) = rest.split_last().ok_or("no messages")?;
    assert_eq!(end.event.as_deref(), Some("end"));
    messages.extend(live.iter().cloned());

    let run = server.settle("release-1").await?;
    let total = run["events"].as_u64().ok_or("no event count")?;
    let seqs = check_event_messages(&messages);
    assert_eq!(
        seqs,
        (0..total).collect::<Vec<_>>(),
        "no event lost or repeated"
    );
    let live_kinds: Vec<&str> = live
        .iter()
        .filter_map(|message| message.event.as_deref())
        .collect();
    for kind in [
        "run_resumed",
        "approval_decided",
        "fact_promoted",
        "run_stopped",
    ] {
        assert!(live_kinds.contains(&kind), "{kind} in {live_kinds:?}");
    }
    let promoted = live
        .iter()
        .filter(|message| message.event.as_deref() == Some("fact_promoted"))
        .map(|message| serde_json::from_str::<Value>(&message.data))
        .collect::<Result<Vec<_>, _>>()?;
    assert!(
        promoted
            .iter()
            .any(|data| data["event"]["approver"]["name"] == "alice"),
        "{promoted:?}"
    );
    let end: Value = serde_json::from_str(&end.data)?;
    assert_eq!(end["stop_reason"], json!({"stop": "converged"}));
    Ok(())
}

/// An audit entry with its event's exact bytes.
#[derive(Deserialize)]
struct Entry<'a> {
    seq: u64,
    step: u64,
    hash: String,
    #[serde(borrow)]
    event: &'a RawValue,
}

#[derive(Deserialize)]
struct Audit<'a> {
    root_hash: String,
    steps: u64,
    events: u64,
    next: u64,
    #[serde(borrow)]
    entries: Vec<Entry<'a>>,
}

/// One link of the chain: SHA-256 over the previous hash, the seq as 8 little-endian bytes
/// and the event's exact bytes, each part preceded by its length as 8 little-endian bytes
/// (`converge_core::Digest::of_parts`; docs/http-api.md leaves the length prefixes out).
fn link_hash(previous: &[u8; 32], seq: u64, event: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [&previous[..], &seq.to_le_bytes(), event] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_recomputes_to_the_verified_root_and_replays_identically() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("release-1").await?;
    let (status, body) = server
        .post(
            &format!("/v1/runs/release-1/approvals/{proposal}/approve"),
            &server.alice,
            &json!({"hash": hash}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run = server.settle("release-1").await?;

    let text = server
        .request(Method::GET, "/v1/runs/release-1/audit", &server.vic)
        .send()
        .await?
        .text()
        .await?;
    let audit: Audit<'_> = serde_json::from_str(&text)?;
    assert_eq!(audit.events, audit.entries.len() as u64);
    assert_eq!(audit.next, audit.events);
    assert_eq!(Some(audit.events), run["events"].as_u64());
    assert_eq!(Some(audit.steps), run["steps"].as_u64());

    let mut previous = [0u8; 32];
    let mut last_step = 0;
    for (position, entry) in audit.entries.iter().enumerate() {
        assert_eq!(entry.seq, position as u64);
        assert!(entry.step >= last_step, "steps never go back");
        last_step = entry.step;
        let computed = link_hash(&previous, entry.seq, entry.event.get().as_bytes());
        assert_eq!(
            hex::encode(computed),
            entry.hash,
            "entry {} does not chain",
            entry.seq
        );
        previous = computed;
    }
    let last = audit.entries.last().ok_or("no entries")?;
    assert_eq!(audit.root_hash, last.hash);
    assert_eq!(hex::encode(previous), audit.root_hash);
    assert_eq!(run["root_hash"], audit.root_hash.as_str());

    let verify = server
        .get_ok("/v1/runs/release-1/verify", &server.vic)
        .await?;
    assert_eq!(verify["intact"], true, "{verify}");
    assert_eq!(verify["root_hash"], audit.root_hash.as_str());
    assert_eq!(verify["events"], audit.events);
    assert_eq!(verify["steps"], audit.steps);

    let replay = server
        .get_ok("/v1/runs/release-1/replay", &server.vic)
        .await?;
    assert_eq!(replay["replay"], "identical", "{replay}");
    assert_eq!(replay["root_hash"], audit.root_hash.as_str());
    assert_eq!(replay["events"], audit.events);

    // Pages of the audit are slices of the whole.
    let page_text = server
        .request(
            Method::GET,
            "/v1/runs/release-1/audit?from=5&limit=7",
            &server.vic,
        )
        .send()
        .await?
        .text()
        .await?;
    let page: Audit<'_> = serde_json::from_str(&page_text)?;
    assert_eq!(page.root_hash, audit.root_hash);
    assert_eq!(page.next, 12);
    let seqs: Vec<u64> = page.entries.iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, (5..12).collect::<Vec<_>>());
    for entry in &page.entries {
        let whole = &audit.entries[entry.seq as usize];
        assert_eq!(entry.hash, whole.hash);
        assert_eq!(entry.event.get(), whole.event.get());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_awaiting_approval_halts_it_for_good() -> TestResult {
    let server = TestServer::start().await?;
    let (proposal, hash) = server.release("release-1").await?;

    let response = server
        .request(Method::POST, "/v1/runs/release-1/cancel", &server.sam)
        .send()
        .await?;
    let (status, body) = answer(response).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["id"], "acme-release-1");
    let run = server.settle("release-1").await?;
    assert_eq!(run["status"], "stopped");
    assert_eq!(run["stop_reason"]["stop"], "halted", "{run}");
    let reason = run["stop_reason"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cancelled by sam"), "{run}");

    // The halt is journaled: the chain replays and verifies with it.
    let events = server.events("release-1").await?;
    assert_eq!(
        events.last().map(|entry| &entry["event"]["reason"]),
        Some(&run["stop_reason"]),
        "the last event is the halt"
    );
    let replay = server
        .get_ok("/v1/runs/release-1/replay", &server.vic)
        .await?;
    assert_eq!(replay["replay"], "identical", "{replay}");
    assert_eq!(replay["root_hash"], run["root_hash"]);
    let verify = server
        .get_ok("/v1/runs/release-1/verify", &server.vic)
        .await?;
    assert_eq!(verify["intact"], true);

    // Stopped for good: no second cancel, no resume, no decision, nothing pending.
    let response = server
        .request(Method::POST, "/v1/runs/release-1/cancel", &server.sam)
        .send()
        .await?;
    let (status, body) = answer(response).await?;
    assert_error(status, &body, StatusCode::CONFLICT, "stopped");
    let response = server
        .request(Method::POST, "/v1/runs/release-1/resume", &server.sam)
        .send()
        .await?;
    let (status, body) = answer(response).await?;
    assert_error(status, &body, StatusCode::CONFLICT, "stopped");
    let (status, body) = server
        .post(
            &format!("/v1/runs/release-1/approvals/{proposal}/approve"),
            &server.alice,
            &json!({"hash": hash}),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let approvals = server
        .get_ok("/v1/runs/release-1/approvals", &server.vic)
        .await?;
    assert_eq!(approvals, json!({"pending": []}));

    // A reason given with the cancellation is journaled; a body that is not JSON is refused
    // before anything is cancelled, as the document says.
    server.release("release-2").await?;
    let refused = server
        .request(Method::POST, "/v1/runs/release-2/cancel", &server.sam)
        .header("content-type", "text/plain")
        .body(r#"{"reason": "freeze week"}"#)
        .send()
        .await?;
    let (status, body) = answer(refused).await?;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let run = server.get_ok("/v1/runs/release-2", &server.vic).await?;
    assert_eq!(run["status"], "awaiting_approval", "{run}");
    let (status, body) = server
        .post(
            "/v1/runs/release-2/cancel",
            &server.sam,
            &json!({"reason": "freeze week"}),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run = server.settle("release-2").await?;
    let reason = run["stop_reason"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cancelled by sam") && reason.contains("freeze week"),
        "{run}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_answers_409_unless_the_run_was_left_running() -> TestResult {
    let server = TestServer::start().await?;
    let converged = server.submit(SEEDS_ONLY, None).await?;
    server.settle(&converged).await?;
    let response = server
        .request(
            Method::POST,
            &format!("/v1/runs/{converged}/resume"),
            &server.sam,
        )
        .send()
        .await?;
    let (status, body) = answer(response).await?;
    assert_error(status, &body, StatusCode::CONFLICT, "stopped");

    server.release("release-1").await?;
    let response = server
        .request(Method::POST, "/v1/runs/release-1/resume", &server.sam)
        .send()
        .await?;
    let (status, body) = answer(response).await?;
    assert_error(status, &body, StatusCode::CONFLICT, "awaiting_approval");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_routes_health_metrics_openapi_and_viewer() -> TestResult {
    let server = TestServer::start().await?;
    let id = server.submit(SEEDS_ONLY, Some("secret-project-x")).await?;
    server.settle(&id).await?;
    let _ = server
        .get_ok("/v1/runs/secret-project-x/facts", &server.vic)
        .await?;
    let (status, _) = server.get("/v1/runs/no-such-run", &server.vic).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // No token needed.
    let response = server.client.get(server.url("/healthz")).send().await?;
    assert!(response.headers().contains_key("x-request-id"));
    let (status, body) = answer(response).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));

    // Made-up methods are counted under one label: the series do not grow with them.
    for index in 0..50 {
        let method = Method::from_bytes(format!("BOGUS{index}").as_bytes())?;
        server
            .client
            .request(method, server.url("/healthz"))
            .send()
            .await?;
    }
    let response = server.client.get(server.url("/metrics")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = response.text().await?;
    assert!(
        metrics.contains("converge_http_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="/v1/runs/{run}""#),
        "requests are counted by route template: {metrics}"
    );
    assert!(metrics.contains("converge_runs"), "{metrics}");
    assert!(!metrics.contains("BOGUS"), "{metrics}");
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    for private in ["secret-project-x", "no-such-run", "acme"] {
        assert!(
            !metrics.contains(private),
            "the metrics name {private:?}: {metrics}"
        );
    }

    let response = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await?;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with('3')),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().ok_or("no paths")?;
    for path in [
        "/v1/runs",
        "/v1/runs/{run}",
        "/v1/runs/{run}/events",
        "/v1/runs/{run}/approvals/{proposal}/approve",
        "/v1/runs/{run}/audit",
    ] {
        assert!(paths.contains_key(path), "{path} in {:?}", paths.keys());
    }

    let response = server.client.get(server.url("/")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str()?.to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let policy = response
        .headers()
        .get("content-security-policy")
        .ok_or("no Content-Security-Policy")?
        .to_str()?
        .to_owned();
    assert!(policy.contains("default-src"), "{policy}");
    let html = response.text().await?;
    assert!(html.to_ascii_lowercase().contains("<html"), "{html}");

    // An unknown route answers the API's JSON 404, a wrong method its JSON 405.
    let response = server.client.get(server.url("/v2/nothing")).send().await?;
    let (status, body) = answer(response).await?;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let response = server.client.delete(server.url("/healthz")).send().await?;
    let (status, body) = answer(response).await?;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_of_one_id_create_one_run() -> TestResult {
    let server = TestServer::start().await?;
    let attempts = (0..6).map(|_| async {
        let response = server
            .submit_as(&server.sam, "application/yaml", SEEDS_ONLY, Some("once"))
            .await?;
        answer(response).await
    });
    let mut created = 0;
    for result in futures_util::future::join_all(attempts).await {
        let (status, body) = result?;
        match status {
            StatusCode::CREATED => created += 1,
            _ => {
                assert_error(status, &body, StatusCode::CONFLICT, "run_exists");
            }
        }
    }
    assert_eq!(created, 1);
    let run = server.settle("once").await?;
    assert_eq!(run["stop_reason"]["stop"], "converged");
    let listed = server.get_ok("/v1/runs", &server.vic).await?;
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1));
    Ok(())
}

/// Submissions without an id, at the same time, each get a run (and their own id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_without_an_id_each_get_a_run() -> TestResult {
    let server = TestServer::start().await?;
    let attempts = (0..4).map(|_| async {
        let response = server
            .submit_as(&server.sam, "application/yaml", SEEDS_ONLY, None)
            .await?;
        answer(response).await
    });
    let mut ids = Vec::new();
    for result in futures_util::future::join_all(attempts).await {
        let (status, body) = result?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap_or_default().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "{ids:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_from_a_model_carries_the_exchange_it_cites() -> TestResult {
    use converge_llm::scripted::{Reply, ScriptedServer, Wire};

    let model = ScriptedServer::start(Wire::OpenAi).await?;
    let text = json!({"proposals": [{"key": "hypotheses", "id": "h1",
                                     "content": {"claim": "x"}, "confidence": 0.6}]});
    model.push(Reply::answer(text.to_string(), 30, 8).answered_by("small:q4"));
    let spec = format!(
        "version: 1\nintent: {{objective: explain}}\nseeds:\n  - {{key: signals, id: s, content: up}}\n\
         agents:\n  - {{name: explainer, kind: llm, provider: ollama, base_url: \"{}\", \
         model: small, reads: [signals], writes: [hypotheses], prompt: \"Explain {{{{ facts.signals | tojson }}}}\"}}\n",
        model.base_url()
    );
    let server = TestServer::start().await?;
    let id = server.submit(&spec, None).await?;
    let run = server.settle(&id).await?;
    assert_eq!(run["status"], "stopped", "{run}");

    let fact = server
        .get_ok(&format!("/v1/runs/{id}/facts/hypotheses/h1"), &server.vic)
        .await?;
    let observations = fact["observations"].as_array().ok_or("no observations")?;
    assert_eq!(observations.len(), 1, "{fact}");
    let exchange = &observations[0];
    assert_eq!(exchange["id"], fact["evidence"][0]);
    assert_eq!(exchange["agent"], "explainer");
    assert_eq!(exchange["kind"], "llm.exchange");
    assert_eq!(exchange["payload"]["model"], "small");
    assert_eq!(exchange["payload"]["served_model"], "small:q4");
    assert!(exchange["payload"]["latency_ms"].is_u64(), "{exchange}");
    assert!(
        exchange["payload"]["prompt"]
            .as_str()
            .is_some_and(|prompt| prompt.starts_with("Explain [")),
        "{exchange}"
    );
    assert_eq!(exchange["payload"]["answer"]["usage"]["input"], 30);
    assert_eq!(fact["trace"]["system"], "ollama:small:q4");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_an_approvers_recorded_decision_that_re_executes_the_failed_agent() -> TestResult
{
    let server = TestServer::start_with(|config| config.allow_commands = true).await?;
    let ready = server.dir.path().join("ready");
    let id = server
        .submit(&common::flaky_spec(&ready), Some("alerts"))
        .await?;
    let run = server.settle(&id).await?;
    assert_eq!(run["status"], "stopped", "{run}");
    let path = format!("/v1/runs/{id}/retry");
    let why = json!({"reason": "the feed is ready"});

    // A submitter may resume and cancel, not decide; a blank reason and unknown fields are
    // refused; an agent that did not fail is named with those that did.
    let (status, body) = server.post(&path, &server.sam, &why).await?;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    for refused in [
        json!({"reason": "  "}),
        json!({"reason": "x", "agent": "score"}),
    ] {
        let (status, body) = server.post(&path, &server.alice, &refused).await?;
        assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    let (status, body) = server
        .post(
            &path,
            &server.alice,
            &json!({"agents": ["seed"], "reason": "x"}),
        )
        .await?;
    let message = assert_error(status, &body, StatusCode::CONFLICT, "not_retryable");
    assert!(message.contains("(failed: score)"), "{message}");

    std::fs::write(&ready, "")?;
    let (status, body) = server.post(&path, &server.alice, &why).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        (&body["actor"], &body["agents"], &body["reason"]),
        (
            &json!("alice"),
            &json!(["score"]),
            &json!("the feed is ready")
        )
    );
    let run = server.settle(&id).await?;
    assert_eq!(run["stop_reason"], json!({"stop": "converged"}), "{run}");
    let facts = server
        .get_ok(&format!("/v1/runs/{id}/facts"), &server.vic)
        .await?;
    assert!(facts.to_string().contains("disk-p2"), "{facts}");

    let events = server.events(&id).await?;
    let retried = events
        .iter()
        .find(|entry| entry["event"]["event"] == "run_retried")
        .ok_or("no run_retried event")?;
    assert_eq!(
        retried["event"]["actor"],
        json!({"name": "alice", "kind": "human"})
    );
    assert_eq!(retried["event"]["reason"], "the feed is ready");
    let verify = server
        .get_ok(&format!("/v1/runs/{id}/verify"), &server.vic)
        .await?;
    assert_eq!(verify["intact"], true, "{verify}");
    let replay = server
        .get_ok(&format!("/v1/runs/{id}/replay"), &server.vic)
        .await?;
    assert_eq!(replay["replay"], "identical", "{replay}");

    // Nothing failed any more: there is nothing to retry.
    let (status, body) = server.post(&path, &server.alice, &why).await?;
    let message = assert_error(status, &body, StatusCode::CONFLICT, "not_retryable");
    assert!(message.contains("nothing to retry"), "{message}");
    Ok(())
}
