//! Accounts as the API shows and creates them: shared by `/users` (admins)
//! and `/auth` (`register`, `me`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{Json, rfc3339};
use crate::app::AppState;
use crate::auth::{Role, Username, accounts};
use crate::db;
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectGrant {
    #[schema(example = "team-a")]
    pub project: String,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserOut {
    #[schema(example = "alice")]
    pub username: String,
    /// Global role; `null` for users that only hold project roles.
    pub role: Option<Role>,
    pub disabled: bool,
    /// The user's own grants (its teams' are on each team).
    pub projects: Vec<ProjectGrant>,
    /// The teams the user is in.
    #[schema(example = json!(["platform"]))]
    pub teams: Vec<String>,
    #[schema(example = "2026-11-23T22:38:16Z")]
    pub created_at: String,
    pub updated_at: String,
    pub last_login_at: Option<String>,
}

impl UserOut {
    pub fn from_row(
        row: &db::users::UserRow,
        grants: Vec<ProjectGrant>,
        teams: Vec<String>,
    ) -> Self {
        Self {
            username: row.username.clone(),
            role: row.role(),
            disabled: row.is_disabled(),
            projects: grants,
            teams,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            last_login_at: row.last_login_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 characters: letters, digits, `.`, `_`, `-`, `@`; starts with a letter or digit.
    #[schema(value_type = crate::auth::Username, example = "alice")]
    pub username: String,
    /// At least `PASSWORD_MIN_LENGTH` (12) characters, not the username.
    #[schema(min_length = 12, max_length = 1024, pattern = r"^(?!([\s\S])\1*$)[^\u0000]*$", format = Password, example = "a long passphrase")]
    pub password: String,
    /// Global role; omit or `null` for a user that will only get project roles.
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub disabled: bool,
}

pub async fn create_user_row(state: &AppState, req: CreateUser) -> ApiResult<UserOut> {
    let username =
        Username::parse(&req.username).map_err(|e| ApiError::invalid_field("username", e))?;
    let row = accounts::create(
        &state.db.pool,
        state.config.password_min_length,
        accounts::NewAccount {
            username: &username,
            password: req.password,
            role: req.role,
            disabled: req.disabled,
        },
    )
    .await?;
    Ok(UserOut::from_row(&row, Vec::new(), Vec::new()))
}

pub fn created(user: UserOut) -> Response {
    let location = format!("/api/v1/users/{}", user.username);
    let mut resp = (StatusCode::CREATED, Json(user)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
