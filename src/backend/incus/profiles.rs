//! `/1.0/profiles/{name}` on Incus.

use super::IncusBackend;
use crate::backend::types::Profile;
use crate::backend::{BackendError, Profiles};

#[async_trait::async_trait]
impl Profiles for IncusBackend {
    async fn get_profile(&self, project: &str, name: &str) -> Result<Profile, BackendError> {
        self.client
            .query_struct(&["profiles", name], &[("project", project)])
            .await
            .map(|(p, _)| p)
    }
}
