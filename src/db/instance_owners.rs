//! The `instance_owners` table: who made each instance through lxgate.

use sqlx::{AnyPool, FromRow};

use crate::auth::tokens::now_secs;

#[derive(Debug, Clone, FromRow)]
pub struct OwnerRow {
    pub name: String,
    pub user_id: Option<String>,
    pub username: String,
    /// Set while the create that made the record is in flight.
    pub pending: Option<String>,
    pub created_at: i64,
    /// What a create in flight reserved (CPUs, bytes of memory and disk).
    pub reserved_cpu: i64,
    pub reserved_memory: i64,
    pub reserved_disk: i64,
}

/// The columns of an [`OwnerRow`] (a macro: queries are literals).
macro_rules! columns {
    () => {
        "name, user_id, username, pending, created_at, reserved_cpu, reserved_memory, reserved_disk"
    };
}

/// What a create in flight reserves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reserved {
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
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
         SET user_id = excluded.user_id, username = excluded.username,
             created_at = excluded.created_at, pending = NULL,
             reserved_cpu = 0, reserved_memory = 0, reserved_disk = 0",
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

/// Records `user` as making `project/name` before its create has finished,
/// with what it reserves, under the reservation `token`. A name recorded
/// for a create in flight, or made in the last minute, is left as it is
/// (that create fails, the name being taken, or takes it over when it
/// succeeds): false then. An older finished record is of an instance gone
/// (the caller found none under the name): replaced.
pub async fn reserve(
    pool: &AnyPool,
    project: &str,
    name: &str,
    (user_id, username): (&str, &str),
    token: &str,
    reserved: Reserved,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO instance_owners
           (project, name, user_id, username, created_at, pending, reserved_cpu, reserved_memory, reserved_disk)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (project, name) DO UPDATE
         SET user_id = excluded.user_id, username = excluded.username,
             created_at = excluded.created_at, pending = excluded.pending,
             reserved_cpu = excluded.reserved_cpu, reserved_memory = excluded.reserved_memory,
             reserved_disk = excluded.reserved_disk
         WHERE instance_owners.pending IS NULL AND instance_owners.created_at < $10",
    )
    .bind(project)
    .bind(name)
    .bind(user_id)
    .bind(username)
    .bind(now_secs())
    .bind(token)
    .bind(reserved.cpu)
    .bind(reserved.memory)
    .bind(reserved.disk)
    .bind(now_secs() - 60)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes the reservation `token` made (its create failed or was refused).
pub async fn release(
    pool: &AnyPool,
    project: &str,
    name: &str,
    token: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM instance_owners WHERE project = $1 AND name = $2 AND pending = $3")
        .bind(project)
        .bind(name)
        .bind(token)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Makes the reservation `token` a record for good (its instance exists);
/// false if there was no such reservation (any more).
pub async fn confirm(
    pool: &AnyPool,
    project: &str,
    name: &str,
    token: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "UPDATE instance_owners
         SET pending = NULL, reserved_cpu = 0, reserved_memory = 0, reserved_disk = 0,
             created_at = $4
         WHERE project = $1 AND name = $2 AND pending = $3",
    )
    .bind(project)
    .bind(name)
    .bind(token)
    .bind(now_secs())
    .execute(pool)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// Reservations made before `cutoff` (seconds) and not settled since:
/// (project, name, token).
pub async fn pending_before(
    pool: &AnyPool,
    cutoff: i64,
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT project, name, pending FROM instance_owners
         WHERE pending IS NOT NULL AND created_at < $1 LIMIT 1000",
    )
    .bind(cutoff)
    .fetch_all(pool)
    .await
}

/// The names `user_id` is recorded as having made in `project`.
pub async fn names_of(
    pool: &AnyPool,
    project: &str,
    user_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM instance_owners WHERE project = $1 AND user_id = $2")
        .bind(project)
        .bind(user_id)
        .fetch_all(pool)
        .await
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
    // Only a finished record: one reserved meanwhile under the old name is
    // another create's (the name was free once the rename was done).
    sqlx::query(
        "UPDATE instance_owners SET name = $1 WHERE project = $2 AND name = $3 AND pending IS NULL",
    )
    .bind(to)
    .bind(project)
    .bind(from)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Every record of a project.
pub async fn of_project(pool: &AnyPool, project: &str) -> Result<Vec<OwnerRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM instance_owners WHERE project = $1"
    ))
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
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM instance_owners WHERE project = $1 AND name = $2"
    ))
    .bind(project)
    .bind(name)
    .fetch_optional(pool)
    .await
}
