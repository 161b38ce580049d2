//! Errors as the API answers them: `{"error": {"code", "message", "request_id"}}`.
//!
//! Every response carries the request's id (set by the request-id middleware in a task-local,
//! so any error made while handling the request can name it). An internal error answers an
//! opaque 500; its detail goes to the log under that id, never to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

tokio::task_local! {
    /// The id of the request being handled.
    pub(crate) static REQUEST_ID: String;
}

/// The request id of the current task, if it is handling one.
pub(crate) fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable, machine-readable code.
    pub(crate) code: ErrorCode,
    /// What happened, in words.
    pub(crate) message: String,
    /// The request's id, as in its `x-request-id` header.
    pub(crate) request_id: String,
}

/// What went wrong, as a stable, machine-readable code. The document's `ErrorCode` enum is
/// generated from this type, so it lists exactly the codes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    /// A query parameter, header or path that does not parse (400).
    BadRequest,
    /// No token, or not a live one (401).
    Unauthorized,
    /// The token's role cannot do this, or the approver submitted the run (403).
    Forbidden,
    /// No such route, run (for this token's tenant) or fact (404).
    NotFound,
    /// The route does not answer this method (405).
    MethodNotAllowed,
    /// The request body did not arrive in time (408).
    Timeout,
    /// A submission named an id that is taken (409).
    RunExists,
    /// The run is being driven by another request or process (409).
    RunBusy,
    /// The run has stopped for good (409).
    Stopped,
    /// The run waits for decisions; it cannot be resumed (409).
    AwaitingApproval,
    /// A decision on a run that is not awaiting approval (409).
    NotAwaitingApproval,
    /// A decision on a proposal that is not pending (409).
    NotPending,
    /// A decision whose hash is not the pending proposal's (409).
    HashMismatch,
    /// A retry of failed agents the run's state does not allow: not stopped, stopped for a
    /// reason a retry cannot change, or an agent that did not fail (409).
    NotRetryable,
    /// The request body is larger than the server accepts (413).
    TooLarge,
    /// The body's content type is not one the route takes (415).
    UnsupportedMediaType,
    /// The body or the job spec was refused (422).
    Invalid,
    /// The server already drives or queues its most runs; nothing was started (429).
    ServerBusy,
    /// An internal error; the server's log has the detail under the request id (500).
    Internal,
}

impl ErrorCode {
    /// The code as sent.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RunExists => "run_exists",
            ErrorCode::RunBusy => "run_busy",
            ErrorCode::Stopped => "stopped",
            ErrorCode::AwaitingApproval => "awaiting_approval",
            ErrorCode::NotAwaitingApproval => "not_awaiting_approval",
            ErrorCode::NotPending => "not_pending",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::NotRetryable => "not_retryable",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Invalid => "invalid",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// The one answer for a run that does not exist and a run of another tenant.
    pub(crate) fn no_run(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no run {id:?}"),
        )
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// Too much is already queued: the request was not taken; try again shortly.
    pub(crate) fn busy(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ServerBusy,
            message,
        )
    }

    pub(crate) fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Invalid,
            message,
        )
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// An internal failure: logged in full under the request id, answered opaquely.
    pub(crate) fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(request_id = %request_id(), "internal error: {detail}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; the server's log has the detail under this request id",
        )
    }

    /// The answer body.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                request_id: request_id(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The error code a bare status maps to, for answers made outside the handlers (no route,
/// wrong method, body too large or too slow, a panic, a path that does not parse).
pub(crate) fn code_of(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::Timeout,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::Invalid,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::ServerBusy,
        status if status.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}
