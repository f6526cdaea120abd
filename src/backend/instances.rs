//! Instances: containers and virtual machines.

use super::types::{
    Instance, InstanceCreate, InstanceState, InstanceUpdate, Operation, StateChange,
};
use super::{BackendError, ListScope, Listing};
use crate::names::{InstanceName, MemberName, ProjectName};

#[async_trait::async_trait]
pub trait Instances: Send + Sync {
    async fn list_instances(&self, scope: ListScope<'_>)
    -> Result<Listing<Instance>, BackendError>;

    /// The instance and its ETag.
    async fn get_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<(Instance, Option<String>), BackendError>;

    /// `target`: the cluster member to place the instance on (checked: 404
    /// when there is no such member); the backend's choice when `None`.
    async fn create_instance(
        &self,
        project: &ProjectName,
        req: &InstanceCreate,
        target: Option<&MemberName>,
    ) -> Result<Operation, BackendError>;

    /// `replace`: PUT (full replacement) rather than PATCH. Returns the
    /// operation when the backend does the change in the background.
    async fn update_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        update: &InstanceUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<Option<Operation>, BackendError>;

    /// Deletes a stopped instance; with `force`, a running (or frozen) one
    /// is stopped first, without waiting for a clean shutdown.
    async fn delete_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        force: bool,
    ) -> Result<Operation, BackendError>;

    async fn rename_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        new_name: &InstanceName,
    ) -> Result<Operation, BackendError>;

    async fn instance_state(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<InstanceState, BackendError>;

    async fn change_state(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        change: &StateChange,
    ) -> Result<Operation, BackendError>;
}
