//! The backend as a whole: which one it is, whether it answers, what it can do.

use super::types::SystemResources;
use super::{BackendError, SystemInfo};

#[async_trait::async_trait]
pub trait System: Send + Sync {
    /// `embedded` or `incus`.
    fn kind(&self) -> &'static str;

    /// A cheap reachability check for `/health/ready`.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Drivers, versions and features for `system/info`.
    async fn info(&self) -> Result<SystemInfo, BackendError>;

    /// The host's CPU, memory, disks and the space of each storage pool
    /// (`system/resources`).
    async fn resources(&self) -> Result<SystemResources, BackendError>;
}
