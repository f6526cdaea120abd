//! The `instance_owners` table: who made each instance through lxgate.

use sqlx::{AnyPool, FromRow};

use crate::auth::tokens::now_secs;

#[derive(Debug, Clone, FromRow)]
pub struct OwnerRow {
    pub name: String,
    pub user_id: Option<String>,
    pub username: String,
}

/// Records `user` as the owner of `project/name` (a new instance there
/// replaces whatever was recorded under that name).
pub async fn set(
    pool: &AnyPool,
    project: &str,
    name: &str,
    user_id: &str,
    username: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO instance_owners (project, name, user_id, username, created_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (project, name) DO UPDATE
         SET user_id = excluded.user_id, username = excluded.username, created_at = excluded.created_at",
    )
    .bind(project)
    .bind(name)
    .bind(user_id)
    .bind(username)
    .bind(now_secs())
    .execute(pool)
    .await
    .map(|_| ())
}

/// Moves the record of a renamed instance.
pub async fn rename(
    pool: &AnyPool,
    project: &str,
    from: &str,
    to: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM instance_owners WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(to)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE instance_owners SET name = $1 WHERE project = $2 AND name = $3")
        .bind(to)
        .bind(project)
        .bind(from)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Every record of a project.
pub async fn of_project(pool: &AnyPool, project: &str) -> Result<Vec<OwnerRow>, sqlx::Error> {
    sqlx::query_as("SELECT name, user_id, username FROM instance_owners WHERE project = $1")
        .bind(project)
        .fetch_all(pool)
        .await
}

/// Forgets a project's records (the project is gone).
pub async fn remove_project(pool: &AnyPool, project: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM instance_owners WHERE project = $1")
        .bind(project)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Forgets an instance's record (it was deleted).
pub async fn remove(pool: &AnyPool, project: &str, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM instance_owners WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(pool)
        .await
        .map(|_| ())
}

/// The record of one instance.
pub async fn get(
    pool: &AnyPool,
    project: &str,
    name: &str,
) -> Result<Option<OwnerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, user_id, username FROM instance_owners WHERE project = $1 AND name = $2",
    )
    .bind(project)
    .bind(name)
    .fetch_optional(pool)
    .await
}
