//! Single-use WebSocket tickets, stored in the database so any replica can
//! redeem a ticket another one issued.

use sqlx::{AnyPool, FromRow};

use crate::auth::tokens::{hash_token, now_secs, random_token};

pub const TICKET_TTL_SECS: i64 = 30;

/// What a ticket was issued for, and under which access token.
#[derive(Debug, Clone, FromRow)]
pub struct Ticket {
    pub user_id: String,
    /// The token version of the access token that asked for it.
    pub token_version: i64,
    /// The route it opens (a request path) and the `?project=` it carries.
    pub path: String,
    pub project: Option<String>,
    /// The `jti` of that access token, so its logout reaches the socket.
    pub jti: Option<String>,
    /// The personal access token that asked for it, whose caps and
    /// revocation apply to the socket.
    pub pat_id: Option<String>,
}

/// Issues a ticket bound to `t`'s user, route and access token.
pub async fn issue(pool: &AnyPool, t: &Ticket) -> Result<String, sqlx::Error> {
    let ticket = random_token();
    sqlx::query(
        "INSERT INTO ws_tickets (ticket_hash, user_id, expires_at, token_version, path, project, jti, pat_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(hash_token(&ticket))
    .bind(&t.user_id)
    .bind(now_secs() + TICKET_TTL_SECS)
    .bind(t.token_version)
    .bind(&t.path)
    .bind(&t.project)
    .bind(&t.jti)
    .bind(&t.pat_id)
    .execute(pool)
    .await?;
    Ok(ticket)
}

/// Redeems a ticket: returns what it was issued for once, and never again.
pub async fn redeem(pool: &AnyPool, ticket: &str) -> Result<Option<Ticket>, sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        ticket: Ticket,
        expires_at: i64,
    }
    // DELETE ... RETURNING is atomic, so two concurrent redemptions cannot both win;
    // an expired ticket (or one used on the wrong route) is consumed too, and refused.
    let row: Option<Row> = sqlx::query_as(
        "DELETE FROM ws_tickets WHERE ticket_hash = $1
         RETURNING user_id, token_version, path, project, jti, pat_id, expires_at",
    )
    .bind(hash_token(ticket))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|r| (r.expires_at >= now_secs()).then_some(r.ticket)))
}

pub async fn purge_expired(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM ws_tickets WHERE expires_at < $1")
        .bind(now_secs())
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
