//! The callers as this server last read them: each user with its grants,
//! and which access tokens were logged out, kept in memory so that an
//! authenticated request that needs no backend needs no database either.
//!
//! Revocation must still reach every request at once, on every replica.
//! What the view holds is trusted only while nothing that authenticates a
//! request has changed since it was read (`db::auth_epoch`): this process's
//! own changes move the local count as they commit; another replica's or a
//! shell command's reach it through the database's count, which triggers
//! keep, announced on PostgreSQL by a notification (milliseconds) and
//! checked every `WATCH_EVERY` in any case. While that check fails (the
//! database is away), the view is not used at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use moka::future::Cache;
use sqlx::AnyPool;

use crate::auth::rbac::Grants;
use crate::db::{self, Dialect, auth_epoch};

/// How often the database's count is compared with the last one seen. A
/// shell command that changes an account waits `SETTLE` before returning,
/// so that its change holds everywhere once it has returned.
pub const WATCH_EVERY: Duration = Duration::from_millis(200);
pub const SETTLE: Duration = Duration::from_millis(1000);

/// A user as authentication needs it (no password hash kept).
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: String,
    pub username: String,
    pub disabled: bool,
    pub token_version: i64,
    pub grants: Grants,
}

impl Caller {
    fn of(user: db::users::UserRow, grants: Grants) -> Self {
        Self {
            disabled: user.is_disabled(),
            id: user.id,
            username: user.username,
            token_version: user.token_version,
            grants,
        }
    }
}

#[derive(Clone)]
struct Stamped<T> {
    epoch: u64,
    value: T,
}

pub struct AuthView {
    users: Cache<String, Stamped<Arc<Caller>>>,
    logged_out: Cache<String, Stamped<bool>>,
    /// The last check of the database's count succeeded.
    watching: AtomicBool,
}

impl Default for AuthView {
    fn default() -> Self {
        Self {
            // The time-to-live is a backstop, not the mechanism.
            users: Cache::builder()
                .max_capacity(50_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            logged_out: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            watching: AtomicBool::new(false),
        }
    }
}

impl AuthView {
    async fn fresh<T: Clone + Send + Sync + 'static>(
        &self,
        cache: &Cache<String, Stamped<T>>,
        key: &str,
    ) -> Option<T> {
        if !self.watching.load(Ordering::SeqCst) {
            return None;
        }
        cache
            .get(key)
            .await
            .filter(|s| s.epoch == auth_epoch::local())
            .map(|s| s.value)
    }

    /// The user `id` with its grants (`None`: no such user).
    pub async fn user(&self, pool: &AnyPool, id: &str) -> Result<Option<Arc<Caller>>, sqlx::Error> {
        if let Some(c) = self.fresh(&self.users, id).await {
            return Ok(Some(c));
        }
        // Read the count before the row: a change committed while reading
        // moves it past what is stamped, so the entry is never trusted.
        let epoch = auth_epoch::local();
        let Some((user, grants)) = db::users::with_grants(pool, id).await? else {
            return Ok(None);
        };
        let caller = Arc::new(Caller::of(user, grants));
        self.users
            .insert(
                id.to_owned(),
                Stamped {
                    epoch,
                    value: caller.clone(),
                },
            )
            .await;
        Ok(Some(caller))
    }

    /// Whether the access token `jti` was logged out.
    pub async fn logged_out(&self, pool: &AnyPool, jti: &str) -> Result<bool, sqlx::Error> {
        if let Some(v) = self.fresh(&self.logged_out, jti).await {
            return Ok(v);
        }
        let epoch = auth_epoch::local();
        let revoked = db::revoked_tokens::is_revoked(pool, jti).await?;
        self.logged_out
            .insert(
                jti.to_owned(),
                Stamped {
                    epoch,
                    value: revoked,
                },
            )
            .await;
        Ok(revoked)
    }

    /// One check of the database's count against `last`: a difference (or
    /// a first sight) counts as a change. A failed check stops the view
    /// from being used until one succeeds.
    pub async fn check(&self, pool: &AnyPool, dialect: Dialect, last: &mut Option<i64>) {
        match auth_epoch::stored(pool, dialect).await {
            Ok(n) => {
                if *last != Some(n) {
                    auth_epoch::changed();
                    *last = Some(n);
                }
                self.watching.store(true, Ordering::SeqCst);
            }
            Err(e) => {
                if self.watching.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "checking for account changes failed; callers are read from the database until it works again");
                }
                // Whatever was missed meanwhile is a change.
                *last = None;
            }
        }
    }
}

/// Listens for PostgreSQL's `lxgate_auth` notifications until `stop` says
/// so; each one (and each reconnection, since notifications sent meanwhile
/// are lost) counts as a change.
pub async fn listen(url: String, alive: impl Fn() -> bool + Send + 'static) {
    use sqlx::postgres::PgListener;
    let mut backoff = Duration::from_millis(200);
    while alive() {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "connecting for account-change notifications failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener.listen("lxgate_auth").await {
            tracing::debug!(error = %e, "listening for account-change notifications failed");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(200);
        auth_epoch::changed();
        loop {
            // Wakes now and then to notice that the server has stopped.
            match tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await {
                Err(_) if !alive() => return,
                Err(_) => {}
                Ok(Ok(Some(_))) => auth_epoch::changed(),
                // The connection was lost (and will be made again).
                Ok(Ok(None)) => auth_epoch::changed(),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "account-change notifications interrupted");
                    auth_epoch::changed();
                    break;
                }
            }
        }
    }
}
