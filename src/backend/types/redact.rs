//! What an operation or event may carry that no client may read.
//!
//! Applied while serializing (`Operation::metadata`, `Event::metadata`), so
//! every answer and relayed event goes through it and a new route cannot
//! forget it. Deserializing is untouched: the Incus driver still reads the
//! websocket secrets it bridges itself.

use serde::Serializer;
use serde_json::Value;

/// Keys whose values are credentials: `fds` (exec/console websocket secrets),
/// `secret` (token operations), and the per-channel secrets of migration
/// websockets (`control`, `fs`, `criu`, strings when they are secrets).
const SECRET_KEYS: [&str; 2] = ["fds", "secret"];
const MIGRATION_SECRET_KEYS: [&str; 3] = ["control", "fs", "criu"];

/// What a recorded exec printed (embedded: in the metadata; Incus: the log
/// files it wrote) and what it was given (its environment may hold tokens).
const EXEC_OUTPUT_KEYS: [&str; 4] = ["stdout", "stderr", "output", "environment"];

/// Removes the secrets from an operation's metadata.
pub fn strip_secrets(meta: &mut Value) {
    if let Some(obj) = meta.as_object_mut() {
        for k in SECRET_KEYS {
            obj.remove(k);
        }
        for k in MIGRATION_SECRET_KEYS {
            if obj.get(k).is_some_and(Value::is_string) {
                obj.remove(k);
            }
        }
    }
}

/// Removes recorded exec output (and the command's environment).
pub fn exec_output(meta: &mut Value) {
    if let Some(obj) = meta.as_object_mut() {
        for k in EXEC_OUTPUT_KEYS {
            obj.remove(k);
        }
    }
}

fn has_secrets(meta: &Value) -> bool {
    meta.as_object().is_some_and(|obj| {
        SECRET_KEYS.iter().any(|k| obj.contains_key(*k))
            || MIGRATION_SECRET_KEYS
                .iter()
                .any(|k| obj.get(*k).is_some_and(Value::is_string))
    })
}

/// `serialize_with` for `Operation::metadata`.
pub fn operation_metadata<S: Serializer>(meta: &Value, s: S) -> Result<S::Ok, S::Error> {
    if !has_secrets(meta) {
        return serde::Serialize::serialize(meta, s);
    }
    let mut meta = meta.clone();
    strip_secrets(&mut meta);
    serde::Serialize::serialize(&meta, s)
}

/// `serialize_with` for `Event::metadata`: an operation event carries the
/// operation, whose own metadata holds the secrets. Incus's `requestor`
/// (of lifecycle and operation events) names lxgate's own identity towards
/// Incus, never the user: lxgate says who asked in `requested_by` instead.
pub fn event_metadata<S: Serializer>(meta: &Value, s: S) -> Result<S::Ok, S::Error> {
    if !meta.get("metadata").is_some_and(has_secrets) && meta.get("requestor").is_none() {
        return serde::Serialize::serialize(meta, s);
    }
    let mut meta = meta.clone();
    if let Some(inner) = meta.get_mut("metadata") {
        strip_secrets(inner);
    }
    if let Some(obj) = meta.as_object_mut() {
        obj.remove("requestor");
    }
    serde::Serialize::serialize(&meta, s)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::backend::types::{Event, Operation};

    #[test]
    fn secrets_are_dropped_when_serialized_only() {
        let op = Operation {
            class: "websocket".into(),
            metadata: json!({"fds": {"0": "s0", "control": "sc"}, "command": ["sh"],
                             "control": "mig", "fs": "mig2", "secret": "tok",
                             "fingerprint": "kept"}),
            ..Default::default()
        };
        let out = serde_json::to_value(&op).unwrap();
        assert_eq!(
            out["metadata"],
            json!({"command": ["sh"], "fingerprint": "kept"})
        );
        // The driver still has them.
        assert_eq!(op.metadata["fds"]["0"], "s0");

        // An event built from Incus's raw JSON, as the Incus driver does.
        let ev = Event {
            kind: "operation".into(),
            metadata: json!({"id": "x", "metadata": op.metadata.clone()}),
            ..Default::default()
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert!(!text.contains("s0") && !text.contains("fds") && !text.contains("tok"));
        assert!(text.contains("kept"));
    }

    #[test]
    fn exec_output_is_dropped_for_viewers() {
        let op = Operation {
            metadata: json!({"return": 0, "stdout": "o", "stderr": "e",
                             "output": {"1": "/1.0/x"}, "environment": {"K": "v"}}),
            ..Default::default()
        }
        .without_exec_output();
        assert_eq!(op.metadata, json!({"return": 0}));
        let ev = Event {
            kind: "operation".into(),
            metadata: json!({"id": "x", "metadata": {"return": 0, "stdout": "o"}}),
            ..Default::default()
        };
        let ev = ev.without_exec_output().unwrap();
        assert_eq!(ev.metadata["metadata"], json!({"return": 0}));
        let lifecycle = Event {
            kind: "lifecycle".into(),
            ..Default::default()
        };
        assert!(lifecycle.without_exec_output().is_none());
    }
}
