//! One face for the two drivers, so instance logic is written once: LXC
//! for containers, QEMU for virtual machines.

use std::sync::Arc;

use super::driver_types::{Attachments, LxcInfo};
use super::lxc::{Confinement, Lxc};
use super::qemu::Qemu;
use crate::backend::BackendError;
use crate::backend::types::ConfigMap;

#[derive(Clone)]
pub enum Driver {
    Lxc(Arc<Lxc>),
    Qemu(Arc<Qemu>),
}

impl Driver {
    /// The instance's run state; one still being created (no files yet) is
    /// Stopped, one the driver cannot read is Error.
    pub async fn info(&self, host: &str) -> LxcInfo {
        self.info_maybe_cached(host, false).await
    }

    /// A container's state read in the last two seconds, if there is one
    /// (lxgate's own changes clear it); nothing for a VM.
    pub fn recent_info(&self, host: &str) -> Option<LxcInfo> {
        match self {
            Driver::Lxc(lxc) => lxc.recent(host),
            Driver::Qemu(_) => None,
        }
    }

    /// For listings: a container's state may be up to two seconds old
    /// (lxgate's own changes are never served stale).
    pub async fn info_for_listing(&self, host: &str) -> LxcInfo {
        self.info_maybe_cached(host, true).await
    }

    async fn info_maybe_cached(&self, host: &str, cached: bool) -> LxcInfo {
        match self {
            Driver::Lxc(lxc) => {
                // Most of a listing: no file to look at, no process.
                if let Some(info) = cached.then(|| lxc.known(host)).flatten() {
                    return info;
                }
                if !tokio::fs::try_exists(lxc.dir(host).join("config"))
                    .await
                    .unwrap_or(false)
                {
                    return LxcInfo::stopped();
                }
                let info = if cached {
                    lxc.info_cached(host).await
                } else {
                    lxc.info(host).await
                };
                info.unwrap_or_else(|e| {
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

    /// A VM is given its disks and NICs on its command line; a container's
    /// are in its LXC config already.
    pub async fn start(
        &self,
        host: &str,
        config: &ConfigMap,
        devices: &Attachments,
    ) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                let _changing = lxc.changing(host);
                lxc.start(host).await
            }
            Driver::Qemu(q) => q.start(host, config, devices).await,
        }
    }

    pub async fn stop(&self, host: &str, timeout: i64, force: bool) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                let _changing = lxc.changing(host);
                lxc.stop(host, timeout, force).await
            }
            Driver::Qemu(q) => q.stop(host, timeout, force).await,
        }
    }

    pub async fn freeze(&self, host: &str) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                let _changing = lxc.changing(host);
                lxc.freeze(host).await
            }
            Driver::Qemu(q) => q.qmp(host, "stop", None).await.map(|_| ()),
        }
    }

    pub async fn unfreeze(&self, host: &str) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                let _changing = lxc.changing(host);
                lxc.unfreeze(host).await
            }
            Driver::Qemu(q) => q.qmp(host, "cont", None).await.map(|_| ()),
        }
    }

    /// A container stops and starts again; a VM is reset in place.
    pub async fn restart(&self, host: &str, timeout: i64, force: bool) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                let _changing = lxc.changing(host);
                lxc.stop(host, timeout, force).await?;
                lxc.start(host).await
            }
            Driver::Qemu(q) => q.qmp(host, "system_reset", None).await.map(|_| ()),
        }
    }

    pub async fn destroy(&self, host: &str) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                let _changing = lxc.changing(host);
                lxc.destroy(host).await
            }
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
        devices: &Attachments,
        confinement: &Confinement,
    ) -> Result<(), BackendError> {
        match self {
            Driver::Lxc(lxc) => {
                let _changing = lxc.changing(host);
                lxc.rename(host, new_host).await?;
                if let Err(e) = lxc
                    .write_config(new_host, new_name, config, devices, confinement)
                    .await
                {
                    let _ = lxc.rename(new_host, host).await;
                    return Err(e);
                }
                Ok(())
            }
            Driver::Qemu(q) => q.rename(host, new_host).await,
        }
    }
}
