//! The OpenAI-compatible provider: one `POST {base_url}/chat/completions` per call.
//!
//! It speaks the chat completions format that OpenAI, Ollama, vLLM, llama.cpp and LM Studio
//! share. The request and answer bodies are async-openai's types, so the wire format follows
//! that crate; the exchange itself goes through [`http`], the same small reqwest transport
//! the Anthropic provider uses, and not through `async_openai::Client`. That client retries
//! 429, 5xx and connection errors three times on its own (its default executor always holds a
//! retry layer), reads no `Retry-After` for the caller, logs error bodies through `tracing`
//! before any key could be scrubbed from them, and turns a non-JSON error body into a parse
//! error that loses the HTTP status. Here a call is exactly one request, and the retry policy
//! stays the agent's.
//!
//! The answer is the first choice's message content; a refusal, a missing choice or an empty
//! message is a [`crate::ErrorKind::MalformedResponse`].

use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionResponse,
    ResponseFormat, ResponseFormatJsonSchema,
};
use converge_core::TokenUsage;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use crate::http;
use crate::provider::{
    ApiKey, CachedTokens, CallError, ChatAnswer, ChatRequest, Provider, Structured,
};

/// Which request field carries the answer's token limit.
///
/// OpenAI's newer models only accept `max_completion_tokens`; many OpenAI-compatible servers
/// only know `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens`, the original field, which most compatible servers read.
    MaxTokens,
    /// `max_completion_tokens`, which OpenAI's reasoning models require.
    MaxCompletionTokens,
}

/// A provider for an OpenAI-compatible chat completions endpoint.
///
/// Its `Debug` output never shows the key.
#[derive(Debug)]
pub struct OpenAiProvider {
    base_url: String,
    endpoint: String,
    api_key: Option<ApiKey>,
    max_tokens_field: MaxTokensField,
    client: Result<reqwest::Client, String>,
}

impl OpenAiProvider {
    /// A provider for the endpoint at `base_url`, like `https://api.openai.com/v1` or
    /// `http://127.0.0.1:11434/v1` (a trailing slash is tolerated); requests go to
    /// `{base_url}/chat/completions`. Without a key no `Authorization` header is sent.
    pub fn new(
        base_url: &str,
        api_key: Option<ApiKey>,
        max_tokens_field: MaxTokensField,
    ) -> OpenAiProvider {
        let base = base_url.trim().trim_end_matches('/');
        OpenAiProvider {
            base_url: http::record_url(base),
            endpoint: format!("{base}/chat/completions"),
            api_key,
            max_tokens_field,
            client: http::client(),
        }
    }

    async fn exchange(&self, request: &ChatRequest) -> Result<ChatAnswer, CallError> {
        let client = http::usable(&self.client)?;
        let mut builder = client.post(&self.endpoint).json(&self.body(request));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let response = http::send(builder, &self.base_url).await?;
        if !http::is_success(response.status) {
            return Err(http::status_error(&response, error_message(&response.body)));
        }
        answer_of(&response)
    }

    // `max_tokens` is deprecated in async-openai, but it is the field most
    // OpenAI-compatible servers read, so it stays selectable.
    #[expect(
        deprecated,
        reason = "max_tokens is still what compatible servers read"
    )]
    fn body(&self, request: &ChatRequest) -> CreateChatCompletionRequest {
        let limit = Some(request.max_tokens);
        let (max_tokens, max_completion_tokens) = match self.max_tokens_field {
            MaxTokensField::MaxTokens => (limit, None),
            MaxTokensField::MaxCompletionTokens => (None, limit),
        };
        CreateChatCompletionRequest {
            model: request.model.clone(),
            messages: messages(request),
            // The wire field is a single-precision float.
            temperature: request.temperature.map(|t| t as f32),
            max_tokens,
            max_completion_tokens,
            response_format: response_format(request),
            ..CreateChatCompletionRequest::default()
        }
    }
}

impl Provider for OpenAiProvider {
    fn wire(&self) -> &'static str {
        "openai"
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

fn messages(request: &ChatRequest) -> Vec<ChatCompletionRequestMessage> {
    vec![
        ChatCompletionRequestSystemMessage::from(request.system.as_str()).into(),
        ChatCompletionRequestUserMessage::from(request.prompt.as_str()).into(),
    ]
}

fn response_format(request: &ChatRequest) -> Option<ResponseFormat> {
    match request.structured {
        Structured::Schema => Some(ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                name: "answer".to_owned(),
                description: None,
                schema: request.schema.clone(),
                // Strict mode accepts only a subset of JSON Schema; the answer is validated
                // against the full schema afterwards anyway.
                strict: Some(false),
            },
        }),
        Structured::JsonObject => Some(ResponseFormat::JsonObject),
        Structured::Prompt => None,
    }
}

/// The answer of a 2xx response, or why it is not one.
fn answer_of(response: &http::Response) -> Result<ChatAnswer, CallError> {
    let json = response.json()?;
    let usage = usage_of(&json);
    let completion: CreateChatCompletionResponse = serde_json::from_value(json)
        .map_err(|error| {
            let quote = http::quote(&response.body);
            format!("the response is not a chat completion ({error}): {quote}")
        })
        .map_err(|message| response.malformed(message, usage))?;
    let finish = completion
        .choices
        .first()
        .and_then(|c| finish_name(c.finish_reason));
    let text = answer_text(completion.choices.into_iter().next(), finish.as_deref())
        .map_err(|message| response.malformed(message, usage))?;
    Ok(ChatAnswer {
        id: Some(completion.id),
        model: Some(completion.model),
        text,
        finish,
        usage,
        cached: CachedTokens::default(),
    })
}

fn answer_text(
    choice: Option<async_openai::types::chat::ChatChoice>,
    finish: Option<&str>,
) -> Result<String, String> {
    let message = choice.ok_or("the response has no choices")?.message;
    if let Some(refusal) = message.refusal {
        return Err(format!(
            "the model refused to answer: {}",
            http::quote(refusal.as_bytes())
        ));
    }
    message.content.ok_or_else(|| {
        let finish = finish.unwrap_or("none");
        format!("the answer has no content (finish_reason: {finish})")
    })
}

/// `finish_reason` as its wire string (`stop`, `length`, `content_filter`, …).
fn finish_name(reason: Option<async_openai::types::chat::FinishReason>) -> Option<String> {
    let value = serde_json::to_value(reason?).ok()?;
    value.as_str().map(str::to_owned)
}

/// The usage a response reports, read leniently so a malformed answer still reports it.
fn usage_of(json: &Value) -> TokenUsage {
    let usage = &json["usage"];
    TokenUsage {
        input: usage["prompt_tokens"].as_u64().unwrap_or(0),
        output: usage["completion_tokens"].as_u64().unwrap_or(0),
    }
}

/// The server's own text from an error body: `{"error": {"message": …}}` as OpenAI sends it,
/// `{"error": "…"}` as some compatible servers do, else a quote of the body.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Detail {
        Object { message: String },
        Text(String),
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope {
            error: Detail::Object { message } | Detail::Text(message),
        }) => message,
        Err(_) => http::quote(body),
    }
}
