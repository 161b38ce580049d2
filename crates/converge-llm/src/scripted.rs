//! A loopback HTTP/1.1 server that answers model requests with scripted replies, so jobs with
//! `llm` agents can be tested offline, over a real socket, with exact wire behaviour.
//!
//! A [`ScriptedServer`] speaks one [`Wire`] on `127.0.0.1`. Each connection carries one
//! request: the server reads it (headers up to 64 KiB, a `Content-Length` body up to 8 MiB),
//! records it, checks it against the wire format, and answers with the next [`Reply`] pushed,
//! then closes. Replies are bytes the test controls: a status, headers, a body that may be cut
//! off, a delay. [`Reply::answer`] and [`Reply::error`] are written in the server's wire format
//! when sent. When no reply is left the server answers 500, so a test that forgot one fails
//! clearly. It is a test double, not a model: it never looks at prompts.
//!
//! ```
//! use converge_llm::scripted::{Reply, ScriptedServer, Wire};
//! use serde_json::{Value, json};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let server = ScriptedServer::start(Wire::OpenAi).await?;
//!     server.push(Reply::answer(r#"{"label":"churn"}"#, 12, 3));
//!
//!     let answer: Value = reqwest::Client::new()
//!         .post(format!("{}/chat/completions", server.base_url()))
//!         .json(&json!({"model": "small", "messages": [{"role": "user", "content": "hi"}]}))
//!         .send()
//!         .await?
//!         .json()
//!         .await?;
//!
//!     assert_eq!(answer["choices"][0]["message"]["content"], r#"{"label":"churn"}"#);
//!     assert_eq!(answer["usage"]["total_tokens"], 15);
//!     let request = &server.requests()[0];
//!     assert_eq!(request.path, "/v1/chat/completions");
//!     assert_eq!(request.json().unwrap()["model"], "small");
//!     assert!(server.violations().is_empty());
//!     Ok(())
//! })
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The largest request head (request line and headers) read.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// The largest request body read.
const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// The most requests one server records; later ones are answered 503.
const REQUESTS_MAX: usize = 10_000;
/// The most bytes discarded from a refused request before its connection closes.
const DRAIN_BYTES_MAX: usize = BODY_BYTES_MAX + HEAD_BYTES_MAX;
/// How long the accept loop waits after a failed accept (out of file descriptors, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// The `created` timestamp of every OpenAI answer, so answers are reproducible.
const CREATED_UNIX_S: u64 = 1_700_000_000;

/// A body field a wire requires, and the check of its type.
type RequiredField = (&'static str, fn(&Value) -> bool);

/// The wire format a [`ScriptedServer`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI-compatible chat completions: `POST /v1/chat/completions`.
    OpenAi,
    /// Anthropic's Messages API: `POST /v1/messages`.
    Anthropic,
}

impl Wire {
    fn endpoint(self) -> &'static str {
        match self {
            Wire::OpenAi => "/v1/chat/completions",
            Wire::Anthropic => "/v1/messages",
        }
    }

    fn key_header(self) -> &'static str {
        match self {
            Wire::OpenAi => "authorization",
            Wire::Anthropic => "x-api-key",
        }
    }

    fn key_value(self, key: &str) -> String {
        match self {
            Wire::OpenAi => format!("Bearer {key}"),
            Wire::Anthropic => key.to_owned(),
        }
    }

    fn required_fields(self) -> &'static [RequiredField] {
        match self {
            Wire::OpenAi => &[("model", Value::is_string), ("messages", Value::is_array)],
            Wire::Anthropic => &[
                ("model", Value::is_string),
                ("max_tokens", Value::is_u64),
                ("messages", Value::is_array),
            ],
        }
    }

    fn error_body(self, kind: &str, message: &str) -> Value {
        match self {
            Wire::OpenAi => json!({
                "error": {"message": message, "type": kind, "param": null, "code": null}
            }),
            Wire::Anthropic => json!({
                "type": "error",
                "error": {"type": kind, "message": message}
            }),
        }
    }

    fn answer_body(self, answer: &Answer, request: &Value, number: usize) -> Value {
        let requested = request["model"].as_str().unwrap_or("scripted");
        let model = answer.model.as_deref().unwrap_or(requested);
        match self {
            Wire::OpenAi => json!({
                "id": format!("chatcmpl-scripted-{number}"),
                "object": "chat.completion",
                "created": CREATED_UNIX_S,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": "stop"
                }],
                "usage": {
                    "prompt_tokens": answer.input_tokens,
                    "completion_tokens": answer.output_tokens,
                    "total_tokens": answer.input_tokens.saturating_add(answer.output_tokens)
                }
            }),
            Wire::Anthropic => {
                let had_tools = request["tools"].as_array().is_some_and(|t| !t.is_empty());
                let input = serde_json::from_str::<Value>(&answer.text).ok();
                let (block, stop_reason) = match input {
                    Some(input) if had_tools => (
                        json!({
                            "type": "tool_use",
                            "id": format!("toolu_scripted_{number}"),
                            "name": "answer",
                            "input": input
                        }),
                        "tool_use",
                    ),
                    _ => (json!({"type": "text", "text": answer.text}), "end_turn"),
                };
                json!({
                    "id": format!("msg_scripted_{number}"),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [block],
                    "stop_reason": stop_reason,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": answer.input_tokens,
                        "output_tokens": answer.output_tokens,
                        "cache_read_input_tokens": answer.cache_read_tokens,
                        "cache_creation_input_tokens": answer.cache_written_tokens
                    }
                })
            }
        }
    }
}

/// A loopback HTTP/1.1 server answering with scripted replies. It stops when dropped.
pub struct ScriptedServer {
    address: SocketAddr,
    wire: Wire,
    script: Arc<Mutex<Script>>,
    task: JoinHandle<()>,
}

/// What the server shares with its connections.
#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    requests: Vec<Request>,
    violations: Vec<String>,
    expected_key: Option<String>,
}

impl ScriptedServer {
    /// Starts a server for `wire` on a free port of `127.0.0.1`. Must be called within a Tokio
    /// runtime; the server runs on it until dropped.
    pub async fn start(wire: Wire) -> std::io::Result<ScriptedServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let script = Arc::new(Mutex::new(Script::default()));
        let task = tokio::spawn(accept(listener, wire, Arc::clone(&script)));
        Ok(ScriptedServer {
            address,
            wire,
            script,
            task,
        })
    }

    /// What a provider's `base_url` should be: `http://127.0.0.1:PORT/v1` for
    /// [`Wire::OpenAi`], `http://127.0.0.1:PORT` for [`Wire::Anthropic`].
    pub fn base_url(&self) -> String {
        match self.wire {
            Wire::OpenAi => format!("http://{}/v1", self.address),
            Wire::Anthropic => format!("http://{}", self.address),
        }
    }

    /// Queues `reply`; replies are sent in the order they were pushed, one per request.
    pub fn push(&self, reply: Reply) {
        self.script().replies.push_back(reply);
    }

    /// Every request received, in order, including those answered with an error.
    pub fn requests(&self) -> Vec<Request> {
        self.script().requests.clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.script().requests.len()
    }

    /// The ways requests broke the wire format, one message each, prefixed with the request's
    /// number: a request that could not be read, a wrong method or path, a body that is not a
    /// JSON object, a missing `model` or `messages` (and `max_tokens` for Anthropic), a
    /// missing `anthropic-version`, a content type other than JSON, and a missing key header
    /// once [`ScriptedServer::expect_key`] was called. A violating request is answered 400 in
    /// the wire's error format, uses no scripted reply, and is still recorded. A request that
    /// cannot be read at all is answered 400 (431, 413 or 501 past a limit or for a chunked
    /// body), numbered as the next request would be, and not recorded.
    pub fn violations(&self) -> Vec<String> {
        self.script().violations.clone()
    }

    /// Requires every later request to carry `key`: `authorization: Bearer <key>` (OpenAI) or
    /// `x-api-key: <key>` (Anthropic). A missing header is a violation; a different key is a
    /// scenario, answered 401 in the wire's error format without using a scripted reply.
    pub fn expect_key(&self, key: &str) {
        self.script().expected_key = Some(key.to_owned());
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        // The connections live in a `JoinSet` owned by this task, so they stop with it.
        self.task.abort();
    }
}

impl fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("wire", &self.wire)
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

/// One request as the server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (`POST`).
    pub method: String,
    /// The request target, as sent (`/v1/messages`), query included.
    pub path: String,
    /// The headers in the order sent, names lowercased, values without surrounding blanks.
    pub headers: Vec<(String, String)>,
    /// The body, exactly as sent.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let (_, value) = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        Some(value)
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What the server sends back for one request: a status, headers, a body, and optionally a
/// cut-off body or a delay.
///
/// Every reply carries `content-type`, `content-length` (the full body's length) and
/// `connection: close`; [`Reply::with_header`] replaces any of them by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    status: u16,
    content: Content,
    headers: Vec<(String, String)>,
    sent_bytes_max: Option<usize>,
    delay: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
enum Content {
    Raw { content_type: String, body: Vec<u8> },
    Answer(Answer),
    Error { kind: String, message: String },
}

#[derive(Debug, Clone, PartialEq)]
struct Answer {
    text: String,
    input_tokens: u64,
    output_tokens: u64,
    /// The model the answer names, when it is not the requested one.
    model: Option<String>,
    cache_read_tokens: u64,
    cache_written_tokens: u64,
}

impl Reply {
    /// `body` as JSON with `status`.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::raw(status, "application/json", body.to_string())
    }

    /// `body` as is, with `status` and `content_type`.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        let content_type = content_type.to_owned();
        Reply::of(
            status,
            Content::Raw {
                content_type,
                body: body.into(),
            },
        )
    }

    /// A complete successful answer whose content is `text`, in the server's wire format.
    ///
    /// OpenAI: a `chat.completion` with id `chatcmpl-scripted-N` (N is the request's number),
    /// the request's model, one choice with `text` as content and `finish_reason: stop`, and
    /// the usage. Anthropic: a `message` with id `msg_scripted_N` and the request's model;
    /// when the request offered tools and `text` is JSON, one `tool_use` block named `answer`
    /// whose input is `text` parsed (`stop_reason: tool_use`), otherwise one text block
    /// (`stop_reason: end_turn`); and the usage, with no cached tokens. [`Reply::answered_by`]
    /// and [`Reply::with_cache_tokens`] change the model and the cached tokens.
    pub fn answer(text: impl Into<String>, input_tokens: u64, output_tokens: u64) -> Reply {
        let answer = Answer {
            text: text.into(),
            input_tokens,
            output_tokens,
            model: None,
            cache_read_tokens: 0,
            cache_written_tokens: 0,
        };
        Reply::of(200, Content::Answer(answer))
    }

    /// For an [`Reply::answer`]: the answer names `model` as the model that answered, as a
    /// server does that serves another model than the one asked for (an alias, a quantized
    /// build). Other replies are unchanged.
    pub fn answered_by(mut self, model: &str) -> Reply {
        if let Content::Answer(answer) = &mut self.content {
            answer.model = Some(model.to_owned());
        }
        self
    }

    /// For an [`Reply::answer`] in Anthropic's format: the usage also reports `read` prompt
    /// tokens served from the prompt cache (`cache_read_input_tokens`) and `written` ones
    /// added to it (`cache_creation_input_tokens`); both are zero unless set. The OpenAI
    /// format has no such fields, and other replies are unchanged.
    pub fn with_cache_tokens(mut self, read: u64, written: u64) -> Reply {
        if let Content::Answer(answer) = &mut self.content {
            answer.cache_read_tokens = read;
            answer.cache_written_tokens = written;
        }
        self
    }

    /// An error with `status` in the server's wire format, `kind` being its type
    /// (`rate_limit_error`…): OpenAI `{"error": {"message", "type", "param": null,
    /// "code": null}}`, Anthropic `{"type": "error", "error": {"type", "message"}}`.
    pub fn error(status: u16, kind: &str, message: &str) -> Reply {
        let content = Content::Error {
            kind: kind.to_owned(),
            message: message.to_owned(),
        };
        Reply::of(status, content)
    }

    /// Adds a header, replacing a default one of the same name (`content-length`…).
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Declares the full body's `content-length` but sends only its first `sent` bytes, then
    /// closes the connection.
    pub fn truncated(mut self, sent: usize) -> Reply {
        self.sent_bytes_max = Some(sent);
        self
    }

    /// Waits `delay` before answering (a slow server, or a timeout test).
    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    fn of(status: u16, content: Content) -> Reply {
        Reply {
            status,
            content,
            headers: Vec::new(),
            sent_bytes_max: None,
            delay: None,
        }
    }

    /// The bytes of this reply to request `number`, in `wire`'s format.
    fn resolve(self, wire: Wire, request: &Value, number: usize) -> Outgoing {
        let (content_type, body) = match self.content {
            Content::Raw { content_type, body } => (content_type, body),
            Content::Answer(answer) => {
                let body = wire.answer_body(&answer, request, number);
                ("application/json".to_owned(), body.to_string().into_bytes())
            }
            Content::Error { kind, message } => {
                let body = wire.error_body(&kind, &message);
                ("application/json".to_owned(), body.to_string().into_bytes())
            }
        };
        let mut headers = vec![
            ("content-type".to_owned(), content_type),
            ("content-length".to_owned(), body.len().to_string()),
            ("connection".to_owned(), "close".to_owned()),
        ];
        for (name, value) in self.headers {
            match headers
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
            {
                Some(default) => *default = (name, value),
                None => headers.push((name, value)),
            }
        }
        let sent = self
            .sent_bytes_max
            .map_or(body.len(), |max| max.min(body.len()));
        Outgoing {
            status: self.status,
            headers,
            body,
            sent,
            delay: self.delay,
        }
    }
}

/// A reply ready to write.
struct Outgoing {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    sent: usize,
    delay: Option<Duration>,
}

impl Outgoing {
    fn error(wire: Wire, status: u16, kind: &str, message: &str) -> Outgoing {
        Reply::error(status, kind, message).resolve(wire, &Value::Null, 0)
    }

    async fn write(self, stream: &mut TcpStream) -> std::io::Result<()> {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&self.body[..self.sent]).await?;
        stream.flush().await?;
        stream.shutdown().await
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Status",
    }
}

fn lock(script: &Mutex<Script>) -> MutexGuard<'_, Script> {
    // A test that panicked while holding the lock leaves consistent data behind: every
    // update is a single push or pop.
    script.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept(listener: TcpListener, wire: Wire, script: Arc<Mutex<Script>>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(answer(stream, wire, Arc::clone(&script)));
                }
                Err(_) => tokio::time::sleep(ACCEPT_PAUSE).await,
            },
            // Reap finished connections so the set stays as small as the live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Reads one request from `stream`, answers it and closes.
async fn answer(mut stream: TcpStream, wire: Wire, script: Arc<Mutex<Script>>) {
    let outgoing = match read_request(&mut stream).await {
        Ok(None) => return,
        Ok(Some(request)) => decide(request, wire, &script),
        Err(refusal) => {
            let mut script = lock(&script);
            let number = script.requests.len() + 1;
            script
                .violations
                .push(format!("request {number}: {}", refusal.reason));
            Outgoing::error(
                wire,
                refusal.status,
                "invalid_request_error",
                &refusal.reason,
            )
        }
    };
    // The client may be gone already; there is nobody left to tell.
    let _ = outgoing.write(&mut stream).await;
    drain(&mut stream).await;
}

/// Reads what the client still sends, so closing does not reset the connection before the
/// client has read the reply.
async fn drain(stream: &mut TcpStream) {
    let mut chunk = [0u8; 8192];
    let mut drained = 0;
    while drained < DRAIN_BYTES_MAX {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => drained += read,
        }
    }
}

/// Records `request` and chooses its reply.
fn decide(request: Request, wire: Wire, script: &Mutex<Script>) -> Outgoing {
    let mut script = lock(script);
    if script.requests.len() >= REQUESTS_MAX {
        let message = format!("the scripted server records at most {REQUESTS_MAX} requests");
        return Outgoing::error(wire, 503, "overloaded_error", &message);
    }
    let number = script.requests.len() + 1;
    let json = request.json().unwrap_or(Value::Null);
    let violations = violations(wire, &request, &json, script.expected_key.is_some());
    let key_matches = match &script.expected_key {
        Some(key) => request.header(wire.key_header()) == Some(wire.key_value(key).as_str()),
        None => true,
    };
    script.requests.push(request);
    if !violations.is_empty() {
        let message = violations.join("; ");
        let numbered = violations
            .into_iter()
            .map(|v| format!("request {number}: {v}"));
        script.violations.extend(numbered);
        return Outgoing::error(wire, 400, "invalid_request_error", &message);
    }
    if !key_matches {
        let message = "invalid API key (scripted)";
        return Outgoing::error(wire, 401, "authentication_error", message);
    }
    match script.replies.pop_front() {
        Some(reply) => reply.resolve(wire, &json, number),
        None => {
            let message = format!("no scripted reply left for request {number}");
            Outgoing::error(wire, 500, "api_error", &message)
        }
    }
}

/// How `request` breaks `wire`'s format.
fn violations(wire: Wire, request: &Request, json: &Value, key_required: bool) -> Vec<String> {
    let mut found = Vec::new();
    let target = format!("{} {}", request.method, request.path);
    if request.method != "POST" {
        found.push(format!("{target}: the method must be POST"));
    }
    let path = request.path.split('?').next().unwrap_or_default();
    if path != wire.endpoint() {
        found.push(format!("{target}: the path must be {}", wire.endpoint()));
    }
    if key_required && request.header(wire.key_header()).is_none() {
        found.push(format!("missing `{}` header", wire.key_header()));
    }
    if wire == Wire::Anthropic && request.header("anthropic-version").is_none() {
        found.push("missing `anthropic-version` header".to_owned());
    }
    let content_type = request.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        found.push(format!(
            "content-type `{content_type}` is not application/json"
        ));
    }
    found.extend(body_violations(wire, request, json));
    found
}

fn body_violations(wire: Wire, request: &Request, json: &Value) -> Vec<String> {
    if serde_json::from_slice::<Value>(&request.body).is_err() {
        return vec!["the body is not JSON".to_owned()];
    }
    if !json.is_object() {
        return vec!["the body is not a JSON object".to_owned()];
    }
    let broken = wire
        .required_fields()
        .iter()
        .filter(|(field, is_valid)| !is_valid(&json[field]));
    broken
        .map(|(field, _)| format!("the body's `{field}` is missing or mistyped"))
        .collect()
}

/// Why a request could not be read, and the status that says so.
struct Refusal {
    status: u16,
    reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// Reads one request; `None` when the client closed without sending anything.
async fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, Refusal> {
    let mut buffer = Vec::new();
    let Some(head_end) = read_head(stream, &mut buffer).await? else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..head_end])
        .map_err(|_| Refusal::new(400, "the request head is not UTF-8"))?;
    let (method, path, headers) = parse_head(head)?;
    let length = content_length(&headers)?;
    let mut body = buffer.split_off(head_end + 4);
    body.truncate(length);
    read_body(stream, &mut body, length).await?;
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
    }))
}

/// Reads until the blank line ending the head, returning where it starts.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Option<usize>, Refusal> {
    let mut chunk = [0u8; 8192];
    // Every round reads at least one byte, so the size limit bounds the loop.
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(end));
        }
        if buffer.len() > HEAD_BYTES_MAX {
            let limit_kib = HEAD_BYTES_MAX / 1024;
            return Err(Refusal::new(
                431,
                format!("the request head exceeds {limit_kib} KiB"),
            ));
        }
        let read = stream.read(&mut chunk).await.map_err(|error| {
            Refusal::new(400, format!("the request could not be read: {error}"))
        })?;
        if read == 0 && buffer.is_empty() {
            return Ok(None);
        }
        if read == 0 {
            return Err(Refusal::new(
                400,
                "the connection closed in the request head",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

type Head = (String, String, Vec<(String, String)>);

fn parse_head(head: &str) -> Result<Head, Refusal> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, path, version] = parts[..] else {
        return Err(Refusal::new(
            400,
            format!("malformed request line `{request_line}`"),
        ));
    };
    let is_token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !is_token(method) || path.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(Refusal::new(
            400,
            format!("malformed request line `{request_line}`"),
        ));
    }
    let headers = lines.map(parse_header).collect::<Result<_, _>>()?;
    Ok((method.to_owned(), path.to_owned(), headers))
}

fn parse_header(line: &str) -> Result<(String, String), Refusal> {
    let malformed = || Refusal::new(400, format!("malformed header line `{line}`"));
    let (name, value) = line.split_once(':').ok_or_else(malformed)?;
    let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic());
    if !is_name {
        return Err(malformed());
    }
    let value = value.trim_matches([' ', '\t']);
    Ok((name.to_ascii_lowercase(), value.to_owned()))
}

fn content_length(headers: &[(String, String)]) -> Result<usize, Refusal> {
    if headers.iter().any(|(name, _)| name == "transfer-encoding") {
        return Err(Refusal::new(
            501,
            "transfer-encoding is not supported; send content-length",
        ));
    }
    let mut lengths = headers.iter().filter(|(name, _)| name == "content-length");
    let Some((_, first)) = lengths.next() else {
        return Ok(0);
    };
    if lengths.any(|(_, other)| other != first) {
        return Err(Refusal::new(400, "conflicting content-length headers"));
    }
    let length: usize = first
        .parse()
        .map_err(|_| Refusal::new(400, format!("malformed content-length `{first}`")))?;
    if length > BODY_BYTES_MAX {
        let limit_mib = BODY_BYTES_MAX / (1024 * 1024);
        return Err(Refusal::new(
            413,
            format!("the body exceeds {limit_mib} MiB"),
        ));
    }
    Ok(length)
}

async fn read_body(
    stream: &mut TcpStream,
    body: &mut Vec<u8>,
    length: usize,
) -> Result<(), Refusal> {
    let mut chunk = [0u8; 8192];
    // Every round reads at least one byte, so `length` bounds the loop.
    while body.len() < length {
        let wanted = (length - body.len()).min(chunk.len());
        let read = stream.read(&mut chunk[..wanted]).await.map_err(|error| {
            Refusal::new(400, format!("the request body could not be read: {error}"))
        })?;
        if read == 0 {
            let reason = format!(
                "the connection closed after {} of {length} body bytes",
                body.len()
            );
            return Err(Refusal::new(400, reason));
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `bytes` on a raw connection and returns the whole reply.
    async fn exchange(server: &ScriptedServer, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(server.address).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        String::from_utf8(reply).unwrap()
    }

    fn check_refused(reply: &str, status: &str, server: &ScriptedServer, violation: &str) {
        assert!(reply.starts_with(&format!("HTTP/1.1 {status} ")), "{reply}");
        assert_eq!(server.request_count(), 0);
        let violations = server.violations();
        assert!(violations[0].contains(violation), "{violations:?}");
    }

    #[tokio::test]
    async fn garbage_and_oversized_requests_are_refused_and_recorded() {
        let cases: [(Vec<u8>, &str, &str); 5] = [
            (
                b"hello there\r\n\r\n".to_vec(),
                "400",
                "malformed request line",
            ),
            (
                b"POST /v1/messages HTTP/1.1\r\nno colon\r\n\r\n".to_vec(),
                "400",
                "malformed header",
            ),
            (
                b"POST /v1/messages HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n".to_vec(),
                "413",
                "exceeds 8 MiB",
            ),
            (
                b"POST /v1/messages HTTP/1.1\r\ncontent-length: 10\r\n\r\nshort".to_vec(),
                "400",
                "closed after 5 of 10",
            ),
            (
                [b"GET / HTTP/1.1\r\nx: ".as_slice(), &[b'a'; 70_000]].concat(),
                "431",
                "64 KiB",
            ),
        ];
        for (bytes, status, violation) in cases {
            let server = ScriptedServer::start(Wire::Anthropic).await.unwrap();
            let reply = exchange(&server, &bytes).await;
            check_refused(&reply, status, &server, violation);
            assert!(reply.contains(r#""type":"error""#), "{reply}");
        }
    }

    #[tokio::test]
    async fn a_request_without_replies_left_is_answered_500() {
        let server = ScriptedServer::start(Wire::OpenAi).await.unwrap();
        let body = r#"{"model":"m","messages":[]}"#;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let reply = exchange(&server, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
        assert!(
            reply.contains("no scripted reply left for request 1"),
            "{reply}"
        );
        assert!(server.violations().is_empty());
        assert_eq!(server.requests()[0].body, body.as_bytes());
    }

    #[tokio::test]
    async fn replies_control_their_headers_and_bytes() {
        let server = ScriptedServer::start(Wire::OpenAi).await.unwrap();
        server.push(
            Reply::raw(502, "text/html", "<h1>bad gateway</h1>")
                .with_header("Content-Type", "text/plain")
                .with_header("retry-after", "3")
                .truncated(4),
        );
        let body = r#"{"model":"m","messages":[]}"#;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let reply = exchange(&server, request.as_bytes()).await;
        assert_eq!(
            reply,
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\ncontent-length: 20\r\n\
             connection: close\r\nretry-after: 3\r\n\r\n<h1>"
        );
    }
}
