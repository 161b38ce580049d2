//! The HTTP exchange both providers share: one POST, the whole body read under a limit, the
//! status and `Retry-After` kept, transport errors classified. No retry, no overall timeout
//! (the caller bounds each call with its own), and no logging of anything a server sends.

use std::error::Error as _;
use std::time::Duration;

use converge_core::TokenUsage;
use serde_json::Value;

use crate::provider::{ApiKey, CallError, ErrorKind};

/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body read; a model answer is far smaller.
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The most characters of a body quoted in an error message.
const QUOTE_CHARS_MAX: usize = 200;

/// A response, read whole.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The body as JSON, or a [`ErrorKind::MalformedResponse`] quoting it.
    pub(crate) fn json(&self) -> Result<Value, CallError> {
        serde_json::from_slice(&self.body).map_err(|_| {
            let quote = quote(&self.body);
            self.malformed(
                format!("the response is not JSON: {quote}"),
                TokenUsage::default(),
            )
        })
    }

    /// A [`ErrorKind::MalformedResponse`] for this response, keeping its status and the
    /// tokens it reported.
    pub(crate) fn malformed(&self, message: String, usage: TokenUsage) -> CallError {
        CallError {
            status: Some(self.status),
            usage,
            ..CallError::new(ErrorKind::MalformedResponse, message)
        }
    }
}

/// The HTTP client of one provider: a connect timeout and nothing else. Building it can
/// only fail if TLS cannot be set up; that error is returned by every call instead.
pub(crate) fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|error| describe(&error))
}

/// The client, or the error that kept it from being built.
pub(crate) fn usable(
    client: &Result<reqwest::Client, String>,
) -> Result<&reqwest::Client, CallError> {
    client.as_ref().map_err(|error| {
        let message = format!("the HTTP client could not be built: {error}");
        CallError::new(ErrorKind::Connection, message)
    })
}

/// `base_url` without credentials, for records.
pub(crate) fn record_url(base_url: &str) -> String {
    match reqwest::Url::parse(base_url) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            // Both setters only fail for URLs that cannot hold credentials at all.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.as_str().trim_end_matches('/').to_owned()
        }
        _ => base_url.to_owned(),
    }
}

/// Sends `request` and reads the whole response.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    endpoint: &str,
) -> Result<Response, CallError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(&e, endpoint))?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let reason = match read_body(response).await {
        Ok(body) => {
            return Ok(Response {
                status,
                retry_after,
                body,
            });
        }
        Err(reason) => reason,
    };
    // A cut-off error response still says what kind of error it was.
    let error = if is_success(status) {
        CallError {
            status: Some(status),
            ..CallError::new(ErrorKind::MalformedResponse, reason)
        }
    } else {
        CallError::status(status, reason)
    };
    Err(CallError {
        retry_after,
        ..error
    })
}

pub(crate) fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// The error for a non-2xx response, with the server's `message`.
pub(crate) fn status_error(response: &Response, message: String) -> CallError {
    CallError {
        retry_after: response.retry_after,
        ..CallError::status(response.status, message)
    }
}

/// `error` with every trace of `key` removed from its message.
pub(crate) fn scrubbed(key: Option<&ApiKey>, mut error: CallError) -> CallError {
    if let Some(key) = key {
        error.message = key.scrub(&error.message);
    }
    error
}

/// At most [`QUOTE_CHARS_MAX`] characters of `body`, on one line.
pub(crate) fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let one_line = |c: char| if c.is_control() { ' ' } else { c };
    if text.chars().count() <= QUOTE_CHARS_MAX {
        return text.chars().map(one_line).collect();
    }
    let mut quote: String = text
        .chars()
        .take(QUOTE_CHARS_MAX - 1)
        .map(one_line)
        .collect();
    quote.push('…');
    quote
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    // Each chunk is non-empty, so the limit bounds the loop.
    while let Some(chunk) = response.chunk().await.map_err(|error| {
        format!(
            "the response body was cut off or unreadable: {}",
            describe(&error)
        )
    })? {
        if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
            let limit_mib = RESPONSE_BYTES_MAX / (1024 * 1024);
            return Err(format!("the response body exceeds {limit_mib} MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` in seconds, integer or decimal; an HTTP date is ignored.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

fn transport_error(error: &reqwest::Error, endpoint: &str) -> CallError {
    let detail = describe(error);
    let (kind, message) = if error.is_timeout() {
        (
            ErrorKind::Timeout,
            format!("the request to {endpoint} timed out: {detail}"),
        )
    } else if error.is_connect() {
        (
            ErrorKind::Connection,
            format!("could not connect to {endpoint}: {detail}"),
        )
    } else if error.is_body() || error.is_decode() {
        let message = format!("the response body was cut off or unreadable: {detail}");
        (ErrorKind::MalformedResponse, message)
    } else if error.is_builder() {
        // A base URL or key that cannot make a request: retrying will not help.
        let message = format!("the request to {endpoint} could not be built: {detail}");
        (ErrorKind::ClientError, message)
    } else {
        (
            ErrorKind::Connection,
            format!("the exchange with {endpoint} failed: {detail}"),
        )
    };
    CallError::new(kind, message)
}

/// The error and its causes, without the URL (which the caller names itself).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = error.source();
    // Error chains are short; the bound only guards against a cycle.
    for _ in 0..16 {
        let Some(cause) = source else { break };
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
