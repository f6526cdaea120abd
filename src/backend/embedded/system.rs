//! The embedded backend as a whole: `DATA_DIR`, and what this host's
//! drivers can do (`system/info`).

use super::inventory::db;
use super::storage::DEFAULT_POOL;
use super::{EmbeddedBackend, bridge, detect, dhcp, host, idmap};
use crate::backend::types::SystemResources;
use crate::backend::{BackendError, System, SystemInfo};
use crate::db::embedded as inv;

#[async_trait::async_trait]
impl System for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let meta = tokio::fs::metadata(&self.data_dir).await.map_err(|e| {
            BackendError::Unavailable(format!("DATA_DIR {}: {e}", self.data_dir.display()))
        })?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(BackendError::Unavailable(format!(
                "DATA_DIR {} is not a directory",
                self.data_dir.display()
            )))
        }
    }

    async fn info(&self) -> Result<SystemInfo, BackendError> {
        let mut drivers = self.drivers().await.to_vec();
        let has = |name: &str| drivers.iter().any(|d| d.name == name && d.available);
        // Not cached with the drivers: an admin who adds the id range or
        // opens DATA_DIR sees it here without a restart (10 s later at most).
        let unprivileged = if has("lxc") {
            Some(self.unprivileged_range_cached().await)
        } else {
            None
        };
        let features = [
            ("containers", has("lxc")),
            (
                "unprivileged_containers",
                matches!(unprivileged, Some(Ok(_))),
            ),
            ("network_bridges", bridge::can_manage().is_ok()),
            (
                "network_dhcp",
                bridge::can_manage().is_ok() && dhcp::available(),
            ),
            ("virtual_machines", has("qemu")),
            ("instances_api", has("lxc") || has("qemu")),
            ("project_restrictions", false),
            ("profiles", true),
            // Profiles hold the root disk only: volumes and NICs go on
            // instances.
            ("profile_devices", false),
            // One host: no placement choice, nothing to evacuate to.
            ("clustered", false),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(u) = &unprivileged
            && let Some(lxc) = drivers.iter_mut().find(|d| d.name == "lxc")
        {
            lxc.detail = Some(idmap::describe(u, self.lxc.apparmor().await));
        }
        Ok(SystemInfo {
            backend: self.kind().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: "v1".to_owned(),
            server_version: detect::kernel_release().await,
            drivers,
            features,
        })
    }

    /// Read from /proc, /sys and `statvfs` of each pool's directory, on a
    /// blocking thread.
    async fn resources(&self) -> Result<SystemResources, BackendError> {
        let mut rows = vec![self.pool_row(DEFAULT_POOL).await?];
        rows.extend(inv::list_pools(&self.pool).await.map_err(db)?);
        let pools: Vec<host::PoolDir> = rows
            .iter()
            .map(|r| host::PoolDir {
                name: r.name.clone(),
                driver: r.driver.clone(),
                dir: self.pool_dir(r),
            })
            .collect();
        tokio::task::spawn_blocking(move || host::read(&pools))
            .await
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("resources task: {e}")))?
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("reading /proc: {e}")))
    }
}
