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
    /// The database refused or dropped the watch's last connection.
    away: AtomicBool,
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
            away: AtomicBool::new(false),
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

    /// Records the database's count `n` as seen: a difference from `last`
    /// (or a first sight) counts as a change.
    fn seen(&self, n: i64, last: &mut Option<i64>) {
        if *last != Some(n) {
            auth_epoch::changed();
            *last = Some(n);
        }
        self.watching.store(true, Ordering::SeqCst);
        self.away.store(false, Ordering::SeqCst);
    }

    /// The count could not be read: nothing kept is trusted until it can,
    /// and whatever was missed meanwhile counts as a change. `away`: the
    /// database refused or dropped the connection (not merely slow).
    fn lost(&self, error: &dyn std::fmt::Display, away: bool, last: &mut Option<i64>) {
        if self.watching.swap(false, Ordering::SeqCst) {
            tracing::warn!(error = %error, "checking for account changes failed; callers are read from the database until it works again");
        }
        if away && !self.away.swap(true, Ordering::SeqCst) {
            tracing::warn!(error = %error, "the user database is away; API requests answer 503 at once until it is back");
        }
        *last = None;
    }

    /// The user database refused or dropped the last connection made to
    /// watch it: every request would wait for the pool's timeout, so the
    /// API answers 503 at once instead (`api::availability`).
    pub fn database_away(&self) -> bool {
        self.away.load(Ordering::SeqCst)
    }
}

/// Keeps `view` current on SQLite: the count read through the pool every
/// `WATCH_EVERY` (a file database is not "away"; a failed read only stops
/// the view from being trusted). Ends when `alive` says so.
pub async fn watch_sqlite(view: impl Fn() -> Option<(Arc<AuthView>, AnyPool)>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tick.tick().await;
        let Some((view, pool)) = view() else { break };
        match auth_epoch::stored(&pool, Dialect::Sqlite).await {
            Ok(n) => view.seen(n, &mut last),
            Err(e) => view.lost(&e, false, &mut last),
        }
    }
}

/// Keeps `view` current on PostgreSQL, on connections of its own (so that
/// a full pool never delays it): `lxgate_auth` notifications as they come,
/// and the count every `WATCH_EVERY` (a notification sent while the
/// listening connection was down is lost; the count is not). A refused or
/// dropped connection marks the database away. Ends when `view` gives none.
pub async fn watch_postgres(url: String, view: impl Fn() -> Option<Arc<AuthView>>) {
    use sqlx::Connection;
    use sqlx::postgres::{PgConnection, PgListener};
    let mut last = None;
    let mut listener: Option<PgListener> = None;
    let mut conn: Option<PgConnection> = None;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some(v) = view() {
        if conn.is_none() {
            match tokio::time::timeout(CONNECT_WITHIN, PgConnection::connect(&url)).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => v.lost(&e, true, &mut last),
                Err(e) => v.lost(&e, true, &mut last),
            }
        }
        if conn.is_some() && listener.is_none() {
            let connected = tokio::time::timeout(CONNECT_WITHIN, async {
                let mut l = PgListener::connect(&url).await?;
                l.listen("lxgate_auth").await?;
                Ok::<_, sqlx::Error>(l)
            })
            .await;
            match connected {
                // Anything changed while it was not listening is unknown:
                // the count read next says.
                Ok(Ok(l)) => listener = Some(l),
                Ok(Err(e)) => v.lost(&e, true, &mut last),
                Err(e) => v.lost(&e, true, &mut last),
            }
        }
        let (Some(c), Some(l)) = (conn.as_mut(), listener.as_mut()) else {
            drop(v);
            tokio::time::sleep(WATCH_EVERY).await;
            continue;
        };
        tokio::select! {
            // `try_recv` is cancel-safe: a tick loses no notification.
            got = l.try_recv() => match got {
                Ok(Some(_)) => auth_epoch::changed(),
                Ok(None) => {
                    v.lost(&"the notification connection was lost", true, &mut last);
                    listener = None;
                }
                Err(e) => {
                    v.lost(&e, true, &mut last);
                    listener = None;
                }
            },
            _ = tick.tick() => {
                let read = tokio::time::timeout(
                    CONNECT_WITHIN,
                    sqlx::query_scalar::<_, i64>("SELECT last_value FROM auth_epoch").fetch_one(c),
                )
                .await;
                match read {
                    Ok(Ok(n)) => v.seen(n, &mut last),
                    Ok(Err(e)) => {
                        v.lost(&e, true, &mut last);
                        conn = None;
                    }
                    // Slow is not away; the connection is made afresh.
                    Err(e) => {
                        v.lost(&e, false, &mut last);
                        conn = None;
                    }
                }
            }
        }
    }
}

/// How long connecting to (or reading the count from) the database may
/// take before the watch gives up on that attempt.
const CONNECT_WITHIN: Duration = Duration::from_secs(2);
