//! The inventory (the embedded backend's tables, `crate::db::embedded`) as
//! the backend's modules use it: its errors, as the backend reports them.

use crate::backend::BackendError;

pub fn db(e: sqlx::Error) -> BackendError {
    BackendError::Internal(anyhow::anyhow!("inventory: {e}"))
}
