//! A run's audit: replay without executing anything, verification of the stored chains, and
//! the hash chain itself.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;
use crate::service::{durable_error, journal_error, with_offline_runtime};
use crate::{schema, view};

use super::{Api, EVENTS_PAGE_MAX, PageQuery, Params, Read, Run, joined, page_limit};

/// Re-derive the run from its journal without executing any agent or calling any model.
#[utoipa::path(get, path = "/v1/runs/{run}/replay", tag = "audit", operation_id = "replay",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
    responses((status = 200, body = schema::Replay, description = "Every step re-derived without executing any agent: identical, or the first divergence",
        example = json!({"replay": "identical", "steps": 3, "events": 21, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"}))))]
pub(crate) async fn replay(
    State(service): Api,
    Run { owner, .. }: Run<Read>,
) -> Result<Json<Value>, ApiError> {
    let run = owner.run.clone();
    let slot = service.slot(&run);
    let report = service
        .journal(move |journal| {
            with_offline_runtime(&slot, journal, &run, |runtime| {
                runtime.replay(journal, &run).map_err(durable_error)
            })
        })
        .await?;
    Ok(Json(
        serde_json::to_value(&report).map_err(ApiError::internal)?,
    ))
}

/// Check the stored hash chain; name the first altered or missing entry.
#[utoipa::path(get, path = "/v1/runs/{run}/verify", tag = "audit", operation_id = "verify",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1")),
    responses((status = 200, body = schema::Verification, description = "Both stored chains recomputed: intact, or the first altered entry",
        example = json!({"intact": true, "steps": 3, "events": 21, "root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "record_hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}))))]
pub(crate) async fn verify(
    State(service): Api,
    Run { owner, .. }: Run<Read>,
) -> Result<Json<Value>, ApiError> {
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
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1"), PageQuery),
    responses((status = 200, body = schema::AuditPage, description = "The chain's head and a page of its entries",
        example = json!({"root_hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "steps": 3, "events": 21, "next": 1, "entries": [{"seq": 0, "step": 0, "hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "event": {"event": "run_started", "initial_facts": 0}}]}))))]
pub(crate) async fn audit(
    State(service): Api,
    Run { owner, .. }: Run<Read>,
    Params(page): Params<PageQuery>,
) -> Result<Response, ApiError> {
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
