//! `/1.0/cluster/members` on Incus. A server that is not clustered answers
//! those with an error; lxgate shows it as the one member of a cluster of
//! one (as the embedded backend shows its host), read from `/1.0`.

use reqwest::Method;
use serde_json::json;

use super::IncusBackend;
use crate::backend::types::{ClusterMember, Operation};
use crate::backend::{BackendError, Cluster, MemberAction, Missing, ReportMissing};
use crate::names::MemberName;

/// Incus's answer to a cluster request on a server that is not clustered
/// ("Server is not clustered", a 500).
fn not_clustered(e: &BackendError) -> bool {
    matches!(e, BackendError::Upstream(m) if m.contains("not clustered"))
}

impl IncusBackend {
    /// The server as the one member of a cluster of one, or `None` when it
    /// is clustered after all (the error was about something else).
    async fn standalone_member(&self) -> Result<Option<ClusterMember>, BackendError> {
        let env = self.server().await?.environment;
        if env.server_clustered {
            return Ok(None);
        }
        Ok(Some(ClusterMember {
            server_name: env.server_name,
            architecture: env.architectures.into_iter().next().unwrap_or_default(),
            status: "Online".into(),
            message: "Fully operational".into(),
            failure_domain: "default".into(),
            ..Default::default()
        }))
    }

    /// The `target` Incus is to be given for a placement on `target`: the
    /// member's name on a cluster (after checking it exists: 404
    /// `member_not_found` rather than Incus's words about a failed create;
    /// and that it is not evacuated: 409);
    /// none on a server that is not clustered, where the one member is the
    /// only place and Incus refuses any `target`.
    pub(super) async fn placement(
        &self,
        target: Option<&MemberName>,
    ) -> Result<Option<String>, BackendError> {
        let Some(name) = target else { return Ok(None) };
        Ok(match self.find_member(name).await? {
            // Incus answers this one with a 403, which would read as lxgate's
            // own credentials refused: said here as the state it is.
            Found::Clustered(member, _) if member.status == "Evacuated" => {
                return Err(BackendError::Conflict(format!(
                    "cluster member `{name}` is evacuated: it takes nothing new until it is restored"
                )));
            }
            Found::Clustered(..) => Some(name.to_string()),
            Found::Standalone(_) => None,
        })
    }

    /// The member `name` (404 when there is none).
    async fn find_member(&self, name: &MemberName) -> Result<Found, BackendError> {
        match self
            .client
            .query_struct::<ClusterMember>(&["cluster", "members", name], &[])
            .await
        {
            Ok((member, etag)) => Ok(Found::Clustered(member, etag)),
            Err(e) if not_clustered(&e) => match self.standalone_member().await? {
                Some(me) if me.server_name == name.as_str() => Ok(Found::Standalone(me)),
                Some(_) => Err(BackendError::NotFound(Missing::member(name))),
                None => Err(e),
            },
            Err(e) => Err(e).missing(|| Missing::member(name)),
        }
    }
}

/// A member, and whether the server is clustered.
enum Found {
    Clustered(ClusterMember, Option<String>),
    /// The server itself, which is not clustered.
    Standalone(ClusterMember),
}

#[async_trait::async_trait]
impl Cluster for IncusBackend {
    async fn list_members(&self) -> Result<Vec<ClusterMember>, BackendError> {
        match self
            .client
            .query_struct::<Vec<ClusterMember>>(&["cluster", "members"], &[("recursion", "1")])
            .await
        {
            Ok((members, _)) => Ok(members),
            Err(e) if not_clustered(&e) => match self.standalone_member().await? {
                Some(me) => Ok(vec![me]),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn get_member(
        &self,
        name: &MemberName,
    ) -> Result<(ClusterMember, Option<String>), BackendError> {
        Ok(match self.find_member(name).await? {
            Found::Clustered(member, etag) => (member, etag),
            Found::Standalone(me) => (me, None),
        })
    }

    async fn change_member_state(
        &self,
        name: &MemberName,
        action: MemberAction,
        mode: Option<&str>,
    ) -> Result<Operation, BackendError> {
        if let Found::Standalone(_) = self.find_member(name).await? {
            return Err(BackendError::NotSupported(format!(
                "the Incus server behind lxgate is not clustered: `{name}` is its only member, there is nowhere to {} its instances",
                match action {
                    MemberAction::Evacuate => "move",
                    MemberAction::Restore => "bring back",
                }
            )));
        }
        let body = json!({"action": action.as_str(), "mode": mode.unwrap_or_default()});
        // Cluster-wide work: Incus runs it outside any project; lxgate files
        // it under `default`.
        self.client
            .query_operation(
                Method::POST,
                &["cluster", "members", name, "state"],
                &[],
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::member(name))
    }
}
