//! The one small trait every model provider implements, and what goes through it.
//!
//! A [`Provider`] turns one [`ChatRequest`] into one [`ChatAnswer`] or one [`CallError`]: a
//! single HTTP exchange, no retry, no fallback. Retries are the agent's explicit policy, so
//! each attempt is recorded. Errors are classified by [`ErrorKind`] so a retry policy can name
//! what it retries, and their messages never hold an API key ([`ApiKey`] redacts itself and
//! [`ApiKey::scrub`] removes it from any text a server sends back).

use std::fmt;
use std::time::Duration;

use converge_core::TokenUsage;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

/// What an agent asks a model: one system prompt, one user prompt, the parameters, and the
/// JSON Schema its answer must match.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatRequest {
    /// The model, as the provider names it.
    pub model: String,
    /// The system prompt.
    pub system: String,
    /// The user prompt.
    pub prompt: String,
    /// The most tokens the answer may use.
    pub max_tokens: u32,
    /// The sampling temperature, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The JSON Schema of the answer (a JSON object).
    pub schema: Value,
    /// How the schema is asked for.
    pub structured: Structured,
}

/// How a provider is asked for JSON matching the answer's schema. The answer is validated
/// against the schema in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Structured {
    /// The provider's structured output: `response_format: json_schema` (OpenAI-compatible),
    /// a forced tool call whose input schema is the answer's (Anthropic).
    Schema,
    /// JSON mode only (`response_format: json_object`), for servers without schema support;
    /// the schema is described in the system prompt. Anthropic has no JSON mode and uses
    /// [`Structured::Schema`].
    JsonObject,
    /// Nothing asked of the provider; the schema is described in the system prompt.
    Prompt,
}

/// What a model answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatAnswer {
    /// The provider's id for the exchange (`chatcmpl-…`, `msg_…`), if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The model that answered, as the provider reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The answer's text: the JSON the model produced (for a forced tool call, its input
    /// serialized as JSON).
    pub text: String,
    /// Why the model stopped (`stop`, `length`, `end_turn`, `max_tokens`, `tool_use`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish: Option<String>,
    /// Tokens the provider says it used; zero when it reports none. Input tokens include
    /// every prompt token the provider reports, cached ones too (see `cached`).
    pub usage: TokenUsage,
    /// The prompt tokens the provider says were read from or written to its prompt cache,
    /// already counted in `usage.input`.
    #[serde(skip_serializing_if = "CachedTokens::is_zero")]
    pub cached: CachedTokens,
}

/// Prompt tokens a provider served from its prompt cache or added to it, as it reports them.
///
/// Anthropic reports them beside `input_tokens` (which counts only the uncached rest), so
/// they are added to the answer's input tokens and count against the token budget like any
/// other. OpenAI-compatible servers count cached tokens in `prompt_tokens` already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CachedTokens {
    /// Prompt tokens read from the cache (`cache_read_input_tokens`).
    pub read: u64,
    /// Prompt tokens written to the cache (`cache_creation_input_tokens`).
    pub written: u64,
}

impl CachedTokens {
    /// Whether the provider reported no cached tokens.
    pub fn is_zero(&self) -> bool {
        self.read == 0 && self.written == 0
    }
}

/// Why a call failed, by what a retry policy can decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 401 or 403: the key is missing, wrong or not allowed.
    Unauthorized,
    /// 429: too many requests or tokens.
    RateLimited,
    /// 5xx (including 529 overloaded).
    ServerError,
    /// Another 4xx: the request was refused as invalid (a wrong model name, say).
    ClientError,
    /// No answer within the call's timeout.
    Timeout,
    /// The connection could not be made or broke before a response.
    Connection,
    /// A response came but is not what the wire format says: not JSON, truncated, missing
    /// fields, no answer in it.
    MalformedResponse,
    /// The answer came but is not the JSON the output contract asks for (checked by the
    /// agent, not the provider).
    InvalidAnswer,
}

impl ErrorKind {
    /// Every kind, in the order of their names in specs.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Unauthorized,
        ErrorKind::RateLimited,
        ErrorKind::ServerError,
        ErrorKind::ClientError,
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::MalformedResponse,
        ErrorKind::InvalidAnswer,
    ];

    /// The kind's name in specs and events (`rate_limited`…).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ServerError => "server_error",
            ErrorKind::ClientError => "client_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::MalformedResponse => "malformed_response",
            ErrorKind::InvalidAnswer => "invalid_answer",
        }
    }

    /// The kind named `name`.
    ///
    /// ```
    /// use converge_llm::ErrorKind;
    ///
    /// assert_eq!(ErrorKind::from_name("rate_limited"), Some(ErrorKind::RateLimited));
    /// assert_eq!(ErrorKind::from_name("busy"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The kind of an HTTP error status.
    pub fn of_status(status: u16) -> ErrorKind {
        match status {
            401 | 403 => ErrorKind::Unauthorized,
            429 => ErrorKind::RateLimited,
            500..=599 => ErrorKind::ServerError,
            _ => ErrorKind::ClientError,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed call: its kind, the HTTP status if there was one, and a message fit for a
/// journal (no key in it).
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{kind}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct CallError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The HTTP status, when a response came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What happened, with the server's own message when it sent one.
    pub message: String,
    /// How long the server asked to wait before retrying (`Retry-After`), if it said.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// Tokens the provider reported for the failed exchange (an answer that was cut off or
    /// did not match the contract still cost its tokens).
    pub usage: TokenUsage,
}

impl CallError {
    /// An error of `kind` without a response status.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CallError {
        CallError {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            usage: TokenUsage::default(),
        }
    }

    /// An error for an HTTP error `status`, classified by [`ErrorKind::of_status`].
    pub fn status(status: u16, message: impl Into<String>) -> CallError {
        CallError {
            status: Some(status),
            ..CallError::new(ErrorKind::of_status(status), message)
        }
    }
}

/// A model provider: one wire format at one endpoint.
///
/// Implementations make exactly one HTTP request per [`Provider::call`], do not retry, and
/// keep their key out of every error they return.
pub trait Provider: Send + Sync {
    /// The wire format, for records: `openai` or `anthropic`.
    fn wire(&self) -> &'static str;

    /// The endpoint's base URL, for records (without credentials).
    fn base_url(&self) -> &str;

    /// Sends `request` and waits for the answer.
    fn call<'a>(&'a self, request: &'a ChatRequest)
    -> BoxFuture<'a, Result<ChatAnswer, CallError>>;
}

/// An API key. It never prints: `Debug` and `Display` show `[redacted]`.
///
/// ```
/// use converge_llm::ApiKey;
///
/// let key = ApiKey::new("sk-live-0123456789abcdef").unwrap();
/// assert_eq!(format!("{key:?} {key}"), "[redacted] [redacted]");
/// assert_eq!(
///     key.scrub("Incorrect API key provided: sk-live-0123456789abcdef."),
///     "Incorrect API key provided: [redacted]."
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

/// The shortest run of a key's characters [`ApiKey::scrub`] removes from text.
const SCRUB_RUN_MIN: usize = 8;

impl ApiKey {
    /// A key, or `None` when `key` is empty or blank.
    pub fn new(key: impl Into<String>) -> Option<ApiKey> {
        let key = key.into().trim().to_owned();
        (!key.is_empty()).then_some(ApiKey(key))
    }

    /// The key itself, for the one header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with the key, and every run of at least eight of its characters (a server may
    /// echo part of it), replaced by `[redacted]`.
    pub fn scrub(&self, text: &str) -> String {
        let key: Vec<char> = self.0.chars().collect();
        let mut out = text.to_owned();
        if key.len() < SCRUB_RUN_MIN {
            return out.replace(&self.0, "[redacted]");
        }
        // Longest runs first, so a whole key is one `[redacted]`.
        for len in (SCRUB_RUN_MIN..=key.len()).rev() {
            for start in 0..=key.len() - len {
                let run: String = key[start..start + len].iter().collect();
                if out.contains(&run) {
                    out = out.replace(&run, "[redacted]");
                }
            }
        }
        out
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_the_key_and_long_pieces_of_it() {
        let key = ApiKey::new("sk-proj-ABCDEFGHIJKLMNOP").unwrap();
        assert_eq!(
            key.scrub("key sk-proj-ABCDEFGHIJKLMNOP and tail ****IJKLMNOP, short MNOP"),
            "key [redacted] and tail ****[redacted], short MNOP"
        );
        assert_eq!(ApiKey::new("  "), None);
    }

    #[test]
    fn every_kind_a_spec_may_name_in_retry_on_is_a_kind_and_back() {
        let names: Vec<&str> = ErrorKind::ALL.iter().map(|kind| kind.name()).collect();
        assert_eq!(names, converge_runtime::spec::LLM_ERROR_KINDS);
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(ErrorKind::of_status(401), ErrorKind::Unauthorized);
        assert_eq!(ErrorKind::of_status(429), ErrorKind::RateLimited);
        assert_eq!(ErrorKind::of_status(529), ErrorKind::ServerError);
        assert_eq!(ErrorKind::of_status(404), ErrorKind::ClientError);
        let error = CallError::status(429, "slow down");
        assert_eq!(error.to_string(), "rate_limited (HTTP 429): slow down");
    }
}
