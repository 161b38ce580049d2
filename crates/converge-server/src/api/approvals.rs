//! Pending proposals and the decisions on them: each decision is checked, recorded whatever
//! its outcome, and applied when accepted.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use converge_core::{Digest, ProposalId, StopReason};
use converge_runtime::{Cancel, RunId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::service::{self, Op, Service};
use crate::store::{DecisionAttempt, Ownership, now_ms};
use crate::{schema, view};

use super::{Api, Decide, Read, Run, RunView, view_of};

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

/// The proposals waiting for a human, with what each would become and the hash a decision
/// must name.
#[utoipa::path(get, path = "/v1/runs/{run}/approvals", tag = "approvals", operation_id = "approvals",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
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
    Run { owner, .. }: Run<Read>,
) -> Result<Json<Value>, ApiError> {
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
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1"),
        ("proposal" = String, Path, description = "The pending proposal's id", example = "c2.a2.p0")),
    request_body(content = ApproveRequest, content_type = "application/json", example = json!({"hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"})),
    responses((status = 200, body = DecisionAccepted, description = "Accepted: the proposal is promoted and the run goes on",
            example = json!({"decision": {"seq": 1, "proposal": "c2.a2.p0", "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "actor": "alice", "verdict": "approve", "reason": null, "outcome": "accepted", "refusal": null, "at_ms": 1764250060000_u64}, "run": {"id": "acme-release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 1, "events": 9, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true}})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot decide, or the approver submitted the run"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: the body is not application/json"),
        (status = 422, body = ErrorBody, description = "`invalid`: the body does not parse, nests too deep or has an unknown field"),
        (status = 409, body = ErrorBody, description = "`not_pending`, `hash_mismatch`, `not_awaiting_approval`, `run_busy` or `stopped`: refused (and recorded)"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn approve(
    State(service): Api,
    run: Run<Decide>,
    Path((_, proposal)): Path<(String, String)>,
    JsonBody(request): JsonBody<ApproveRequest>,
) -> Result<Json<DecisionAccepted>, ApiError> {
    decide(service, run, proposal, request.hash, None).await
}

/// Reject one pending proposal, with a reason: bound like an approval.
#[utoipa::path(post, path = "/v1/runs/{run}/approvals/{proposal}/reject", tag = "approvals", operation_id = "reject",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1"),
        ("proposal" = String, Path, description = "The pending proposal's id", example = "c2.a2.p0")),
    request_body(content = RejectRequest, content_type = "application/json", example = json!({"hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "reason": "no rollback plan"})),
    responses((status = 200, body = DecisionAccepted, description = "Accepted: the proposal is rejected and the run goes on",
            example = json!({"decision": {"seq": 2, "proposal": "c2.a2.p0", "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "actor": "alice", "verdict": "reject", "reason": "no rollback plan", "outcome": "accepted", "refusal": null, "at_ms": 1764250060000_u64}, "run": {"id": "acme-release-1", "tenant": "acme", "submitted_by": "sam", "submitted_at_ms": 1764250000000_u64, "status": "running", "stop_reason": null, "steps": 1, "events": 9, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "driving": true}})),
        (status = 403, body = ErrorBody, description = "`forbidden`: the token's role cannot decide, or the approver submitted the run"),
        (status = 408, body = ErrorBody, description = "`timeout`: the body did not arrive in time"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: the body is not application/json"),
        (status = 422, body = ErrorBody, description = "`invalid`: the body does not parse, nests too deep or has an unknown field"),
        (status = 409, body = ErrorBody, description = "`not_pending`, `hash_mismatch`, `not_awaiting_approval`, `run_busy` or `stopped`: refused (and recorded)"),
        (status = 429, body = ErrorBody, description = "`server_busy`: the server already drives or queues its most runs; nothing was started")))]
pub(crate) async fn reject(
    State(service): Api,
    run: Run<Decide>,
    Path((_, proposal)): Path<(String, String)>,
    JsonBody(request): JsonBody<RejectRequest>,
) -> Result<Json<DecisionAccepted>, ApiError> {
    if request.reason.trim().is_empty() {
        return Err(ApiError::invalid("a rejection needs a reason"));
    }
    decide(service, run, proposal, request.hash, Some(request.reason)).await
}

/// One decision: checked, recorded whatever the outcome, and applied when accepted.
async fn decide(
    service: Arc<Service>,
    Run {
        owner,
        caller: principal,
        ..
    }: Run<Decide>,
    proposal_text: String,
    hash_text: String,
    reject: Option<String>,
) -> Result<Json<DecisionAccepted>, ApiError> {
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
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
    responses((status = 200, body = DecisionList, description = "Every decision attempt on the run, accepted or refused, in order",
        example = json!({"decisions": [{"seq": 1, "proposal": "c2.a2.p0", "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "actor": "sam", "verdict": "approve", "reason": null, "outcome": "refused", "refusal": "self_approval", "at_ms": 1764250050000_u64}]}))))]
pub(crate) async fn decisions(
    State(service): Api,
    Run { owner, .. }: Run<Read>,
) -> Result<Json<DecisionList>, ApiError> {
    let run = owner.run.clone();
    let decisions = service.store(move |store| store.decisions(&run)).await?;
    Ok(Json(DecisionList { decisions }))
}
