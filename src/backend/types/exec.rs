//! Running commands in instances, and terminal sessions (exec, console).

use std::collections::BTreeMap;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

/// `POST /api/v1/instances/{name}/exec` (and the query of `exec/ws`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments, e.g. `["sh", "-c", "echo hi"]`.
    #[schema(value_type = crate::api::schemas::ExecCommand, min_items = 1, example = json!(["sh", "-c", "echo hello"]))]
    pub command: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    #[schema(value_type = crate::api::schemas::ExecEnvironment)]
    pub environment: BTreeMap<String, String>,
    /// Working directory (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^/[^\x00]*$")]
    pub cwd: Option<String>,
    /// User id to run as (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u32>,
    /// Group id to run as (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Seconds (1-86400) after which the command's process group is killed
    /// and the operation fails (`timed_out: true` in its metadata, with the
    /// output so far). Recorded exec on the embedded backend only: Incus
    /// cannot stop a recorded command, so it answers 501 `not_supported` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400, example = 600)]
    pub timeout: Option<u64>,
}

/// The longest `ExecRequest::timeout`, a day.
pub const MAX_EXEC_TIMEOUT_SECS: u64 = 86_400;

impl ExecRequest {
    /// Checks what the command may look like before it reaches a backend.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(("command", "command needs at least a program name".into()));
        }
        if self.command.len() > 256 {
            return Err(("command", "at most 256 arguments".into()));
        }
        if self
            .command
            .iter()
            .any(|a| a.len() > 16 * 1024 || a.contains('\0'))
        {
            return Err((
                "command",
                "arguments are at most 16 KiB and contain no NUL".into(),
            ));
        }
        for (k, v) in &self.environment {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(("environment", format!("invalid environment variable {k:?}")));
            }
        }
        if let Some(cwd) = &self.cwd
            && (!cwd.starts_with('/') || cwd.contains('\0'))
        {
            return Err(("cwd", "cwd must be an absolute path".into()));
        }
        if self
            .timeout
            .is_some_and(|t| !(1..=MAX_EXEC_TIMEOUT_SECS).contains(&t))
        {
            return Err((
                "timeout",
                format!("timeout must be 1-{MAX_EXEC_TIMEOUT_SECS} seconds"),
            ));
        }
        Ok(())
    }
}

/// What a terminal's user sends.
#[derive(Debug)]
pub enum TerminalInput {
    Data(Bytes),
    Resize { width: u32, height: u32 },
}

/// A running interactive session, bridged by the backend to channels so the
/// API layer can relay it without knowing the backend's wire protocol.
/// Dropping `input` hangs the session up.
pub struct TerminalSession {
    pub input: mpsc::Sender<TerminalInput>,
    /// Ends when the session's output ends (the process exited).
    pub output: mpsc::Receiver<Bytes>,
    /// The exit code, for commands (a console has none).
    pub exit: Option<oneshot::Receiver<i64>>,
}

/// How much recorded exec output is kept: `per_stream` bytes of stdout and
/// of stderr per command (`EXEC_OUTPUT_MAX_BYTES`); `total` across all the
/// operations a backend holds in memory (`EXEC_OUTPUT_TOTAL_BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    pub per_stream: usize,
    pub total: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self {
            per_stream: 1024 * 1024,
            total: 64 * 1024 * 1024,
        }
    }
}

/// The result of a non-interactive exec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// Standard output (UTF-8, lossy; at most `EXEC_OUTPUT_MAX_BYTES`).
    pub stdout: String,
    /// Standard error (UTF-8, lossy; at most `EXEC_OUTPUT_MAX_BYTES`).
    pub stderr: String,
    /// Whether stdout or stderr was cut (at `EXEC_OUTPUT_MAX_BYTES`, or
    /// because `EXEC_OUTPUT_TOTAL_BYTES` was all held by running commands).
    pub truncated: bool,
}
