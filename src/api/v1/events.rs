//! `WS /api/v1/events/ws` and `WS /api/v1/operations/ws`: the backend's event
//! stream, filtered to what the caller may see.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::api::problems::{NotWebSocket426, TooManySockets429, Viewer403};
use crate::api::resource::{ProjectScoped, project_scoped};
use crate::api::ws::{Access, SocketSlot, close_revoked, require_upgrade};
use crate::api::{Query, ownership};
use crate::app::AppState;
use crate::auth::extract::WsUser;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{EVENT_KINDS, Event, RequestedBy};
use crate::error::{ApiError, ApiResult, Problem};

/// How often the server pings each subscriber.
const PING_EVERY: Duration = Duration::from_secs(20);
/// A subscriber that cannot take a message within this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Comma-separated: `operation`, `lifecycle`, `logging` (default: operation,lifecycle).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kinds: Option<String>,
    /// Only this project (default: every project the caller can see).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// A single-use ticket from `POST /api/v1/auth/ws-ticket` (browsers).
    pub ticket: Option<String>,
    /// An access token, when a ticket cannot be used (never logged).
    pub token: Option<String>,
}

project_scoped!(EventsQuery);

/// What one subscriber receives.
struct Filter {
    kinds: BTreeSet<String>,
    project: Option<String>,
    user: AuthUser,
}

impl Filter {
    fn wants(&self, e: &Event) -> bool {
        if !self.kinds.contains(&e.kind) {
            return false;
        }
        match &self.project {
            Some(p) => &e.project == p,
            // Server-wide events (no project) only reach admins.
            None if e.project.is_empty() => self.user.is_admin(),
            None => self.user.grants.can_see(&e.project),
        }
    }
}

impl Filter {
    /// What keeps the subscription open: `logging` needs an admin, one
    /// project a role in it. Without a project it filters by the user's
    /// current grants, updated as they change.
    fn needs(&self) -> Vec<(Permission, String)> {
        let mut needs = Vec::new();
        if self.kinds.contains("logging") {
            needs.push((Permission::LoggingEvents, String::new()));
        }
        if let Some(p) = &self.project {
            needs.push((Permission::ProjectView, p.clone()));
        }
        needs
    }

    /// The event as this subscriber may read it: viewers get operation
    /// events without recorded exec output (as in `operations::for_caller`);
    /// secrets are dropped for everyone when serialized. An operation
    /// event says who started it (`requested_by`, `null` when not known).
    fn render(&self, e: &Arc<Event>, by: Option<&RequestedBy>) -> serde_json::Result<Utf8Bytes> {
        if e.kind != "operation" {
            // Nothing in it depends on who reads it.
            return shared_text(e);
        }
        let stripped = if self
            .user
            .grants
            .allows(Permission::ProjectOperate, &e.project)
        {
            None
        } else {
            e.without_exec_output()
        };
        let mut e = stripped.unwrap_or_else(|| (**e).clone());
        let by = by.map(|b| b.as_seen_by(&self.user));
        if let Some(meta) = e.metadata.as_object_mut() {
            meta.insert("requested_by".into(), serde_json::to_value(by)?);
        }
        serde_json::to_string(&e).map(Into::into)
    }
}

fn filter(user: AuthUser, q: &EventsQuery, default_kinds: &[&str]) -> ApiResult<Filter> {
    let kinds: BTreeSet<String> = match &q.kinds {
        Some(k) => k
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
        None => default_kinds.iter().map(|k| (*k).to_owned()).collect(),
    };
    if kinds.is_empty() || kinds.iter().any(|k| !EVENT_KINDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "type must list operation, lifecycle and/or logging",
        ));
    }
    if kinds.contains("logging") {
        user.require(Permission::LoggingEvents, "")?;
    }
    // Without `?project=`, every project the caller can see.
    let project = match &q.project {
        Some(_) => {
            let p = q.project()?;
            user.require(Permission::ProjectView, p.as_str())?;
            Some(p.as_str().to_owned())
        }
        None => None,
    };
    Ok(Filter {
        kinds,
        project,
        user,
    })
}

/// The last event every subscriber reads alike, as its text: a thousand
/// subscribers share one serialisation instead of making one each. (Keyed
/// by the event itself, kept alive here, so servers in one process never
/// mix theirs up.)
static SHARED: std::sync::Mutex<Option<(Arc<Event>, Utf8Bytes)>> = std::sync::Mutex::new(None);

fn shared_text(e: &Arc<Event>) -> serde_json::Result<Utf8Bytes> {
    if let Ok(last) = SHARED.lock()
        && let Some((ev, text)) = last.as_ref()
        && Arc::ptr_eq(ev, e)
    {
        return Ok(text.clone());
    }
    let text: Utf8Bytes = serde_json::to_string(&**e)?.into();
    if let Ok(mut last) = SHARED.lock() {
        *last = Some((e.clone(), text.clone()));
    }
    Ok(text)
}

/// Events sent to one subscriber in one write at most.
const BATCH: usize = 32;

/// How forwarding a subscriber's queued events ended.
enum Forwarded {
    Sent,
    /// The subscriber's socket failed or stopped taking messages.
    Gone,
    Lagged(u64),
    Closed,
}

/// What this subscriber gets of `ev`, if anything.
async fn text_for(state: &AppState, filter: &Filter, ev: &Arc<Event>) -> Option<Utf8Bytes> {
    if !filter.wants(ev) {
        return None;
    }
    let by = match ev.metadata["id"].as_str() {
        Some(id) if ev.kind == "operation" => {
            let created = ev.metadata["created_at"].as_str().unwrap_or_default();
            state.requesters.lookup(&state.db.pool, id, created).await
        }
        _ => None,
    };
    if !ownership::sees_event(state, &filter.user, ev, by.as_ref()).await {
        return None;
    }
    filter.render(ev, by.as_ref()).ok()
}

/// Sends `first` and what else is already queued for this subscriber (up
/// to `BATCH`) with one flush: when a thousand subscribers fall behind a
/// burst together, each catches up in one write instead of one per event.
async fn forward_queued(
    state: &AppState,
    socket: &mut WebSocket,
    rx: &mut tokio::sync::broadcast::Receiver<Arc<Event>>,
    filter: &Filter,
    first: Arc<Event>,
) -> Forwarded {
    use futures::SinkExt;
    use tokio::sync::broadcast::error::TryRecvError;

    let mut fed = 0;
    let mut next = first;
    let ended = loop {
        if let Some(text) = text_for(state, filter, &next).await {
            match tokio::time::timeout(SEND_TIMEOUT, socket.feed(Message::Text(text))).await {
                Ok(Ok(())) => fed += 1,
                _ => return Forwarded::Gone,
            }
        }
        if fed >= BATCH {
            break Forwarded::Sent;
        }
        next = match rx.try_recv() {
            Ok(ev) => ev,
            Err(TryRecvError::Empty) => break Forwarded::Sent,
            Err(TryRecvError::Lagged(missed)) => break Forwarded::Lagged(missed),
            Err(TryRecvError::Closed) => break Forwarded::Closed,
        };
    };
    if fed > 0 {
        match tokio::time::timeout(SEND_TIMEOUT, socket.flush()).await {
            Ok(Ok(())) => {}
            _ => return Forwarded::Gone,
        }
    }
    ended
}

async fn relay(
    state: AppState,
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    mut logging: Option<tokio::sync::mpsc::Receiver<Event>>,
    mut filter: Filter,
    mut slot: SocketSlot,
) {
    metrics::gauge!("lxgate_event_subscribers").increment(1.0);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let outcome = match ev {
                    Ok(ev) => forward_queued(&state, &mut socket, &mut rx, &filter, ev).await,
                    Err(RecvError::Lagged(missed)) => Forwarded::Lagged(missed),
                    Err(RecvError::Closed) => Forwarded::Closed,
                };
                match outcome {
                    Forwarded::Sent => {}
                    Forwarded::Gone => break,
                    Forwarded::Lagged(missed) => {
                        // Too slow: drop it rather than let it hold anything up.
                        tracing::info!(missed, user = %filter.user.username, "dropping a slow event subscriber");
                        metrics::counter!("lxgate_event_subscribers_dropped_total").increment(1);
                        let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(CloseFrame {
                            code: 1008,
                            reason: "too slow: events were dropped; reconnect".into(),
                        })))).await;
                        break;
                    }
                    Forwarded::Closed => {
                        let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                        break;
                    }
                }
            },
            ev = async { logging.as_mut()?.recv().await }, if logging.is_some() => match ev {
                Some(ev) => {
                    let Ok(text) = serde_json::to_string(&ev) else { continue };
                    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
                // The backend's logging stream ended; keep the other events flowing.
                None => logging = None,
            },
            msg = socket.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                // Subscribers only listen; pongs and anything else are ignored.
                Some(Ok(_)) => {}
            },
            changed = slot.access.changed() => {
                if changed.is_err() {
                    // Cannot happen while the slot lives; end rather than spin.
                    break;
                }
                let access = slot.access.borrow_and_update().clone();
                match access {
                    // Roles changed but still allow it: filter by the new ones.
                    Access::Granted(grants) => filter.user.grants = grants,
                    Access::Revoked { code, reason } => {
                        close_revoked(&mut socket, code, reason).await;
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Vec::new().into()))).await.map_or(true, |r| r.is_err()) {
                    break;
                }
            }
        }
    }
    metrics::gauge!("lxgate_event_subscribers").decrement(1.0);
}

async fn upgrade(
    state: &AppState,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    filter: Filter,
    slot: SocketSlot,
) -> ApiResult<Response> {
    // Subscribers only listen (pongs, a close): a small read buffer, not
    // the default 128 KiB, keeps a thousand idle ones cheap, and nothing
    // they send is taken past 64 KiB; events are written out as they come.
    let ws = require_upgrade(ws)?
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024);
    let rx = state.backend.subscribe()?;
    let logging = if filter.kinds.contains("logging") {
        Some(state.backend.subscribe_logging().await?)
    } else {
        None
    };
    let state = state.clone();
    Ok(ws.on_upgrade(move |socket| relay(state, socket, rx, logging, filter, slot)))
}

/// Subscribe to events (WebSocket). Each message is one Incus-shaped Event,
/// as JSON text. Authenticate with `?ticket=` (browsers) or a bearer header.
#[utoipa::path(get, path = "/ws", tag = "events", operation_id = "subscribe_events",
    security(("bearer" = [])),
    params(EventsQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        NotWebSocket426, TooManySockets429,
        (status = 400, description = "Unknown event type or project name", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`logging` needs an admin; or no role in the project", body = Problem, content_type = "application/problem+json")))]
pub async fn events_ws(
    WsUser(user): WsUser,
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let filter = filter(user, &q, &["operation", "lifecycle"])?;
    let slot = state.sockets.acquire(&filter.user, filter.needs())?;
    upgrade(&state, ws, filter, slot).await
}

/// Subscribe to operation events only (WebSocket).
#[utoipa::path(get, path = "/ws", tag = "operations", operation_id = "subscribe_operations",
    security(("bearer" = [])),
    params(EventsQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        NotWebSocket426, TooManySockets429, Viewer403))]
pub async fn operations_ws(
    WsUser(user): WsUser,
    State(state): State<AppState>,
    Query(mut q): Query<EventsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    if q.kinds.as_deref().is_some_and(|k| k != "operation") {
        return Err(ApiError::bad_request(
            "invalid_query",
            "this stream carries operation events only; use /api/v1/events/ws for others",
        ));
    }
    q.kinds = Some("operation".into());
    let filter = filter(user, &q, &["operation"])?;
    let slot = state.sockets.acquire(&filter.user, filter.needs())?;
    upgrade(&state, ws, filter, slot).await
}
