//! Commands in an instance, and its console.

use super::BackendError;
use super::types::{ExecOutput, ExecRequest, Operation, TerminalSession};
use crate::names::{InstanceName, ProjectName};

#[async_trait::async_trait]
pub trait Exec: Send + Sync {
    /// An interactive command on a PTY of `width` x `height`.
    async fn exec_interactive(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        req: &ExecRequest,
        size: (u32, u32),
    ) -> Result<TerminalSession, BackendError>;

    /// A non-interactive command whose output is recorded; the operation's
    /// result is read with `exec_output`.
    async fn exec(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        req: &ExecRequest,
    ) -> Result<Operation, BackendError>;

    /// Exit code, stdout and stderr of a finished `exec` operation.
    async fn exec_output(
        &self,
        project: &str,
        op: &Operation,
    ) -> Result<Option<ExecOutput>, BackendError>;

    /// The instance's console (serial console for VMs, /dev/console for containers).
    async fn console(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        size: (u32, u32),
    ) -> Result<TerminalSession, BackendError>;
}
