//! Both providers against a scripted server on 127.0.0.1: the exact request each one sends,
//! the answer it reads, and how every failure a server or a network can produce is
//! classified — with the key kept out of all of it.

use std::time::Duration;

use converge_core::TokenUsage;
use converge_llm::scripted::{Reply, Request, ScriptedServer, Wire};
use converge_llm::{
    AnthropicProvider, ApiKey, CachedTokens, CallError, ChatAnswer, ChatRequest, ErrorKind,
    MaxTokensField, OpenAiProvider, Provider, Structured,
};
use serde_json::{Value, json};

const KEY: &str = "sk-test-0123456789abcdefghij";
const WIRES: [Wire; 2] = [Wire::OpenAi, Wire::Anthropic];

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
        "required": ["label", "score"],
        "additionalProperties": false
    })
}

fn request(structured: Structured) -> ChatRequest {
    ChatRequest {
        model: "model-test".to_owned(),
        system: "You label churn signals.".to_owned(),
        prompt: "Signal: weekly usage fell 40%.".to_owned(),
        max_tokens: 256,
        temperature: Some(0.2),
        schema: schema(),
        structured,
    }
}

fn key() -> Option<ApiKey> {
    ApiKey::new(KEY)
}

/// A provider for `server`'s wire, with the key.
fn provider(server: &ScriptedServer, wire: Wire) -> Box<dyn Provider> {
    match wire {
        Wire::OpenAi => Box::new(OpenAiProvider::new(
            &server.base_url(),
            key(),
            MaxTokensField::MaxCompletionTokens,
        )),
        Wire::Anthropic => Box::new(AnthropicProvider::new(&server.base_url(), key())),
    }
}

/// The error of one call answered with `reply`, checking it was exactly one well-formed
/// request (no hidden retry).
async fn failure(wire: Wire, structured: Structured, reply: Reply) -> CallError {
    let server = ScriptedServer::start(wire).await.unwrap();
    server.push(reply);
    let result = provider(&server, wire).call(&request(structured)).await;
    assert_eq!(server.request_count(), 1, "{wire:?}: one call, one request");
    assert_eq!(server.violations(), Vec::<String>::new());
    result.expect_err("the call should fail")
}

fn only_request(server: &ScriptedServer) -> Request {
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    requests[0].clone()
}

fn messages() -> Value {
    json!([
        {"role": "system", "content": "You label churn signals."},
        {"role": "user", "content": "Signal: weekly usage fell 40%."}
    ])
}

// --- OpenAI-compatible ----------------------------------------------------------------

struct OpenAiCase {
    field: MaxTokensField,
    structured: Structured,
    temperature: Option<f64>,
    key: Option<ApiKey>,
    body: Value,
}

async fn check_openai_request(case: OpenAiCase) {
    let server = ScriptedServer::start(Wire::OpenAi).await.unwrap();
    server.push(Reply::answer(r#"{"label":"churn","score":0.8}"#, 41, 9));
    let authorization = case
        .key
        .as_ref()
        .map(|key| format!("Bearer {}", key.expose()));
    let provider = OpenAiProvider::new(&server.base_url(), case.key, case.field);
    let request = ChatRequest {
        temperature: case.temperature,
        ..request(case.structured)
    };

    let answer = provider.call(&request).await.unwrap();

    assert_eq!(
        answer,
        ChatAnswer {
            id: Some("chatcmpl-scripted-1".to_owned()),
            model: Some("model-test".to_owned()),
            text: r#"{"label":"churn","score":0.8}"#.to_owned(),
            finish: Some("stop".to_owned()),
            usage: TokenUsage {
                input: 41,
                output: 9
            },
            cached: CachedTokens::default(),
        }
    );
    let sent = only_request(&server);
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        sent.header("authorization").map(str::to_owned),
        authorization
    );
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.json(), Some(case.body));
    assert_eq!(server.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn openai_asks_for_the_schema_with_max_completion_tokens() {
    check_openai_request(OpenAiCase {
        field: MaxTokensField::MaxCompletionTokens,
        structured: Structured::Schema,
        temperature: Some(0.2),
        key: key(),
        body: json!({
            "model": "model-test",
            "messages": messages(),
            "max_completion_tokens": 256,
            "temperature": 0.2,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema(), "strict": false}
            }
        }),
    })
    .await;
}

#[tokio::test]
async fn openai_asks_for_json_mode_with_max_tokens_and_no_key() {
    check_openai_request(OpenAiCase {
        field: MaxTokensField::MaxTokens,
        structured: Structured::JsonObject,
        temperature: None,
        key: None,
        body: json!({
            "model": "model-test",
            "messages": messages(),
            "max_tokens": 256,
            "response_format": {"type": "json_object"}
        }),
    })
    .await;
}

#[tokio::test]
async fn openai_asks_for_nothing_in_prompt_mode() {
    check_openai_request(OpenAiCase {
        field: MaxTokensField::MaxTokens,
        structured: Structured::Prompt,
        temperature: Some(0.0),
        key: key(),
        body: json!({
            "model": "model-test",
            "messages": messages(),
            "max_tokens": 256,
            "temperature": 0.0
        }),
    })
    .await;
}

#[tokio::test]
async fn openai_answers_without_the_answer_are_malformed() {
    let completion = |choices: Value| {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": choices,
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        })
    };
    let choice = |message: Value, finish: &str| json!([{"index": 0, "message": message, "finish_reason": finish}]);
    let cases = [
        (completion(json!([])), "the response has no choices"),
        (
            completion(choice(
                json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
                "stop",
            )),
            "the model refused to answer: I can't help with that.",
        ),
        (
            completion(choice(
                json!({"role": "assistant", "content": null}),
                "length",
            )),
            "the answer has no content (finish_reason: length)",
        ),
    ];
    for (body, message) in cases {
        let error = failure(Wire::OpenAi, Structured::Schema, Reply::json(200, body)).await;
        assert_eq!(error.kind, ErrorKind::MalformedResponse);
        assert_eq!(error.status, Some(200));
        assert_eq!(error.message, message);
        assert_eq!(
            error.usage,
            TokenUsage {
                input: 9,
                output: 4
            },
            "usage is kept"
        );
    }
}

// --- Anthropic ------------------------------------------------------------------------

#[tokio::test]
async fn anthropic_forces_the_answer_tool_for_a_schema_and_for_json() {
    for structured in [Structured::Schema, Structured::JsonObject] {
        let server = ScriptedServer::start(Wire::Anthropic).await.unwrap();
        server.push(Reply::answer(r#"{"label": "churn", "score": 0.8}"#, 52, 17));

        let answer = provider(&server, Wire::Anthropic)
            .call(&request(structured))
            .await
            .unwrap();

        let input: Value = serde_json::from_str(&answer.text).unwrap();
        assert_eq!(input, json!({"label": "churn", "score": 0.8}));
        assert_eq!(answer.id.as_deref(), Some("msg_scripted_1"));
        assert_eq!(answer.model.as_deref(), Some("model-test"));
        assert_eq!(answer.finish.as_deref(), Some("tool_use"));
        assert_eq!(
            answer.usage,
            TokenUsage {
                input: 52,
                output: 17
            }
        );
        let sent = only_request(&server);
        assert_eq!(
            (sent.method.as_str(), sent.path.as_str()),
            ("POST", "/v1/messages")
        );
        assert_eq!(sent.header("x-api-key"), Some(KEY));
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("authorization"), None);
        assert_eq!(
            sent.json(),
            Some(json!({
                "model": "model-test",
                "max_tokens": 256,
                "system": "You label churn signals.",
                "messages": [{"role": "user", "content": "Signal: weekly usage fell 40%."}],
                "temperature": 0.2,
                "tools": [{
                    "name": "answer",
                    "description": "Give the answer as this tool's input.",
                    "input_schema": schema()
                }],
                "tool_choice": {"type": "tool", "name": "answer"}
            }))
        );
        assert_eq!(server.violations(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn anthropic_cached_prompt_tokens_are_input_tokens_and_kept_apart() {
    let server = ScriptedServer::start(Wire::Anthropic).await.unwrap();
    server.push(
        Reply::answer(r#"{"label": "churn", "score": 0.8}"#, 12, 17)
            .with_cache_tokens(3_000, 400)
            .answered_by("model-test-20250101"),
    );

    let answer = provider(&server, Wire::Anthropic)
        .call(&request(Structured::Schema))
        .await
        .unwrap();

    assert_eq!(
        answer.usage,
        TokenUsage {
            input: 3_412,
            output: 17
        },
        "the prompt tokens read from and written to the cache are prompt tokens"
    );
    assert_eq!(
        answer.cached,
        CachedTokens {
            read: 3_000,
            written: 400
        }
    );
    assert_eq!(answer.model.as_deref(), Some("model-test-20250101"));
    let recorded = serde_json::to_value(&answer).unwrap();
    assert_eq!(recorded["cached"], json!({"read": 3_000, "written": 400}));
}

#[tokio::test]
async fn anthropic_malformed_answers_count_their_cached_tokens_too() {
    let body = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "model-test",
        "content": [], "stop_reason": "end_turn",
        "usage": {"input_tokens": 4, "output_tokens": 2,
                  "cache_read_input_tokens": 90, "cache_creation_input_tokens": 6}
    });
    let error = failure(Wire::Anthropic, Structured::Schema, Reply::json(200, body)).await;
    assert_eq!(error.kind, ErrorKind::MalformedResponse);
    assert_eq!(
        error.usage,
        TokenUsage {
            input: 100,
            output: 2
        }
    );
}

#[tokio::test]
async fn anthropic_reads_the_text_in_prompt_mode() {
    let server = ScriptedServer::start(Wire::Anthropic).await.unwrap();
    server.push(Reply::answer(r#"{"label":"churn","score":0.8}"#, 30, 12));
    let provider = AnthropicProvider::new(&server.base_url(), None);
    let request = ChatRequest {
        system: String::new(),
        temperature: None,
        ..request(Structured::Prompt)
    };

    let answer = provider.call(&request).await.unwrap();

    assert_eq!(answer.text, r#"{"label":"churn","score":0.8}"#);
    assert_eq!(answer.finish.as_deref(), Some("end_turn"));
    assert_eq!(
        answer.usage,
        TokenUsage {
            input: 30,
            output: 12
        }
    );
    let sent = only_request(&server);
    assert_eq!(sent.header("x-api-key"), None);
    assert_eq!(
        sent.json(),
        Some(json!({
            "model": "model-test",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": "Signal: weekly usage fell 40%."}]
        })),
        "no tools, no temperature, and no empty system prompt"
    );
    assert_eq!(server.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn anthropic_joins_text_blocks_and_skips_other_blocks() {
    let server = ScriptedServer::start(Wire::Anthropic).await.unwrap();
    server.push(Reply::json(
        200,
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "model-test",
            "content": [
                {"type": "thinking", "thinking": "Usage fell.", "signature": "sig"},
                {"type": "text", "text": "{\"label\":"},
                {"type": "text", "text": "\"churn\"}"}
            ],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 6, "cache_read_input_tokens": 0}
        }),
    ));

    let answer = provider(&server, Wire::Anthropic)
        .call(&request(Structured::Prompt))
        .await
        .unwrap();

    assert_eq!(answer.text, r#"{"label":"churn"}"#);
    assert_eq!(answer.id.as_deref(), Some("msg_1"));
}

#[tokio::test]
async fn anthropic_answers_without_the_answer_are_malformed_and_keep_their_usage() {
    let message = |content: Value, stop_reason: &str| {
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "model-test",
            "content": content, "stop_reason": stop_reason,
            "usage": {"input_tokens": 30, "output_tokens": 12}
        })
    };
    let cases = [
        (
            Structured::Schema,
            Reply::answer("It looks like churn to me.", 30, 12),
            "the model did not call the `answer` tool (stop_reason: end_turn; it sent text \
             It looks like churn to me.)",
        ),
        (
            Structured::Schema,
            Reply::json(200, message(json!([]), "max_tokens")),
            "the model did not call the `answer` tool (stop_reason: max_tokens; it sent no \
             content)",
        ),
        (
            Structured::Prompt,
            Reply::json(
                200,
                message(
                    json!([{"type": "tool_use", "id": "t", "name": "x", "input": {}}]),
                    "tool_use",
                ),
            ),
            "the answer has no text (stop_reason: tool_use; it sent a call of tool `x`)",
        ),
    ];
    for (structured, reply, expected) in cases {
        let error = failure(Wire::Anthropic, structured, reply).await;
        assert_eq!(error.kind, ErrorKind::MalformedResponse);
        assert_eq!(error.message, expected);
        assert_eq!(
            error.usage,
            TokenUsage {
                input: 30,
                output: 12
            }
        );
    }
}

#[tokio::test]
async fn anthropic_error_in_a_200_is_malformed() {
    let body =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    let error = failure(Wire::Anthropic, Structured::Schema, Reply::json(200, body)).await;
    assert_eq!(error.kind, ErrorKind::MalformedResponse);
    assert_eq!(
        error.message,
        "the server answered with an error: overloaded_error: Overloaded"
    );
}

// --- Both wires -----------------------------------------------------------------------

#[tokio::test]
async fn error_statuses_are_classified_with_the_servers_message() {
    let cases = [
        (400, "invalid_request_error", ErrorKind::ClientError),
        (401, "authentication_error", ErrorKind::Unauthorized),
        (403, "permission_error", ErrorKind::Unauthorized),
        (404, "not_found_error", ErrorKind::ClientError),
        (429, "rate_limit_error", ErrorKind::RateLimited),
        (500, "api_error", ErrorKind::ServerError),
        (503, "api_error", ErrorKind::ServerError),
        (529, "overloaded_error", ErrorKind::ServerError),
    ];
    for wire in WIRES {
        for (status, kind_name, kind) in cases {
            let message = format!("scripted {kind_name} {status}");
            let reply = Reply::error(status, kind_name, &message);
            let error = failure(wire, Structured::Schema, reply).await;
            let context = format!("{wire:?} {status}");
            assert_eq!(error.kind, kind, "{context}");
            assert_eq!(error.status, Some(status), "{context}");
            assert_eq!(error.message, message, "{context}");
            assert_eq!(error.retry_after, None, "{context}");
        }
    }
}

#[tokio::test]
async fn error_bodies_that_are_not_json_are_quoted_and_keep_their_status() {
    let cases = [
        (
            502,
            "<html><body>Bad gateway</body></html>",
            ErrorKind::ServerError,
        ),
        (404, "404 page not found\n", ErrorKind::ClientError),
        (429, "slow down", ErrorKind::RateLimited),
    ];
    for wire in WIRES {
        for (status, body, kind) in cases {
            let reply = Reply::raw(status, "text/html", body);
            let error = failure(wire, Structured::Schema, reply).await;
            assert_eq!((error.kind, error.status), (kind, Some(status)), "{wire:?}");
            assert_eq!(error.message, body.trim(), "{wire:?}");
        }
    }
}

#[tokio::test]
async fn retry_after_is_read_in_seconds() {
    let cases = [
        ("2", Some(Duration::from_secs(2))),
        ("1.5", Some(Duration::from_millis(1500))),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("-1", None),
    ];
    for wire in WIRES {
        for (header, expected) in cases {
            let reply = Reply::error(429, "rate_limit_error", "slow down")
                .with_header("retry-after", header);
            let error = failure(wire, Structured::Schema, reply).await;
            assert_eq!(error.kind, ErrorKind::RateLimited);
            assert_eq!(
                error.retry_after, expected,
                "{wire:?} retry-after: {header}"
            );
        }
        let reply = Reply::error(529, "overloaded_error", "busy").with_header("retry-after", "7");
        let error = failure(wire, Structured::Schema, reply).await;
        assert_eq!(error.kind, ErrorKind::ServerError);
        assert_eq!(error.retry_after, Some(Duration::from_secs(7)));
    }
}

#[tokio::test]
async fn a_failed_call_is_never_retried_behind_the_callers_back() {
    for wire in WIRES {
        let server = ScriptedServer::start(wire).await.unwrap();
        server.push(Reply::error(500, "api_error", "boom"));
        server.push(Reply::answer(r#"{"label":"churn","score":0.8}"#, 1, 1));
        let provider = provider(&server, wire);

        let first = provider.call(&request(Structured::Schema)).await;
        assert_eq!(first.unwrap_err().kind, ErrorKind::ServerError);
        assert_eq!(server.request_count(), 1, "{wire:?}");

        let second = provider.call(&request(Structured::Schema)).await;
        assert!(second.is_ok(), "{wire:?}: {second:?}");
        assert_eq!(server.request_count(), 2);
    }
}

#[tokio::test]
async fn bodies_that_are_not_the_wire_format_are_malformed() {
    let long = "x".repeat(5_000);
    let cases = [
        (
            Reply::raw(200, "text/html", "<html>maintenance</html>"),
            "the response is not JSON: <html>maintenance</html>",
        ),
        (
            Reply::raw(200, "application/json", ""),
            "the response is not JSON: (empty body)",
        ),
        (
            Reply::raw(200, "text/plain", long.clone()),
            "the response is not JSON: xxxxxxxx",
        ),
        (
            Reply::json(200, json!({"hello": "world"})),
            "the response is not a ",
        ),
    ];
    for wire in WIRES {
        for (reply, start) in cases.clone() {
            let error = failure(wire, Structured::Schema, reply).await;
            assert_eq!(
                (error.kind, error.status),
                (ErrorKind::MalformedResponse, Some(200))
            );
            assert!(
                error.message.starts_with(start),
                "{wire:?}: {}",
                error.message
            );
            let (_, quote) = error.message.split_once(": ").unwrap();
            assert!(
                quote.chars().count() <= 200,
                "{wire:?}: quote too long: {quote}"
            );
        }
    }
}

#[tokio::test]
async fn a_cut_off_body_is_malformed_or_keeps_its_error_status() {
    for wire in WIRES {
        let answer = Reply::answer(r#"{"label":"churn","score":0.8}"#, 1, 1).truncated(20);
        let error = failure(wire, Structured::Schema, answer).await;
        assert_eq!(
            (error.kind, error.status),
            (ErrorKind::MalformedResponse, Some(200))
        );
        assert!(
            error.message.starts_with("the response body was cut off"),
            "{}",
            error.message
        );

        let overloaded = Reply::error(529, "overloaded_error", "busy").truncated(10);
        let error = failure(wire, Structured::Schema, overloaded).await;
        assert_eq!(
            (error.kind, error.status),
            (ErrorKind::ServerError, Some(529))
        );
        assert!(
            error.message.starts_with("the response body was cut off"),
            "{}",
            error.message
        );
    }
}

#[tokio::test]
async fn an_echoed_key_never_reaches_an_error() {
    let pieces =
        |text: &str| (0..=KEY.len() - 8).any(|start| text.contains(&KEY[start..start + 8]));
    let replies = [
        Reply::error(
            401,
            "authentication_error",
            &format!("Incorrect API key provided: {KEY}."),
        ),
        Reply::raw(
            401,
            "text/plain",
            format!("bad key {KEY}, or ****{}", &KEY[10..]),
        ),
        Reply::raw(200, "text/html", format!("<p>{KEY}</p>")),
    ];
    for wire in WIRES {
        for reply in replies.clone() {
            let error = failure(wire, Structured::Schema, reply).await;
            for text in [
                error.to_string(),
                format!("{error:?}"),
                error.message.clone(),
            ] {
                assert!(!pieces(&text), "{wire:?}: the key leaked into {text}");
                assert!(text.contains("[redacted]"), "{wire:?}: {text}");
            }
        }
    }
    let openai = OpenAiProvider::new("http://127.0.0.1:9/v1", key(), MaxTokensField::MaxTokens);
    let anthropic = AnthropicProvider::new("http://127.0.0.1:9", key());
    assert!(!pieces(&format!("{openai:?} {anthropic:?}")));
}

#[tokio::test]
async fn the_server_checks_the_key() {
    for wire in WIRES {
        let server = ScriptedServer::start(wire).await.unwrap();
        server.expect_key("sk-the-right-key-000000");
        let error = provider(&server, wire)
            .call(&request(Structured::Schema))
            .await
            .unwrap_err();
        assert_eq!(
            (error.kind, error.status),
            (ErrorKind::Unauthorized, Some(401)),
            "{wire:?}"
        );
        assert_eq!(error.message, "invalid API key (scripted)");
        assert_eq!(
            server.violations(),
            Vec::<String>::new(),
            "a wrong key is a scenario"
        );

        let keyless: Box<dyn Provider> = match wire {
            Wire::OpenAi => Box::new(OpenAiProvider::new(
                &server.base_url(),
                None,
                MaxTokensField::MaxTokens,
            )),
            Wire::Anthropic => Box::new(AnthropicProvider::new(&server.base_url(), None)),
        };
        let error = keyless
            .call(&request(Structured::Schema))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::ClientError);
        assert_eq!(
            server.violations().len(),
            1,
            "{wire:?}: a missing key header is a violation"
        );
        assert!(server.violations()[0].starts_with("request 2: missing `"));
    }
}

#[tokio::test]
async fn a_wrong_base_url_is_a_violation_and_a_client_error() {
    let server = ScriptedServer::start(Wire::OpenAi).await.unwrap();
    let base = server.base_url().trim_end_matches("/v1").to_owned();
    let provider = OpenAiProvider::new(&base, key(), MaxTokensField::MaxTokens);

    let error = provider
        .call(&request(Structured::Schema))
        .await
        .unwrap_err();

    assert_eq!(
        (error.kind, error.status),
        (ErrorKind::ClientError, Some(400))
    );
    assert_eq!(
        server.violations(),
        vec!["request 1: POST /chat/completions: the path must be /v1/chat/completions"]
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connection_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let providers: [Box<dyn Provider>; 2] = [
        Box::new(OpenAiProvider::new(
            &format!("http://127.0.0.1:{port}/v1"),
            key(),
            MaxTokensField::MaxTokens,
        )),
        Box::new(AnthropicProvider::new(
            &format!("http://127.0.0.1:{port}"),
            key(),
        )),
    ];
    for provider in providers {
        let error = provider
            .call(&request(Structured::Schema))
            .await
            .unwrap_err();
        assert_eq!(
            (error.kind, error.status),
            (ErrorKind::Connection, None),
            "{error}"
        );
        let endpoint = provider.base_url();
        assert!(
            error
                .message
                .starts_with(&format!("could not connect to {endpoint}")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_slow_server_is_bounded_only_by_the_callers_timeout() {
    for wire in WIRES {
        let server = ScriptedServer::start(wire).await.unwrap();
        server.push(Reply::answer("{}", 1, 1).delayed(Duration::from_secs(60)));
        let provider = provider(&server, wire);

        let request = request(Structured::Prompt);
        let call = provider.call(&request);
        let outcome = tokio::time::timeout(Duration::from_millis(300), call).await;

        assert!(
            outcome.is_err(),
            "{wire:?}: the call should still be waiting"
        );
        assert_eq!(server.request_count(), 1, "the request did arrive");
    }
}

#[tokio::test]
async fn base_urls_tolerate_a_trailing_slash_and_name_the_wire() {
    for wire in WIRES {
        let server = ScriptedServer::start(wire).await.unwrap();
        server.push(Reply::answer(r#"{"label":"churn","score":0.8}"#, 1, 1));
        let base = format!("{}/", server.base_url());
        let provider: Box<dyn Provider> = match wire {
            Wire::OpenAi => Box::new(OpenAiProvider::new(&base, None, MaxTokensField::MaxTokens)),
            Wire::Anthropic => Box::new(AnthropicProvider::new(&base, None)),
        };
        assert_eq!(provider.base_url(), server.base_url());
        assert_eq!(
            provider.wire(),
            if wire == Wire::OpenAi {
                "openai"
            } else {
                "anthropic"
            }
        );

        assert!(provider.call(&request(Structured::Schema)).await.is_ok());
        assert_eq!(server.violations(), Vec::<String>::new());
    }
    let with_credentials = AnthropicProvider::new("https://user:secret@llm.example/", None);
    assert_eq!(with_credentials.base_url(), "https://llm.example");
}
