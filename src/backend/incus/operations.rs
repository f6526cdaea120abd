//! `/1.0/operations` on Incus.

use reqwest::Method;

use super::IncusBackend;
use crate::backend::types::Operation;
use crate::backend::{BackendError, Operations};

#[async_trait::async_trait]
impl Operations for IncusBackend {
    async fn list_operations(&self, project: Option<&str>) -> Result<Vec<Operation>, BackendError> {
        let mut q: Vec<(&str, &str)> = vec![("recursion", "1")];
        match project {
            Some(p) => q.push(("project", p)),
            None => q.push(("all-projects", "true")),
        }
        // Incus groups operations by status: {"running": [...], "success": [...]}.
        let (groups, _): (std::collections::BTreeMap<String, Vec<Operation>>, _) =
            self.client.query_struct(&["operations"], &q).await?;
        let mut ops: Vec<Operation> = groups.into_values().flatten().collect();
        ops.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(ops)
    }

    async fn get_operation(&self, id: &str) -> Result<Operation, BackendError> {
        self.client
            .query_struct(&["operations", id], &[])
            .await
            .map(|(o, _)| o)
    }

    async fn wait_operation(&self, id: &str, timeout_secs: u64) -> Result<Operation, BackendError> {
        let timeout = timeout_secs.to_string();
        // The HTTP timeout must outlast the wait itself.
        let r = self
            .client
            .query_long(
                Method::GET,
                &["operations", id, "wait"],
                &[("timeout", &timeout)],
                std::time::Duration::from_secs(timeout_secs + 10),
            )
            .await;
        match r {
            Ok(r) => serde_json::from_value::<Operation>(r.envelope.metadata)
                .map_err(|e| BackendError::Upstream(format!("unexpected Incus operation: {e}"))),
            // Incus answers the wait of a failed operation with the failure
            // as an error; the operation itself tells the story.
            Err(
                BackendError::Upstream(_) | BackendError::BadRequest(_) | BackendError::Conflict(_),
            ) => self.get_operation(id).await,
            Err(e) => Err(e),
        }
    }

    async fn cancel_operation(&self, id: &str) -> Result<(), BackendError> {
        self.client
            .query(Method::DELETE, &["operations", id], &[], None, None)
            .await
            .map(|_| ())
    }
}
