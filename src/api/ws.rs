//! WebSocket relay plumbing shared by exec and console: the browser's socket
//! on one side, a backend `TerminalSession` on the other.

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
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let finished = loop {
        tokio::select! {
            out = output.recv() => match out {
                Some(bytes) => {
                    if to_browser.send(Message::Binary(bytes)).await.is_err() {
                        break false;
                    }
                }
                // The process's output is over: report how it ended.
                None => break true,
            },
            msg = from_browser.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    if input.send(TerminalInput::Data(bytes)).await.is_err() {
                        break true;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(Control::Resize { width, height }) = serde_json::from_str(&text)
                        && (1..=1000).contains(&width)
                        && (1..=1000).contains(&height)
                    {
                        let _ = input.send(TerminalInput::Resize { width, height }).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break false,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if to_browser.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break false;
                }
            }
        }
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
