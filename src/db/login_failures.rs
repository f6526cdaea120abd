//! The `login_failures` table: failed logins and password changes per
//! username and client IP, so every replica on one PostgreSQL sees the same
//! lockouts (DESIGN §10).

use sqlx::AnyPool;

/// When (Unix seconds) `username` may try again from `ip`, if it is locked.
pub async fn locked_until(
    pool: &AnyPool,
    username: &str,
    ip: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT locked_until FROM login_failures WHERE username = $1 AND client_ip = $2",
    )
    .bind(username)
    .bind(ip)
    .fetch_optional(pool)
    .await
}

/// Counts one failure (failures older than `window_start` no longer count)
/// and returns the count.
pub async fn record_failure(
    pool: &AnyPool,
    username: &str,
    ip: &str,
    now: i64,
    window_start: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO login_failures (username, client_ip, failures, last_at, locked_until)
         VALUES ($1, $2, 1, $3, 0)
         ON CONFLICT (username, client_ip) DO UPDATE SET
           failures = CASE WHEN login_failures.last_at < $4 THEN 1
                           ELSE login_failures.failures + 1 END,
           last_at = $3
         RETURNING failures",
    )
    .bind(username)
    .bind(ip)
    .bind(now)
    .bind(window_start)
    .fetch_one(pool)
    .await
}

pub async fn lock(pool: &AnyPool, username: &str, ip: &str, until: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE login_failures SET locked_until = $3 WHERE username = $1 AND client_ip = $2",
    )
    .bind(username)
    .bind(ip)
    .bind(until)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn clear(pool: &AnyPool, username: &str, ip: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM login_failures WHERE username = $1 AND client_ip = $2")
        .bind(username)
        .bind(ip)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Forgets entries with no recent failure and no running lock.
pub async fn prune(pool: &AnyPool, now: i64, window_start: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM login_failures WHERE last_at < $1 AND locked_until < $2")
        .bind(window_start)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ())
}
