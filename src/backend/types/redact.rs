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
/// operation, whose own metadata holds the secrets.
pub fn event_metadata<S: Serializer>(meta: &Value, s: S) -> Result<S::Ok, S::Error> {
    if !meta.get("metadata").is_some_and(has_secrets) {
        return serde::Serialize::serialize(meta, s);
    }
    let mut meta = meta.clone();
    if let Some(inner) = meta.get_mut("metadata") {
        strip_secrets(inner);
    }
    serde::Serialize::serialize(&meta, s)
}
