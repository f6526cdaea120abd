//! Networks of a project: managed bridges and the host's interfaces.

use super::types::{Network, NetworkCreate, NetworkLease, NetworkState, NetworkUpdate};
use super::{BackendError, Listing};
use crate::names::{NetworkName, ProjectName};

#[async_trait::async_trait]
pub trait Networks: Send + Sync {
    async fn list_networks(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<Network>, BackendError>;

    /// The network and its ETag.
    async fn get_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<(Network, Option<String>), BackendError>;

    async fn create_network(
        &self,
        project: &ProjectName,
        req: &NetworkCreate,
    ) -> Result<(), BackendError>;

    /// `replace`: PUT rather than PATCH.
    async fn update_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
        update: &NetworkUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError>;

    async fn delete_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<(), BackendError>;

    async fn network_state(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<NetworkState, BackendError>;

    async fn network_leases(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<Vec<NetworkLease>, BackendError>;
}
