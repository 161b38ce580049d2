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
use crate::error::{ApiError, ErrorBody};
use crate::job::{self, BuildError, Calls};
use crate::service::{
    self, EventEntry, Op, POLL, Service, build_error, durable_error, journal_error, owned,
};
use crate::store::{DecisionAttempt, Ownership, StoreError, now_ms};
use crate::view;

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
    /// `running`, `awaiting_approval` or `stopped`.
    status: String,
    /// The core's stop reason (`{"stop": "converged"}`, …) once stopped, else null.
    #[schema(value_type = Option<Object>)]
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
    limit: Option<usize>,
    /// The `next` of the previous page: the runs submitted before its last one.
    after: Option<String>,
}

/// `?from=&limit=` of a page of events or audit entries.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// The first event's seq (default 0).
    from: Option<u64>,
    /// At most this many, from 1 to 5000 (default 500).
    limit: Option<usize>,
}

/// An approval: the hash of the proposal as the approver was shown it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveRequest {
    /// The pending proposal's hash (64 hex digits).
    hash: String,
}

/// A rejection: the hash, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectRequest {
    /// The pending proposal's hash (64 hex digits).
    hash: String,
    /// Why it is rejected (recorded in the journal).
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
    let status = if driving {
        "running"
    } else {
        summary.status.name()
    };
    RunView {
        id: owner.id.clone(),
        tenant: owner.tenant.clone(),
        submitted_by: owner.submitted_by.clone(),
        submitted_at_ms: owner.submitted_ms,
        status: status.to_owned(),
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
#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, body = WhoAmI, description = "OK"), (status = 401, body = ErrorBody, description = "No live token")),
    security(("bearer" = [])))]
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
#[utoipa::path(post, path = "/v1/runs", tag = "runs", params(SubmitQuery),
    request_body(content = String, description = "The job spec", content_type = "application/yaml"),
    responses(
        (status = 201, body = RunView, description = "The run started; its first step is journaled"),
        (status = 409, body = ErrorBody, description = "The id is taken"),
        (status = 415, body = ErrorBody, description = "Unsupported content type"), (status = 422, body = ErrorBody, description = "The spec was refused")),
    security(("bearer" = [])))]
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
            "run_exists",
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
            "unsupported_media_type",
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
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(ListQuery),
    responses((status = 200, body = RunList, description = "OK")), security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/v1/runs/{run}", tag = "runs",
    params(("run" = String, Path, description = "The run's id")),
    responses((status = 200, body = RunView, description = "OK"), (status = 404, body = ErrorBody, description = "No such run for this token's tenant")),
    security(("bearer" = [])))]
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
#[utoipa::path(post, path = "/v1/runs/{run}/cancel", tag = "runs",
    params(("run" = String, Path, description = "The run's id")),
    request_body(content = Option<CancelRequest>),
    responses((status = 202, body = RunView, description = "Accepted"), (status = 409, body = ErrorBody, description = "Already stopped")),
    security(("bearer" = [])))]
pub(crate) async fn cancel(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let owner = resolve(&service, &caller, Action::Drive, &id).await?;
    let principal = caller;
    let request: CancelRequest = if body.is_empty() {
        CancelRequest::default()
    } else {
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
            "run_busy",
            "the run is being driven by another request; try again",
        ));
    };
    let summary = service.summary(&owner.run).await?;
    let runtime = service.live_runtime(&owner.run).await?;
    let cancel = Cancel::new();
    let op = match summary.status {
        RunStatus::Stopped { .. } => {
            return Err(ApiError::conflict("stopped", "the run has already stopped"));
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
#[utoipa::path(post, path = "/v1/runs/{run}/resume", tag = "runs",
    params(("run" = String, Path, description = "The run's id")),
    responses((status = 202, body = RunView, description = "Accepted"), (status = 409, body = ErrorBody, description = "The run's state does not allow it")),
    security(("bearer" = [])))]
pub(crate) async fn resume(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = resolve(&service, &caller, Action::Drive, &id).await?;
    let Some(guard) = service.try_drive(&owner.run) else {
        return Err(ApiError::conflict(
            "run_busy",
            "the run is being driven already",
        ));
    };
    let summary = service.summary(&owner.run).await?;
    match summary.status {
        RunStatus::Running => {}
        RunStatus::AwaitingApproval => {
            return Err(ApiError::conflict(
                "awaiting_approval",
                "the run is waiting for decisions on its pending proposals",
            ));
        }
        RunStatus::Stopped { .. } => {
            return Err(ApiError::conflict("stopped", "the run has already stopped"));
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
#[utoipa::path(get, path = "/v1/runs/{run}/facts", tag = "facts",
    params(("run" = String, Path, description = "The run's id")),
    responses((status = 200, description = "`{\"facts\": [fact…]}`", body = Object)),
    security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/v1/runs/{run}/facts/{key}/{id}", tag = "facts",
    params(("run" = String, Path, description = "The run's id"),
        ("key" = String, Path, description = "The fact's key"),
        ("id" = String, Path, description = "The fact's id")),
    responses((status = 200, body = Object, description = "OK"), (status = 404, body = ErrorBody, description = "No such run for this token's tenant")),
    security(("bearer" = [])))]
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
    Ok(Json(view::why_json(&seen, fact)))
}

/// The proposals that were rejected, with the gate's reasons.
#[utoipa::path(get, path = "/v1/runs/{run}/rejections", tag = "facts",
    params(("run" = String, Path, description = "The run's id")),
    responses((status = 200, description = "`{\"rejections\": […], \"failures\": […]}`", body = Object)),
    security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/v1/runs/{run}/approvals", tag = "approvals",
    params(("run" = String, Path, description = "The run's id")),
    responses((status = 200, description = "`{\"pending\": [{proposal, hash, key, id, content, confidence, agent, agent_name}]}`", body = Object)),
    security(("bearer" = [])))]
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
#[utoipa::path(post, path = "/v1/runs/{run}/approvals/{proposal}/approve", tag = "approvals",
    params(("run" = String, Path, description = "The run's id"),
        ("proposal" = String, Path, description = "The pending proposal's id, like c2.a3.p0")),
    request_body = ApproveRequest,
    responses((status = 200, body = DecisionAccepted, description = "OK"),
        (status = 403, body = ErrorBody, description = "The approver submitted the run"),
        (status = 409, body = ErrorBody, description = "Not pending, stale hash, or the run is busy")),
    security(("bearer" = [])))]
pub(crate) async fn approve(
    State(service): Api,
    Extension(caller): Extension<Principal>,
    Path((id, proposal)): Path<(String, String)>,
    JsonBody(request): JsonBody<ApproveRequest>,
) -> Result<Json<DecisionAccepted>, ApiError> {
    decide(service, caller, id, proposal, request.hash, None).await
}

/// Reject one pending proposal, with a reason: bound like an approval.
#[utoipa::path(post, path = "/v1/runs/{run}/approvals/{proposal}/reject", tag = "approvals",
    params(("run" = String, Path, description = "The run's id"),
        ("proposal" = String, Path, description = "The pending proposal's id")),
    request_body = RejectRequest,
    responses((status = 200, body = DecisionAccepted, description = "OK"), (status = 403, body = ErrorBody, description = "The token's role cannot do this"),
        (status = 409, body = ErrorBody, description = "The run's state does not allow it")),
    security(("bearer" = [])))]
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
        attempt.refusal = Some(error.code.to_owned());
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
                "not_pending",
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
                "hash_mismatch",
                "the hash is not the pending proposal's: the request is stale or was altered",
            ),
        )
    };
    let hash: Digest = hash.parse().map_err(|_| stale())?;
    let Some(guard) = service.try_drive(&owner.run) else {
        return Err((
            "run_busy",
            ApiError::conflict(
                "run_busy",
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
                ApiError::conflict("not_awaiting_approval", "the run is not awaiting approval"),
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
#[utoipa::path(get, path = "/v1/runs/{run}/decisions", tag = "approvals",
    params(("run" = String, Path, description = "The run's id")),
    responses((status = 200, body = DecisionList, description = "OK")),
    security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/v1/runs/{run}/events", tag = "events",
    params(("run" = String, Path, description = "The run's id"), PageQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume the stream after this event")),
    responses((status = 200, description = "`text/event-stream` messages `id: seq`, `event: kind`, `data: {seq, step, hash, event}`, ending with `event: end` once the run stops for good; or `{\"events\": […], \"next\", \"stopped\"}`", body = Object)),
    security(("bearer" = [])))]
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
    if !streaming {
        let from = page.from.unwrap_or(0);
        let limit = page_limit(page.limit, 500, EVENTS_PAGE_MAX)?;
        let (entries, summary) = service.events(&owner.run, from, limit).await?;
        let next = entries.last().map_or(from, |entry| entry.seq + 1);
        let body = format!(
            r#"{{"events":[{}],"next":{next},"stopped":{}}}"#,
            joined(&entries),
            matches!(summary.status, RunStatus::Stopped { .. }) && next >= summary.events
        );
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let last = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(|text| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not an event seq"))
        })
        .transpose()?;
    // The event after the last one seen; past the end of any run when that was the last
    // possible seq (never a wrap to 0, which would replay the whole stream).
    let from = match last {
        Some(seq) => seq.saturating_add(1),
        None => page.from.unwrap_or(0),
    };
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
#[utoipa::path(get, path = "/v1/runs/{run}/replay", tag = "audit",
    params(("run" = String, Path, description = "The run's id")),
    responses((status = 200, description = "`{\"replay\": \"identical\", steps, events, root_hash}` or `{\"replay\": \"diverged\", step, seq, expected, actual, detail}`", body = Object)),
    security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/v1/runs/{run}/verify", tag = "audit",
    params(("run" = String, Path, description = "The run's id")),
    responses((status = 200, description = "`{\"intact\": true, steps, events, root_hash, record_hash}` or `{\"intact\": false, at, step, first_bad_seq, reason}`", body = Object)),
    security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/v1/runs/{run}/audit", tag = "audit",
    params(("run" = String, Path, description = "The run's id"), PageQuery),
    responses((status = 200, description = "`{root_hash, steps, events, entries: [{seq, step, hash, event}], next}`", body = Object)),
    security(("bearer" = [])))]
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
