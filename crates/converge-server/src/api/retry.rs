//! Retrying failed agents: a person's decision to continue a run its failed agents stopped,
//! once the cause is fixed. Checked by the core under the run's drive lock, recorded in the
//! run's journal (who, which agents, why) and replayed from there; only the named agents
//! execute again.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use converge_core::{Actor, Retry};
use converge_runtime::Cancel;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::service::Op;

use super::{Api, Decide, Run, RunView, view_of};

/// A retry: which failed agents, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryRequest {
    /// The failed agents to run again, by name; every failed agent when absent or empty.
    #[serde(default)]
    agents: Vec<String>,
    /// Why they can succeed now (recorded in the journal); not only spaces.
    #[schema(pattern = "[^\\s]")]
    reason: String,
}

/// A retry that was accepted: what was recorded, and the run going on.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RetryAccepted {
    /// Who decided: the token's name.
    actor: String,
    /// The agents run again, by name.
    agents: Vec<String>,
    /// Why.
    reason: String,
    /// The run, now going on to its next stop.
    run: RunView,
}

/// Run failed agents of a stopped run again, once the cause of their failure is fixed (a model
/// server back up, a token renewed); the run goes on to its next stop.
#[utoipa::path(post, path = "/v1/runs/{run}/retry", tag = "runs", operation_id = "retry",
    params(("run" = String, Path, description = "The run's id within the token's tenant", example = "churn-1")),
    request_body(content = RetryRequest, content_type = "application/json",
        example = json!({"agents": ["explainer"], "reason": "the model server is back"})),
    responses((status = 202, body = RetryAccepted, description = "Accepted and recorded: the agents run again and the run goes on",
            example = json!({"actor": "alice", "agents": ["explainer"], "reason": "the model server is back", "run": {"id": "churn-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 5, "events": 19, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true}})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot decide"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: the body is not application/json"),
        (status = 422, body = ErrorBody, description = "`invalid`: the body does not parse, nests too deep, has an unknown field or a blank reason"),
        (status = 409, body = ErrorBody, description = "`not_retryable`: the run has not stopped, stopped for a reason a retry cannot change (a budget, a cancellation, a semantic invariant), or an agent named did not fail (the message names those that did); `run_busy`: another request or process drives it"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn retry(
    State(service): Api,
    Run { owner, caller, .. }: Run<Decide>,
    JsonBody(request): JsonBody<RetryRequest>,
) -> Result<Response, ApiError> {
    if request.reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "a retry needs a reason: it is recorded in the journal",
        ));
    }
    let actor = Actor::human(&caller.name).map_err(|error| ApiError::invalid(error.to_string()))?;
    let Some(guard) = service.try_drive(&owner.run) else {
        return Err(ApiError::conflict(
            ErrorCode::RunBusy,
            "the run is being driven by another request; try again once it stops",
        ));
    };
    // Under the drive lock: which agents "every failed agent" means is read from the run
    // as it stands, and the core checks the retry again before anything is written.
    let agents = match request.agents.is_empty() {
        false => request.agents,
        true => {
            let seen = service.inspection(&owner.run).await?;
            let failed = seen.result.failed_agents();
            failed
                .iter()
                .filter_map(|agent| seen.header.agents.get(agent.index()).cloned())
                .collect()
        }
    };
    let retry = Retry::new(actor, agents, request.reason);
    let runtime = service.live_runtime(&owner.run).await?;
    let op = Op::Retry(owner.run.clone(), retry.clone());
    service.drive(guard, runtime, op, Cancel::new()).await?;
    let run = view_of(&service, &owner).await?;
    let accepted = RetryAccepted {
        actor: caller.name,
        agents: retry.agents().to_vec(),
        reason: retry.reason().to_owned(),
        run,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}
