//! A run's events: a JSON page, or a server-sent event stream that resumes after
//! `Last-Event-ID`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use converge_runtime::{RunId, RunStatus};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::schema;
use crate::service::{EventEntry, POLL, Service};

use super::{Api, EVENTS_PAGE_MAX, PageQuery, Params, Read, Run, joined, page_limit};

/// `Last-Event-ID` of an event request (read from the headers by hand; this type documents it).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct ResumeHeader {
    /// Resume after this event (overrides `from`); at the largest seq there is, past the end.
    #[serde(rename = "Last-Event-ID")]
    #[param(value_type = schema::Seq, required = false)]
    #[allow(
        dead_code,
        reason = "documentation: the handler reads the header itself"
    )]
    last_event_id: Option<u64>,
}

/// The run's events: a server-sent event stream (`Accept: text/event-stream`, resumable
/// with `Last-Event-ID`) or a JSON page.
#[utoipa::path(get, path = "/v1/runs/{run}/events", tag = "events", operation_id = "events",
    params(("run" = String, Path, description = "The run's id, as every Converge command shows it (`acme-release-1`); the part after the token's tenant (`release-1`) names it too", example = "acme-release-1"), PageQuery, ResumeHeader),
    responses((status = 200, description = "With `Accept: text/event-stream`, server-sent events: `id: <seq>`, `event: <kind>`, `data: <EventEntry as JSON>`, ending with `event: end` (`data: {\"status\": \"stopped\", \"stop_reason\": …}`) once the run stops for good. Otherwise a JSON page.",
        content(
            (schema::EventPage = "application/json", example = json!({"events": [{"seq": 0, "step": 0, "hash": "4b9c6a1d0e7f2a3b5c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "event": {"event": "run_started", "initial_facts": 0}}], "next": 1, "stopped": false})),
            (String = "text/event-stream", example = json!("id: 0\nevent: run_started\ndata: {\"seq\":0,\"step\":0,\"hash\":\"4b9c…\",\"event\":{\"event\":\"run_started\"}}\n\n"))))))]
pub(crate) async fn events(
    State(service): Api,
    headers: HeaderMap,
    Run { owner, .. }: Run<Read>,
    Params(page): Params<PageQuery>,
) -> Result<Response, ApiError> {
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let limit = page_limit(page.limit, 500, EVENTS_PAGE_MAX)?;
    let last = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not an event seq"))?,
        ),
    };
    // The event after the last one seen; past the end of any run when that was the last
    // possible seq (never a wrap to 0, which would replay the whole stream).
    let from = match last {
        Some(seq) => seq.saturating_add(1),
        None => page.from.unwrap_or(0),
    };
    if !streaming {
        let (entries, summary) = service.events(&owner.run, from, limit).await?;
        let next = entries.last().map_or(from, |entry| entry.seq + 1);
        let body = format!(
            r#"{{"events":[{}],"next":{next},"stopped":{}}}"#,
            joined(&entries),
            matches!(summary.status, RunStatus::Stopped { .. }) && next >= summary.events
        );
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let stream = stream_events(service, owner.run, from);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Sends the run's committed events from `from`, then each new one as it commits, and an
/// `end` message once the run has stopped for good.
fn stream_events(
    service: Arc<Service>,
    run: RunId,
    from: u64,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let (sender, receiver) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let mut next = from;
        let mut committed = service.slot(&run).committed.subscribe();
        loop {
            let (entries, summary) = match service.events(&run, next, 1000).await {
                Ok(read) => read,
                Err(error) => {
                    let message = SseEvent::default()
                        .event("error")
                        .data(json!({"error": error.body().error}).to_string());
                    let _ = sender.send(message).await;
                    return;
                }
            };
            for entry in &entries {
                if sender.send(sse_of(entry)).await.is_err() {
                    return;
                }
                next = entry.seq + 1;
            }
            if !entries.is_empty() {
                continue;
            }
            if let RunStatus::Stopped { reason } = &summary.status
                && next >= summary.events
            {
                let end = SseEvent::default()
                    .event("end")
                    .data(json!({"status": "stopped", "stop_reason": reason}).to_string());
                let _ = sender.send(end).await;
                return;
            }
            // Wake on this process's next commit, or look again shortly (another process
            // may be driving the run); stop when the client has gone.
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = sender.closed() => return,
            }
        }
    });
    futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(receiver), Ok)
}

fn sse_of(entry: &EventEntry) -> SseEvent {
    SseEvent::default()
        .id(entry.seq.to_string())
        .event(entry.kind.as_str())
        .data(entry.json.as_str())
}
