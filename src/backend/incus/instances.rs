//! `/1.0/instances` on Incus.

use reqwest::Method;
use serde_json::json;

use super::IncusBackend;
use crate::backend::types::{
    Instance, InstanceCreate, InstanceState, InstanceUpdate, Operation, StateChange,
};
use crate::backend::{
    BackendError, Instances, ListScope, Listing, Missing, Operations, ReportMissing,
};
use crate::names::{InstanceName, MemberName, ProjectName};

/// `/1.0/instances/web-1?project=x` -> `web-1`.
pub fn last_segment(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path);
    url_unescape(name)
}

pub(super) fn url_unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn project_query(project: &str) -> [(&'static str, &str); 1] {
    [("project", project)]
}

#[async_trait::async_trait]
impl Instances for IncusBackend {
    async fn list_instances(
        &self,
        scope: ListScope<'_>,
    ) -> Result<Listing<Instance>, BackendError> {
        let mut q: Vec<(&str, &str)> = Vec::new();
        match scope.project {
            Some(p) => q.push(("project", p)),
            None => q.push(("all-projects", "true")),
        }
        if let Some(f) = scope.filter {
            q.push(("filter", f));
        }
        // Kept lists are whole objects; names are read off them.
        let project = scope.project.map(|p| p.as_str());
        if !scope.fresh {
            let full = super::storage::everything(self, &["instances"], &q);
            if let Some(kept) = self.lists.instances(project, scope.filter, full).await {
                let kept = kept?;
                return Ok(super::storage::from_kept(&kept, scope.expand, |i| &i.name));
            }
        }
        q.push(("recursion", if scope.expand { "1" } else { "0" }));
        if scope.expand {
            let (items, _): (Vec<Instance>, _) =
                self.client.query_struct(&["instances"], &q).await?;
            Ok(Listing::Full(items))
        } else {
            let (urls, _): (Vec<String>, _) = self.client.query_struct(&["instances"], &q).await?;
            Ok(Listing::Names(
                urls.iter().map(|u| last_segment(u)).collect(),
            ))
        }
    }

    async fn get_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<(Instance, Option<String>), BackendError> {
        self.client
            .query_struct(&["instances", name], &project_query(project))
            .await
            .missing(|| Missing::instance(name))
    }

    async fn create_instance(
        &self,
        project: &ProjectName,
        req: &InstanceCreate,
        target: Option<&MemberName>,
    ) -> Result<Operation, BackendError> {
        let target = self.placement(target).await?;
        let s = &req.source;
        let mut source = json!({"type": s.kind});
        for (key, value) in [
            ("alias", &s.alias),
            ("fingerprint", &s.fingerprint),
            ("server", &s.server),
            ("protocol", &s.protocol),
            ("source", &s.source),
            ("project", &s.project),
        ] {
            if let Some(v) = value {
                source[key] = json!(v);
            }
        }
        if s.kind == "copy" {
            // Snapshots stay with their instance (the embedded backend
            // copies none either); the API merged the source's config in.
            source["instance_only"] = json!(true);
        }
        let body = json!({
            "name": req.name,
            "type": req.instance_type.as_deref().unwrap_or("container"),
            "source": source,
            "description": req.description.as_deref().unwrap_or_default(),
            "config": req.config,
            "devices": req.devices,
            "profiles": req.profiles.clone().unwrap_or_else(|| vec!["default".into()]),
            "start": req.start,
            "ephemeral": req.ephemeral,
        });
        let mut query = vec![("project", project.as_str())];
        if let Some(t) = &target {
            query.push(("target", t));
        }
        self.client
            .query_operation(Method::POST, &["instances"], &query, Some(&body), None)
            .await
    }

    async fn update_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        update: &InstanceUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<Option<Operation>, BackendError> {
        let body = serde_json::to_value(update).map_err(anyhow::Error::from)?;
        let method = if replace { Method::PUT } else { Method::PATCH };
        let r = self
            .client
            .query(
                method,
                &["instances", name],
                &project_query(project),
                Some(&body),
                if_match,
            )
            .await
            .missing(|| Missing::instance(name))?;
        r.into_maybe_operation(project)
    }

    async fn delete_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        force: bool,
    ) -> Result<Operation, BackendError> {
        if force {
            self.stop_at_once(project, name).await?;
        }
        self.client
            .query_operation(
                Method::DELETE,
                &["instances", name],
                &project_query(project),
                None,
                None,
            )
            .await
            .missing(|| Missing::instance(name))
    }

    async fn rename_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        new_name: &InstanceName,
    ) -> Result<Operation, BackendError> {
        let body = json!({"name": new_name});
        self.client
            .query_operation(
                Method::POST,
                &["instances", name],
                &project_query(project),
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::instance(name))
    }

    async fn instance_state(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<InstanceState, BackendError> {
        self.client
            .query_struct(&["instances", name, "state"], &project_query(project))
            .await
            .missing(|| Missing::instance(name))
            .map(|(s, _)| s)
    }

    async fn change_state(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        change: &StateChange,
    ) -> Result<Operation, BackendError> {
        let body = serde_json::to_value(change).map_err(anyhow::Error::from)?;
        self.client
            .query_operation(
                Method::PUT,
                &["instances", name, "state"],
                &project_query(project),
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::instance(name))
    }
}

impl IncusBackend {
    /// What `incus delete --force` does first: a forced stop, waited for.
    /// An instance already stopped is what was wanted.
    async fn stop_at_once(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<(), BackendError> {
        let stop = json!({"action": "stop", "force": true, "timeout": -1});
        let op = match self
            .client
            .query_operation(
                Method::PUT,
                &["instances", name, "state"],
                &project_query(project),
                Some(&stop),
                None,
            )
            .await
            .missing(|| Missing::instance(name))
        {
            Ok(op) => op,
            Err(BackendError::Conflict(m)) if m.contains("already stopped") => return Ok(()),
            Err(e) => return Err(e),
        };
        let done = Operations::wait_operation(self, &op.id, STOP_WAIT_SECS).await?;
        match done.status_code {
            200 => Ok(()),
            _ if done.err.contains("already stopped") => Ok(()),
            // Still stopping: the delete would meet a running instance.
            103 => Err(BackendError::Conflict(format!(
                "the instance did not stop within {STOP_WAIT_SECS} s; try again"
            ))),
            _ => Err(BackendError::Conflict(format!(
                "could not stop the instance before deleting it: {}",
                done.err
            ))),
        }
    }
}

/// How long a forced stop before a delete may take.
const STOP_WAIT_SECS: u64 = 60;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_urls() {
        assert_eq!(last_segment("/1.0/instances/web-1"), "web-1");
        assert_eq!(last_segment("/1.0/instances/web-1?project=team-a"), "web-1");
    }
}
