//! JSON request bodies, strictly: `application/json` only, nested at most
//! [`DEPTH_MAX`] levels, and no field the request type does not name (every request type
//! denies unknown fields). The size limit is the server's, applied to every route before any
//! handler runs.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// The deepest nesting of arrays and objects a JSON body may have.
pub(crate) const DEPTH_MAX: usize = 64;

/// A JSON body of type `T`.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        let RawBody(body) = RawBody::from_request(request, state).await?;
        parse(&body).map(JsonBody)
    }
}

/// A 415 unless the request says its body is `application/json`.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json",
        ));
    }
    Ok(())
}

/// A whole request body, read under the server's size limit and body timeout: 413 when it
/// is too large, 408 when it does not arrive in time.
#[derive(Debug)]
pub(crate) struct RawBody(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .map(RawBody)
            .map_err(|error| body_error(&error))
    }
}

/// Why a body could not be read, from its error chain.
fn body_error(error: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::Timeout,
                "the request body did not arrive in time",
            );
        }
        if error.is::<http_body_util::LengthLimitError>() {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                "the request body is larger than this server accepts",
            );
        }
        cause = error.source();
    }
    ApiError::bad_request("the request body could not be read")
}

/// Parses a strict JSON body.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    check_depth(body)?;
    serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid(format!("invalid body: {error}")))
}

/// Refuses JSON nested deeper than [`DEPTH_MAX`], before parsing it.
pub(crate) fn check_depth(body: &[u8]) -> Result<(), ApiError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > DEPTH_MAX {
                    return Err(ApiError::invalid(format!(
                        "the body is nested deeper than {DEPTH_MAX} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let deep = format!("{}{}", "[".repeat(DEPTH_MAX + 1), "]".repeat(DEPTH_MAX + 1));
        assert!(check_depth(deep.as_bytes()).is_err());
        let fine = format!("{}{}", "[".repeat(DEPTH_MAX), "]".repeat(DEPTH_MAX));
        assert!(check_depth(fine.as_bytes()).is_ok());
        let quoted = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert!(check_depth(quoted.as_bytes()).is_ok());
    }
}
