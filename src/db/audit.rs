//! The `audit_log` table: every mutating API request, who made it and how it ended.

use serde::Serialize;
use sqlx::{AnyPool, FromRow};
use utoipa::ToSchema;

#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
pub struct AuditRow {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub username: Option<String>,
    pub client_ip: Option<String>,
    pub method: String,
    pub path: String,
    /// The matched route template, e.g. `/api/v1/users/{username}`.
    pub route: Option<String>,
    pub project: Option<String>,
    pub status: i64,
    pub request_id: String,
    /// What the change set, where lxgate records it (a project's instance
    /// policy: `restricted`, the allow lists).
    pub detail: Option<String>,
    /// How the caller authenticated: `bearer`, `pat` (a personal access
    /// token), `ticket`, `query_token`, `password` (login), `refresh_token`;
    /// none when it did not.
    pub auth_method: Option<String>,
    /// The id of the personal access token the request was made with
    /// (also for a ticket or `?token=` that was one).
    pub token_id: Option<String>,
}

/// Put into a response's extensions by a handler: recorded as the audit
/// entry's `detail`.
#[derive(Debug, Clone)]
pub struct Detail(pub String);

pub struct NewEntry<'a> {
    pub at: i64,
    pub username: Option<&'a str>,
    pub client_ip: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub project: Option<&'a str>,
    pub status: u16,
    pub request_id: &'a str,
    pub detail: Option<&'a str>,
    pub auth_method: Option<&'a str>,
    pub token_id: Option<&'a str>,
}

pub async fn insert(pool: &AnyPool, e: NewEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (at, username, client_ip, method, path, route, project, status, request_id, detail, auth_method, token_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(e.at)
    .bind(e.username)
    .bind(e.client_ip)
    .bind(e.method)
    .bind(e.path)
    .bind(e.route)
    .bind(e.project)
    .bind(i64::from(e.status))
    .bind(e.request_id)
    .bind(e.detail)
    .bind(e.auth_method)
    .bind(e.token_id)
    .execute(pool)
    .await
    .map(|_| ())
}

#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub user: Option<&'a str>,
    pub project: Option<&'a str>,
    pub since: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

/// Newest first. Optional filters are expressed in SQL so both dialects
/// share one statement.
pub async fn list(pool: &AnyPool, f: &Filter<'_>) -> Result<(Vec<AuditRow>, i64), sqlx::Error> {
    const WHERE: &str = "WHERE ($1 IS NULL OR username = $1)
          AND ($2 IS NULL OR project = $2)
          AND ($3 IS NULL OR at >= $3)";
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, at, username, client_ip, method, path, route, project, status, request_id, detail, auth_method, token_id
         FROM audit_log {WHERE} ORDER BY id DESC LIMIT $4 OFFSET $5"
    )))
    .bind(f.user)
    .bind(f.project)
    .bind(f.since)
    .bind(f.limit)
    .bind(f.offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM audit_log {WHERE}"
    )))
    .bind(f.user)
    .bind(f.project)
    .bind(f.since)
    .fetch_one(pool)
    .await?;
    Ok((rows, total))
}

/// Deletes the rows older than `before` (Unix seconds); how many went.
pub async fn purge_before(pool: &AnyPool, before: i64) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM audit_log WHERE at < $1")
        .bind(before)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}
