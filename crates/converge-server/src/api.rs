//! The `/v1` routes: runs, facts, approvals, events, audits. Each handler checks the token's
//! role, resolves the run within the token's tenant (another tenant's run is a 404), and
//! answers JSON. The OpenAPI document is generated from the annotations here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use converge_core::{ContextKey, Digest, ProposalId, StopReason};
use converge_runtime::{Cancel, RunId, RunStatus, RunSummary};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Principal, Role};
use crate::body::{JsonBody, RawBody, check_depth};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::job::{self, BuildError, Calls};
use crate::service::{
    self, EventEntry, Op, POLL, Service, build_error, durable_error, journal_error, owned,
};
use crate::store::{DecisionAttempt, Ownership, StoreError, now_ms};
use crate::{schema, view};

type Api = State<Arc<Service>>;

/// A run as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunView {
    /// The run's id within its tenant.
    id: String,
    /// The tenant.
    tenant: String,
    /// Who submitted it (the token's name).
    submitted_by: String,
    /// When (milliseconds since the Unix epoch).
    submitted_at_ms: u64,
    /// Its state.
    status: RunState,
    /// Why it stopped, once stopped for good; else null.
    #[schema(value_type = Option<schema::StopReason>)]
    stop_reason: Option<Value>,
    /// Committed journal steps.
    steps: u64,
    /// Committed events.
    events: u64,
    /// The head of its hash chain.
    root_hash: String,
    /// Whether this server is driving it right now.
    driving: bool,
}

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunState {
    /// Being driven, or left running by a process that stopped (see resume).
    Running,
    /// Stopped at a fixed point with proposals waiting for a human.
    AwaitingApproval,
    /// Stopped for good; `stop_reason` says why.
    Stopped,
}

/// A page of a tenant's runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunList {
    runs: Vec<RunView>,
    /// Pass as `?after=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Who a token is.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WhoAmI {
    name: String,
    tenant: String,
    role: Role,
}

/// `?id=` of a submission.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitQuery {
    /// The new run's id (1 to 48 letters, digits, `_` or `-`); default `run-N`.
    #[param(pattern = "^[A-Za-z0-9_-]{1,48}$", example = "release-1")]
    id: Option<String>,
}

/// Query parameters, refused with a 400 that names the parameter and what is wrong with it
/// (axum's own `Query` answers a bare "Bad Request").
pub(crate) struct Params<T>(pub(crate) T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Params)
            .map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner();
                if path == "." {
                    ApiError::bad_request(format!("query parameters: {inner}"))
                } else {
                    ApiError::bad_request(format!("query parameter {path}: {inner}"))
                }
            })
    }
}

/// A build refusal with the server's paths replaced: the spec's own path by the name the
/// submitter knows (`job.yaml`), the jobs directory by `.`.
fn without_server_paths(
    error: BuildError,
    (path, dir): &(String, String),
    shown: &str,
) -> BuildError {
    let redact = |message: String| {
        message
            .replace(path.as_str(), shown)
            .replace(dir.as_str(), ".")
    };
    match error {
        BuildError::Spec(message) => BuildError::Spec(redact(message)),
        BuildError::Providers(message) => BuildError::Providers(redact(message)),
        other => other,
    }
}

/// A page size: `?limit=` means the same everywhere — at most that many, from 1 to `max`;
/// `default` when absent. Anything else is a 400 naming the parameter.
fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(limit) => Err(ApiError::bad_request(format!(
            "query parameter limit: {limit} is not from 1 to {max}"
        ))),
    }
}

/// A runs cursor (`<submitted_ms>.<id>`, a page's `next`) as the store orders by.
fn parse_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    let refused = || {
        ApiError::bad_request(
            "query parameter after: not a cursor; pass the `next` of the previous page",
        )
    };
    let (ms, id) = cursor.split_once('.').ok_or_else(refused)?;
    let ms: i64 = ms.parse().map_err(|_| refused())?;
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(refused());
    }
    Ok((ms, id.to_owned()))
}

/// Most runs one listing returns.
const RUNS_PAGE_MAX: usize = 1000;

/// Most events one page returns.
const EVENTS_PAGE_MAX: usize = 5000;

/// `?limit=` of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// At most this many runs, from 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next` of the previous page: the runs submitted before its last one.
    #[param(
        pattern = "^-?[0-9]{1,18}[.][A-Za-z0-9_-]+$",
        example = "1764250000000.release-1"
    )]
    after: Option<String>,
}

/// `?from=&limit=` of a page of events or audit entries.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// The first event's seq (default 0).
    #[param(value_type = schema::Seq, required = false)]
    from: Option<u64>,
    /// At most this many, from 1 to 5000 (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<usize>,
}

/// `Last-Event-ID` of an event request (read from the headers by hand; this type documents it).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct ResumeHeader {
    /// Resume after this event (overrides `from`); at the largest seq there is, past the end.
    #[serde(rename = "Last-Event-ID")]
    #[param(value_type = schema::Seq, required = false)]
    #[allow(
        dead_code,
        reason = "documentation: the handler reads the header itself"
    )]
    last_event_id: Option<u64>,
}

/// An approval: the hash of the proposal as the approver was shown it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveRequest {
    /// The pending proposal's hash (64 hex digits).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    hash: String,
}

/// A rejection: the hash, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectRequest {
    /// The pending proposal's hash (64 hex digits).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    hash: String,
    /// Why it is rejected (recorded in the journal); not only spaces.
    #[schema(pattern = "[^\\s]")]
    reason: String,
}

/// A cancellation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelRequest {
    /// Why (recorded in the journal).
    reason: Option<String>,
}

/// A decision that was accepted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DecisionAccepted {
    /// The attempt as recorded.
    decision: DecisionAttempt,
    /// The run, now going on to its next stop.
    run: RunView,
}

/// Every decision attempt on a run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DecisionList {
    decisions: Vec<DecisionAttempt>,
}

/// The principal, when the token's role allows `action`.
pub(crate) fn authorize(caller: &Principal, action: Action) -> Result<(), ApiError> {
    if !caller.role.allows(action) {
        return Err(ApiError::forbidden(format!(
            "a token with the {} role cannot do this; it needs {} token",
            caller.role,
            action.needs()
        )));
    }
    Ok(())
}

/// Checks the caller may take `action` and finds the run it knows as `id`.
async fn resolve(
    service: &Arc<Service>,
    caller: &Principal,
    action: Action,
    id: &str,
) -> Result<Ownership, ApiError> {
    authorize(caller, action)?;
    owned(service, &caller.tenant, id).await
}

/// A run as shown, from whether this process drives it (read before the summary: a drive
/// records the run's status before it lets go, so a summary read after `driving` turned
/// false is final) and its journal summary.
fn run_view(driving: bool, owner: &Ownership, summary: &RunSummary) -> RunView {
    let stop_reason = match &summary.status {
        RunStatus::Stopped { reason } => Some(reason.clone()),
        _ => None,
    };
    // A run being driven here is running, whatever status its last stop recorded.
    let status = match &summary.status {
        _ if driving => RunState::Running,
        RunStatus::Running => RunState::Running,
        RunStatus::AwaitingApproval => RunState::AwaitingApproval,
        RunStatus::Stopped { .. } => RunState::Stopped,
    };
    RunView {
        id: owner.id.clone(),
        tenant: owner.tenant.clone(),
        submitted_by: owner.submitted_by.clone(),
        submitted_at_ms: owner.submitted_ms,
        status,
        stop_reason,
        steps: summary.steps,
        events: summary.events,
        root_hash: summary.root_hash.to_string(),
        driving,
    }
}

async fn view_of(service: &Arc<Service>, owner: &Ownership) -> Result<RunView, ApiError> {
    let driving = service.driving(&owner.run);
    let summary = service.summary(&owner.run).await?;
    Ok(run_view(driving, owner, &summary))
}

/// Who the token is.
#[utoipa::path(get, path = "/v1/whoami", tag = "auth", operation_id = "whoami",
    responses((status = 200, body = WhoAmI, description = "The token's name, tenant and role",
        example = json!({"name": "alice", "tenant": "acme", "role": "approver"}))))]
pub(crate) async fn whoami(
    Extension(caller): Extension<Principal>,
) -> Result<Json<WhoAmI>, ApiError> {
    authorize(&caller, Action::Read)?;
    let principal = caller;
    Ok(Json(WhoAmI {
        name: principal.name,
        tenant: principal.tenant,
        role: principal.role,
    }))
}

/// Submit a job spec (YAML or JSON) and start its run.
#[utoipa::path(post, path = "/v1/runs", tag = "runs", operation_id = "submit", params(SubmitQuery),
    request_body(description = "The job spec (docs/job-specs.md), as YAML or as JSON",
        content(
            (schema::JobSpec = "application/yaml", example = json!({"version": 1, "intent": {"objective": "greet"}, "seeds": [{"key": "seeds", "id": "greeting", "content": "hello"}]})),
            (schema::JobSpec = "application/json", example = json!({"version": 1, "intent": {"objective": "greet"}, "seeds": [{"key": "seeds", "id": "greeting", "content": "hello"}]})))),
    responses(
        (status = 201, body = RunView, description = "The run started; its first step is journaled and it goes on in the background",
            headers(("location" = String, description = "The run's path")),
            links(
                ("get_run" = (operation_id = "get_run", parameters(("run" = "$response.body#/id")), description = "The run")),
                ("cancel" = (operation_id = "cancel", parameters(("run" = "$response.body#/id")), description = "Cancel it")),
                ("resume" = (operation_id = "resume", parameters(("run" = "$response.body#/id")), description = "Resume it")),
                ("facts" = (operation_id = "facts", parameters(("run" = "$response.body#/id")), description = "Its facts")),
                ("rejections" = (operation_id = "rejections", parameters(("run" = "$response.body#/id")), description = "Its rejections")),
                ("approvals" = (operation_id = "approvals", parameters(("run" = "$response.body#/id")), description = "Its pending proposals")),
                ("decisions" = (operation_id = "decisions", parameters(("run" = "$response.body#/id")), description = "Its decision attempts")),
                ("events" = (operation_id = "events", parameters(("run" = "$response.body#/id")), description = "Its events")),
                ("replay" = (operation_id = "replay", parameters(("run" = "$response.body#/id")), description = "Replay it")),
                ("verify" = (operation_id = "verify", parameters(("run" = "$response.body#/id")), description = "Verify it")),
                ("audit" = (operation_id = "audit", parameters(("run" = "$response.body#/id")), description = "Its audit proof"))
            ),
            example = json!({"id": "release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 1, "events": 9, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot do this"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 409, body = ErrorBody, description = "`run_exists`: the id is taken"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: not YAML or JSON"),
        (status = 422, body = ErrorBody, description = "`invalid`: the spec was refused, or the id is not valid"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn submit(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    headers: HeaderMap,
    Params(query): Params<SubmitQuery>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    authorize(&caller, Action::Drive)?;
    let principal = caller;
    let source = spec_text(&headers, &body)?;
    if let Some(id) = &query.id {
        check_run_id(id)?;
    }
    let origin = service
        .config
        .jobs_dir
        .join(format!("{}.yaml", query.id.as_deref().unwrap_or("job")));
    let record = converge_runtime::JobRecord {
        path: origin.to_string_lossy().into_owned(),
        source,
    };
    // A refusal names the spec as the submitter knows it, never by the server's directory.
    let hidden = (
        record.path.clone(),
        service.config.jobs_dir.to_string_lossy().into_owned(),
    );
    let shown = format!("{}.yaml", query.id.as_deref().unwrap_or("job"));
    let providers = service.config.providers.clone();
    let allow_commands = service.config.allow_commands;
    let runtime = service::blocking(move || {
        let built = job::build(
            &record,
            Calls::Live {
                providers: providers.as_deref(),
            },
        )
        .map_err(|error| build_error(without_server_paths(error, &hidden, &shown)))?;
        let commands: Vec<&str> = built.spec.command_agents().collect();
        if !allow_commands && !commands.is_empty() {
            return Err(ApiError::invalid(format!(
                "command agents ({}) run programs on the server's machine and are disabled here; \
                 start the server with --allow-commands to accept them",
                commands.join(", ")
            )));
        }
        Ok(built.runtime)
    })
    .await?;
    let owner = claim(&service, &principal, query.id).await?;
    let (run, id) = (owner.run.clone(), owner.id.clone());
    let Some(guard) = service.try_drive(&run) else {
        return Err(ApiError::conflict(
            ErrorCode::RunExists,
            format!("run {id:?} already exists"),
        ));
    };
    let started = service.drive(guard, runtime, Op::Start(run.clone()), Cancel::new());
    if let Err(error) = started.await {
        let forget = run.clone();
        let _ = service.store(move |store| store.unclaim(&forget)).await;
        return Err(error);
    }
    let view = view_of(&service, &owner).await?;
    let location = format!("/v1/runs/{id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

/// The spec text of a submission, by its content type.
fn spec_text(headers: &HeaderMap, body: &Bytes) -> Result<String, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::invalid("the job spec is not UTF-8 text"))?;
    match content_type.as_str() {
        "application/json" => {
            check_depth(body)?;
            serde_json::from_str::<Value>(text)
                .map_err(|error| ApiError::invalid(format!("the job spec is not JSON: {error}")))?;
            Ok(text.to_owned())
        }
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            Ok(text.to_owned())
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!(
                "a job spec is sent as application/yaml or application/json, not {:?}",
                if other.is_empty() { "(none)" } else { other }
            ),
        )),
    }
}

/// Claims the given id, or the tenant's next free `run-N`, for a new run.
async fn claim(
    service: &Arc<Service>,
    principal: &Principal,
    given: Option<String>,
) -> Result<Ownership, ApiError> {
    let (tenant, name) = (principal.tenant.clone(), principal.name.clone());
    service
        .store(move |store| {
            let owner = |id: String| -> Result<Ownership, StoreError> {
                let run = RunId::new(&format!("{tenant}-{id}"))
                    .map_err(|error| StoreError::Invalid(error.to_string()))?;
                Ok(Ownership {
                    run,
                    tenant: tenant.clone(),
                    id,
                    submitted_by: name.clone(),
                    submitted_ms: now_ms(),
                })
            };
            if let Some(id) = given {
                let owner = owner(id)?;
                store.claim(&owner)?;
                return Ok(owner);
            }
            // Concurrent submissions may take the same number: the claim is the arbiter.
            let mut next = store.count_of(&tenant)? + 1;
            loop {
                let candidate = owner(format!("run-{next}"))?;
                match store.claim(&candidate) {
                    Err(StoreError::RunExists(_)) => next += 1,
                    claimed => return claimed.map(|()| candidate),
                }
            }
        })
        .await
}

fn check_run_id(id: &str) -> Result<(), ApiError> {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if id.is_empty() || id.len() > 48 || !id.chars().all(valid) {
        return Err(ApiError::invalid(format!(
            "run id {:?} must be 1 to 48 letters, digits, `_` or `-`",
            id.chars().take(49).collect::<String>()
        )));
    }
    Ok(())
}

/// The tenant's runs, newest first.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", operation_id = "list", params(ListQuery),
    responses((status = 200, body = RunList, description = "The tenant's runs, newest first",
        example = json!({"runs": [{"id": "release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "awaiting_approval", "stop_reason": null, "steps": 3, "events": 21, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": false}], "next": "1764250000000.release-1"}))))]
pub(crate) async fn list(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Params(query): Params<ListQuery>,
) -> Result<Json<RunList>, ApiError> {
    authorize(&caller, Action::Read)?;
    let principal = caller;
    let limit = page_limit(query.limit, 100, RUNS_PAGE_MAX)?;
    let after = query.after.as_deref().map(parse_cursor).transpose()?;
    let tenant = principal.tenant.clone();
    let owners = service
        .store(move |store| store.runs_of(&tenant, limit, after))
        .await?;
    let next = (owners.len() == limit)
        .then(|| {
            owners
                .last()
                .map(|last| format!("{}.{}", last.submitted_ms, last.id))
        })
        .flatten();
    let reader = service.clone();
    let views = service
        .journal(move |journal| {
            let mut views = Vec::with_capacity(owners.len());
            for owner in &owners {
                let driving = reader.driving(&owner.run);
                match converge_runtime::Journal::summary(journal, &owner.run) {
                    Ok(summary) => views.push(run_view(driving, owner, &summary)),
                    // Claimed but never created (its submission failed mid-way).
                    Err(converge_runtime::JournalError::UnknownRun { .. }) => {}
                    Err(error) => return Err(journal_error(error)),
                }
            }
            Ok(views)
        })
        .await?;
    Ok(Json(RunList { runs: views, next }))
}

/// One run.
#[utoipa::path(get, path = "/v1/runs/{run}", tag = "runs", operation_id = "get_run",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    responses((status = 200, body = RunView, description = "The run", example = json!({"id": "release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "awaiting_approval", "stop_reason": null, "steps": 3, "events": 21, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": false}))))]
pub(crate) async fn get_run(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    Ok(Json(view_of(&service, &owner).await?))
}

/// Cancel a run: a run being driven halts at once (agents still running are stopped and
/// recorded as failed), a run awaiting approval stops for good. Journaled as a halt.
#[utoipa::path(post, path = "/v1/runs/{run}/cancel", tag = "runs", operation_id = "cancel",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    request_body(content = CancelRequest, content_type = "application/json",
        description = "Optional: an empty body cancels with a default reason",
        example = json!({"reason": "no longer needed"})),
    responses((status = 202, body = RunView, description = "The run halts (a running one at once; a parked one stops for good)",
            example = json!({"id": "release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "stopped", "stop_reason": {"stop": "halted", "reason": "cancelled by sam: no longer needed"}, "steps": 4, "events": 23, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": false})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot do this"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: the body is not application/json"),
        (status = 422, body = ErrorBody, description = "`invalid`: the body does not parse, nests too deep or has an unknown field"),
        (status = 409, body = ErrorBody, description = "`stopped`: the run has already stopped; `run_busy`: another request or process drives it"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn cancel(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let owner = resolve(&service, &caller, Action::Drive, &id).await?;
    let principal = caller;
    // The body is optional: none cancels with the default reason.
    let request: CancelRequest = if body.is_empty() {
        CancelRequest::default()
    } else {
        crate::body::require_json(&headers)?;
        crate::body::parse(&body)?
    };
    let reason = request
        .reason
        .unwrap_or_else(|| "cancelled over the API".to_owned());
    if service.cancel_drive(&owner.run, &principal.name, &reason) {
        let view = view_of(&service, &owner).await?;
        return Ok((StatusCode::ACCEPTED, Json(view)).into_response());
    }
    let Some(guard) = service.try_drive(&owner.run) else {
        return Err(ApiError::conflict(
            ErrorCode::RunBusy,
            "the run is being driven by another request; try again",
        ));
    };
    let summary = service.summary(&owner.run).await?;
    let runtime = service.live_runtime(&owner.run).await?;
    let cancel = Cancel::new();
    let op = match summary.status {
        RunStatus::Stopped { .. } => {
            return Err(ApiError::conflict(
                ErrorCode::Stopped,
                "the run has already stopped",
            ));
        }
        RunStatus::AwaitingApproval => Op::CancelParked {
            run: owner.run.clone(),
            by: principal.name.clone(),
            reason,
        },
        // Left running by a process that stopped: resumed already cancelled, so it halts
        // before executing anything.
        RunStatus::Running => {
            cancel.cancel(&principal.name, &reason);
            Op::Resume(owner.run.clone())
        }
    };
    service.drive(guard, runtime, op, cancel).await?;
    let view = view_of(&service, &owner).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Resume a run whose driver stopped before the run did (a crash or a restart).
#[utoipa::path(post, path = "/v1/runs/{run}/resume", tag = "runs", operation_id = "resume",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    responses((status = 202, body = RunView, description = "The run goes on from its journal", example = json!({"id": "release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 1, "events": 9, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot do this"),
        (status = 409, body = ErrorBody, description = "`stopped`, `awaiting_approval` or `run_busy`: the run's state does not allow it"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn resume(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = resolve(&service, &caller, Action::Drive, &id).await?;
    let Some(guard) = service.try_drive(&owner.run) else {
        return Err(ApiError::conflict(
            ErrorCode::RunBusy,
            "the run is being driven already",
        ));
    };
    let summary = service.summary(&owner.run).await?;
    match summary.status {
        RunStatus::Running => {}
        RunStatus::AwaitingApproval => {
            return Err(ApiError::conflict(
                ErrorCode::AwaitingApproval,
                "the run is waiting for decisions on its pending proposals",
            ));
        }
        RunStatus::Stopped { .. } => {
            return Err(ApiError::conflict(
                ErrorCode::Stopped,
                "the run has already stopped",
            ));
        }
    }
    let runtime = service.live_runtime(&owner.run).await?;
    service
        .drive(guard, runtime, Op::Resume(owner.run.clone()), Cancel::new())
        .await?;
    let view = view_of(&service, &owner).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// The run's current facts, each with its provenance.
#[utoipa::path(get, path = "/v1/runs/{run}/facts", tag = "facts", operation_id = "facts",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    responses((status = 200, body = schema::FactList, description = "The current facts, each with its provenance",
        example = json!({"facts": [{"key": "ci", "id": "unit", "version": 1, "content": {"pipeline": "unit-tests", "passed": true}, "confidence": 1.0, "content_hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "agent": "seed", "cycle": 1, "proposal": "c1.a0.p3", "proposal_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "derived_from": [], "evidence": [], "structural_checks": ["key", "authority"], "validators": [], "policy_version": 1, "approver": null, "correction": null, "trace": {"local_trace": "seed"}}]}))))]
pub(crate) async fn facts(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let seen = service.inspection(&owner.run).await?;
    let context = &seen.result.context;
    let facts: Vec<Value> = context
        .keys()
        .flat_map(|key| context.get(key))
        .map(view::fact_json)
        .collect();
    Ok(Json(json!({ "facts": facts })))
}

/// One fact and why it is true: its provenance and, recursively, its sources'.
#[utoipa::path(get, path = "/v1/runs/{run}/facts/{key}/{id}", tag = "facts", operation_id = "fact",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1"),
        ("key" = String, Path, description = "The fact's key", example = "releases"),
        ("id" = String, Path, description = "The fact's id", example = "release-2-4-0")),
    responses((status = 200, body = schema::FactWhy, description = "The fact and, recursively, its sources",
        example = json!({"key": "evaluations", "id": "assessment-pr-1412", "version": 1, "content": {"change": "pr-1412"}, "confidence": 0.9, "agent": "assess-high-risk", "cycle": 1, "proposal": "c1.a1.p0", "derived_from": [{"key": "changes", "id": "pr-1412"}], "sources": [{"key": "changes", "id": "pr-1412", "version": 1, "content": {"title": "Retry failed card captures"}, "confidence": 1.0, "agent": "seed", "cycle": 1, "proposal": "c1.a0.p0", "derived_from": [], "sources": []}]}))))]
pub(crate) async fn fact(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path((id, key, fact_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let seen = service.inspection(&owner.run).await?;
    let missing = || ApiError::not_found(format!("no fact {key}/{fact_id} in run {id:?}"));
    let parsed: ContextKey = key.parse().map_err(|_| missing())?;
    let fact = seen
        .result
        .context
        .fact(parsed, &fact_id)
        .ok_or_else(missing)?;
    Ok(Json(view::why_json(&seen.result, fact)))
}

/// The proposals that were rejected, with the gate's reasons.
#[utoipa::path(get, path = "/v1/runs/{run}/rejections", tag = "facts", operation_id = "rejections",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    responses((status = 200, body = schema::RejectionList, description = "The rejected proposals with the gate's reasons, and the agent failures",
        example = json!({"rejections": [{"proposal": "c2.a1.p0", "cycle": 2, "key": "releases", "id": "release-2-4-0", "content": {"ship": "yes"}, "confidence": 0.9, "rejection": {"kind": "validator_failed", "validator": "schema", "detail": "ship: not a boolean"}}], "failures": [{"cycle": 1, "agent": 2, "message": "timed out after 30000 ms"}]}))))]
pub(crate) async fn rejections(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let seen = service.inspection(&owner.run).await?;
    Ok(Json(json!({
        "rejections": seen.result.rejections,
        "failures": seen.result.failures,
    })))
}

/// The proposals waiting for a human, with what each would become and the hash a decision
/// must name.
#[utoipa::path(get, path = "/v1/runs/{run}/approvals", tag = "approvals", operation_id = "approvals",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    responses((status = 200, body = schema::PendingList, description = "The proposals waiting for a human (empty unless the run awaits approval)",
        links(
            ("approve" = (operation_id = "approve", parameters(("run" = "$request.path.run"), ("proposal" = "$response.body#/pending/0/proposal")),
                request_body = json!({"hash": "$response.body#/pending/0/hash"}), description = "Approve the first pending proposal")),
            ("reject" = (operation_id = "reject", parameters(("run" = "$request.path.run"), ("proposal" = "$response.body#/pending/0/proposal")),
                request_body = json!({"hash": "$response.body#/pending/0/hash", "reason": "no rollback plan"}), description = "Reject the first pending proposal"))
        ),
        example = json!({"pending": [{"proposal": "c2.a2.p0", "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "key": "releases", "id": "release-2-4-0", "content": {"version": "2.4.0", "ship": true, "changes": 3, "assessed": "pr-1412"}, "confidence": 1.0, "agent": 2, "agent_name": "propose-release"}]}))))]
pub(crate) async fn approvals(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let seen = service.inspection(&owner.run).await?;
    let mut pending = if seen.stopped {
        view::pending_json(&seen.result)
    } else {
        json!([])
    };
    // Agents are recorded by name in the run's header, in id order.
    for entry in pending.as_array_mut().into_iter().flatten() {
        let name = entry["agent"]
            .as_u64()
            .and_then(|index| seen.header.agents.get(index as usize))
            .cloned();
        entry["agent_name"] = json!(name);
    }
    Ok(Json(json!({ "pending": pending })))
}

/// Approve one pending proposal: bound to the run, the proposal and its hash; used once.
#[utoipa::path(post, path = "/v1/runs/{run}/approvals/{proposal}/approve", tag = "approvals", operation_id = "approve",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1"),
        ("proposal" = String, Path, description = "The pending proposal's id", example = "c2.a2.p0")),
    request_body(content = ApproveRequest, content_type = "application/json", example = json!({"hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"})),
    responses((status = 200, body = DecisionAccepted, description = "Accepted: the proposal is promoted and the run goes on",
            example = json!({"decision": {"seq": 1, "proposal": "c2.a2.p0", "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "actor": "alice", "verdict": "approve", "reason": null, "outcome": "accepted", "refusal": null, "at_ms": 1764250060000_u64}, "run": {"id": "release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 1, "events": 9, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true}})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot decide, or the approver submitted the run"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: the body is not application/json"),
        (status = 422, body = ErrorBody, description = "`invalid`: the body does not parse, nests too deep or has an unknown field"),
        (status = 409, body = ErrorBody, description = "`not_pending`, `hash_mismatch`, `not_awaiting_approval`, `run_busy` or `stopped`: refused (and recorded)"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn approve(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path((id, proposal)): Path<(String, String)>,
    JsonBody(request): JsonBody<ApproveRequest>,
) -> Result<Json<DecisionAccepted>, ApiError> {
    decide(service, caller, id, proposal, request.hash, None).await
}

/// Reject one pending proposal, with a reason: bound like an approval.
#[utoipa::path(post, path = "/v1/runs/{run}/approvals/{proposal}/reject", tag = "approvals", operation_id = "reject",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1"),
        ("proposal" = String, Path, description = "The pending proposal's id", example = "c2.a2.p0")),
    request_body(content = RejectRequest, content_type = "application/json", example = json!({"hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "reason": "no rollback plan"})),
    responses((status = 200, body = DecisionAccepted, description = "Accepted: the proposal is rejected and the run goes on",
            example = json!({"decision": {"seq": 2, "proposal": "c2.a2.p0", "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "actor": "alice", "verdict": "reject", "reason": "no rollback plan", "outcome": "accepted", "refusal": null, "at_ms": 1764250060000_u64}, "run": {"id": "release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 1, "events": 9, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true}})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot decide, or the approver submitted the run"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: the body is not application/json"),
        (status = 422, body = ErrorBody, description = "`invalid`: the body does not parse, nests too deep or has an unknown field"),
        (status = 409, body = ErrorBody, description = "`not_pending`, `hash_mismatch`, `not_awaiting_approval`, `run_busy` or `stopped`: refused (and recorded)"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn reject(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path((id, proposal)): Path<(String, String)>,
    JsonBody(request): JsonBody<RejectRequest>,
) -> Result<Json<DecisionAccepted>, ApiError> {
    if request.reason.trim().is_empty() {
        return Err(ApiError::invalid("a rejection needs a reason"));
    }
    decide(
        service,
        caller,
        id,
        proposal,
        request.hash,
        Some(request.reason),
    )
    .await
}

/// One decision: checked, recorded whatever the outcome, and applied when accepted.
async fn decide(
    service: Arc<Service>,
    principal: Principal,
    id: String,
    proposal_text: String,
    hash_text: String,
    reject: Option<String>,
) -> Result<Json<DecisionAccepted>, ApiError> {
    let owner = resolve(&service, &principal, Action::Decide, &id).await?;
    let mut attempt = DecisionAttempt {
        seq: 0,
        proposal: proposal_text.chars().take(64).collect(),
        hash: hash_text.chars().take(64).collect(),
        actor: principal.name.clone(),
        verdict: if reject.is_some() {
            "reject"
        } else {
            "approve"
        }
        .to_owned(),
        reason: reject.clone(),
        outcome: "refused".to_owned(),
        refusal: None,
        at_ms: now_ms(),
    };
    let outcome = check_decision(&service, &principal, &owner, &proposal_text, &hash_text).await;
    let (guard, proposal, hash) = match outcome {
        Ok(checked) => checked,
        Err((refusal, error)) => {
            attempt.refusal = Some(refusal.to_owned());
            record(&service, &owner.run, attempt).await?;
            return Err(error);
        }
    };
    let decision = service::decision(proposal, hash, &principal.name, reject)?;
    let runtime = service.live_runtime(&owner.run).await?;
    let applied = service.drive(
        guard,
        runtime,
        Op::Decide(owner.run.clone(), decision),
        Cancel::new(),
    );
    if let Err(error) = applied.await {
        attempt.refusal = Some(error.code.as_str().to_owned());
        record(&service, &owner.run, attempt).await?;
        return Err(error);
    }
    attempt.outcome = "accepted".to_owned();
    attempt.seq = record(&service, &owner.run, attempt.clone()).await?;
    let decision = attempt;
    let run = view_of(&service, &owner).await?;
    Ok(Json(DecisionAccepted { decision, run }))
}

type Checked = (tokio::sync::OwnedMutexGuard<()>, ProposalId, Digest);

/// Whether a decision may be applied: by whom, on what, now. A refusal names its reason.
async fn check_decision(
    service: &Arc<Service>,
    principal: &Principal,
    owner: &Ownership,
    proposal: &str,
    hash: &str,
) -> Result<Checked, (&'static str, ApiError)> {
    if owner.submitted_by == principal.name && !service.config.allow_self_approval {
        return Err((
            "self_approval",
            ApiError::forbidden(
                "you submitted this run: someone else must decide on its proposals",
            ),
        ));
    }
    let not_pending = || {
        (
            "not_pending",
            ApiError::conflict(
                ErrorCode::NotPending,
                format!(
                    "proposal {proposal:?} is not pending in this run (already decided, or never parked)"
                ),
            ),
        )
    };
    let proposal: ProposalId = proposal.parse().map_err(|_| not_pending())?;
    let stale = || {
        (
            "hash_mismatch",
            ApiError::conflict(
                ErrorCode::HashMismatch,
                "the hash is not the pending proposal's: the request is stale or was altered",
            ),
        )
    };
    let hash: Digest = hash.parse().map_err(|_| stale())?;
    let Some(guard) = service.try_drive(&owner.run) else {
        return Err((
            "run_busy",
            ApiError::conflict(
                ErrorCode::RunBusy,
                "the run is being driven (another decision or a resume is in progress)",
            ),
        ));
    };
    let seen = service
        .inspection(&owner.run)
        .await
        .map_err(|error| ("internal", error))?;
    // A run that has not stopped carries a stand-in stop reason: only a stopped one is parked.
    let pending = match &seen.result.stop_reason {
        StopReason::AwaitingApproval { pending } if seen.stopped => pending,
        _ => {
            return Err((
                "not_awaiting_approval",
                ApiError::conflict(
                    ErrorCode::NotAwaitingApproval,
                    "the run is not awaiting approval",
                ),
            ));
        }
    };
    let Some(parked) = pending.iter().find(|parked| parked.proposal == proposal) else {
        return Err(not_pending());
    };
    if parked.hash != hash {
        return Err(stale());
    }
    Ok((guard, proposal, hash))
}

/// Records a decision attempt; its seq.
async fn record(
    service: &Arc<Service>,
    run: &RunId,
    attempt: DecisionAttempt,
) -> Result<u64, ApiError> {
    service.metrics.decision(attempt.outcome == "accepted");
    let run = run.clone();
    service
        .store(move |store| store.record_decision(&run, &attempt))
        .await
}

/// Every decision attempt on the run, accepted or refused, in order.
#[utoipa::path(get, path = "/v1/runs/{run}/decisions", tag = "approvals", operation_id = "decisions",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    responses((status = 200, body = DecisionList, description = "Every decision attempt on the run, accepted or refused, in order",
        example = json!({"decisions": [{"seq": 1, "proposal": "c2.a2.p0", "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "actor": "sam", "verdict": "approve", "reason": null, "outcome": "refused", "refusal": "self_approval", "at_ms": 1764250050000_u64}]}))))]
pub(crate) async fn decisions(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<DecisionList>, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let run = owner.run.clone();
    let decisions = service.store(move |store| store.decisions(&run)).await?;
    Ok(Json(DecisionList { decisions }))
}

/// The run's events: a server-sent event stream (`Accept: text/event-stream`, resumable
/// with `Last-Event-ID`) or a JSON page.
#[utoipa::path(get, path = "/v1/runs/{run}/events", tag = "events", operation_id = "events",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1"), PageQuery, ResumeHeader),
    responses((status = 200, description = "With `Accept: text/event-stream`, server-sent events: `id: <seq>`, `event: <kind>`, `data: <EventEntry as JSON>`, ending with `event: end` (`data: {\"status\": \"stopped\", \"stop_reason\": …}`) once the run stops for good. Otherwise a JSON page.",
        content(
            (schema::EventPage = "application/json", example = json!({"events": [{"seq": 0, "step": 0, "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "event": {"event": "run_started", "initial_facts": 0}}], "next": 1, "stopped": false})),
            (String = "text/event-stream", example = json!("id: 0\nevent: run_started\ndata: {\"seq\":0,\"step\":0,\"hash\":\"4b9c…\",\"event\":{\"event\":\"run_started\"}}\n\n"))))))]
pub(crate) async fn events(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Params(page): Params<PageQuery>,
) -> Result<Response, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let limit = page_limit(page.limit, 500, EVENTS_PAGE_MAX)?;
    let last = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not an event seq"))?,
        ),
    };
    // The event after the last one seen; past the end of any run when that was the last
    // possible seq (never a wrap to 0, which would replay the whole stream).
    let from = match last {
        Some(seq) => seq.saturating_add(1),
        None => page.from.unwrap_or(0),
    };
    if !streaming {
        let (entries, summary) = service.events(&owner.run, from, limit).await?;
        let next = entries.last().map_or(from, |entry| entry.seq + 1);
        let body = format!(
            r#"{{"events":[{}],"next":{next},"stopped":{}}}"#,
            joined(&entries),
            matches!(summary.status, RunStatus::Stopped { .. }) && next >= summary.events
        );
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let stream = stream_events(service, owner.run, from);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Sends the run's committed events from `from`, then each new one as it commits, and an
/// `end` message once the run has stopped for good.
fn stream_events(
    service: Arc<Service>,
    run: RunId,
    from: u64,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let (sender, receiver) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let mut next = from;
        let mut committed = service.slot(&run).committed.subscribe();
        loop {
            let (entries, summary) = match service.events(&run, next, 1000).await {
                Ok(read) => read,
                Err(error) => {
                    let message = SseEvent::default()
                        .event("error")
                        .data(json!({"error": error.body().error}).to_string());
                    let _ = sender.send(message).await;
                    return;
                }
            };
            for entry in &entries {
                if sender.send(sse_of(entry)).await.is_err() {
                    return;
                }
                next = entry.seq + 1;
            }
            if !entries.is_empty() {
                continue;
            }
            if let RunStatus::Stopped { reason } = &summary.status
                && next >= summary.events
            {
                let end = SseEvent::default()
                    .event("end")
                    .data(json!({"status": "stopped", "stop_reason": reason}).to_string());
                let _ = sender.send(end).await;
                return;
            }
            // Wake on this process's next commit, or look again shortly (another process
            // may be driving the run); stop when the client has gone.
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = sender.closed() => return,
            }
        }
    });
    futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(receiver), Ok)
}

/// Encoded events as the inside of a JSON array.
fn joined(entries: &[Arc<EventEntry>]) -> String {
    let parts: Vec<&str> = entries.iter().map(|entry| entry.json.as_str()).collect();
    parts.join(",")
}

fn sse_of(entry: &EventEntry) -> SseEvent {
    SseEvent::default()
        .id(entry.seq.to_string())
        .event(entry.kind.as_str())
        .data(entry.json.as_str())
}

/// Re-derive the run from its journal without executing any agent or calling any model.
#[utoipa::path(get, path = "/v1/runs/{run}/replay", tag = "audit", operation_id = "replay",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    responses((status = 200, body = schema::Replay, description = "Every step re-derived without executing any agent: identical, or the first divergence",
        example = json!({"replay": "identical", "steps": 3, "events": 21, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"}))))]
pub(crate) async fn replay(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let run = owner.run.clone();
    let report = service
        .journal(move |journal| {
            let runtime = job::runtime_of(journal, &run, Calls::Offline).map_err(build_error)?;
            runtime.replay(journal, &run).map_err(durable_error)
        })
        .await?;
    Ok(Json(
        serde_json::to_value(&report).map_err(ApiError::internal)?,
    ))
}

/// Check the stored hash chain; name the first altered or missing entry.
#[utoipa::path(get, path = "/v1/runs/{run}/verify", tag = "audit", operation_id = "verify",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1")),
    responses((status = 200, body = schema::Verification, description = "Both stored chains recomputed: intact, or the first altered entry",
        example = json!({"intact": true, "steps": 3, "events": 21, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "record_hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}))))]
pub(crate) async fn verify(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let run = owner.run.clone();
    let verification = service
        .journal(move |journal| {
            converge_runtime::Journal::verify(journal, &run).map_err(journal_error)
        })
        .await?;
    Ok(Json(view::verification_json(&verification)))
}

/// The audit proof: the chain's head and its entries. Each hash is SHA-256 over the previous
/// hash (zeros before the first), the seq as 8 little-endian bytes and the event's exact
/// bytes, each part preceded by its length as 8 little-endian bytes.
#[utoipa::path(get, path = "/v1/runs/{run}/audit", tag = "audit", operation_id = "audit",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "release-1"), PageQuery),
    responses((status = 200, body = schema::AuditPage, description = "The chain's head and a page of its entries",
        example = json!({"root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "steps": 3, "events": 21, "next": 1, "entries": [{"seq": 0, "step": 0, "hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "event": {"event": "run_started", "initial_facts": 0}}]}))))]
pub(crate) async fn audit(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    Params(page): Params<PageQuery>,
) -> Result<Response, ApiError> {
    let owner = resolve(&service, &caller, Action::Read, &id).await?;
    let from = page.from.unwrap_or(0);
    let limit = page_limit(page.limit, 500, EVENTS_PAGE_MAX)?;
    let (entries, summary) = service.events(&owner.run, from, limit).await?;
    let next = entries.last().map_or(from, |entry| entry.seq + 1);
    let body = format!(
        r#"{{"root_hash":"{}","steps":{},"events":{},"next":{next},"entries":[{}]}}"#,
        summary.root_hash,
        summary.steps,
        summary.events,
        joined(&entries)
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
