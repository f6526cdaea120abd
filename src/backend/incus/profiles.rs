//! `/1.0/profiles/{name}` on Incus.

use super::IncusBackend;
use crate::backend::types::Profile;
use crate::backend::{BackendError, Missing, Profiles, ReportMissing};
use crate::names::{ProfileName, ProjectName};

#[async_trait::async_trait]
impl Profiles for IncusBackend {
    async fn get_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
    ) -> Result<Profile, BackendError> {
        self.client
            .query_struct(&["profiles", name.as_str()], &[("project", project)])
            .await
            .missing(|| Missing::Profile {
                name: name.to_string(),
            })
            .map(|(p, _)| p)
    }
}
