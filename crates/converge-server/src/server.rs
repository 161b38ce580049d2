//! The listener, the router and what every request goes through: a request id, the access
//! log and metrics, JSON errors for every failure (no route, too large, a panic), the body
//! size limit and timeouts, and token authentication.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use utoipa::OpenApi;

use crate::api;
use crate::auth::{Principal, TokenSecret};
use crate::error::{ApiError, ErrorBody, ErrorDetail, REQUEST_ID, code_of};
use crate::service::Service;
use crate::store::StoreError;
use crate::{ServerConfig, openapi};

/// A bound server, ready to serve.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use converge_server::{Server, ServerConfig};
///
/// let server = Server::bind(ServerConfig::new("journal.db")).await?;
/// println!("listening on http://{}", server.local_addr());
/// server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct Server {
    listener: TcpListener,
    service: Arc<Service>,
    router: Router,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The journal or the server's tables could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The address could not be bound or accepting failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Server {
    /// Opens the journal and binds the listener. Runs this server submitted that a stopped
    /// process left running are driven on once serving starts.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let listen = config.listen;
        // Opening connects to the database, which blocks: off the asynchronous threads.
        let opened = tokio::task::spawn_blocking(move || Service::open(config))
            .await
            .map_err(std::io::Error::other)?;
        let service = Arc::new(opened?);
        service
            .follow_news()
            .map_err(|error| std::io::Error::other(error.message))?;
        let listener = TcpListener::bind(listen).await?;
        let router = router(service.clone());
        Ok(Server {
            listener,
            service,
            router,
        })
    }

    /// The address it listens on (useful when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.service.config.listen)
    }

    /// Serves until `shutdown` completes. Runs still being driven stop with the process and
    /// are resumed from their journal the next time a server starts.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server {
            listener,
            service,
            router,
        } = self;
        let resumer = service.clone();
        // Workers take over runs left running; a server that drives its runs resumes them.
        let resumes = service.config.drivers == crate::Drivers::Server;
        tokio::spawn(async move {
            if !resumes {
                return;
            }
            match resumer.resume_interrupted().await {
                Ok(0) => {}
                Ok(count) => tracing::info!("resumed {count} interrupted runs"),
                Err(error) => tracing::warn!("cannot resume interrupted runs: {}", error.message),
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(service.config.header_timeout)
            .max_buf_size(64 * 1024);
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!("accept failed: {error}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let connection = http.serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            );
            tokio::spawn(async move {
                // A client cut off by a timeout or gone mid-request ends here; nothing to do.
                let _ = connection.await;
            });
        }
    }
}

/// Every route, with the layers every request goes through.
fn router(service: Arc<Service>) -> Router {
    let config = &service.config;
    let v1 = Router::new()
        .route("/v1/whoami", get(api::whoami::whoami))
        .route("/v1/runs", get(api::runs::list).post(api::runs::submit))
        .route("/v1/runs/{run}", get(api::runs::get_run))
        .route("/v1/runs/{run}/cancel", post(api::runs::cancel))
        .route("/v1/runs/{run}/resume", post(api::runs::resume))
        .route("/v1/runs/{run}/retry", post(api::retry::retry))
        .route("/v1/runs/{run}/facts", get(api::facts::facts))
        .route("/v1/runs/{run}/facts/{key}/{id}", get(api::facts::fact))
        .route("/v1/runs/{run}/rejections", get(api::facts::rejections))
        .route("/v1/runs/{run}/approvals", get(api::approvals::approvals))
        .route(
            "/v1/runs/{run}/approvals/{proposal}/approve",
            post(api::approvals::approve),
        )
        .route(
            "/v1/runs/{run}/approvals/{proposal}/reject",
            post(api::approvals::reject),
        )
        .route("/v1/runs/{run}/decisions", get(api::approvals::decisions))
        .route("/v1/runs/{run}/events", get(api::events::events))
        .route("/v1/runs/{run}/replay", get(api::audit::replay))
        .route("/v1/runs/{run}/verify", get(api::audit::verify))
        .route("/v1/runs/{run}/audit", get(api::audit::audit))
        // Every `/v1` route authenticates from the headers alone, before a handler reads a
        // body: an anonymous request is a 401 whatever it sends.
        .route_layer(middleware::from_fn_with_state(
            service.clone(),
            require_token,
        ));
    let operations = Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/", get(crate::viewer::index))
        .route("/viewer.js", get(crate::viewer::script))
        .route("/viewer.css", get(crate::viewer::style));
    v1.merge(operations)
        .fallback(no_route)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(service.clone(), observe))
                .layer(middleware::from_fn(json_errors))
                .layer(CatchPanicLayer::custom(panicked))
                .layer(RequestBodyLimitLayer::new(config.max_body))
                .layer(RequestBodyTimeoutLayer::new(config.body_timeout)),
        )
        .with_state(service)
}

/// Gives the request an id (in a task-local, and in the `x-request-id` answer header),
/// logs it without its query string or headers, and counts it.
async fn observe(State(service): State<Arc<Service>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = next_request_id();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no route)", |path| path.as_str())
        .to_owned();
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    let status = response.status();
    let elapsed = started.elapsed();
    service.metrics.request(
        method_label(&method),
        &route,
        status.as_u16(),
        elapsed.as_secs_f64(),
    );
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        status = status.as_u16(),
        micros = elapsed.as_micros() as u64,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The metric label of a request method: the standard methods by name, any other as `other`,
/// so that made-up methods cannot grow the label set.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Answers any error that is not already JSON (no route, method not allowed, body too large
/// or too slow, a panic) in the API's error shape.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than this server accepts",
        StatusCode::METHOD_NOT_ALLOWED => "this route does not answer that method",
        StatusCode::REQUEST_TIMEOUT => "the request body did not arrive in time",
        status if status.is_server_error() => {
            "internal error; the server's log has the detail under this request id"
        }
        _ => status.canonical_reason().unwrap_or("error"),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            code: code_of(status),
            message: message.to_owned(),
            request_id: crate::error::request_id(),
        },
    };
    let mut answer = (status, axum::Json(body)).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route; the API is described at /openapi.json")
}

fn next_request_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        bytes = COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes();
    }
    hex::encode(bytes)
}

/// Authenticates a request from its headers and hands its principal to the handler (as a
/// request extension); answers 401 without reading the body otherwise.
async fn require_token(
    State(service): State<Arc<Service>>,
    mut request: Request,
    next: Next,
) -> Response {
    match authenticate(&service, request.headers()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// The principal of a request's bearer token: 401 unless it names a live token.
pub(crate) async fn authenticate(
    service: &Arc<Service>,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "send a token: Authorization: Bearer cvg_…",
        ));
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(TokenSecret::from_header)
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header is not a Converge token")
        })?;
    let hash = secret.hash();
    if let Some(principal) = service.tokens.get(&hash) {
        return Ok(principal);
    }
    // Noted before the read: a revocation heard meanwhile keeps what it read out.
    let generation = service.tokens.generation();
    let token = service.store(move |store| store.token(&hash)).await?;
    let token = token.ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
    let principal = Principal {
        tenant: token.tenant,
        name: token.name,
        role: token.role,
    };
    if let Some(generation) = generation {
        service.tokens.keep(hash, principal.clone(), generation);
    }
    Ok(principal)
}

async fn health(State(service): State<Arc<Service>>) -> Response {
    let checked = service.store(|store| store.ping()).await;
    match checked {
        Ok(()) => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable"})),
        )
            .into_response(),
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> Result<Response, ApiError> {
    let counts = service
        .journal(|journal| {
            let runs = converge_runtime::Journal::runs(journal).map_err(ApiError::internal)?;
            let mut counts = [("running", 0), ("awaiting_approval", 0), ("stopped", 0)];
            for run in runs {
                if let Some(count) = counts
                    .iter_mut()
                    .find(|(name, _)| *name == run.status.name())
                {
                    count.1 += 1;
                }
            }
            Ok(counts)
        })
        .await?;
    let text = service
        .metrics
        .encode(&counts)
        .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::Document::openapi().to_json().unwrap_or_default(),
    )
        .into_response()
}
