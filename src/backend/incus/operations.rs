//! `/1.0/operations` on Incus.

use reqwest::Method;

use super::IncusBackend;
use super::instances::url_unescape;
use crate::backend::types::Operation;
use crate::backend::{BackendError, Missing, Operations, ReportMissing};

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
        for op in &mut ops {
            op.project = match project {
                Some(p) => p.to_owned(),
                None => project_of(op),
            };
        }
        ops.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(ops)
    }

    async fn get_operation(&self, id: &str) -> Result<Operation, BackendError> {
        let (mut op, _): (Operation, _) = self
            .client
            .query_struct(&["operations", id], &[])
            .await
            .missing(|| Missing::operation(id))?;
        op.project = project_of(&op);
        self.seen_end(&op);
        Ok(op)
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
            .await
            .missing(|| Missing::operation(id));
        match r {
            Ok(r) => {
                let mut op = r.envelope.metadata::<Operation>().map_err(|e| {
                    BackendError::Upstream(format!("unexpected Incus operation: {e}"))
                })?;
                op.project = project_of(&op);
                self.seen_end(&op);
                Ok(op)
            }
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
            .missing(|| Missing::operation(id))
            .map(|_| ())
    }
}

impl IncusBackend {
    /// A background task seen ended: what it changed shows in the next list
    /// read, even before its events come.
    fn seen_end(&self, op: &Operation) {
        if op.class == "task" && op.status_code >= 200 && !is_exec(op) {
            let only_instances = op.resources.keys().all(|k| k == "instances");
            let segment = if only_instances { "instances" } else { "other" };
            self.lists.wrote(&[segment], &op.project);
        }
    }
}

/// A recorded command (Incus's description for them): it changes nothing
/// listed.
fn is_exec(op: &Operation) -> bool {
    op.description == super::list_cache::EXEC_DESCRIPTION
}

/// The project an Incus operation belongs to, read from its resource URLs
/// (`/1.0/instances/x?project=p`; no project parameter means `default`).
fn project_of(op: &Operation) -> String {
    op.resources
        .values()
        .flatten()
        .find_map(|url| {
            let q = url.split_once('?')?.1;
            q.split('&')
                .find_map(|kv| kv.strip_prefix("project="))
                .map(url_unescape)
        })
        .unwrap_or_else(|| "default".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_are_read_from_resource_urls() {
        let mut op = Operation::default();
        op.resources.insert(
            "instances".into(),
            vec!["/1.0/instances/x?project=team-a".into()],
        );
        assert_eq!(project_of(&op), "team-a");
        assert_eq!(project_of(&Operation::default()), "default");
    }
}
