//! What the API, security and browser tests share: a server started in-process on
//! `127.0.0.1:0` with a fresh journal and a set of tokens, small HTTP helpers over real
//! connections, and the jobs more than one of them submits.

#![allow(dead_code)]

use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use converge_server::{Role, Server, ServerConfig, Tokens};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

pub(crate) type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The job that stops awaiting approval of `releases/release-2-4-0`.
pub(crate) const RELEASE_SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/release-approval.yaml"
);

/// A job with only seeds: it converges at once.
pub(crate) const SEEDS_ONLY: &str = "\
version: 1
intent: {objective: greet}
seeds:
  - {key: seeds, id: greeting, content: hello}
";

/// A job whose rule derives a fact from a seed (so the derived fact has a source).
pub(crate) const DERIVED: &str = r#"
version: 1
intent: {objective: derive a greeting}
seeds:
  - {key: seeds, id: greeting, content: {text: hello}}
agents:
  - name: derive
    kind: rule
    reads: [seeds]
    writes: [hypotheses]
    for_each: seeds
    when: fact.id == "greeting"
    propose:
      key: hypotheses
      id: "from-{{ fact.id }}"
      content: {echo: "{{ fact.content.text }}"}
      confidence: 0.8
"#;

/// How long a run may take to reach its next stop.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn release_spec() -> String {
    std::fs::read_to_string(RELEASE_SPEC_PATH).expect("examples/release-approval.yaml")
}

/// A server on a fresh journal, with these tokens:
/// acme: sam (submitter), alice and bob (approvers), vic (viewer), root (admin);
/// other: olga (admin).
pub(crate) struct TestServer {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) db: PathBuf,
    pub(crate) base: String,
    pub(crate) client: Client,
    pub(crate) sam: String,
    pub(crate) alice: String,
    pub(crate) bob: String,
    pub(crate) vic: String,
    pub(crate) root: String,
    pub(crate) olga: String,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl TestServer {
    pub(crate) async fn start() -> TestResult<TestServer> {
        TestServer::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestResult<TestServer> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("journal.db");
        let mut tokens = Tokens::open(db.clone())?;
        let sam = tokens.create("acme", "sam", Role::Submitter)?.secret;
        let alice = tokens.create("acme", "alice", Role::Approver)?.secret;
        let bob = tokens.create("acme", "bob", Role::Approver)?.secret;
        let vic = tokens.create("acme", "vic", Role::Viewer)?.secret;
        let root = tokens.create("acme", "root", Role::Admin)?.secret;
        let olga = tokens.create("other", "olga", Role::Admin)?.secret;
        drop(tokens);
        let mut config = ServerConfig::new(db.clone());
        config.jobs_dir = dir.path().to_path_buf();
        configure(&mut config);
        let server = Server::bind(config).await?;
        let base = format!("http://{}", server.local_addr());
        let serving = tokio::spawn(async move {
            let _ = server.serve(std::future::pending::<()>()).await;
        });
        let client = Client::builder().timeout(Duration::from_secs(20)).build()?;
        Ok(TestServer {
            dir,
            db,
            base,
            client,
            sam,
            alice,
            bob,
            vic,
            root,
            olga,
            serving,
        })
    }

    /// A new token.
    pub(crate) fn token(&self, tenant: &str, name: &str, role: Role) -> TestResult<String> {
        Ok(Tokens::open(self.db.clone())?
            .create(tenant, name, role)?
            .secret)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with a bearer token.
    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// GET, answering the status and the body as JSON (Null when it is not JSON).
    pub(crate) async fn get(&self, path: &str, token: &str) -> TestResult<(StatusCode, Value)> {
        answer(self.request(Method::GET, path, token).send().await?).await
    }

    /// GET that must answer 200 with JSON.
    pub(crate) async fn get_ok(&self, path: &str, token: &str) -> TestResult<Value> {
        let (status, body) = self.get(path, token).await?;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        Ok(body)
    }

    /// POST with a JSON body.
    pub(crate) async fn post(
        &self,
        path: &str,
        token: &str,
        body: &Value,
    ) -> TestResult<(StatusCode, Value)> {
        let request = self
            .request(Method::POST, path, token)
            .header("content-type", "application/json")
            .body(body.to_string());
        answer(request.send().await?).await
    }

    /// Submits a spec with a content type and optional `?id=`.
    pub(crate) async fn submit_as(
        &self,
        token: &str,
        content_type: &str,
        spec: &str,
        id: Option<&str>,
    ) -> TestResult<reqwest::Response> {
        let mut request = self
            .request(Method::POST, "/v1/runs", token)
            .header("content-type", content_type)
            .body(spec.to_owned());
        if let Some(id) = id {
            request = request.query(&[("id", id)]);
        }
        Ok(request.send().await?)
    }

    /// Submits a YAML spec as sam, which must answer 201; the run's id.
    pub(crate) async fn submit(&self, spec: &str, id: Option<&str>) -> TestResult<String> {
        let response = self
            .submit_as(&self.sam, "application/yaml", spec, id)
            .await?;
        let (status, body) = answer(response).await?;
        assert_eq!(status, StatusCode::CREATED, "submit: {body}");
        Ok(body["id"].as_str().ok_or("no id")?.to_owned())
    }

    /// Polls the run until it is no longer running; its view.
    pub(crate) async fn settle(&self, id: &str) -> TestResult<Value> {
        let started = Instant::now();
        loop {
            let run = self.get_ok(&format!("/v1/runs/{id}"), &self.vic).await?;
            if run["status"] != "running" {
                return Ok(run);
            }
            assert!(
                started.elapsed() < RUN_TIMEOUT,
                "run {id} still running after {RUN_TIMEOUT:?}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Submits the release job (as sam, with this id) and waits until it awaits approval;
    /// the pending proposal's id and hash.
    pub(crate) async fn release(&self, id: &str) -> TestResult<(String, String)> {
        let id = self.submit(&release_spec(), Some(id)).await?;
        let run = self.settle(&id).await?;
        assert_eq!(run["status"], "awaiting_approval", "{run}");
        let approvals = self
            .get_ok(&format!("/v1/runs/{id}/approvals"), &self.vic)
            .await?;
        let pending = approvals["pending"].as_array().ok_or("no pending list")?;
        assert_eq!(pending.len(), 1, "{approvals}");
        let proposal = pending[0]["proposal"].as_str().ok_or("no proposal")?;
        let hash = pending[0]["hash"].as_str().ok_or("no hash")?;
        Ok((proposal.to_owned(), hash.to_owned()))
    }

    /// Every event of a run as a JSON page, from 0.
    pub(crate) async fn events(&self, id: &str) -> TestResult<Vec<Value>> {
        let page = self
            .get_ok(
                &format!("/v1/runs/{id}/events?from=0&limit=5000"),
                &self.vic,
            )
            .await?;
        Ok(page["events"].as_array().ok_or("no events")?.clone())
    }
}

/// The status and the body as JSON (Null when it is empty or not JSON).
pub(crate) async fn answer(response: reqwest::Response) -> TestResult<(StatusCode, Value)> {
    let status = response.status();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Asserts an answer is the API's error shape with this status and code; its message.
pub(crate) fn assert_error(
    status: StatusCode,
    body: &Value,
    expected: StatusCode,
    code: &str,
) -> String {
    assert_eq!(status, expected, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "no request id: {body}"
    );
    error["message"].as_str().unwrap_or_default().to_owned()
}

/// The kinds of a list of events (`event.event`).
pub(crate) fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|entry| entry["event"]["event"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// One server-sent event message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseMessage {
    pub(crate) id: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) data: String,
}

/// A server-sent event stream read over a real connection, message by message.
pub(crate) struct SseStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
}

/// How long a stream may stay silent when a message is expected.
pub(crate) const SSE_TIMEOUT: Duration = Duration::from_secs(10);

impl SseStream {
    /// Opens `GET /v1/runs/{id}/events` as a stream (after `last_event_id`, if given).
    pub(crate) async fn open(
        server: &TestServer,
        id: &str,
        token: &str,
        last_event_id: Option<u64>,
    ) -> TestResult<SseStream> {
        let mut request = server
            .request(Method::GET, &format!("/v1/runs/{id}/events"), token)
            .header("accept", "text/event-stream");
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last.to_string());
        }
        // No overall timeout: the stream stays open as long as the run may go on.
        let response = request.timeout(Duration::from_secs(3600)).send().await?;
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type:?}"
        );
        Ok(SseStream {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        })
    }

    /// The next message (comments skipped), None when the stream ended; fails when nothing
    /// arrives within `wait`.
    pub(crate) async fn next_within(&mut self, wait: Duration) -> TestResult<Option<SseMessage>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = find(&self.buffer, b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block)?;
                if let Some(message) = parse_message(&text) {
                    return Ok(Some(message));
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(format!("no SSE message within {wait:?}").into()),
                Ok(None) => {
                    assert!(
                        self.buffer.iter().all(u8::is_ascii_whitespace),
                        "the stream ended mid-message: {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    );
                    return Ok(None);
                }
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk?),
            }
        }
    }

    /// The next message, which must come.
    pub(crate) async fn next(&mut self) -> TestResult<SseMessage> {
        Ok(self
            .next_within(SSE_TIMEOUT)
            .await?
            .ok_or("the stream ended early")?)
    }

    /// Messages up to and including `event: end`, then checks the stream closes.
    pub(crate) async fn rest(&mut self) -> TestResult<Vec<SseMessage>> {
        let mut messages = Vec::new();
        loop {
            let message = self.next().await?;
            let end = message.event.as_deref() == Some("end");
            messages.push(message);
            if end {
                let after = self.next_within(SSE_TIMEOUT).await?;
                assert_eq!(after, None, "the stream goes on after `end`");
                return Ok(messages);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// One message block: `field: value` lines; comments (`:`) ignored. None if it has no field.
fn parse_message(block: &str) -> Option<SseMessage> {
    let mut message = SseMessage {
        id: None,
        event: None,
        data: String::new(),
    };
    let mut data_lines = Vec::new();
    let mut any = false;
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        any = true;
        match field {
            "id" => message.id = Some(value.to_owned()),
            "event" => message.event = Some(value.to_owned()),
            "data" => data_lines.push(value.to_owned()),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    message.data = data_lines.join("\n");
    any.then_some(message)
}

/// Checks SSE event messages (not `end`) against the API's contract and answers their seqs:
/// `id` is the seq, `event` the event's kind, `data` `{seq, step, hash, event}`.
pub(crate) fn check_event_messages(messages: &[SseMessage]) -> Vec<u64> {
    messages
        .iter()
        .map(|message| {
            let data: Value = serde_json::from_str(&message.data)
                .unwrap_or_else(|error| panic!("data is not JSON ({error}): {message:?}"));
            let seq = data["seq"].as_u64().expect("data.seq");
            assert_eq!(
                message.id.as_deref(),
                Some(seq.to_string().as_str()),
                "{message:?}"
            );
            assert!(data["step"].is_u64(), "{message:?}");
            let hash = data["hash"].as_str().expect("data.hash");
            assert!(is_hex_digest(hash), "{message:?}");
            assert_eq!(
                message.event.as_deref(),
                data["event"]["event"].as_str(),
                "the SSE event name is the event's kind: {message:?}"
            );
            seq
        })
        .collect()
}

/// 64 lowercase hex digits.
pub(crate) fn is_hex_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A job whose `score` command fails until the file `ready` exists: a run to retry once
/// `ready` is written.
pub(crate) fn flaky_spec(ready: &std::path::Path) -> String {
    format!(
        r#"version: 1
intent: {{objective: score the alerts once the feed is ready}}
seeds:
  - {{key: signals, id: disk, content: "disk 91% full"}}
agents:
  - name: score
    kind: command
    reads: [signals]
    writes: [evaluations]
    command: [sh, -c, 'cat > /dev/null; test -f "{}" || {{ echo "the feed is not ready" >&2; exit 3; }}; echo "{{\"proposals\":[{{\"key\":\"evaluations\",\"id\":\"disk-p2\",\"content\":\"P2\"}}]}}"']
    timeout_ms: 10000
"#,
        ready.display()
    )
}
