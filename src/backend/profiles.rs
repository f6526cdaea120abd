//! Profiles: the configuration instances of a project start from.

use super::BackendError;
use super::types::Profile;
use crate::names::{ProfileName, ProjectName};

#[async_trait::async_trait]
pub trait Profiles: Send + Sync {
    /// A profile of `project` (as instances there see it).
    async fn get_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
    ) -> Result<Profile, BackendError>;
}
