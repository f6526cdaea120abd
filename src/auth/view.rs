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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;
use sqlx::AnyPool;

use crate::auth::rbac::Grants;
use crate::db::{self, auth_epoch};

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
    /// When (ms after `origin`) the database's count was last read; 0:
    /// the last attempt failed. What is kept is trusted only for `TRUST_FOR`
    /// after a read, so a watch that stalls or dies stops trust by itself.
    checked_at: AtomicU64,
    /// When the database last refused or dropped the watch's connection
    /// (0: it has not since the last read).
    away_at: AtomicU64,
    origin: Instant,
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
            checked_at: AtomicU64::new(0),
            away_at: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl AuthView {
    async fn fresh<T: Clone + Send + Sync + 'static>(
        &self,
        cache: &Cache<String, Stamped<T>>,
        key: &str,
    ) -> Option<T> {
        if !self.trusted() {
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

    fn now_ms(&self) -> u64 {
        // +1: 0 means "never".
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// The count was read within `TRUST_FOR`.
    fn trusted(&self) -> bool {
        let at = self.checked_at.load(Ordering::SeqCst);
        at != 0 && self.now_ms().saturating_sub(at) < TRUST_FOR.as_millis() as u64
    }

    /// The count was read by a query started at `at` (`now_ms`): trust what
    /// is kept (while its stamps hold) for `TRUST_FOR` from then, not from
    /// the answer, so a slow read cannot stretch it.
    fn seen(&self, at: u64) {
        self.checked_at.store(at, Ordering::SeqCst);
        self.away_at.store(0, Ordering::SeqCst);
    }

    /// The count could not be read: nothing kept is trusted until it is,
    /// and whatever was missed meanwhile counts as a change (`last` is
    /// forgotten). `away`: the database refused or dropped the connection,
    /// rather than being slow or refusing lxgate's credentials.
    fn lost(&self, error: &dyn std::fmt::Display, away: bool, last: &mut Option<i64>) {
        if self.checked_at.swap(0, Ordering::SeqCst) != 0 {
            tracing::warn!(error = %error, "checking for account changes failed; callers are read from the database until it works again");
        }
        if away && self.away_at.swap(self.now_ms(), Ordering::SeqCst) == 0 {
            tracing::warn!(error = %error, "the user database is away; API requests answer 503 at once until it is back");
        }
        *last = None;
    }

    /// The user database refused or dropped the watch's connection within
    /// the last `AWAY_FOR`: every request would wait for the pool's
    /// timeout, so the API answers 503 at once instead
    /// (`api::availability`). Lapses by itself if the watch stops.
    pub fn database_away(&self) -> bool {
        let at = self.away_at.load(Ordering::SeqCst);
        at != 0 && self.now_ms().saturating_sub(at) < AWAY_FOR.as_millis() as u64
    }
}

/// How long a read of the count vouches for what is kept.
const TRUST_FOR: Duration = Duration::from_secs(1);
/// How long one sign of the database being away holds the API at 503 (the
/// watch renews it at every failed attempt, at least every 5 s).
const AWAY_FOR: Duration = Duration::from_secs(10);

/// The database refused or dropped the connection (rather than being slow,
/// full, or refusing lxgate's credentials).
fn refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Compares the database's count `n` with `last`: a difference (or a first
/// sight) counts as a change.
fn compare(n: i64, last: &mut Option<i64>) -> bool {
    let moved = *last != Some(n);
    if moved {
        auth_epoch::changed();
        *last = Some(n);
    }
    moved
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
        let started = view.now_ms();
        match tokio::time::timeout(TRUST_FOR, auth_epoch::sqlite_count(&pool)).await {
            Ok(Ok(n)) => {
                compare(n, &mut last);
                view.seen(started);
            }
            Ok(Err(e)) => view.lost(&e, false, &mut last),
            Err(e) => view.lost(&e, false, &mut last),
        }
    }
}

/// Keeps `view` current on PostgreSQL, on connections of its own (so that
/// a full pool never delays it): the count read every `WATCH_EVERY`, and
/// `lxgate_auth` notifications as they come (milliseconds, where a read
/// waits for its tick).
///
/// A sequence moves before the transaction that moved it commits, so a
/// read that sees it move may come before the change is visible: until
/// every transaction that was running then has ended (the snapshot's
/// `xmin` passes the `xmax` of that read), each read counts as a change
/// again. A refused or dropped connection marks the database away. Ends
/// when `view` gives none.
pub async fn watch_postgres(url: String, view: impl Fn() -> Option<Arc<AuthView>>) {
    use sqlx::Connection;
    use sqlx::postgres::{PgConnection, PgListener};
    let mut last = None;
    // The `xmax` of the read that last saw the count move, and when, while
    // in doubt; given up after `SETTLE_AT_MOST` (xmin is the whole server's:
    // a long transaction elsewhere would hold it back for ever), past which
    // the commit's notification still says it.
    let mut settling: Option<(i64, Instant)> = None;
    let mut listener: Option<PgListener> = None;
    let mut listen_again = Instant::now();
    let mut conn: Option<PgConnection> = None;
    let mut backoff = WATCH_EVERY;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some(v) = view() {
        if conn.is_none() {
            match tokio::time::timeout(CONNECT_WITHIN, PgConnection::connect(&url)).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    backoff = WATCH_EVERY;
                }
                Ok(Err(e)) => {
                    v.lost(&e, refused(&e), &mut last);
                    drop(v);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => {
                    v.lost(&e, false, &mut last);
                    continue;
                }
            }
        }
        // The notifications only hasten what the reads ensure: trying
        // again to listen waits its turn, never the reads.
        if listener.is_none() && Instant::now() >= listen_again {
            listen_again = Instant::now() + Duration::from_secs(5);
            let connected = tokio::time::timeout(CONNECT_WITHIN, async {
                let mut l = PgListener::connect(&url).await?;
                l.listen("lxgate_auth").await?;
                Ok::<_, sqlx::Error>(l)
            })
            .await;
            match connected {
                Ok(Ok(l)) => listener = Some(l),
                Ok(Err(e)) => tracing::debug!(error = %e, "listening for account changes failed"),
                Err(e) => tracing::debug!(error = %e, "listening for account changes timed out"),
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let notified = async {
            match listener.as_mut() {
                // `try_recv` is cancel-safe: a tick loses no notification.
                Some(l) => l.try_recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = notified => match got {
                Ok(Some(_)) => auth_epoch::changed(),
                Ok(None) | Err(_) => {
                    // Lost: notifications sent meanwhile are lost too, which
                    // the reads cover; listen again soon.
                    auth_epoch::changed();
                    listener = None;
                }
            },
            _ = tick.tick() => {
                let started = v.now_ms();
                let read = tokio::time::timeout(
                    CONNECT_WITHIN,
                    auth_epoch::postgres_count(c),
                )
                .await;
                match read {
                    Ok(Ok((n, xmin, xmax))) => {
                        if compare(n, &mut last) {
                            settling = Some((xmax, Instant::now()));
                        } else if let Some((x, since)) = settling {
                            auth_epoch::changed();
                            if xmin >= x || since.elapsed() > SETTLE_AT_MOST {
                                settling = None;
                            }
                        }
                        v.seen(started);
                    }
                    Ok(Err(e)) => {
                        let away = refused(&e);
                        v.lost(&e, away, &mut last);
                        // A connection that still works is kept (a new one
                        // per tick would only churn).
                        if away {
                            conn = None;
                        }
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

/// See `watch_postgres`.
const SETTLE_AT_MOST: Duration = Duration::from_secs(5);

/// How long connecting to (or reading the count from) the database may
/// take before the watch gives up on that attempt.
const CONNECT_WITHIN: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    /// A view whose clock started a minute ago (so that tests can date
    /// reads in the past).
    fn view() -> AuthView {
        AuthView {
            origin: Instant::now() - Duration::from_secs(60),
            ..AuthView::default()
        }
    }

    #[test]
    fn kept_callers_are_trusted_only_after_a_recent_read() {
        let view = view();
        let mut last = Some(1);
        assert!(!view.trusted(), "nothing read yet");
        view.seen(view.now_ms());
        assert!(view.trusted());
        view.lost(&"gone", false, &mut last);
        assert!(!view.trusted());
        assert_eq!(last, None, "what was missed counts as a change");
        assert!(!view.database_away(), "slow is not away");
        view.seen(view.now_ms());
        // A watch that stops reading stops the trust by itself.
        view.checked_at.store(
            view.now_ms() - TRUST_FOR.as_millis() as u64,
            Ordering::SeqCst,
        );
        assert!(!view.trusted());
    }

    #[test]
    fn the_database_is_away_while_refusals_are_recent() {
        let view = view();
        let mut last = None;
        view.lost(&"refused", true, &mut last);
        assert!(view.database_away());
        view.seen(view.now_ms());
        assert!(!view.database_away());
        view.lost(&"refused", true, &mut last);
        view.away_at.store(
            view.now_ms() - AWAY_FOR.as_millis() as u64,
            Ordering::SeqCst,
        );
        assert!(!view.database_away(), "lapses if the watch stops");
    }

    #[test]
    fn only_refused_or_dropped_connections_mean_away() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(refused(&io));
        assert!(!refused(&sqlx::Error::PoolTimedOut));
        assert!(!refused(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn a_moved_count_is_a_change() {
        let before = auth_epoch::local();
        let mut last = None;
        assert!(compare(5, &mut last));
        assert!(!compare(5, &mut last));
        assert!(compare(6, &mut last));
        assert!(auth_epoch::local() >= before + 2);
    }
}
