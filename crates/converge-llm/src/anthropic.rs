//! The Anthropic provider: one `POST {base_url}/v1/messages` per call.
//!
//! The Messages API is written out here with serde and reqwest, because no maintained Rust
//! client crate covers it. Anthropic has no JSON mode, so a schema (or plain JSON) is asked
//! for as a forced call of one tool, `answer`, whose input schema is the answer's; the answer
//! is that call's input. In [`Structured::Prompt`] mode no tool is sent and the answer is the
//! text the model wrote.
//!
//! The exchange itself (limits, `Retry-After`, transport errors) is the shared
//! [`crate::http`] transport.
//!
//! Prompt tokens read from or written to Anthropic's prompt cache are reported apart from
//! `input_tokens`; they are added to the answer's input tokens, so they count against the
//! run's token budget, and kept apart in [`ChatAnswer::cached`] for the record.

use converge_core::TokenUsage;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http;
use crate::provider::{
    ApiKey, CachedTokens, CallError, ChatAnswer, ChatRequest, Provider, Structured,
};

/// The Messages API version this provider speaks.
const API_VERSION: &str = "2023-06-01";
/// The one tool a structured answer is asked for through.
const ANSWER_TOOL: &str = "answer";

/// A provider for Anthropic's Messages API.
///
/// Its `Debug` output never shows the key.
#[derive(Debug)]
pub struct AnthropicProvider {
    base_url: String,
    endpoint: String,
    api_key: Option<ApiKey>,
    client: Result<reqwest::Client, String>,
}

impl AnthropicProvider {
    /// A provider for the API at `base_url`, like `https://api.anthropic.com` (a trailing
    /// slash is tolerated); requests go to `{base_url}/v1/messages`. Without a key no
    /// `x-api-key` header is sent.
    pub fn new(base_url: &str, api_key: Option<ApiKey>) -> AnthropicProvider {
        let base = base_url.trim().trim_end_matches('/');
        AnthropicProvider {
            base_url: http::record_url(base),
            endpoint: format!("{base}/v1/messages"),
            api_key,
            client: http::client(),
        }
    }

    async fn exchange(&self, request: &ChatRequest) -> Result<ChatAnswer, CallError> {
        let client = http::usable(&self.client)?;
        let body = MessagesRequest::of(request);
        let mut builder = client
            .post(&self.endpoint)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.header("x-api-key", key.expose());
        }
        let response = http::send(builder, &self.base_url).await?;
        if !http::is_success(response.status) {
            return Err(http::status_error(&response, error_message(&response.body)));
        }
        answer_of(&response, body.tools.is_some())
    }
}

impl Provider for AnthropicProvider {
    fn wire(&self) -> &'static str {
        "anthropic"
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn call<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatAnswer, CallError>> {
        Box::pin(async move {
            let answer = self.exchange(request).await;
            answer.map_err(|error| http::scrubbed(self.api_key.as_ref(), error))
        })
    }
}

/// The request body of `POST /v1/messages`.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    // The API refuses an empty system prompt, and leaving it out means the same.
    #[serde(skip_serializing_if = "str::is_empty")]
    system: &'a str,
    messages: [Message<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<[Tool<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Tool<'a> {
    name: &'static str,
    description: &'static str,
    input_schema: &'a Value,
}

#[derive(Serialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'static str,
}

impl<'a> MessagesRequest<'a> {
    fn of(request: &'a ChatRequest) -> MessagesRequest<'a> {
        let forced_tool = match request.structured {
            Structured::Schema | Structured::JsonObject => true,
            Structured::Prompt => false,
        };
        MessagesRequest {
            model: &request.model,
            max_tokens: request.max_tokens,
            system: &request.system,
            messages: [Message {
                role: "user",
                content: &request.prompt,
            }],
            temperature: request.temperature,
            tools: forced_tool.then_some([Tool {
                name: ANSWER_TOOL,
                description: "Give the answer as this tool's input.",
                input_schema: &request.schema,
            }]),
            tool_choice: forced_tool.then_some(ToolChoice {
                kind: "tool",
                name: ANSWER_TOOL,
            }),
        }
    }
}

/// The parts of a `message` response an answer is made of; unknown fields are ignored.
#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    model: String,
    content: Vec<ContentBlock>,
    stop_reason: Option<String>,
    usage: Usage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock {
    Text {
        text: String,
    },
    ToolUse {
        name: String,
        input: Value,
    },
    /// Thinking and other blocks, which are not the answer.
    #[serde(other)]
    Other,
}

/// The usage of a message. `input_tokens` counts only the prompt tokens after the last
/// cache breakpoint; the cached ones are reported apart (and are absent, or `null`, when the
/// request used no cache).
#[derive(Deserialize)]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl Usage {
    fn cached(&self) -> CachedTokens {
        CachedTokens {
            read: self.cache_read_input_tokens.unwrap_or(0),
            written: self.cache_creation_input_tokens.unwrap_or(0),
        }
    }

    /// Every prompt token the message cost, cached or not, and the answer's tokens.
    fn total(&self) -> TokenUsage {
        let cached = self.cached();
        TokenUsage {
            input: self
                .input_tokens
                .saturating_add(cached.read)
                .saturating_add(cached.written),
            output: self.output_tokens,
        }
    }
}

/// Anthropic's error body: `{"type": "error", "error": {"type": …, "message": …}}`.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

/// The answer of a 2xx response, or why it is not one.
fn answer_of(response: &http::Response, forced_tool: bool) -> Result<ChatAnswer, CallError> {
    let json = response.json()?;
    let usage = usage_of(&json);
    let message: MessagesResponse = serde_json::from_value(json)
        .map_err(|error| not_a_message(&response.body, &error))
        .map_err(|message| response.malformed(message, usage))?;
    let stop_reason = message.stop_reason.as_deref();
    let text = if forced_tool {
        tool_input(&message.content, stop_reason)
    } else {
        written_text(&message.content, stop_reason)
    };
    Ok(ChatAnswer {
        text: text.map_err(|reason| response.malformed(reason, usage))?,
        id: Some(message.id),
        model: Some(message.model),
        finish: message.stop_reason,
        usage: message.usage.total(),
        cached: message.usage.cached(),
    })
}

fn not_a_message(body: &[u8], error: &serde_json::Error) -> String {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(ErrorEnvelope {
            error: ErrorDetail { kind, message },
        }) => {
            format!("the server answered with an error: {kind}: {message}")
        }
        Err(_) => format!(
            "the response is not a message ({error}): {}",
            http::quote(body)
        ),
    }
}

/// The input of the first `answer` tool call, as JSON text.
fn tool_input(content: &[ContentBlock], stop_reason: Option<&str>) -> Result<String, String> {
    let input = content.iter().find_map(|block| match block {
        ContentBlock::ToolUse { name, input } if name == ANSWER_TOOL => Some(input),
        _ => None,
    });
    match input {
        Some(input) => serde_json::to_string(input).map_err(|error| error.to_string()),
        None => Err(format!(
            "the model did not call the `{ANSWER_TOOL}` tool (stop_reason: {}; it sent {})",
            stop_reason.unwrap_or("none"),
            what_came(content),
        )),
    }
}

/// The text blocks, concatenated.
fn written_text(content: &[ContentBlock], stop_reason: Option<&str>) -> Result<String, String> {
    let texts: Vec<&str> = content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    if texts.is_empty() {
        let stop_reason = stop_reason.unwrap_or("none");
        return Err(format!(
            "the answer has no text (stop_reason: {stop_reason}; it sent {})",
            what_came(content)
        ));
    }
    Ok(texts.concat())
}

/// What a content list held instead of an answer, for an error message.
fn what_came(content: &[ContentBlock]) -> String {
    if content.is_empty() {
        return "no content".to_owned();
    }
    let blocks: Vec<String> = content
        .iter()
        .map(|block| match block {
            ContentBlock::Text { text } => format!("text {}", http::quote(text.as_bytes())),
            ContentBlock::ToolUse { name, .. } => format!("a call of tool `{name}`"),
            ContentBlock::Other => "another block".to_owned(),
        })
        .collect();
    blocks.join(", ")
}

/// The usage a response reports, cached prompt tokens included, read leniently so a
/// malformed answer still reports it.
fn usage_of(json: &Value) -> TokenUsage {
    let usage = &json["usage"];
    let tokens = |field: &str| usage[field].as_u64().unwrap_or(0);
    Usage {
        input_tokens: tokens("input_tokens"),
        output_tokens: tokens("output_tokens"),
        cache_read_input_tokens: Some(tokens("cache_read_input_tokens")),
        cache_creation_input_tokens: Some(tokens("cache_creation_input_tokens")),
    }
    .total()
}

/// The server's message from an error body, else a quote of the body.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => envelope.error.message,
        Err(_) => http::quote(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cached_prompt_tokens_count_as_input_tokens() {
        let usage = json!({"usage": {
            "input_tokens": 12, "output_tokens": 30,
            "cache_read_input_tokens": 2_000, "cache_creation_input_tokens": 500
        }});
        assert_eq!(
            usage_of(&usage),
            TokenUsage {
                input: 2_512,
                output: 30
            }
        );
        let message: Usage = serde_json::from_value(usage["usage"].clone()).unwrap();
        assert_eq!(message.total(), usage_of(&usage));
        assert_eq!(
            message.cached(),
            CachedTokens {
                read: 2_000,
                written: 500
            }
        );
    }

    #[test]
    fn absent_or_null_cache_fields_count_nothing() {
        for usage in [
            json!({"input_tokens": 7, "output_tokens": 3}),
            json!({"input_tokens": 7, "output_tokens": 3,
                   "cache_read_input_tokens": null, "cache_creation_input_tokens": null}),
        ] {
            let message: Usage = serde_json::from_value(usage.clone()).unwrap();
            assert!(message.cached().is_zero(), "{usage}");
            let total = TokenUsage {
                input: 7,
                output: 3,
            };
            assert_eq!(message.total(), total);
            assert_eq!(usage_of(&json!({ "usage": usage })), total);
        }
    }

    #[test]
    fn cache_counts_saturate_instead_of_wrapping() {
        let usage = json!({"usage": {
            "input_tokens": u64::MAX, "output_tokens": 1, "cache_read_input_tokens": 5
        }});
        assert_eq!(usage_of(&usage).input, u64::MAX);
    }
}
