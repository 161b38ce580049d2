//! Who a token is.

use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Action, Principal, Role};
use crate::error::ApiError;

use super::authorize;

/// Who a token is.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WhoAmI {
    name: String,
    tenant: String,
    role: Role,
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
