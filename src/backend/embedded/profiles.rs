//! Profiles on the embedded backend: there is one, `default`.

use super::{EmbeddedBackend, instances};
use crate::backend::types::Profile;
use crate::backend::{BackendError, Missing, Profiles};
use crate::names::{ProfileName, ProjectName};

#[async_trait::async_trait]
impl Profiles for EmbeddedBackend {
    /// The embedded backend has one profile, `default`: the root disk.
    async fn get_profile(
        &self,
        _project: &ProjectName,
        name: &ProfileName,
    ) -> Result<Profile, BackendError> {
        match name.as_str() {
            "default" => Ok(Profile {
                name: name.to_string(),
                description: "Default profile (the root disk)".to_owned(),
                config: Default::default(),
                devices: instances::root_device(),
            }),
            _ => Err(BackendError::NotFound(Missing::Profile {
                name: name.to_string(),
            })),
        }
    }
}
