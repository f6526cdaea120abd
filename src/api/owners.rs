//! Who made what, as this replica remembers it, and how a create's record
//! is settled against what the backend has. Apart from the checks
//! (`ownership`) so that the app state and the janitor hold it without
//! depending on the request side.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use sqlx::AnyPool;

use crate::backend::{Backend, BackendError};
use crate::db;
use crate::names::{InstanceName, ProjectName};

/// The instance config key a create through lxgate carries: its
/// reservation's token, by which a create whose end lxgate did not see is
/// told apart from an instance someone else made under the same name.
pub const RESERVATION_KEY: &str = "user.lxgate.reservation";

/// How long a project's setting is believed on this replica without
/// reading it again (a change through this replica applies at once).
const SETTING_FOR: Duration = Duration::from_secs(2);
/// How long an instance's recorded maker is believed by the event relay
/// (one lookup for many subscribers). Kept past a delete on purpose: the
/// events of the delete still reach the one who made it.
const OWNER_FOR: Duration = Duration::from_secs(5);

/// What this replica remembers of projects' settings and instances' makers.
pub struct Ownership {
    pub(crate) settings: Cache<String, bool>,
    pub(crate) owners: Cache<(String, String), Option<String>>,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            settings: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(SETTING_FOR)
                .build(),
            owners: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(OWNER_FOR)
                .build(),
        }
    }
}

impl Ownership {
    /// A project's config changed (or it is gone) through this replica.
    pub async fn forget_project(&self, project: &str) {
        self.settings.invalidate(project).await;
    }

    /// `project/name` was recorded as made by `user_id`.
    pub async fn remember(&self, project: &str, name: &str, user_id: Option<&str>) {
        self.owners
            .insert(
                (project.to_owned(), name.to_owned()),
                user_id.map(str::to_owned),
            )
            .await;
    }
}

/// Makes the record reserved under `token` follow what the backend has.
pub async fn settle(
    backend: &Arc<dyn Backend>,
    pool: &AnyPool,
    project: &str,
    name: &str,
    token: &str,
) {
    let (Ok(p), Ok(n)) = (ProjectName::parse(project), InstanceName::parse(name)) else {
        return;
    };
    let done = match backend.get_instance(&p, &n).await {
        Ok((i, _)) if i.config.get(RESERVATION_KEY).map(String::as_str) == Some(token) => {
            db::instance_owners::confirm(pool, project, name, token)
                .await
                .map(|_| ())
        }
        // Not there, or somebody else's under the same name.
        Ok(_) | Err(BackendError::NotFound(_)) => {
            db::instance_owners::release(pool, project, name, token).await
        }
        // Not known now: the janitor looks again later.
        Err(e) => {
            tracing::info!(error = %e, instance = %name, "a create's reservation is left for later");
            Ok(())
        }
    };
    if let Err(e) = done {
        tracing::warn!(error = %e, instance = %name, "settling a create's reservation failed");
    }
}

/// Settles the reservations of creates older than `older_than_secs` still
/// unsettled (an lxgate that stopped mid-create): the janitor's sweep.
pub async fn settle_stale(backend: &Arc<dyn Backend>, pool: &AnyPool, older_than_secs: i64) {
    let cutoff = crate::auth::tokens::now_secs() - older_than_secs;
    match db::instance_owners::pending_before(pool, cutoff).await {
        Ok(rows) => {
            for (project, name, token) in rows {
                settle(backend, pool, &project, &name, &token).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing unsettled create reservations failed"),
    }
}
