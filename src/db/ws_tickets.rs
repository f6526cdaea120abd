//! Single-use WebSocket tickets, stored in the database so any replica can
//! redeem a ticket another one issued.

use sqlx::AnyPool;

use crate::auth::tokens::{hash_token, now_secs, random_token};

pub const TICKET_TTL_SECS: i64 = 30;

/// Issues a ticket for `user_id`, under the token version of the access
/// token that asked for it.
pub async fn issue(
    pool: &AnyPool,
    user_id: &str,
    token_version: i64,
) -> Result<String, sqlx::Error> {
    let ticket = random_token();
    sqlx::query(
        "INSERT INTO ws_tickets (ticket_hash, user_id, expires_at, token_version) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash_token(&ticket))
    .bind(user_id)
    .bind(now_secs() + TICKET_TTL_SECS)
    .bind(token_version)
    .execute(pool)
    .await?;
    Ok(ticket)
}

/// Redeems a ticket: returns its user id and token version once, and never
/// again.
pub async fn redeem(pool: &AnyPool, ticket: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
    // DELETE ... RETURNING is atomic, so two concurrent redemptions cannot both win;
    // an expired ticket is consumed too, and refused.
    let row: Option<(String, i64, i64)> = sqlx::query_as(
        "DELETE FROM ws_tickets WHERE ticket_hash = $1 RETURNING user_id, expires_at, token_version",
    )
    .bind(hash_token(ticket))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(user, expires_at, tv)| (expires_at >= now_secs()).then_some((user, tv))))
}

pub async fn purge_expired(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM ws_tickets WHERE expires_at < $1")
        .bind(now_secs())
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
