//! Submitting, listing, reading, cancelling and resuming runs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use converge_runtime::{Cancel, RunId, RunStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Principal};
use crate::body::{RawBody, check_depth};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::job::{self, BuildError, Calls};
use crate::schema;
use crate::service::{self, Op, Service, build_error, journal_error};
use crate::store::{Ownership, StoreError, now_ms};

use super::{Api, Drive, Params, Read, Run, RunView, authorize, page_limit, run_view, view_of};

/// A page of a tenant's runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunList {
    runs: Vec<RunView>,
    /// Pass as `?after=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `?id=` of a submission.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitQuery {
    /// The new run's id (1 to 48 letters, digits, `_` or `-`), with or without the tenant's
    /// prefix: `release-1` and `acme-release-1` both make the run `acme-release-1`; default
    /// `run-N`.
    #[param(pattern = "^[A-Za-z0-9_-]{1,48}$", example = "acme-release-1")]
    id: Option<String>,
    /// The name the job spec goes by in listings and in refusals (1 to 64 letters, digits,
    /// `.`, `_` or `-`, not starting with `.`); default `<id>.yaml`, or `job.yaml` without
    /// an id.
    #[param(
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$",
        example = "release-approval.yaml"
    )]
    job: Option<String>,
}

/// Most bytes of a job's name.
const JOB_NAME_LEN_MAX: usize = 64;

/// The file name a submitted spec is recorded under: the `?job=` given, else `<id>.yaml`,
/// else `job.yaml`.
fn job_name(query: &SubmitQuery) -> Result<String, ApiError> {
    let Some(name) = &query.job else {
        return Ok(format!("{}.yaml", query.id.as_deref().unwrap_or("job")));
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty()
        || name.len() > JOB_NAME_LEN_MAX
        || name.starts_with('.')
        || !name.chars().all(valid)
    {
        return Err(ApiError::invalid(format!(
            "job name {:?} must be 1 to {JOB_NAME_LEN_MAX} letters, digits, `.`, `_` or `-`, \
             not starting with `.`",
            name.chars().take(JOB_NAME_LEN_MAX + 1).collect::<String>()
        )));
    }
    Ok(name.clone())
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

/// A cancellation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelRequest {
    /// Why (recorded in the journal).
    reason: Option<String>,
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
            example = json!({"id": "acme-release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 1, "events": 9, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot do this"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 409, body = ErrorBody, description = "`run_exists`: the id is taken"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: not YAML or JSON"),
        (status = 422, body = ErrorBody, description = "`invalid`: the spec was refused, or the id or job name is not valid"),
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
    // The tenant's prefix is the run id's own: `acme-nightly` and `nightly` are one run.
    let query = SubmitQuery {
        id: query
            .id
            .map(|id| crate::store::within(&principal.tenant, &id).to_owned()),
        ..query
    };
    if let Some(id) = &query.id {
        check_run_id(id)?;
    }
    let shown = job_name(&query)?;
    let origin = service.config.jobs_dir.join(&shown);
    let record = converge_runtime::JobRecord {
        path: origin.to_string_lossy().into_owned(),
        source,
    };
    // A refusal names the spec as the submitter knows it, never by the server's directory.
    let hidden = (
        record.path.clone(),
        service.config.jobs_dir.to_string_lossy().into_owned(),
    );
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
    let run = owner.run.clone();
    let Some(guard) = service.try_drive(&run) else {
        return Err(ApiError::conflict(
            ErrorCode::RunExists,
            format!("run {:?} already exists", run.as_str()),
        ));
    };
    let started = service.drive(guard, runtime, Op::Start(run.clone()), Cancel::new());
    if let Err(error) = started.await {
        crate::service::disown(&service, &run).await;
        return Err(error);
    }
    let view = view_of(&service, &owner).await?;
    let location = format!("/v1/runs/{run}");
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
        example = json!({"runs": [{"id": "acme-release-1", "tenant": "acme", "job": "release-approval.yaml", "objective": "Decide whether payments-service 2.4.0 can ship this week", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "awaiting_approval", "stop_reason": null, "steps": 3, "events": 21, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": false}], "next": "1764250000000.release-1"}))))]
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
    // One read of the journal for the whole page: every summary from one snapshot.
    let reader = service.clone();
    let views = service
        .journal(move |journal| {
            let runs: Vec<RunId> = owners.iter().map(|owner| owner.run.clone()).collect();
            // Whether each is driven here, before its summary (see `run_view`).
            let driving: Vec<bool> = runs.iter().map(|run| reader.driving(run)).collect();
            let summaries =
                converge_runtime::Journal::summaries(journal, &runs).map_err(journal_error)?;
            let mut views = Vec::with_capacity(owners.len());
            for ((owner, summary), driving) in owners.iter().zip(summaries).zip(driving) {
                // Claimed but never created (its submission failed mid-way): not listed.
                let Some(summary) = summary else { continue };
                let job = reader.job_names(journal, &owner.run);
                views.push(run_view(driving, owner, &summary, job));
            }
            Ok(views)
        })
        .await?;
    Ok(Json(RunList { runs: views, next }))
}

/// One run.
#[utoipa::path(get, path = "/v1/runs/{run}", tag = "runs", operation_id = "get_run",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
    responses((status = 200, body = RunView, description = "The run", example = json!({"id": "acme-release-1", "tenant": "acme", "job": "release-approval.yaml", "objective": "Decide whether payments-service 2.4.0 can ship this week", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "awaiting_approval", "stop_reason": null, "steps": 3, "events": 21, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": false}))))]
pub(crate) async fn get_run(
    State(service): Api,
    Run { owner, .. }: Run<Read>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(view_of(&service, &owner).await?))
}

/// Cancel a run: a run being driven halts at once (agents still running are stopped and
/// recorded as failed), a run awaiting approval stops for good. Journaled as a halt.
#[utoipa::path(post, path = "/v1/runs/{run}/cancel", tag = "runs", operation_id = "cancel",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
    request_body(content = CancelRequest, content_type = "application/json",
        description = "Optional: an empty body cancels with a default reason",
        example = json!({"reason": "no longer needed"})),
    responses((status = 202, body = RunView, description = "The run halts: a running one at once, whichever process drives it (its lease is taken over, so its driver commits nothing more); a parked one stops for good",
            example = json!({"id": "acme-release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "stopped", "stop_reason": {"stop": "halted", "reason": "cancelled by sam: no longer needed"}, "steps": 4, "events": 23, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": false})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot do this"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: the body is not application/json"),
        (status = 422, body = ErrorBody, description = "`invalid`: the body does not parse, nests too deep or has an unknown field"),
        (status = 409, body = ErrorBody, description = "`stopped`: the run has already stopped; `run_busy`: another request on this server is deciding or cancelling it"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn cancel(
    State(service): Api,
    headers: HeaderMap,
    Run { owner, caller, .. }: Run<Drive>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
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
        // Driven by another process (a worker, another replica), or left running by one that
        // stopped: its lease is taken over and it halts before executing anything more.
        RunStatus::Running => Op::CancelGoing {
            run: owner.run.clone(),
            by: principal.name.clone(),
            reason,
        },
    };
    service.drive(guard, runtime, op, cancel).await?;
    let view = view_of(&service, &owner).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Resume a run whose driver stopped before the run did (a crash or a restart).
#[utoipa::path(post, path = "/v1/runs/{run}/resume", tag = "runs", operation_id = "resume",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
    responses((status = 202, body = RunView, description = "The run goes on from its journal", example = json!({"id": "acme-release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 1, "events": 9, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot do this"),
        (status = 409, body = ErrorBody, description = "`stopped`, `awaiting_approval` or `run_busy`: the run's state does not allow it"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn resume(
    State(service): Api,
    Run { owner, .. }: Run<Drive>,
) -> Result<Response, ApiError> {
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
                "the run has already stopped; if agents of it failed, an approver can run \
                 them again with POST /v1/runs/{run}/retry",
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
