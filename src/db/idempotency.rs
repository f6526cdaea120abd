//! The `idempotency_keys` table: what a POST sent with an `Idempotency-Key`
//! answered, so that its retry answers the same without doing the work
//! twice (across replicas: the primary key decides who does it).

use sqlx::{AnyPool, FromRow};

/// How long a key is remembered.
pub const TTL_SECS: i64 = 86_400;
/// How long a request may hold its key before a retry may take it over
/// (the replica that ran it died before it answered).
const LOCK_SECS: i64 = 600;

#[derive(Debug, Clone, FromRow)]
struct KeyRow {
    request_hash: String,
    locked_until: Option<i64>,
    status: Option<i64>,
    location: Option<String>,
    body: Option<String>,
}

/// What a request with a key may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First with this key (or taking over an abandoned one): do the work.
    Fresh,
    /// Answered before: answer the same.
    Replay {
        status: u16,
        location: Option<String>,
        body: String,
    },
    /// The first request with this key is still running.
    InFlight,
    /// The key was used with another request.
    Mismatch,
}

/// Claims `key` of `user_id` for a request hashing to `hash`, at `now`.
pub async fn claim(
    pool: &AnyPool,
    user_id: &str,
    key: &str,
    hash: &str,
    now: i64,
) -> Result<Claim, sqlx::Error> {
    // Forget this user's expired keys (this one too, if it expired).
    sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND created_at < $2")
        .bind(user_id)
        .bind(now - TTL_SECS)
        .execute(pool)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, created_at, locked_until)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, idem_key) DO NOTHING",
    )
    .bind(user_id)
    .bind(key)
    .bind(hash)
    .bind(now)
    .bind(now + LOCK_SECS)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let Some(row): Option<KeyRow> = sqlx::query_as(
        "SELECT request_hash, locked_until, status, location, body FROM idempotency_keys
         WHERE user_id = $1 AND idem_key = $2",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(pool)
    .await?
    else {
        // Released between the insert and the read: the caller retries.
        return Ok(Claim::InFlight);
    };
    if row.request_hash != hash {
        return Ok(Claim::Mismatch);
    }
    if let (Some(status), Some(body)) = (row.status, row.body) {
        return Ok(Claim::Replay {
            status: u16::try_from(status).unwrap_or(200),
            location: row.location,
            body,
        });
    }
    match row.locked_until {
        Some(until) if until > now => Ok(Claim::InFlight),
        // Abandoned: whoever moves the lock first takes it over.
        until => {
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET locked_until = $1
                 WHERE user_id = $2 AND idem_key = $3 AND status IS NULL
                   AND COALESCE(locked_until, 0) = $4",
            )
            .bind(now + LOCK_SECS)
            .bind(user_id)
            .bind(key)
            .bind(until.unwrap_or(0))
            .execute(pool)
            .await?
            .rows_affected();
            Ok(if taken == 1 {
                Claim::Fresh
            } else {
                Claim::InFlight
            })
        }
    }
}

/// Stores what the request answered.
pub async fn complete(
    pool: &AnyPool,
    user_id: &str,
    key: &str,
    status: u16,
    location: Option<&str>,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $1, location = $2, body = $3, locked_until = NULL
         WHERE user_id = $4 AND idem_key = $5",
    )
    .bind(i64::from(status))
    .bind(location)
    .bind(body)
    .bind(user_id)
    .bind(key)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Forgets a key whose request failed: a retry does the work again.
pub async fn release(pool: &AnyPool, user_id: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2")
        .bind(user_id)
        .bind(key)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Forgets every key older than `TTL_SECS` (the janitor's sweep; `claim`
/// also forgets its user's).
pub async fn purge_expired(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(crate::auth::tokens::now_secs() - TTL_SECS)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
