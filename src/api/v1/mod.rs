//! `/api/v1`: one module per resource.

pub mod audit;
pub mod auth;
pub mod system;
pub mod users;
