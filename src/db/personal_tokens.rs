//! The `personal_access_tokens` table: long-lived, capped credentials for
//! scripts and CI. Only the SHA-256 of a secret is stored.

use sqlx::{AnyPool, FromRow};

use crate::auth::Role;
use crate::auth::rbac::TokenCaps;
use crate::auth::tokens::{hash_token, now_secs, random_token};

/// Every secret starts with this, so that it is recognisable (by people,
/// secret scanners, and the extractor, which tells it from a JWT).
pub const SECRET_PREFIX: &str = "lxgpat_";
/// How much of a secret is kept in the clear to recognise it in a list.
const SHOWN_CHARS: usize = 12;
/// Live (unexpired) tokens one user may hold.
pub const MAX_PER_USER: i64 = 50;
/// Last use is written at most this often per token.
const TOUCH_EVERY_SECS: i64 = 60;
/// Expired tokens stay listed (marked expired) this long, then go.
const KEEP_EXPIRED_SECS: i64 = 7 * 86_400;

const COLUMNS: &str = "id, user_id, name, prefix, projects, role_cap, read_only, created_at, expires_at, last_used_at, last_used_ip";

#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    /// A JSON array of project names, or NULL for all of the owner's.
    pub projects: Option<String>,
    pub role_cap: Option<String>,
    pub read_only: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
}

impl TokenRow {
    pub fn project_list(&self) -> Option<Vec<String>> {
        // A list that does not parse grants nothing rather than everything.
        self.projects
            .as_deref()
            .map(|p| serde_json::from_str(p).unwrap_or_default())
    }

    pub fn role_cap(&self) -> Option<Role> {
        // An unknown cap (the CHECK constraint forbids one) caps to the least role.
        self.role_cap
            .as_deref()
            .map(|r| r.parse().unwrap_or(Role::Viewer))
    }

    pub fn caps(&self) -> TokenCaps {
        TokenCaps {
            projects: self.project_list(),
            role_cap: self.role_cap(),
            read_only: self.read_only != 0,
        }
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at <= now
    }
}

pub struct NewToken<'a> {
    pub user_id: &'a str,
    pub name: &'a str,
    pub projects: Option<&'a [String]>,
    pub role_cap: Option<Role>,
    pub read_only: bool,
    pub ttl_secs: i64,
}

/// Creates a token and returns its secret (shown once, never stored) and
/// row; `None` when the user already holds [`MAX_PER_USER`] live tokens.
pub async fn create(
    pool: &AnyPool,
    t: &NewToken<'_>,
) -> Result<Option<(String, TokenRow)>, sqlx::Error> {
    let secret = format!("{SECRET_PREFIX}{}", random_token());
    let now = now_secs();
    let row = TokenRow {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: t.user_id.to_owned(),
        name: t.name.to_owned(),
        prefix: secret.chars().take(SHOWN_CHARS).collect(),
        projects: t
            .projects
            .map(|p| serde_json::to_string(p).expect("strings serialize")),
        role_cap: t.role_cap.map(|r| r.as_str().to_owned()),
        read_only: i64::from(t.read_only),
        created_at: now,
        expires_at: now + t.ttl_secs,
        last_used_at: None,
        last_used_ip: None,
    };
    // The owner's row is locked first (an UPDATE locks it on PostgreSQL;
    // SQLite takes its one write lock), so two creates cannot both count
    // 49 under READ COMMITTED.
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE users SET id = id WHERE id = $1")
        .bind(&row.user_id)
        .execute(&mut *tx)
        .await?;
    let r = sqlx::query(
        "INSERT INTO personal_access_tokens
             (id, user_id, name, token_hash, prefix, projects, role_cap, read_only, created_at, expires_at)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
         WHERE (SELECT COUNT(*) FROM personal_access_tokens WHERE user_id = $2 AND expires_at > $9) < $11",
    )
    .bind(&row.id)
    .bind(&row.user_id)
    .bind(&row.name)
    .bind(hash_token(&secret))
    .bind(&row.prefix)
    .bind(&row.projects)
    .bind(&row.role_cap)
    .bind(row.read_only)
    .bind(row.created_at)
    .bind(row.expires_at)
    .bind(MAX_PER_USER)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((r.rows_affected() == 1).then_some((secret, row)))
}

/// The token with this secret, expired or not.
pub async fn by_secret(pool: &AnyPool, secret: &str) -> Result<Option<TokenRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM personal_access_tokens WHERE token_hash = $1"
    )))
    .bind(hash_token(secret))
    .fetch_optional(pool)
    .await
}

pub async fn by_id(pool: &AnyPool, id: &str) -> Result<Option<TokenRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM personal_access_tokens WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A user's tokens, newest first.
pub async fn for_user(pool: &AnyPool, user_id: &str) -> Result<Vec<TokenRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM personal_access_tokens WHERE user_id = $1
         ORDER BY created_at DESC, id"
    )))
    .bind(user_id)
    .fetch_all(pool)
    .await
}

/// Revokes a token at once: the row goes. False when there was none.
pub async fn delete(pool: &AnyPool, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM personal_access_tokens WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Records a use, unless one was recorded less than a minute ago (by this
/// replica or another): a script polling the API does not write per request.
pub async fn touch(pool: &AnyPool, row: &TokenRow, ip: Option<String>) -> Result<(), sqlx::Error> {
    let now = now_secs();
    if row
        .last_used_at
        .is_some_and(|at| now - at < TOUCH_EVERY_SECS)
    {
        return Ok(());
    }
    sqlx::query(
        "UPDATE personal_access_tokens SET last_used_at = $1, last_used_ip = $2
         WHERE id = $3 AND (last_used_at IS NULL OR last_used_at <= $4)",
    )
    .bind(now)
    .bind(ip)
    .bind(&row.id)
    .bind(now - TOUCH_EVERY_SECS)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Which of `ids` are still live (not revoked, not expired).
pub async fn live_among(pool: &AnyPool, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT id FROM personal_access_tokens WHERE expires_at > $1 AND id IN ({})",
            super::placeholders(2, chunk.len())
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(now_secs());
        for id in chunk {
            q = q.bind(id);
        }
        out.extend(q.fetch_all(pool).await?);
    }
    Ok(out)
}

/// Drops tokens expired for over a week (listed as expired until then).
pub async fn purge_expired(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM personal_access_tokens WHERE expires_at < $1")
        .bind(now_secs() - KEEP_EXPIRED_SECS)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
