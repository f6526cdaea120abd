//! Events, as Incus sends them on `/1.0/events`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Event {
    /// `operation`, `lifecycle` or `logging`.
    #[serde(rename = "type")]
    #[schema(example = "lifecycle")]
    pub kind: String,
    pub timestamp: String,
    /// What happened (an Operation for `operation` events; action, source and
    /// context for `lifecycle`; level and message for `logging`).
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub location: String,
    /// The project the event belongs to (empty for server-wide events).
    #[schema(example = "default")]
    pub project: String,
}

pub const EVENT_KINDS: [&str; 3] = ["operation", "lifecycle", "logging"];
