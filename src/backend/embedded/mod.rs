//! The embedded backend: lxgate drives LXC and QEMU on this host itself.
//!
//! This module so far detects what the host can run; the drivers follow.

mod detect;

use std::path::PathBuf;

use tokio::sync::OnceCell;

use super::{Backend, BackendError, DriverInfo, SystemInfo};
use crate::config::VmAccel;

pub struct EmbeddedBackend {
    data_dir: PathBuf,
    accel: VmAccel,
    drivers: OnceCell<Vec<DriverInfo>>,
}

impl EmbeddedBackend {
    pub fn new(data_dir: PathBuf, accel: VmAccel) -> Self {
        Self {
            data_dir,
            accel,
            drivers: OnceCell::new(),
        }
    }

    /// Driver facts do not change while lxgate runs, so they are probed once.
    async fn drivers(&self) -> &[DriverInfo] {
        self.drivers
            .get_or_init(|| async { vec![detect::lxc().await, detect::qemu(self.accel).await] })
            .await
    }
}

#[async_trait::async_trait]
impl Backend for EmbeddedBackend {
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
        let drivers = self.drivers().await.to_vec();
        let has = |name: &str| drivers.iter().any(|d| d.name == name && d.available);
        let features = [
            ("containers", has("lxc")),
            ("virtual_machines", has("qemu")),
            // The instance API arrives with the embedded drivers; until then a
            // dashboard must not offer it.
            ("instances_api", false),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(SystemInfo {
            backend: self.kind().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: "v1".to_owned(),
            server_version: detect::kernel_release().await,
            drivers,
            features,
        })
    }
}
