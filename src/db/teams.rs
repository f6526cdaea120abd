//! The `teams`, `team_members` and `team_roles` tables: groups of users an
//! admin grants roles in projects as one.

use sqlx::{AnyPool, FromRow};

use crate::auth::Role;
use crate::auth::tokens::now_secs;

/// Teams a server may hold; members per team. Both are bounds on what one
/// answer lists, not quotas anyone is expected to reach.
pub const MAX_TEAMS: i64 = 1_000;
pub const MAX_MEMBERS: i64 = 5_000;

#[derive(Debug, Clone, FromRow)]
pub struct TeamRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, description, created_at, updated_at";

/// A grant a team holds in a project.
#[derive(Debug, Clone, FromRow)]
pub struct TeamRoleRow {
    pub team_id: String,
    pub project: String,
    pub role: String,
}

/// A member, by username.
#[derive(Debug, Clone, FromRow)]
pub struct MemberRow {
    pub team_id: String,
    pub user_id: String,
    pub username: String,
}

/// A team a user is in, with one of its grants (or none).
#[derive(Debug, Clone, FromRow)]
pub struct MembershipRow {
    pub user_id: String,
    pub team: String,
    pub project: Option<String>,
    pub role: Option<String>,
}

/// Inserts a team unless `MAX_TEAMS` are there. `Ok(None)`: full. A taken
/// name is the unique violation.
pub async fn insert(
    pool: &AnyPool,
    name: &str,
    description: &str,
) -> Result<Option<TeamRow>, sqlx::Error> {
    let now = now_secs();
    let row = TeamRow {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        description: description.to_owned(),
        created_at: now,
        updated_at: now,
    };
    // The count and the insert in one statement (a bound, not a quota:
    // creates racing on PostgreSQL may pass it by one or two).
    let r = sqlx::query(
        "INSERT INTO teams (id, name, description, created_at, updated_at)
         SELECT $1, $2, $3, $4, $4 WHERE (SELECT COUNT(*) FROM teams) < $5",
    )
    .bind(&row.id)
    .bind(&row.name)
    .bind(&row.description)
    .bind(now)
    .bind(MAX_TEAMS)
    .execute(pool)
    .await?;
    Ok((r.rows_affected() == 1).then_some(row))
}

pub async fn by_name(pool: &AnyPool, name: &str) -> Result<Option<TeamRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM teams WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await
}

pub async fn list(pool: &AnyPool, limit: i64, offset: i64) -> Result<Vec<TeamRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM teams ORDER BY name LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

pub async fn count(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM teams")
        .fetch_one(pool)
        .await
}

pub async fn set_description(
    pool: &AnyPool,
    id: &str,
    description: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE teams SET description = $1, updated_at = $2 WHERE id = $3")
        .bind(description)
        .bind(now_secs())
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Deletes a team with its memberships and grants (cascade).
pub async fn delete(pool: &AnyPool, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM teams WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    super::auth_epoch::changed();
    Ok(r.rows_affected() == 1)
}

/// The members of these teams, by username.
pub async fn members(pool: &AnyPool, team_ids: &[String]) -> Result<Vec<MemberRow>, sqlx::Error> {
    if team_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT tm.team_id, tm.user_id, u.username FROM team_members tm
         JOIN users u ON u.id = tm.user_id
         WHERE tm.team_id IN ({}) ORDER BY u.username",
        super::placeholders(1, team_ids.len())
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    for id in team_ids {
        q = q.bind(id);
    }
    q.fetch_all(pool).await
}

/// The grants of these teams.
pub async fn roles(pool: &AnyPool, team_ids: &[String]) -> Result<Vec<TeamRoleRow>, sqlx::Error> {
    if team_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT team_id, project, role FROM team_roles WHERE team_id IN ({}) ORDER BY project",
        super::placeholders(1, team_ids.len())
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    for id in team_ids {
        q = q.bind(id);
    }
    q.fetch_all(pool).await
}

/// The teams these users are in, each with its grants (a team without
/// grants once, with `project` and `role` NULL).
pub async fn memberships(
    pool: &AnyPool,
    user_ids: &[String],
) -> Result<Vec<MembershipRow>, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT tm.user_id, t.name AS team, tr.project, tr.role FROM team_members tm
         JOIN teams t ON t.id = tm.team_id
         LEFT JOIN team_roles tr ON tr.team_id = tm.team_id
         WHERE tm.user_id IN ({}) ORDER BY t.name, tr.project",
        super::placeholders(1, user_ids.len())
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    for id in user_ids {
        q = q.bind(id);
    }
    q.fetch_all(pool).await
}

/// Adds a member (nothing when it is one already) unless the team has
/// `MAX_MEMBERS`. False: full.
pub async fn add_member(pool: &AnyPool, team_id: &str, user_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO team_members (team_id, user_id, created_at)
         SELECT $1, $2, $3
         WHERE (SELECT COUNT(*) FROM team_members WHERE team_id = $1) < $4
         ON CONFLICT (team_id, user_id) DO NOTHING",
    )
    .bind(team_id)
    .bind(user_id)
    .bind(now_secs())
    .bind(MAX_MEMBERS)
    .execute(pool)
    .await?;
    super::auth_epoch::changed();
    let present: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .fetch_one(pool)
            .await?;
    Ok(present == 1)
}

pub async fn remove_member(
    pool: &AnyPool,
    team_id: &str,
    user_id: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
        .bind(team_id)
        .bind(user_id)
        .execute(pool)
        .await?;
    super::auth_epoch::changed();
    Ok(r.rows_affected() == 1)
}

pub async fn set_role(
    pool: &AnyPool,
    team_id: &str,
    project: &str,
    role: Role,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO team_roles (team_id, project, role, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (team_id, project) DO UPDATE SET role = excluded.role",
    )
    .bind(team_id)
    .bind(project)
    .bind(role.as_str())
    .bind(now_secs())
    .execute(pool)
    .await?;
    super::auth_epoch::changed();
    Ok(())
}

pub async fn remove_role(
    pool: &AnyPool,
    team_id: &str,
    project: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM team_roles WHERE team_id = $1 AND project = $2")
        .bind(team_id)
        .bind(project)
        .execute(pool)
        .await?;
    super::auth_epoch::changed();
    Ok(r.rows_affected() == 1)
}

/// Forgets every team grant in a project (when the project is deleted).
pub async fn remove_project(pool: &AnyPool, project: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM team_roles WHERE project = $1")
        .bind(project)
        .execute(pool)
        .await?;
    super::auth_epoch::changed();
    Ok(r.rows_affected())
}
