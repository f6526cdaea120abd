//! One face for the two drivers, so instance logic is written once: LXC
//! for containers, QEMU for virtual machines.

use std::sync::Arc;

use super::lxc::{Lxc, LxcInfo};
use super::qemu::Qemu;
use crate::backend::BackendError;
use crate::backend::types::ConfigMap;

pub const VM: &str = "virtual-machine";

#[derive(Clone)]
pub enum Driver {
    Lxc(Arc<Lxc>),
    Qemu(Arc<Qemu>),
}

fn stopped() -> LxcInfo {
    LxcInfo {
        state: "STOPPED".into(),
        ..Default::default()
    }
}

impl Driver {
    /// The instance's run state; one still being created (no files yet) is
    /// Stopped, one the driver cannot read is Error.
    pub async fn info(&self, host: &str) -> LxcInfo {
        match self {
            Driver::Lxc(lxc) => {
                if !tokio::fs::try_exists(lxc.dir(host).join("config"))
                    .await
                    .unwrap_or(false)
                {
                    return stopped();
                }
                lxc.info(host).await.unwrap_or_else(|e| {
                    tracing::warn!(container = %host, error = %e, "lxc-info failed");
                    LxcInfo {
                        state: "ERROR".into(),
                        ..Default::default()
                    }
                })
            }
            Driver::Qemu(q) => q.info(host).await,
        }
    }

    pub async fn start(&self, host: &str, config: &ConfigMap) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => lxc.start(host).await,
            Driver::Qemu(q) => q.start(host, config).await,
        }
    }

    pub async fn stop(&self, host: &str, timeout: i64, force: bool) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => lxc.stop(host, timeout, force).await,
            Driver::Qemu(q) => q.stop(host, timeout, force).await,
        }
    }

    pub async fn freeze(&self, host: &str) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => lxc.freeze(host).await,
            Driver::Qemu(q) => q.qmp(host, "stop", None).await.map(|_| ()),
        }
    }

    pub async fn unfreeze(&self, host: &str) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => lxc.unfreeze(host).await,
            Driver::Qemu(q) => q.qmp(host, "cont", None).await.map(|_| ()),
        }
    }

    /// A container stops and starts again; a VM is reset in place.
    pub async fn restart(
        &self,
        host: &str,
        config: &ConfigMap,
        timeout: i64,
        force: bool,
    ) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                lxc.stop(host, timeout, force).await?;
                lxc.start(host).await
            }
            Driver::Qemu(q) => {
                let _ = config;
                q.qmp(host, "system_reset", None).await.map(|_| ())
            }
        }
    }

    pub async fn destroy(&self, host: &str) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => lxc.destroy(host).await,
            Driver::Qemu(q) => q.destroy(host).await,
        }
    }

    /// Moves the instance's files; a container's config names its rootfs
    /// and hostname, so it is written again.
    pub async fn rename(
        &self,
        host: &str,
        new_host: &str,
        new_name: &str,
        config: &ConfigMap,
    ) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                lxc.rename(host, new_host).await?;
                if let Err(e) = lxc.write_config(new_host, new_name, config).await {
                    let _ = lxc.rename(new_host, host).await;
                    return Err(e);
                }
                Ok(())
            }
            Driver::Qemu(q) => q.rename(host, new_host).await,
        }
    }
}
