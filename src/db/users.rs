//! The `users` table.

use sqlx::AnyConnection;
use sqlx::{Any, AnyPool, FromRow, Transaction};

use super::{Db, Dialect};

use crate::auth::Role;
use crate::auth::rbac::Grants;
use crate::auth::tokens::now_secs;

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub role: Option<String>,
    pub disabled: i64,
    pub token_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login_at: Option<i64>,
}

impl UserRow {
    pub fn role(&self) -> Option<Role> {
        self.role.as_deref().and_then(|r| r.parse().ok())
    }
    pub fn is_disabled(&self) -> bool {
        self.disabled != 0
    }
}

const COLUMNS: &str = "id, username, password_hash, role, disabled, token_version, created_at, updated_at, last_login_at";

pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: Option<Role>,
    pub disabled: bool,
}

pub async fn insert(pool: &AnyPool, new: NewUser<'_>) -> Result<UserRow, sqlx::Error> {
    let now = now_secs();
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, disabled, token_version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
    )
    .bind(&id)
    .bind(new.username)
    .bind(new.password_hash)
    .bind(new.role.map(Role::as_str))
    .bind(i64::from(new.disabled))
    .bind(now)
    .execute(pool)
    .await?;
    Ok(UserRow {
        id,
        username: new.username.to_owned(),
        password_hash: new.password_hash.to_owned(),
        role: new.role.map(|r| r.as_str().to_owned()),
        disabled: i64::from(new.disabled),
        token_version: 0,
        created_at: now,
        updated_at: now,
        last_login_at: None,
    })
}

pub async fn by_username(pool: &AnyPool, username: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE username = $1"
    )))
    .bind(username)
    .fetch_optional(pool)
    .await
}

/// The user and its project grants, its teams' included, in one round
/// trip (this runs on every authenticated request).
pub async fn with_grants(
    pool: &AnyPool,
    id: &str,
) -> Result<Option<(UserRow, Grants)>, sqlx::Error> {
    #[derive(FromRow)]
    struct Joined {
        #[sqlx(flatten)]
        user: UserRow,
        project: Option<String>,
        project_role: Option<String>,
    }
    let rows: Vec<Joined> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT u.id, u.username, u.password_hash, u.role, u.disabled, u.token_version,
                u.created_at, u.updated_at, u.last_login_at,
                pr.project AS project, pr.role AS project_role
         FROM users u LEFT JOIN ({}) pr ON pr.user_id = u.id
         WHERE u.id = $1
         ORDER BY pr.project",
        super::project_roles::effective("= $1")
    )))
    .bind(id)
    .fetch_all(pool)
    .await?;
    let mut rows = rows.into_iter();
    let Some(first) = rows.next() else {
        return Ok(None);
    };
    let mut grants = Grants {
        global: first.user.role(),
        projects: Vec::new(),
        read_only: false,
    };
    let user = first.user;
    for (project, role) in std::iter::once((first.project, first.project_role))
        .chain(rows.map(|r| (r.project, r.project_role)))
    {
        if let (Some(p), Some(r)) = (project, role.and_then(|r| r.parse().ok())) {
            grants.grant(p, r);
        }
    }
    Ok(Some((user, grants)))
}

pub async fn list(pool: &AnyPool, limit: i64, offset: i64) -> Result<Vec<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users ORDER BY username LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

pub async fn count(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(pool)
        .await
}

/// What a PATCH may change; `None` leaves a field alone. Any change bumps the
/// token version, so access tokens issued before stop working at once.
#[derive(Debug, Default)]
pub struct Changes {
    pub role: Option<Option<Role>>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
}

pub async fn update(pool: &AnyPool, id: &str, c: &Changes) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    apply(&mut tx, id, c).await?;
    // Counted even when the answer to the commit is lost: it may have
    // happened, and counting too much only costs a read.
    let committed = tx.commit().await;
    super::auth_epoch::changed();
    committed?;
    Ok(())
}

async fn apply(tx: &mut AnyConnection, id: &str, c: &Changes) -> Result<(), sqlx::Error> {
    let now = now_secs();
    if let Some(role) = c.role {
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role.map(Role::as_str))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(disabled) = c.disabled {
        sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
            .bind(i64::from(disabled))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(hash) = &c.password_hash {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    // A reset password or a disabled account ends every credential,
    // personal access tokens too (one minted with a stolen session must
    // not outlive the reset that answers the theft).
    if c.password_hash.is_some() || c.disabled == Some(true) {
        sqlx::query("DELETE FROM personal_access_tokens WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE users SET token_version = token_version + 1, updated_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // A new password or a disabled account also ends every refresh token.
    if c.password_hash.is_some() || c.disabled == Some(true) {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Starts a transaction in which changes to admins are serialized, so two
/// admins demoting each other at once cannot both see "another admin left".
/// PostgreSQL: a transaction-scoped advisory lock (works across replicas).
/// SQLite: a write as the first statement takes the database's write lock
/// before anything is read.
async fn begin_admin_change(db: &Db, id: &str) -> Result<Transaction<'static, Any>, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    match db.dialect {
        Dialect::Postgres => {
            sqlx::query("SELECT pg_advisory_xact_lock(7306180001)")
                .execute(&mut *tx)
                .await?;
        }
        Dialect::Sqlite => {
            sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(tx)
}

async fn other_admins(tx: &mut AnyConnection, except: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND id <> $1",
    )
    .bind(except)
    .fetch_one(&mut *tx)
    .await
}

/// Applies `c` unless it would leave no enabled admin; false when refused.
pub async fn update_keeping_an_admin(db: &Db, id: &str, c: &Changes) -> Result<bool, sqlx::Error> {
    let mut tx = begin_admin_change(db, id).await?;
    if other_admins(&mut tx, id).await? == 0 {
        return Ok(false);
    }
    apply(&mut tx, id, c).await?;
    // Counted even when the answer to the commit is lost: it may have
    // happened, and counting too much only costs a read.
    let committed = tx.commit().await;
    super::auth_epoch::changed();
    committed?;
    Ok(true)
}

/// Deletes the user unless it is the last enabled admin. `None`: no such
/// user; `Some(false)`: refused.
pub async fn delete_keeping_an_admin(db: &Db, id: &str) -> Result<Option<bool>, sqlx::Error> {
    let mut tx = begin_admin_change(db, id).await?;
    if other_admins(&mut tx, id).await? == 0 {
        return Ok(Some(false));
    }
    let r = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // Counted even when the answer to the commit is lost: it may have
    // happened, and counting too much only costs a read.
    let committed = tx.commit().await;
    super::auth_epoch::changed();
    committed?;
    Ok((r.rows_affected() == 1).then_some(true))
}

pub async fn touch_login(pool: &AnyPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
        .bind(now_secs())
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn delete(pool: &AnyPool, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    super::auth_epoch::changed();
    Ok(r.rows_affected() == 1)
}

/// Many users with their grants, for the open-socket watcher (ids that no
/// longer exist are simply absent). Bounded statements: 500 ids at a time.
pub async fn many_with_grants(
    pool: &AnyPool,
    ids: &[String],
) -> Result<Vec<(UserRow, Grants)>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT {COLUMNS} FROM users WHERE id IN ({})",
            super::placeholders(1, chunk.len())
        );
        let mut q = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id);
        }
        let users = q.fetch_all(pool).await?;
        let grants = super::project_roles::effective_for_users(pool, chunk).await?;
        for user in users {
            let mut g = Grants {
                global: user.role(),
                ..Grants::default()
            };
            for row in grants.iter().filter(|g| g.user_id == user.id) {
                if let Ok(role) = row.role.parse() {
                    g.grant(row.project.clone(), role);
                }
            }
            out.push((user, g));
        }
    }
    Ok(out)
}

/// The user the identity provider knows as `subject`.
pub async fn by_oidc_subject(
    pool: &AnyPool,
    subject: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE oidc_subject = $1"
    )))
    .bind(subject)
    .fetch_optional(pool)
    .await
}

/// Makes the account of a single sign-on user, with its subject, in one
/// statement (no password: `!` is no argon2 hash, so no password matches).
/// A taken name or subject is the unique violation.
pub async fn insert_oidc(
    pool: &AnyPool,
    username: &str,
    subject: &str,
) -> Result<UserRow, sqlx::Error> {
    let now = now_secs();
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, disabled, token_version, created_at, updated_at, oidc_subject)
         VALUES ($1, $2, '!', NULL, 0, 0, $3, $3, $4)",
    )
    .bind(&id)
    .bind(username)
    .bind(now)
    .bind(subject)
    .execute(pool)
    .await?;
    by_oidc_subject(pool, subject)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// Whether a username is taken, in any letter case.
pub async fn name_taken_any_case(pool: &AnyPool, username: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE LOWER(username) = LOWER($1)")
        .bind(username)
        .fetch_one(pool)
        .await?;
    Ok(n > 0)
}

/// Whether the user signs on through the identity provider.
pub async fn is_oidc(pool: &AnyPool, id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE id = $1 AND oidc_subject IS NOT NULL")
            .bind(id)
            .fetch_one(pool)
            .await?;
    Ok(n > 0)
}

/// Makes a single sign-on user's global role, project grants and the
/// memberships of `mapped_teams` what the groups of a token issued at
/// `issued_at` give, in one transaction, unless a token issued later was
/// synced already (an older token, still valid, must not give back what a
/// newer one took away). Its first statement takes the user's row (the
/// write lock on SQLite), so concurrent syncs of one user queue.
pub async fn sync_oidc(
    pool: &AnyPool,
    user: &UserRow,
    mapped: &crate::auth::oidc::Mapped,
    issued_at: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let now = now_secs();
    let newest = sqlx::query(
        "UPDATE users SET oidc_synced_at = $1 WHERE id = $2 AND COALESCE(oidc_synced_at, 0) <= $1",
    )
    .bind(issued_at)
    .bind(&user.id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if newest == 0 {
        return tx.rollback().await;
    }
    let role: Option<String> = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(&user.id)
        .fetch_one(&mut *tx)
        .await?;
    if role.as_deref() != mapped.global.map(Role::as_str) {
        // A new role ends what was issued under the old (tickets too).
        sqlx::query(
            "UPDATE users SET role = $1, updated_at = $2, token_version = token_version + 1 WHERE id = $3",
        )
        .bind(mapped.global.map(Role::as_str))
        .bind(now)
        .bind(&user.id)
        .execute(&mut *tx)
        .await?;
    }
    let current: Vec<(String, String)> =
        sqlx::query_as("SELECT project, role FROM project_roles WHERE user_id = $1")
            .bind(&user.id)
            .fetch_all(&mut *tx)
            .await?;
    for (project, _) in current
        .iter()
        .filter(|(p, _)| !mapped.projects.contains_key(p))
    {
        sqlx::query("DELETE FROM project_roles WHERE user_id = $1 AND project = $2")
            .bind(&user.id)
            .bind(project)
            .execute(&mut *tx)
            .await?;
    }
    for (project, role) in &mapped.projects {
        if current
            .iter()
            .any(|(p, r)| p == project && r == role.as_str())
        {
            continue;
        }
        sqlx::query(
            "INSERT INTO project_roles (user_id, project, role, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, project) DO UPDATE SET role = excluded.role",
        )
        .bind(&user.id)
        .bind(project)
        .bind(role.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    for team in &mapped.mapped_teams {
        let member = mapped.teams.contains(team);
        if member {
            sqlx::query(
                "INSERT INTO team_members (team_id, user_id, created_at)
                 SELECT id, $1, $2 FROM teams WHERE name = $3
                 ON CONFLICT (team_id, user_id) DO NOTHING",
            )
            .bind(&user.id)
            .bind(now)
            .bind(team)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "DELETE FROM team_members WHERE user_id = $1
                 AND team_id IN (SELECT id FROM teams WHERE name = $2)",
            )
            .bind(&user.id)
            .bind(team)
            .execute(&mut *tx)
            .await?;
        }
    }
    // Counted even when the answer to the commit is lost: it may have
    // happened, and counting too much only costs a read.
    let committed = tx.commit().await;
    super::auth_epoch::changed();
    committed?;
    Ok(())
}
