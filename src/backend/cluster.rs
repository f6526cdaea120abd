//! The servers behind lxgate: an Incus cluster's members, or the one
//! server that is not clustered (the embedded backend's host).

use super::BackendError;
use super::types::{ClusterMember, Operation};
use crate::names::MemberName;

/// What a member's state change asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberAction {
    /// Move (or stop) the member's instances and take no new ones.
    Evacuate,
    /// Take instances again, and bring back the ones evacuated.
    Restore,
}

impl MemberAction {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberAction::Evacuate => "evacuate",
            MemberAction::Restore => "restore",
        }
    }
}

#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// Every member, with its status.
    async fn list_members(&self) -> Result<Vec<ClusterMember>, BackendError>;

    /// One member and its ETag.
    async fn get_member(
        &self,
        name: &MemberName,
    ) -> Result<(ClusterMember, Option<String>), BackendError>;

    /// Evacuates or restores a member in the background. `mode` (evacuate
    /// only) is one of `types::EVACUATION_MODES`, checked by the caller.
    async fn change_member_state(
        &self,
        name: &MemberName,
        action: MemberAction,
        mode: Option<&str>,
    ) -> Result<Operation, BackendError>;
}
