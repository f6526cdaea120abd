//! `/1.0/profiles/{name}` on Incus.

use super::IncusBackend;
use crate::backend::types::Profile;
use crate::backend::{BackendError, Missing, Profiles, ReportMissing};
use crate::names::ProjectName;

#[async_trait::async_trait]
impl Profiles for IncusBackend {
    async fn get_profile(
        &self,
        project: &ProjectName,
        name: &str,
    ) -> Result<Profile, BackendError> {
        self.client
            .query_struct(&["profiles", name], &[("project", project)])
            .await
            .missing(|| Missing::Profile {
                name: name.to_owned(),
            })
            .map(|(p, _)| p)
    }
}
