//! Creating accounts: the one place the API (`POST /users`, `POST
//! /auth/register`), the CLI (`lxgate user add`) and the first-start seeding
//! go through, so the password policy, hashing and the taken-name check
//! cannot differ between them.

use sqlx::AnyPool;

use crate::auth::password::{self, HashError};
use crate::auth::{Role, Username};
use crate::db;
use crate::db::users::UserRow;

/// An account to create.
pub struct NewAccount<'a> {
    pub username: &'a Username,
    pub password: String,
    pub role: Option<Role>,
    pub disabled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The password policy refused the password (the reason).
    #[error("{0}")]
    WeakPassword(String),
    #[error("user `{0}` already exists")]
    Exists(String),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Creates `new` if its password passes the policy (`min_len`) and the name
/// is free.
pub async fn create(
    pool: &AnyPool,
    min_len: usize,
    new: NewAccount<'_>,
) -> Result<UserRow, CreateError> {
    let username = new.username.as_str();
    password::check_policy(username, &new.password, min_len).map_err(CreateError::WeakPassword)?;
    // Checked first so a taken name costs no argon2 hash; the insert below
    // still catches a concurrent create of the same name.
    if db::users::by_username(pool, username).await?.is_some() {
        return Err(CreateError::Exists(username.to_owned()));
    }
    let hash = password::hash(new.password).await?;
    db::users::insert(
        pool,
        db::users::NewUser {
            username,
            password_hash: &hash,
            role: new.role,
            disabled: new.disabled,
        },
    )
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            CreateError::Exists(username.to_owned())
        }
        e => CreateError::Db(e),
    })
}

/// Makes the account of a single sign-on user seen for the first time:
/// named by its `preferred_username` when that is a valid username no
/// account holds in any letter case (nor the seeded admin's), else `oidc-`
/// and a digest of its subject. It has no password.
pub async fn provision_oidc(
    pool: &AnyPool,
    id: &crate::auth::oidc::Identity,
    seed_admin: &str,
) -> Result<UserRow, sqlx::Error> {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(id.subject.as_bytes()));
    let mut candidates = Vec::new();
    if let Some(name) = id
        .preferred_username
        .as_deref()
        .filter(|n| Username::parse(n).is_ok() && !n.eq_ignore_ascii_case(seed_admin))
        && !db::users::name_taken_any_case(pool, name).await?
    {
        candidates.push(name.to_owned());
    }
    candidates.push(format!("oidc-{}", &digest[..24]));
    candidates.push(format!("oidc-{digest}"));
    for username in &candidates {
        match db::users::insert_oidc(pool, username, &id.subject).await {
            Ok(row) => return Ok(row),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                // Another request made this user meanwhile, or the name
                // was taken: the subject decides.
                if let Some(row) = db::users::by_oidc_subject(pool, &id.subject).await? {
                    return Ok(row);
                }
            }
            Err(e) => return Err(e),
        }
    }
    db::users::by_oidc_subject(pool, &id.subject)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}
