//! The `/v1` routes, one module per resource: runs, retries of their failed agents, facts,
//! approvals, events, audit, and who a token is. Every route has been authenticated by the middleware in `server.rs` before a
//! handler runs. An operation on a run starts from the [`Run`] extractor, which checks the
//! token's role and finds the run within the token's tenant (another tenant's run is a 404,
//! as one that does not exist); the others check the role with [`authorize`].
//! The OpenAPI document is generated from the annotations in these modules.

pub(crate) mod approvals;
pub(crate) mod audit;
pub(crate) mod events;
pub(crate) mod facts;
pub(crate) mod retry;
pub(crate) mod runs;
pub(crate) mod whoami;

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use converge_runtime::{RunStatus, RunSummary};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::schema;
use crate::service::{EventEntry, JobNames, Service, journal_error, owned};
use crate::store::Ownership;

pub(super) type Api = State<Arc<Service>>;

/// A run as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunView {
    /// The run's id within its tenant.
    id: String,
    /// The tenant.
    tenant: String,
    /// The name the run's job spec was submitted under (`?job=` of the submission), or its
    /// file name when it was run from the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "release-approval.yaml")]
    job: Option<String>,
    /// What the job is for: its intent's objective, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    objective: Option<String>,
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

/// A page size: `?limit=` means the same everywhere — at most that many, from 1 to `max`;
/// `default` when absent. Anything else is a 400 naming the parameter.
pub(super) fn page_limit(
    limit: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(limit) => Err(ApiError::bad_request(format!(
            "query parameter limit: {limit} is not from 1 to {max}"
        ))),
    }
}

/// Most events one page returns.
pub(super) const EVENTS_PAGE_MAX: usize = 5000;

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

/// What an operation on a run needs the caller's role to allow.
pub(crate) trait Needs {
    /// The action.
    const ACTION: Action;
}

/// Reading a run.
pub(crate) struct Read;

/// Driving a run: cancelling or resuming it.
pub(crate) struct Drive;

/// Deciding on a run's pending proposals.
pub(crate) struct Decide;

impl Needs for Read {
    const ACTION: Action = Action::Read;
}

impl Needs for Drive {
    const ACTION: Action = Action::Drive;
}

impl Needs for Decide {
    const ACTION: Action = Action::Decide;
}

/// The run a request's `{run}` names, for a caller whose role allows `A`, found within the
/// caller's tenant: what every operation on a run starts from. A role that does not allow it
/// is a 403; another tenant's run is the same 404 as one that does not exist.
pub(crate) struct Run<A> {
    /// The run and who owns it.
    pub(crate) owner: Ownership,
    /// Who is asking (the authentication middleware's principal).
    pub(crate) caller: Principal,
    needs: PhantomData<A>,
}

impl<A: Needs> FromRequestParts<Arc<Service>> for Run<A> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a /v1 route ran without authentication"))?;
        authorize(&caller, A::ACTION)?;
        let params = RawPathParams::from_request_parts(parts, service)
            .await
            .map_err(|_| ApiError::bad_request("path: not valid UTF-8 once decoded"))?;
        let id = params
            .iter()
            .find_map(|(name, value)| (name == "run").then(|| value.to_owned()))
            .ok_or_else(|| ApiError::internal("a run's route without {run}"))?;
        let owner = owned(service, &caller.tenant, &id).await?;
        Ok(Run {
            owner,
            caller,
            needs: PhantomData,
        })
    }
}

/// A run as shown, from whether this process drives it (read before the summary: a drive
/// records the run's status before it lets go, so a summary read after `driving` turned
/// false is final) and its journal summary.
pub(super) fn run_view(
    driving: bool,
    owner: &Ownership,
    summary: &RunSummary,
    job: JobNames,
) -> RunView {
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
        id: owner.run.to_string(),
        tenant: owner.tenant.clone(),
        job: job.name,
        objective: job.objective,
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

pub(super) async fn view_of(
    service: &Arc<Service>,
    owner: &Ownership,
) -> Result<RunView, ApiError> {
    let driving = service.driving(&owner.run);
    let run = owner.run.clone();
    let reader = service.clone();
    let (summary, job) = service
        .journal(move |journal| {
            let summary = journal.summary(&run).map_err(journal_error)?;
            Ok((summary, reader.job_names(journal, &run)))
        })
        .await?;
    Ok(run_view(driving, owner, &summary, job))
}

/// Encoded events as the inside of a JSON array.
pub(super) fn joined(entries: &[Arc<EventEntry>]) -> String {
    let parts: Vec<&str> = entries.iter().map(|entry| entry.json.as_str()).collect();
    parts.join(",")
}
