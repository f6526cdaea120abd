//! The `project_roles` table: per-project grants.

use sqlx::{AnyPool, FromRow};

use crate::auth::Role;
use crate::auth::tokens::now_secs;

/// Every grant that reaches the users `users` (an SQL condition on a user
/// id column, e.g. `= $1`) selects: their own, and their teams' (a user may
/// appear more than once for a project; the highest role counts). The
/// condition goes into each branch so both use their user index.
pub fn effective(users: &str) -> String {
    format!(
        "SELECT user_id, project, role FROM project_roles WHERE user_id {users}
         UNION ALL
         SELECT tm.user_id, tr.project, tr.role FROM team_members tm
         JOIN team_roles tr ON tr.team_id = tm.team_id WHERE tm.user_id {users}"
    )
}

#[derive(Debug, Clone, FromRow)]
pub struct GrantRow {
    pub user_id: String,
    pub project: String,
    pub role: String,
}

pub async fn set(
    pool: &AnyPool,
    user_id: &str,
    project: &str,
    role: Role,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO project_roles (user_id, project, role, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, project) DO UPDATE SET role = excluded.role",
    )
    .bind(user_id)
    .bind(project)
    .bind(role.as_str())
    .bind(now_secs())
    .execute(pool)
    .await?;
    super::auth_epoch::changed();
    Ok(())
}

pub async fn remove(pool: &AnyPool, user_id: &str, project: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM project_roles WHERE user_id = $1 AND project = $2")
        .bind(user_id)
        .bind(project)
        .execute(pool)
        .await?;
    super::auth_epoch::changed();
    Ok(r.rows_affected() == 1)
}

/// Forgets every grant in a project (when the project is deleted).
pub async fn remove_project(pool: &AnyPool, project: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM project_roles WHERE project = $1")
        .bind(project)
        .execute(pool)
        .await?;
    super::auth_epoch::changed();
    Ok(r.rows_affected())
}

/// Own grants of many users at once (for user listings).
pub async fn for_users(pool: &AnyPool, user_ids: &[String]) -> Result<Vec<GrantRow>, sqlx::Error> {
    of_users(
        pool,
        |cond| format!("SELECT user_id, project, role FROM project_roles WHERE user_id {cond}"),
        user_ids,
    )
    .await
}

/// Every grant reaching many users, own and teams' ([`effective`]).
pub async fn effective_for_users(
    pool: &AnyPool,
    user_ids: &[String],
) -> Result<Vec<GrantRow>, sqlx::Error> {
    of_users(pool, effective, user_ids).await
}

async fn of_users(
    pool: &AnyPool,
    select: impl Fn(&str) -> String,
    user_ids: &[String],
) -> Result<Vec<GrantRow>, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    // One placeholder per id; the ids themselves are bound, never spliced.
    let sql = format!(
        "SELECT user_id, project, role FROM ({}) g ORDER BY project",
        select(&format!("IN ({})", super::placeholders(1, user_ids.len())))
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    for id in user_ids {
        q = q.bind(id);
    }
    q.fetch_all(pool).await
}
