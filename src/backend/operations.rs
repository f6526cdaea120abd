//! Operations: the background work a request started (Incus's objects).

use super::BackendError;
use super::types::Operation;

#[async_trait::async_trait]
pub trait Operations: Send + Sync {
    /// Operations in `project`, or in every project when `None`.
    async fn list_operations(&self, project: Option<&str>) -> Result<Vec<Operation>, BackendError>;

    async fn get_operation(&self, id: &str) -> Result<Operation, BackendError>;

    /// Waits up to `timeout_secs` and returns the operation, finished or not.
    async fn wait_operation(&self, id: &str, timeout_secs: u64) -> Result<Operation, BackendError>;

    async fn cancel_operation(&self, id: &str) -> Result<(), BackendError>;
}
