//! Access tokens ended by logout before their expiry, by `jti`. Kept in the
//! database so the logout holds on every replica; a row is dropped once its
//! token would have expired anyway.

use sqlx::AnyPool;

use crate::auth::tokens::{LEEWAY_SECS, now_secs};

/// Ends the access token `jti` (of `user_id`, valid until `expires_at`).
pub async fn revoke(
    pool: &AnyPool,
    jti: &str,
    user_id: &str,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(user_id)
    .bind(expires_at)
    .execute(pool)
    .await?;
    super::auth_epoch::changed();
    Ok(())
}

pub async fn is_revoked(pool: &AnyPool, jti: &str) -> Result<bool, sqlx::Error> {
    let row: Option<i64> =
        sqlx::query_scalar("SELECT expires_at FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(pool)
            .await?;
    Ok(row.is_some())
}

/// Which of `jtis` are revoked (for the open-socket watcher).
pub async fn revoked_among(pool: &AnyPool, jtis: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let mut out = Vec::new();
    // Bounded statements: a few hundred binds at a time.
    for chunk in jtis.chunks(500) {
        let sql = format!(
            "SELECT jti FROM revoked_tokens WHERE jti IN ({})",
            super::placeholders(1, chunk.len())
        );
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
        for j in chunk {
            q = q.bind(j);
        }
        out.extend(q.fetch_all(pool).await?);
    }
    Ok(out)
}

/// Drops entries whose token no longer verifies anyway (past `exp` and the
/// leeway verification allows).
pub async fn purge_expired(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
        .bind(now_secs() - LEEWAY_SECS as i64 - 1)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
