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
    /// Operation secrets are dropped when serialized (see `redact`).
    #[schema(value_type = Object)]
    #[serde(serialize_with = "super::redact::event_metadata")]
    pub metadata: Value,
    pub location: String,
    /// The project the event belongs to (empty for server-wide events).
    #[schema(example = "default")]
    pub project: String,
}

impl Event {
    /// The event without recorded exec output, for callers who may see the
    /// project but not what operators run in it.
    pub fn without_exec_output(&self) -> Option<Self> {
        if self.kind != "operation" {
            return None;
        }
        let mut ev = self.clone();
        super::redact::exec_output(ev.metadata.get_mut("metadata")?);
        Some(ev)
    }
}

pub const EVENT_KINDS: [&str; 3] = ["operation", "lifecycle", "logging"];
