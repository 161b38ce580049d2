//! The OpenAPI document, generated from the route annotations and served at
//! `/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

/// The API's OpenAPI document.
///
/// ```
/// use utoipa::OpenApi;
///
/// let document = converge_server::openapi::Document::openapi();
/// assert!(document.paths.paths.contains_key("/v1/runs/{run}/events"));
/// ```
#[derive(OpenApi)]
#[openapi(
    info(title = "Converge", description = "Run, watch, approve and audit Converge jobs."),
    paths(
        api::whoami, api::submit, api::list, api::get_run, api::cancel, api::resume,
        api::facts, api::fact, api::rejections, api::approvals, api::approve, api::reject,
        api::decisions, api::events, api::replay, api::verify, api::audit
    ),
    modifiers(&Bearer),
    tags(
        (name = "runs", description = "Submit, list, cancel and resume runs"),
        (name = "facts", description = "Facts with provenance, and rejections"),
        (name = "approvals", description = "Human decisions on parked proposals"),
        (name = "events", description = "The typed event stream"),
        (name = "audit", description = "Replay, verification and the hash chain"),
        (name = "auth", description = "Tokens")
    )
)]
pub struct Document;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
