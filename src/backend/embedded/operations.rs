//! The in-process operation manager: long work runs as a task whose state is
//! an Incus-shaped `Operation` (103 Running -> 200 Success / 400 Failure /
//! 401 Cancelled), published as `operation` events on the bus, waitable and
//! cancellable, and kept for an hour after it finishes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::backend::BackendError;
use crate::backend::events::EventBus;
use crate::backend::types::{Event, Operation};

/// How long a finished operation stays readable.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);

/// How an operation's work ends when it does not succeed.
#[derive(Debug)]
pub enum OpError {
    Cancelled,
    Failed(String),
}

impl From<BackendError> for OpError {
    fn from(e: BackendError) -> Self {
        OpError::Failed(e.to_string())
    }
}

impl From<anyhow::Error> for OpError {
    fn from(e: anyhow::Error) -> Self {
        OpError::Failed(format!("{e:#}"))
    }
}

struct Entry {
    state: watch::Sender<Operation>,
    cancel: watch::Sender<bool>,
    finished: Mutex<Option<Instant>>,
    project: String,
}

/// Handed to the work: progress reports and the cancellation signal.
#[derive(Clone)]
pub struct OpCtx {
    entry: Arc<Entry>,
    bus: EventBus,
}

impl OpCtx {
    /// Replaces the operation's metadata (progress, results so far).
    pub fn progress(&self, metadata: Value) {
        self.entry.state.send_modify(|op| {
            op.metadata = metadata;
            op.updated_at = now();
        });
        publish(&self.bus, &self.entry);
    }

    pub fn is_cancelled(&self) -> bool {
        *self.entry.cancel.borrow()
    }

    /// Resolves once someone cancels the operation.
    pub async fn cancelled(&self) {
        let mut rx = self.entry.cancel.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Fails with `Cancelled` if the operation was cancelled meanwhile.
    pub fn check(&self) -> Result<(), OpError> {
        if self.is_cancelled() {
            Err(OpError::Cancelled)
        } else {
            Ok(())
        }
    }
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn publish(bus: &EventBus, entry: &Entry) {
    let op = entry.state.borrow().clone();
    bus.publish(Event {
        kind: "operation".into(),
        timestamp: now(),
        metadata: serde_json::to_value(&op).unwrap_or(Value::Null),
        location: "none".into(),
        project: entry.project.clone(),
    });
}

/// Publishes a lifecycle event (`instance-started`, `image-created`...).
pub fn lifecycle(bus: &EventBus, project: &str, action: &str, source: &str, context: Value) {
    bus.publish(Event {
        kind: "lifecycle".into(),
        timestamp: now(),
        metadata: json!({"action": action, "source": source, "context": context}),
        location: "none".into(),
        project: project.to_owned(),
    });
}

/// The `/1.0/...` URL of a resource, with `?project=` outside the default
/// project, as Incus writes them in operations and events.
pub fn resource_url(project: &str, path: &str) -> String {
    if project == "default" {
        format!("/1.0/{path}")
    } else {
        format!("/1.0/{path}?project={project}")
    }
}

#[derive(Clone)]
pub struct Operations {
    entries: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
    bus: EventBus,
}

impl Operations {
    pub fn new(bus: EventBus) -> Self {
        Self {
            entries: Arc::default(),
            bus,
        }
    }

    /// Starts `work` in the background and returns the running operation.
    /// `resources` maps kinds (`instances`, `images`) to `/1.0/...` URLs.
    pub fn start<F, Fut>(
        &self,
        project: &str,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        may_cancel: bool,
        work: F,
    ) -> Operation
    where
        F: FnOnce(OpCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Value, OpError>> + Send + 'static,
    {
        self.forget_old();
        let created = now();
        let op = Operation {
            id: uuid::Uuid::new_v4().to_string(),
            class: "task".into(),
            description: description.to_owned(),
            created_at: created.clone(),
            updated_at: created,
            status: "Running".into(),
            status_code: Operation::RUNNING,
            resources,
            metadata: Value::Null,
            may_cancel,
            err: String::new(),
            location: "none".into(),
        };
        let entry = Arc::new(Entry {
            state: watch::Sender::new(op.clone()),
            cancel: watch::Sender::new(false),
            finished: Mutex::new(None),
            project: project.to_owned(),
        });
        self.entries
            .lock()
            .expect("operations lock")
            .insert(op.id.clone(), entry.clone());
        publish(&self.bus, &entry);
        let ctx = OpCtx {
            entry: entry.clone(),
            bus: self.bus.clone(),
        };
        let bus = self.bus.clone();
        tokio::spawn(async move {
            // A panic in the work must still finish the operation.
            let result = tokio::spawn(work(ctx)).await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "operation task panicked");
                Err(OpError::Failed("internal error".into()))
            });
            entry.state.send_modify(|op| {
                op.updated_at = now();
                op.may_cancel = false;
                match result {
                    Ok(meta) => {
                        op.status = "Success".into();
                        op.status_code = 200;
                        if !meta.is_null() {
                            op.metadata = meta;
                        }
                    }
                    Err(OpError::Cancelled) => {
                        op.status = "Cancelled".into();
                        op.status_code = 401;
                        op.err = "Operation cancelled".into();
                    }
                    Err(OpError::Failed(msg)) => {
                        op.status = "Failure".into();
                        op.status_code = 400;
                        op.err = msg;
                    }
                }
            });
            *entry.finished.lock().expect("finished lock") = Some(Instant::now());
            publish(&bus, &entry);
        });
        op
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, BackendError> {
        self.entries
            .lock()
            .expect("operations lock")
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::NotFound("Operation not found".into()))
    }

    pub fn get(&self, id: &str) -> Result<Operation, BackendError> {
        Ok(self.entry(id)?.state.borrow().clone())
    }

    /// Operations of `project` (all when `None`), newest first.
    pub fn list(&self, project: Option<&str>) -> Vec<Operation> {
        self.forget_old();
        let mut ops: Vec<Operation> = self
            .entries
            .lock()
            .expect("operations lock")
            .values()
            .filter(|e| project.is_none_or(|p| p == e.project))
            .map(|e| e.state.borrow().clone())
            .collect();
        ops.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        ops
    }

    /// Waits until the operation finishes or `timeout` passes, then returns it.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Operation, BackendError> {
        let entry = self.entry(id)?;
        let mut rx = entry.state.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(Operation::is_done)).await;
        Ok(entry.state.borrow().clone())
    }

    pub fn cancel(&self, id: &str) -> Result<(), BackendError> {
        let entry = self.entry(id)?;
        let op = entry.state.borrow().clone();
        if op.is_done() {
            return Err(BackendError::BadRequest(
                "The operation has already finished".into(),
            ));
        }
        if !op.may_cancel {
            return Err(BackendError::BadRequest(
                "This operation cannot be cancelled".into(),
            ));
        }
        entry.cancel.send_replace(true);
        Ok(())
    }

    fn forget_old(&self) {
        self.entries
            .lock()
            .expect("operations lock")
            .retain(|_, e| {
                e.finished
                    .lock()
                    .expect("finished lock")
                    .is_none_or(|t| t.elapsed() < KEEP_FINISHED)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_failure_and_cancel() {
        let ops = Operations::new(EventBus::default());
        let ok = ops.start("default", "ok", BTreeMap::new(), false, |_| async {
            Ok(json!({"x": 1}))
        });
        let done = ops.wait(&ok.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(done.status_code, 200);
        assert_eq!(done.metadata["x"], 1);

        let bad = ops.start("p", "bad", BTreeMap::new(), false, |_| async {
            Err(OpError::Failed("nope".into()))
        });
        let done = ops.wait(&bad.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!((done.status_code, done.err.as_str()), (400, "nope"));
        assert!(
            ops.cancel(&bad.id).is_err(),
            "finished operations stay as they are"
        );

        let slow = ops.start("p", "slow", BTreeMap::new(), true, |ctx| async move {
            ctx.cancelled().await;
            Err(OpError::Cancelled)
        });
        let still = ops.wait(&slow.id, Duration::from_millis(50)).await.unwrap();
        assert_eq!(still.status_code, 103);
        ops.cancel(&slow.id).unwrap();
        let done = ops.wait(&slow.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(done.status_code, 401);
        assert_eq!(ops.list(Some("p")).len(), 2);
        assert_eq!(ops.list(None).len(), 3);
        assert!(matches!(ops.get("nope"), Err(BackendError::NotFound(_))));
    }
}
