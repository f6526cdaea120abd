//! Profiles: the configuration instances of a project start from. Every
//! project has `default`, which can be changed but not deleted or renamed.

use super::types::{Profile, ProfileCreate, ProfileUpdate};
use super::{BackendError, Listing};
use crate::names::{ProfileName, ProjectName};

#[async_trait::async_trait]
pub trait Profiles: Send + Sync {
    async fn list_profiles(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<Profile>, BackendError>;

    /// A profile of `project` (as instances there see it) and its ETag.
    async fn get_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
    ) -> Result<(Profile, Option<String>), BackendError>;

    async fn create_profile(
        &self,
        project: &ProjectName,
        req: &ProfileCreate,
    ) -> Result<(), BackendError>;

    /// `replace`: PUT rather than PATCH.
    async fn update_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
        update: &ProfileUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError>;

    /// Only a profile no instance uses (409 otherwise).
    async fn delete_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
    ) -> Result<(), BackendError>;

    /// The instances using the profile keep using it under its new name.
    async fn rename_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
        new_name: &ProfileName,
    ) -> Result<(), BackendError>;
}
