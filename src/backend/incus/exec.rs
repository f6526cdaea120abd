//! Exec and console on Incus: the operation websockets are bridged to a
//! `TerminalSession`, so their secrets never leave lxgate.

use axum::body::Bytes;
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::IncusBackend;
use super::websocket::IncusSocket;
use crate::backend::types::{ExecOutput, ExecRequest, Operation, TerminalInput, TerminalSession};
use crate::backend::{BackendError, Exec, Missing, ReportMissing};
use crate::names::{InstanceName, ProjectName};

fn secret<'a>(op: &'a Operation, fd: &str) -> Result<&'a str, BackendError> {
    op.metadata["fds"][fd]
        .as_str()
        .ok_or_else(|| BackendError::Upstream(format!("Incus gave no websocket for fd {fd}")))
}

impl IncusBackend {
    async fn operation_socket(
        &self,
        op: &Operation,
        fd: &str,
    ) -> Result<IncusSocket, BackendError> {
        self.client
            .websocket(
                &["operations", &op.id, "websocket"],
                &[("secret", secret(op, fd)?)],
            )
            .await
    }

    /// Connects the data and control websockets of `op` and bridges them.
    async fn bridge(
        &self,
        op: Operation,
        with_exit: bool,
    ) -> Result<TerminalSession, BackendError> {
        let control = self.operation_socket(&op, "control").await?;
        let data = self.operation_socket(&op, "0").await?;
        let (mut data_tx, mut data_rx) = data.split();
        let (mut control_tx, _control_rx) = control.split();
        let (input_tx, mut input_rx) = mpsc::channel::<TerminalInput>(64);
        let (output_tx, output_rx) = mpsc::channel::<Bytes>(64);

        // Browser -> instance. When the user goes away, hang up like a
        // terminal does; when the process's output ends, close our side so
        // Incus can finish the operation.
        let (output_over_tx, mut output_over) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    input = input_rx.recv() => {
                        let sent = match input {
                            Some(TerminalInput::Data(bytes)) => data_tx.send(Message::Binary(bytes)).await,
                            Some(TerminalInput::Resize { width, height }) => {
                                let msg = json!({"command": "window-resize",
                                    "args": {"width": width.to_string(), "height": height.to_string()}});
                                control_tx.send(Message::Text(msg.to_string().into())).await
                            }
                            None => {
                                let hangup = json!({"command": "signal", "signal": 1});
                                let _ = control_tx.send(Message::Text(hangup.to_string().into())).await;
                                break;
                            }
                        };
                        if sent.is_err() {
                            break;
                        }
                    }
                    _ = &mut output_over => break,
                }
            }
            let _ = data_tx.close().await;
            let _ = control_tx.close().await;
        });

        // Instance -> browser. The data websocket does not always close when
        // the process exits, so the operation is watched too: once it is
        // done, the remaining output is drained and the exit code sent.
        let (exit_tx, exit_rx) = oneshot::channel();
        let client = self.client.clone();
        let op_id = op.id.clone();
        tokio::spawn(async move {
            let finished = async {
                if !with_exit {
                    return std::future::pending::<i64>().await;
                }
                loop {
                    let r = client
                        .query_long(
                            Method::GET,
                            &["operations", &op_id, "wait"],
                            &[("timeout", "60")],
                            std::time::Duration::from_secs(70),
                        )
                        .await;
                    tracing::debug!(op = %op_id, ok = r.is_ok(), "exec bridge: wait returned");
                    let op = r.map(|r| r.envelope.metadata::<Value>().unwrap_or_default());
                    match op {
                        Ok(op) if op["status_code"].as_i64().unwrap_or(0) >= 200 => {
                            return op["metadata"]["return"].as_i64().unwrap_or(-1);
                        }
                        Ok(_) => continue,
                        Err(_) => return -1,
                    }
                }
            };
            tokio::pin!(finished);
            let forward = |msg: Message| match msg {
                Message::Binary(b) if !b.is_empty() => Some(b),
                Message::Text(t) if !t.is_empty() => Some(Bytes::from(t.as_str().to_owned())),
                _ => None,
            };
            let code = loop {
                tokio::select! {
                    msg = data_rx.next() => match msg {
                        // Incus marks the end of the output with an empty message.
                        Some(Ok(Message::Text(t))) if t.is_empty() => break None,
                        Some(Ok(Message::Binary(b))) if b.is_empty() => break None,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            tracing::debug!(op = %op_id, "exec bridge: data websocket ended");
                            break None
                        }
                        Some(Ok(m)) => {
                            if let Some(b) = forward(m)
                                && output_tx.send(b).await.is_err()
                            {
                                // The user went away; the input side hangs up.
                                return;
                            }
                        }
                    },
                    code = &mut finished => {
                        tracing::debug!(op = %op_id, code, "exec bridge: operation finished");
                        while let Ok(Some(Ok(m))) =
                            tokio::time::timeout(std::time::Duration::from_millis(200), data_rx.next()).await
                        {
                            if let Some(b) = forward(m) {
                                let _ = output_tx.send(b).await;
                            }
                        }
                        break Some(code);
                    }
                }
            };
            drop(output_tx);
            let _ = output_over_tx.send(());
            if with_exit {
                let code = match code {
                    Some(c) => Some(c),
                    None => tokio::time::timeout(std::time::Duration::from_secs(30), finished)
                        .await
                        .ok(),
                };
                if let Some(code) = code {
                    let _ = exit_tx.send(code);
                }
            }
        });
        Ok(TerminalSession {
            input: input_tx,
            output: output_rx,
            exit: with_exit.then_some(exit_rx),
        })
    }
}

#[async_trait::async_trait]
impl Exec for IncusBackend {
    async fn exec_interactive(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        req: &ExecRequest,
        (width, height): (u32, u32),
    ) -> Result<TerminalSession, BackendError> {
        let mut environment = req.environment.clone();
        environment
            .entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
        let mut body = json!({
            "command": req.command,
            "environment": environment,
            "interactive": true,
            "wait-for-websocket": true,
            "width": width,
            "height": height,
        });
        add_identity(&mut body, req);
        let op = self
            .client
            .query_operation(
                Method::POST,
                &["instances", name, "exec"],
                &[("project", project)],
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::instance(name))?;
        self.bridge(op, true).await
    }

    async fn exec(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        req: &ExecRequest,
    ) -> Result<Operation, BackendError> {
        // Incus's exec has no timeout, and a recorded command (no websockets)
        // cannot be signalled or cancelled: refused rather than not enforced.
        if req.timeout.is_some() {
            return Err(BackendError::NotSupported(
                "`timeout` is not supported on the Incus backend: Incus cannot stop a recorded command; run it under timeout(1) in the instance instead, e.g. [\"timeout\", \"60\", \"sh\", \"-c\", \"...\"]".into(),
            ));
        }
        let mut body = json!({
            "command": req.command,
            "environment": req.environment,
            "interactive": false,
            "wait-for-websocket": false,
            "record-output": true,
        });
        add_identity(&mut body, req);
        self.client
            .query_operation(
                Method::POST,
                &["instances", name, "exec"],
                &[("project", project)],
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::instance(name))
    }

    async fn exec_output(
        &self,
        project: &str,
        op: &Operation,
    ) -> Result<Option<ExecOutput>, BackendError> {
        let Some(exit_code) = op.metadata["return"].as_i64() else {
            return Ok(None);
        };
        // An operation known only from lxgate's record keeps its exit code,
        // not where its output was: none rather than an empty one.
        if op.metadata.get("output").is_none() {
            return Ok(None);
        }
        let cap = self.exec_output_max;
        let mut truncated = false;
        // Read while capped: past the cap the download is dropped, not drained.
        let mut read = async |fd: &str| -> Result<String, BackendError> {
            let Some(path) = op.metadata["output"][fd].as_str() else {
                return Ok(String::new());
            };
            // "/1.0/instances/<name>/logs/exec-output/<file>": re-split so every
            // part goes through the client's escaping.
            let segments: Vec<&str> = path.trim_start_matches("/1.0/").split('/').collect();
            let mut resp = self
                .client
                .raw(Method::GET, &segments, &[("project", project)], None, None)
                .await?;
            let mut out = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| BackendError::Upstream(e.to_string()))?
            {
                let room = cap.saturating_sub(out.len());
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    truncated = true;
                    break;
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        };
        let stdout = read("1").await?;
        let stderr = read("2").await?;
        Ok(Some(ExecOutput {
            exit_code,
            stdout,
            stderr,
            truncated,
        }))
    }

    async fn console(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        (width, height): (u32, u32),
    ) -> Result<TerminalSession, BackendError> {
        let body = json!({"type": "console", "width": width, "height": height});
        let op = self
            .client
            .query_operation(
                Method::POST,
                &["instances", name, "console"],
                &[("project", project)],
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::instance(name))?;
        self.bridge(op, false).await
    }
}

fn add_identity(body: &mut Value, req: &ExecRequest) {
    if let Some(cwd) = &req.cwd {
        body["cwd"] = json!(cwd);
    }
    if let Some(u) = req.user {
        body["user"] = json!(u);
    }
    if let Some(g) = req.group {
        body["group"] = json!(g);
    }
}
