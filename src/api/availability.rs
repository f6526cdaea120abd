//! While the user database is known to be away, API requests answer 503 at
//! once instead of each waiting out the connection pool's timeout (every
//! one of them needs the database: to authenticate, if nothing else).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::ApiError;

pub async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.auth_view.database_away() && req.uri().path().starts_with("/api/") {
        return ApiError::database_unavailable().into_response();
    }
    next.run(req).await
}
