//! Commands in a container (`lxc-attach`) and instances' consoles.

use std::time::Duration;

use serde_json::json;

use super::{EmbeddedBackend, operations, process, resources};
use crate::backend::types::{ExecOutput, ExecRequest, Operation, TerminalSession};
use crate::backend::{BackendError, Exec};
use crate::names::{InstanceName, ProjectName};

fn no_vm_exec() -> BackendError {
    BackendError::NotSupported(
        "exec in a virtual machine needs a guest agent, which lxgate's KVM driver does not run; use the console".into(),
    )
}

#[async_trait::async_trait]
impl Exec for EmbeddedBackend {
    async fn exec_interactive(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        req: &ExecRequest,
        size: (u32, u32),
    ) -> Result<TerminalSession, BackendError> {
        let (ct, vm) = self.running_instance(project, name).await?;
        if vm {
            return Err(no_vm_exec());
        }
        self.lxc.exec_interactive(&ct, req, size)
    }

    async fn exec(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        req: &ExecRequest,
    ) -> Result<Operation, BackendError> {
        let (ct, vm) = self.running_instance(project, name).await?;
        if vm {
            return Err(no_vm_exec());
        }
        let lxc = self.lxc.clone();
        let req = req.clone();
        let max_bytes = self.output.per_stream;
        Ok(self.ops.start(
            project,
            "Executing command",
            resources("instances", project, &format!("instances/{name}")),
            // Cancelling kills the command (and its process group): a
            // command without a timeout need not hold its operation slot
            // and output budget for ever.
            true,
            move |ctx| async move {
                let reserve = |n| ctx.reserve_output(n);
                let rec = process::Recording {
                    max_bytes,
                    reserve: &reserve,
                    timeout: req.timeout.map(Duration::from_secs),
                };
                let ran = lxc.exec_recorded(&ct, &req, rec, ctx.cancelled()).await?;
                let out = ran.output;
                let mut meta = json!({
                    "stdout": out.stdout,
                    "stderr": out.stderr,
                    "truncated": out.truncated,
                });
                if ran.cancelled {
                    ctx.progress(meta);
                    return Err(operations::OpError::Cancelled);
                }
                if ran.timed_out {
                    // A failure, with what it printed until then.
                    meta["timed_out"] = true.into();
                    ctx.progress(meta);
                    return Err(operations::OpError::Failed(format!(
                        "the command did not finish within its timeout of {}s and was killed",
                        req.timeout.unwrap_or_default()
                    )));
                }
                meta["return"] = out.exit_code.into();
                meta["exit_code"] = out.exit_code.into();
                Ok(meta)
            },
        ))
    }

    /// The output is already in the operation's metadata.
    async fn exec_output(
        &self,
        _project: &str,
        _op: &Operation,
    ) -> Result<Option<ExecOutput>, BackendError> {
        Ok(None)
    }

    async fn console(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        size: (u32, u32),
    ) -> Result<TerminalSession, BackendError> {
        let (ct, vm) = self.running_instance(project, name).await?;
        if vm {
            return self.qemu.console(&ct).await;
        }
        self.lxc.console(&ct, size)
    }
}
