//! WebSocket relay plumbing shared by exec, console and events: the
//! browser's socket on one side, a backend `TerminalSession` on the other,
//! and the per-user cap on open sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::backend::types::{TerminalInput, TerminalSession};
use crate::error::ApiError;

/// Open WebSockets per user, capped (`MAX_WEBSOCKETS_PER_USER`): each one
/// holds a backend session or an event subscription, so one account must
/// not be able to open them without bound.
#[derive(Debug)]
pub struct SocketSlots {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open socket of a user; dropping it (when the socket ends) frees it.
#[derive(Debug)]
pub struct SocketSlot {
    slots: Arc<SocketSlots>,
    user_id: String,
}

impl SocketSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `user_id`, or 429 when it has `max` sockets open.
    pub fn acquire(self: &Arc<Self>, user_id: &str) -> Result<SocketSlot, ApiError> {
        let mut open = self.open.lock().expect("socket slots lock poisoned");
        let n = open.entry(user_id.to_owned()).or_insert(0);
        if *n >= self.max {
            let mut e = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets",
                format!(
                    "this account has {} WebSockets open, the most it may; close one first",
                    self.max
                ),
            );
            e.retry_after = Some(5);
            return Err(e);
        }
        *n += 1;
        Ok(SocketSlot {
            slots: Arc::clone(self),
            user_id: user_id.to_owned(),
        })
    }

    pub fn open_for(&self, user_id: &str) -> usize {
        let open = self.open.lock().expect("socket slots lock poisoned");
        open.get(user_id).copied().unwrap_or(0)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("socket slots lock poisoned");
        if let Some(n) = open.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

const PING_EVERY: Duration = Duration::from_secs(20);

/// Text frames a terminal client may send.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Resize { width: u32, height: u32 },
}

/// Relays until either side ends. Binary frames are stdin/stdout; text
/// frames carry JSON control messages (`{"type":"resize",...}`); the last
/// frame before close is `{"type":"exit","exit_code":N}` for commands.
pub async fn relay_terminal(socket: WebSocket, session: TerminalSession) {
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
                    if let Ok(Control::Resize { width, height }) = serde_json::from_str(&text)
                        && (1..=1000).contains(&width)
                        && (1..=1000).contains(&height)
                    {
                        let _ = input.send(TerminalInput::Resize { width, height }).await;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        false
    };
    let finished = tokio::select! {
        finished = downstream => finished,
        finished = upstream => finished,
    };
    // Dropping the input hangs the session up on the backend side.
    drop(input);
    if finished {
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

    #[test]
    fn slots_are_capped_per_user_and_freed_on_drop() {
        let slots = SocketSlots::new(2);
        let a = slots.acquire("u1").unwrap();
        let _b = slots.acquire("u1").unwrap();
        let err = slots.acquire("u1").unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(slots.acquire("u2").is_ok());
        drop(a);
        assert!(slots.acquire("u1").is_ok());
        assert_eq!(slots.open_for("u2"), 0);
    }
}
