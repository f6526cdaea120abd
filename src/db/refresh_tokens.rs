//! The `refresh_tokens` table: hashed, grouped in rotation families.

use sqlx::{AnyPool, FromRow};

use crate::auth::tokens::{hash_token, now_secs, random_token};

#[derive(Debug, Clone, FromRow)]
pub struct RefreshRow {
    pub id: String,
    pub user_id: String,
    pub family_id: String,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// Creates a refresh token in `family` (a new family when `None`) and returns
/// the clear token, which is never stored.
pub async fn issue(
    pool: &AnyPool,
    user_id: &str,
    family: Option<&str>,
    ttl_secs: i64,
) -> Result<(String, String), sqlx::Error> {
    let token = random_token();
    let id = uuid::Uuid::new_v4().to_string();
    let family = family.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let now = now_secs();
    sqlx::query(
        "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(user_id)
    .bind(&family)
    .bind(hash_token(&token))
    .bind(now)
    .bind(now + ttl_secs)
    .execute(pool)
    .await?;
    Ok((token, id))
}

pub async fn find(pool: &AnyPool, token: &str) -> Result<Option<RefreshRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, family_id, expires_at, revoked_at FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(hash_token(token))
    .fetch_optional(pool)
    .await
}

/// Marks the token spent. False when another request spent it first, which
/// the caller treats as reuse.
pub async fn spend(pool: &AnyPool, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
    )
    .bind(now_secs())
    .bind(id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn link_replacement(
    pool: &AnyPool,
    id: &str,
    replaced_by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE refresh_tokens SET replaced_by = $1 WHERE id = $2")
        .bind(replaced_by)
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn revoke_family(pool: &AnyPool, family_id: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now_secs())
    .bind(family_id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Drops tokens that expired more than a day ago (kept a while for reuse detection).
pub async fn purge_expired(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
        .bind(now_secs() - 86_400)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
