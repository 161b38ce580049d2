//! A run's facts with their provenance, and its rejected proposals and agent failures.

use axum::Json;
use axum::extract::{Path, State};
use converge_core::ContextKey;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{schema, view};

use super::{Api, Read, Run};

/// The run's current facts, each with its provenance.
#[utoipa::path(get, path = "/v1/runs/{run}/facts", tag = "facts", operation_id = "facts",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
    responses((status = 200, body = schema::FactList, description = "The current facts, each with its provenance",
        example = json!({"facts": [{"key": "ci", "id": "unit", "version": 1, "content": {"pipeline": "unit-tests", "passed": true}, "confidence": 1.0, "content_hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "agent": "seed", "cycle": 1, "proposal": "c1.a0.p3", "proposal_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "derived_from": [], "evidence": [], "structural_checks": ["key", "authority"], "validators": [], "policy_version": 1, "approver": null, "correction": null, "trace": {"local_trace": "seed"}}]}))))]
pub(crate) async fn facts(
    State(service): Api,
    Run { owner, .. }: Run<Read>,
) -> Result<Json<Value>, ApiError> {
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
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1"),
        ("key" = String, Path, description = "The fact's key", example = "releases"),
        ("id" = String, Path, description = "The fact's id", example = "release-2-4-0")),
    responses((status = 200, body = schema::FactWhy, description = "The fact and, recursively, its sources",
        example = json!({"key": "evaluations", "id": "assessment-pr-1412", "version": 1, "content": {"change": "pr-1412"}, "confidence": 0.9, "agent": "assess-high-risk", "cycle": 1, "proposal": "c1.a1.p0", "derived_from": [{"key": "changes", "id": "pr-1412"}], "sources": [{"key": "changes", "id": "pr-1412", "version": 1, "content": {"title": "Retry failed card captures"}, "confidence": 1.0, "agent": "seed", "cycle": 1, "proposal": "c1.a0.p0", "derived_from": [], "sources": [], "observations": []}], "observations": []}))))]
pub(crate) async fn fact(
    State(service): Api,
    Run { owner, .. }: Run<Read>,
    Path((_, key, fact_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let seen = service.inspection(&owner.run).await?;
    let id = owner.run.as_str();
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
#[utoipa::path(get, path = "/v1/runs/{run}/rejections", tag = "facts", operation_id = "rejections",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
    responses((status = 200, body = schema::RejectionList, description = "The rejected proposals with the gate's reasons, and the agent failures",
        example = json!({"rejections": [{"proposal": "c2.a1.p0", "cycle": 2, "key": "releases", "id": "release-2-4-0", "content": {"ship": "yes"}, "confidence": 0.9, "rejection": {"kind": "validator_failed", "validator": "schema", "detail": "ship: not a boolean"}}], "failures": [{"cycle": 1, "agent": 2, "message": "timed out after 30000 ms"}]}))))]
pub(crate) async fn rejections(
    State(service): Api,
    Run { owner, .. }: Run<Read>,
) -> Result<Json<Value>, ApiError> {
    let seen = service.inspection(&owner.run).await?;
    Ok(Json(json!({
        "rejections": seen.result.rejections,
        "failures": seen.result.failures,
    })))
}
