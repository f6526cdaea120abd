//! WebSocket relay plumbing shared by exec, console and events: the
//! browser's socket on one side, a backend `TerminalSession` on the other;
//! the registry of open sockets (capped per user with `api::slots`) and the
//! watcher that closes them when the access they were opened with is revoked.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use sqlx::AnyPool;
use tokio::sync::watch;

use crate::api::slots::{Held, UserSlot, UserSlots};
use crate::auth::AuthUser;
use crate::auth::rbac::PatRef;
use crate::auth::rbac::{Grants, Permission};
use crate::backend::types::{TerminalInput, TerminalSession};
use crate::db;
use crate::error::{ApiError, ApiResult};

/// How often open sockets are checked against the database. Revocation
/// (account disabled or deleted, password or role change, logout, a lost
/// project role) closes a socket within this long, on every replica.
pub const REVOCATION_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Close code when the credentials a socket was opened with no longer hold
/// (account disabled or deleted, token revoked or logged out). Mirrors 401.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code when the user lost the role the socket needs. Mirrors 403.
pub const CLOSE_FORBIDDEN: u16 = 4403;

/// Whether an open socket may go on, as the watcher last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Still allowed, with the user's current grants (an events socket
    /// filters by them, so a project role lost or gained applies at once).
    Granted(Grants),
    /// To be closed with this code and reason.
    Revoked { code: u16, reason: String },
}

/// What an open socket was opened under.
#[derive(Debug)]
struct Holder {
    user_id: String,
    /// `None` for a personal access token, which outlives password and
    /// role changes (its rights follow the owner's grants instead).
    token_version: Option<i64>,
    jti: Option<String>,
    pat: Option<PatRef>,
    needs: Vec<(Permission, String)>,
    access: watch::Sender<Access>,
}

impl Holder {
    /// The verdict for this socket given the user's current row and grants
    /// (`None`: the user is gone) and whether its access token was logged
    /// out (or its personal access token revoked or expired).
    fn verdict(&self, user: Option<&(db::users::UserRow, Grants)>, logged_out: bool) -> Access {
        let revoked = |code, reason: &str| Access::Revoked {
            code,
            reason: reason.to_owned(),
        };
        let Some((row, grants)) = user else {
            return revoked(CLOSE_UNAUTHORIZED, "account deleted");
        };
        if row.is_disabled() {
            return revoked(CLOSE_UNAUTHORIZED, "account disabled");
        }
        if self.token_version.is_some_and(|tv| tv != row.token_version) {
            return revoked(
                CLOSE_UNAUTHORIZED,
                "credentials revoked (password, role or account status changed); log in again",
            );
        }
        if logged_out {
            return match self.pat {
                Some(_) => revoked(CLOSE_UNAUTHORIZED, "token revoked or expired"),
                None => revoked(CLOSE_UNAUTHORIZED, "logged out"),
            };
        }
        let grants = &match &self.pat {
            Some(p) => grants.capped(&p.caps),
            None => grants.clone(),
        };
        if let Some((permission, project)) = self
            .needs
            .iter()
            .find(|(p, project)| !grants.allows(*p, project))
        {
            let scope = if project.is_empty() {
                String::new()
            } else {
                format!(" in project `{project}`")
            };
            return Access::Revoked {
                code: CLOSE_FORBIDDEN,
                reason: format!("permission `{}` lost{scope}", permission.as_str()),
            };
        }
        Access::Granted(grants.clone())
    }
}

/// The open WebSockets of this replica: capped per user
/// (`MAX_WEBSOCKETS_PER_USER`, each one holds a backend session or an event
/// subscription) and watched, so that revocation reaches them.
#[derive(Debug)]
pub struct SocketSlots {
    cap: Arc<UserSlots>,
    next: AtomicU64,
    holders: Mutex<HashMap<u64, Holder>>,
}

/// One open socket of a user; dropping it (when the socket ends) frees it.
#[derive(Debug)]
pub struct SocketSlot {
    slots: Arc<SocketSlots>,
    key: u64,
    _held: UserSlot,
    /// Changes when the watcher re-checks the user: new grants, or revoked.
    pub access: watch::Receiver<Access>,
}

impl SocketSlot {
    /// Resolves with the close code and reason once the socket's access is
    /// revoked; never while it holds.
    pub async fn revoked(&mut self) -> (u16, String) {
        loop {
            if let Access::Revoked { code, reason } = &*self.access.borrow_and_update() {
                return (*code, reason.clone());
            }
            if self.access.changed().await.is_err() {
                // The registry is gone (shutting down): nothing will revoke it.
                return std::future::pending().await;
            }
        }
    }
}

impl SocketSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: UserSlots::new(max, Held::WebSockets),
            next: AtomicU64::new(1),
            holders: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `user`'s socket that needs `needs` (permission, project;
    /// the project is empty for server-wide permissions) to stay open, or
    /// 429 when the user has `max` sockets open.
    pub fn acquire(
        self: &Arc<Self>,
        user: &AuthUser,
        needs: Vec<(Permission, String)>,
    ) -> Result<SocketSlot, ApiError> {
        let held = self.cap.acquire(&user.id)?;
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Access::Granted(user.grants.clone()));
        self.holders
            .lock()
            .expect("socket slots lock poisoned")
            .insert(
                key,
                Holder {
                    user_id: user.id.clone(),
                    token_version: user.pat.is_none().then_some(user.token_version),
                    jti: user.jti.clone(),
                    pat: user.pat.clone(),
                    needs,
                    access: tx,
                },
            );
        Ok(SocketSlot {
            slots: Arc::clone(self),
            key,
            _held: held,
            access: rx,
        })
    }

    /// Re-checks every open socket's user against the database and revokes
    /// (or updates the grants of) those that changed. A database error
    /// leaves sockets as they are until the next check.
    pub async fn check(&self, pool: &AnyPool) -> Result<(), sqlx::Error> {
        let (users, jtis, pats, before) = {
            let holders = self.holders.lock().expect("socket slots lock poisoned");
            // Sockets opened after this point were authenticated after the
            // rows below were read: they are judged at the next check, not
            // against rows that may not know their user (or new password).
            let before = self.next.load(Ordering::Relaxed);
            let users: BTreeSet<String> = holders.values().map(|h| h.user_id.clone()).collect();
            let jtis: BTreeSet<String> = holders.values().filter_map(|h| h.jti.clone()).collect();
            let pats: BTreeSet<String> = holders
                .values()
                .filter_map(|h| h.pat.as_ref().map(|p| p.id.clone()))
                .collect();
            (users, jtis, pats, before)
        };
        if users.is_empty() {
            return Ok(());
        }
        let users: Vec<String> = users.into_iter().collect();
        let jtis: Vec<String> = jtis.into_iter().collect();
        let pats: Vec<String> = pats.into_iter().collect();
        let rows: HashMap<String, (db::users::UserRow, Grants)> =
            db::users::many_with_grants(pool, &users)
                .await?
                .into_iter()
                .map(|(row, grants)| (row.id.clone(), (row, grants)))
                .collect();
        let logged_out: HashSet<String> = db::revoked_tokens::revoked_among(pool, &jtis)
            .await?
            .into_iter()
            .collect();
        let live_pats: HashSet<String> = if pats.is_empty() {
            HashSet::new()
        } else {
            db::personal_tokens::live_among(pool, &pats)
                .await?
                .into_iter()
                .collect()
        };
        let holders = self.holders.lock().expect("socket slots lock poisoned");
        for (_, holder) in holders.iter().filter(|(key, _)| **key < before) {
            let out = holder.jti.as_ref().is_some_and(|j| logged_out.contains(j))
                || holder
                    .pat
                    .as_ref()
                    .is_some_and(|p| !live_pats.contains(&p.id));
            let verdict = holder.verdict(rows.get(&holder.user_id), out);
            holder.access.send_if_modified(|a| {
                // Once revoked, a socket stays revoked.
                if *a == verdict || matches!(a, Access::Revoked { .. }) {
                    return false;
                }
                *a = verdict.clone();
                true
            });
        }
        Ok(())
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut holders = self
            .slots
            .holders
            .lock()
            .expect("socket slots lock poisoned");
        holders.remove(&self.key);
    }
}

/// A WebSocket route called as plain HTTP gets a problem+json answer too.
pub fn require_upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<WebSocketUpgrade> {
    ws.map_err(|r| {
        ApiError::new(
            axum::http::StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            format!("this endpoint speaks WebSocket only ({})", r.body_text()),
        )
    })
}

/// Sends the close frame for a revoked socket (bounded in time: the peer
/// may not be reading).
pub async fn close_revoked<S>(sink: &mut S, code: u16, reason: String)
where
    S: futures::Sink<Message> + Unpin,
{
    tracing::info!(code, reason = %reason, "closing a WebSocket: access revoked");
    metrics::counter!("lxgate_websockets_revoked_total").increment(1);
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(5), sink.send(frame)).await;
}

const PING_EVERY: Duration = Duration::from_secs(20);

/// How a terminal relay ended.
enum End {
    /// The process's output is over: say how it exited, then close.
    Finished,
    /// The browser or the backend went away.
    Gone,
    Revoked(u16, String),
}

impl From<bool> for End {
    fn from(finished: bool) -> Self {
        if finished { End::Finished } else { End::Gone }
    }
}

/// Text frames a terminal client may send.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Resize { width: u32, height: u32 },
}

/// What a text frame asks of the terminal: a resize within 1-1000 columns
/// and rows; anything else is ignored.
pub(crate) fn control(text: &str) -> Option<TerminalInput> {
    match serde_json::from_str(text) {
        Ok(Control::Resize { width, height })
            if (1..=1000).contains(&width) && (1..=1000).contains(&height) =>
        {
            Some(TerminalInput::Resize { width, height })
        }
        _ => None,
    }
}

/// Relays until either side ends. Binary frames are stdin/stdout; text
/// frames carry JSON control messages (`{"type":"resize",...}`); the last
/// frame before close is `{"type":"exit","exit_code":N}` for commands.
/// A revoked slot ends the session with `CLOSE_UNAUTHORIZED` or
/// `CLOSE_FORBIDDEN` and the reason.
pub async fn relay_terminal(socket: WebSocket, session: TerminalSession, mut slot: SocketSlot) {
    let TerminalSession {
        input,
        mut output,
        exit,
    } = session;
    let (mut to_browser, mut from_browser) = socket.split();
    // The two directions run as separate futures: a stdin send that waits for
    // a busy backend must never keep stdout from being drained, or a command
    // like `cat` deadlocks the moment both buffers fill.
    let downstream = async {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                out = output.recv() => match out {
                    Some(bytes) => {
                        if to_browser.send(Message::Binary(bytes)).await.is_err() {
                            return false;
                        }
                    }
                    // The process's output is over: report how it ended.
                    None => return true,
                },
                _ = ping.tick() => {
                    if to_browser.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return false;
                    }
                }
            }
        }
    };
    let upstream = async {
        while let Some(Ok(msg)) = from_browser.next().await {
            match msg {
                Message::Binary(bytes) => {
                    let Ok(()) = input.send(TerminalInput::Data(bytes)).await else {
                        // The backend hung up; its output end says how.
                        return std::future::pending().await;
                    };
                }
                Message::Text(text) => {
                    if let Some(resize) = control(&text) {
                        let _ = input.send(resize).await;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        false
    };
    let end = tokio::select! {
        finished = downstream => End::from(finished),
        finished = upstream => End::from(finished),
        (code, reason) = slot.revoked() => End::Revoked(code, reason),
    };
    // Dropping the input hangs the session up on the backend side.
    drop(input);
    if let End::Revoked(code, reason) = end {
        close_revoked(&mut to_browser, code, reason).await;
    } else if let End::Finished = end {
        if let Some(exit) = exit {
            let code = tokio::time::timeout(Duration::from_secs(30), exit)
                .await
                .ok()
                .and_then(Result::ok);
            let frame = json!({"type": "exit", "exit_code": code});
            let _ = to_browser
                .send(Message::Text(frame.to_string().into()))
                .await;
        }
        let _ = to_browser
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "session ended".into(),
            })))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, grants: Grants) -> AuthUser {
        AuthUser {
            id: id.to_owned(),
            username: id.to_owned(),
            grants,
            token_version: 3,
            jti: Some(format!("jti-{id}")),
            pat: None,
            auth_method: "bearer",
        }
    }

    #[test]
    fn sockets_are_capped_per_user_and_freed_on_drop() {
        let slots = SocketSlots::new(2);
        let u1 = user("u1", Grants::default());
        let a = slots.acquire(&u1, vec![]).unwrap();
        let _b = slots.acquire(&u1, vec![]).unwrap();
        let err = slots.acquire(&u1, vec![]).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(
            slots
                .acquire(&user("u2", Grants::default()), vec![])
                .is_ok()
        );
        drop(a);
        assert!(slots.acquire(&u1, vec![]).is_ok());
        // Only `_b` is still open: the others were dropped at once.
        let open = slots.holders.lock().unwrap().len();
        assert_eq!(open, 1);
    }

    fn row(disabled: bool, token_version: i64) -> db::users::UserRow {
        db::users::UserRow {
            id: "u1".into(),
            username: "u1".into(),
            password_hash: String::new(),
            role: None,
            disabled: i64::from(disabled),
            token_version,
            created_at: 0,
            updated_at: 0,
            last_login_at: None,
        }
    }

    #[test]
    fn the_verdict_follows_the_user_row_grants_and_logout() {
        let viewer = Grants {
            global: None,
            projects: vec![("team".into(), crate::auth::Role::Viewer)],
            ..Grants::default()
        };
        let slots = SocketSlots::new(4);
        let slot = slots
            .acquire(
                &user("u1", viewer.clone()),
                vec![(Permission::ProjectView, "team".into())],
            )
            .unwrap();
        let holders = slots.holders.lock().unwrap();
        let h = &holders[&slot.key];
        let code = |a: Access| match a {
            Access::Revoked { code, .. } => Some(code),
            Access::Granted(_) => None,
        };
        assert_eq!(
            code(h.verdict(Some(&(row(false, 3), viewer.clone())), false)),
            None
        );
        assert_eq!(code(h.verdict(None, false)), Some(CLOSE_UNAUTHORIZED));
        assert_eq!(
            code(h.verdict(Some(&(row(true, 3), viewer.clone())), false)),
            Some(CLOSE_UNAUTHORIZED)
        );
        assert_eq!(
            code(h.verdict(Some(&(row(false, 4), viewer.clone())), false)),
            Some(CLOSE_UNAUTHORIZED)
        );
        assert_eq!(
            code(h.verdict(Some(&(row(false, 3), viewer.clone())), true)),
            Some(CLOSE_UNAUTHORIZED)
        );
        assert_eq!(
            code(h.verdict(Some(&(row(false, 3), Grants::default())), false)),
            Some(CLOSE_FORBIDDEN)
        );
    }

    #[test]
    fn a_personal_token_socket_follows_its_caps_and_revocation_not_the_password() {
        let operator = Grants {
            global: Some(crate::auth::Role::Operator),
            ..Grants::default()
        };
        let mut u = user("u1", operator.clone());
        u.jti = None;
        u.pat = Some(PatRef {
            id: "pat-1".into(),
            caps: crate::auth::rbac::TokenCaps {
                role_cap: Some(crate::auth::Role::Viewer),
                ..Default::default()
            },
        });
        u.grants = operator.capped(&u.pat.as_ref().unwrap().caps);
        let slots = SocketSlots::new(4);
        let slot = slots
            .acquire(&u, vec![(Permission::ProjectView, "default".into())])
            .unwrap();
        let holders = slots.holders.lock().unwrap();
        let h = &holders[&slot.key];
        // A new password (token version) leaves it open, with capped grants.
        match h.verdict(Some(&(row(false, 9), operator.clone())), false) {
            Access::Granted(g) => {
                assert_eq!(g.global, Some(crate::auth::Role::Viewer));
            }
            other => panic!("{other:?}"),
        }
        // Revoked or expired: closed as unauthorized.
        assert!(matches!(
            h.verdict(Some(&(row(false, 3), operator.clone())), true),
            Access::Revoked {
                code: CLOSE_UNAUTHORIZED,
                ..
            }
        ));
        // The owner losing its role closes it too.
        assert!(matches!(
            h.verdict(Some(&(row(false, 3), Grants::default())), false),
            Access::Revoked {
                code: CLOSE_FORBIDDEN,
                ..
            }
        ));
    }
}
