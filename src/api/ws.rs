//! WebSocket relay plumbing shared by exec, console and events: the
//! browser's socket on one side, a backend `TerminalSession` on the other
//! (the per-user cap on open sockets is in `api::slots`).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::backend::types::{TerminalInput, TerminalSession};

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
