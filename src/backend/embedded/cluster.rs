//! The embedded backend drives the one host it runs on (DESIGN §10): that
//! host is the one member of a cluster of one.

use super::{EmbeddedBackend, host};
use crate::backend::types::{ClusterMember, Operation};
use crate::backend::{BackendError, Cluster, MemberAction, Missing};
use crate::names::MemberName;

/// The host as a cluster member.
fn this_host() -> ClusterMember {
    ClusterMember {
        server_name: host::member_name().to_owned(),
        architecture: std::env::consts::ARCH.to_owned(),
        status: "Online".into(),
        message: "Fully operational".into(),
        failure_domain: "default".into(),
        ..Default::default()
    }
}

/// A placement (`?target=`) is only ever on the host itself: any other
/// member is 404, as on a cluster that lacks it.
pub(super) fn check_target(target: Option<&MemberName>) -> Result<(), BackendError> {
    match target {
        Some(t) if t.as_str() != host::member_name() => {
            Err(BackendError::NotFound(Missing::member(t)))
        }
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl Cluster for EmbeddedBackend {
    async fn list_members(&self) -> Result<Vec<ClusterMember>, BackendError> {
        Ok(vec![this_host()])
    }

    async fn get_member(
        &self,
        name: &MemberName,
    ) -> Result<(ClusterMember, Option<String>), BackendError> {
        check_target(Some(name))?;
        Ok((this_host(), None))
    }

    async fn change_member_state(
        &self,
        name: &MemberName,
        action: MemberAction,
        _mode: Option<&str>,
    ) -> Result<Operation, BackendError> {
        check_target(Some(name))?;
        Err(BackendError::NotSupported(format!(
            "cannot {} `{name}`: the embedded backend drives the one host it runs on, there is no other member to move its instances to (an Incus cluster behind lxgate can)",
            action.as_str()
        )))
    }
}
