//! The `operations` table: who started which backend operation, in which project.

use sqlx::{AnyPool, FromRow};

use crate::auth::tokens::now_secs;

#[derive(Debug, Clone, FromRow)]
pub struct OperationRow {
    pub id: String,
    pub project: String,
    pub user_id: Option<String>,
    pub username: String,
    pub action: String,
    pub resource: Option<String>,
    pub created_at: i64,
    pub auth_method: Option<String>,
    pub token_id: Option<String>,
    /// How it ended, once lxgate saw it end (`status_code` 200, 400, 401).
    pub status_code: Option<i64>,
    pub err: Option<String>,
    pub finished_at: Option<i64>,
    /// An exec's exit code (`metadata.return`).
    pub exit_code: Option<i64>,
}

pub struct NewOperation<'a> {
    pub id: &'a str,
    pub project: &'a str,
    pub user_id: &'a str,
    pub username: &'a str,
    pub action: &'a str,
    pub resource: Option<&'a str>,
    pub auth_method: &'a str,
    pub token_id: Option<&'a str>,
}

const COLUMNS: &str = "id, project, user_id, username, action, resource, created_at, auth_method, token_id, \
     status_code, err, finished_at, exit_code";

pub async fn record(pool: &AnyPool, op: NewOperation<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO operations (id, project, user_id, username, action, resource, created_at, auth_method, token_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
    )
    .bind(op.id)
    .bind(op.project)
    .bind(op.user_id)
    .bind(op.username)
    .bind(op.action)
    .bind(op.resource)
    .bind(now_secs())
    .bind(op.auth_method)
    .bind(op.token_id)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records how operation `id` ended (the first end seen counts).
pub async fn finish(
    pool: &AnyPool,
    id: &str,
    status_code: i64,
    err: &str,
    exit_code: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE operations SET status_code = $2, err = $3, finished_at = $4, exit_code = $5
         WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(id)
    .bind(status_code)
    .bind(err)
    .bind(now_secs())
    .bind(exit_code)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Forgets records older than `days` (the janitor's sweep): the outcome of
/// an operation is kept that long after it started.
pub async fn purge_older_than(pool: &AnyPool, days: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM operations WHERE created_at < $1")
        .bind(now_secs() - days * 86_400)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn get(pool: &AnyPool, id: &str) -> Result<Option<OperationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM operations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Records for many operations at once (for listings).
pub async fn get_many(pool: &AnyPool, ids: &[String]) -> Result<Vec<OperationRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM operations WHERE id IN ({})",
        super::placeholders(1, ids.len())
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(id);
    }
    q.fetch_all(pool).await
}
