//! The OpenAPI document, generated from the route annotations and served at
//! `/openapi.json`.
//!
//! Each operation's annotation in `api/` lists its success answer and the errors only it
//! can give; `Errors` adds those every `/v1` operation can give (a query, path or header
//! that does not parse, no token, a run that is not the tenant's, a body over the limit, an
//! internal error), so no status the server sends is missing from the document. The
//! operations routes (`/`, `/healthz`, `/metrics`, `/openapi.json`) are deliberately left
//! out: they take no token and are not part of the API a client programs against.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{Content, Ref, RefOr, Required, ResponseBuilder};
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
    info(title = "Converge", description = "Run, watch, approve and audit Converge jobs. \
        Every request carries `Authorization: Bearer <token>`; see docs/http-api.md."),
    paths(
        api::whoami::whoami, api::runs::submit, api::runs::list, api::runs::get_run, api::runs::cancel, api::runs::resume, api::retry::retry,
        api::facts::facts, api::facts::fact, api::facts::rejections, api::approvals::approvals, api::approvals::approve, api::approvals::reject,
        api::approvals::decisions, api::events::events, api::audit::replay, api::audit::verify, api::audit::audit
    ),
    components(schemas(crate::error::ErrorCode, crate::schema::Seq)),
    modifiers(&Bearer, &Errors, &OptionalCancelBody),
    tags(
        (name = "runs", description = "Submit, list, cancel, resume and retry runs"),
        (name = "facts", description = "Facts with provenance, and rejections"),
        (name = "approvals", description = "Human decisions on parked proposals"),
        (name = "events", description = "The typed event stream"),
        (name = "audit", description = "Replay, verification and the hash chain"),
        (name = "auth", description = "Tokens")
    )
)]
pub struct Document;

/// The bearer token scheme, required by every operation, and the default server.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        let mut local = Server::new("http://127.0.0.1:7700");
        local.description = Some("`converge serve` on its default address".to_owned());
        openapi.servers = Some(vec![local]);
    }
}

/// The errors every `/v1` operation can answer, added to each.
struct Errors;

impl Errors {
    /// Status, and what it means, for every operation.
    const EVERY: [(&'static str, &'static str); 4] = [
        (
            "400",
            "`bad_request`: a query parameter, path segment or header that does not parse, or a query parameter the route does not take",
        ),
        ("401", "`unauthorized`: no token, or not a live one"),
        (
            "413",
            "`too_large`: the request body is larger than the server accepts",
        ),
        (
            "500",
            "`internal`: the server's log has the detail under the request id",
        ),
    ];

    /// For operations on a run.
    const RUN: (&'static str, &'static str) = (
        "404",
        "`not_found`: no such run for this token's tenant (or no such fact)",
    );
}

impl Modify for Errors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let on_run = path.contains("{run}");
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                for (status, description) in Errors::EVERY {
                    add_error(operation, status, description);
                }
                if on_run {
                    add_error(operation, Errors::RUN.0, Errors::RUN.1);
                }
            }
        }
    }
}

/// Adds an error answer with the error body, unless the operation documents that status.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    let responses = &mut operation.responses.responses;
    if responses.contains_key(status) {
        return;
    }
    let body = Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))));
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build();
    responses.insert(status.to_owned(), RefOr::T(response));
}

/// A cancellation's body is optional (none cancels with the default reason); the annotation
/// has no way to say so.
struct OptionalCancelBody;

impl Modify for OptionalCancelBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(body) = openapi
            .paths
            .paths
            .get_mut("/v1/runs/{run}/cancel")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut())
            && let RefOr::T(body) = body
        {
            body.required = Some(Required::False);
        }
    }
}
