//! The in-process operation manager: long work runs as a task whose state is
//! an Incus-shaped `Operation` (103 Running -> 200 Success / 400 Failure /
//! 401 Cancelled), published as `operation` events on the bus, waitable and
//! cancellable, and kept for an hour after it finishes.
//!
//! What recorded commands printed is held here too, under one cap across
//! all operations (`EXEC_OUTPUT_TOTAL_BYTES`, see `OutputBudget`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::EmbeddedBackend;
use crate::backend::events::EventBus;
use crate::backend::types::{Event, Operation};
use crate::backend::{BackendError, Missing};

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
    /// Output bytes the running work has reserved in the budget.
    reserved: Mutex<usize>,
}

/// The metadata keys that hold recorded output.
const OUTPUT_KEYS: [&str; 2] = ["stdout", "stderr"];

/// Bytes of recorded output in an operation's metadata.
fn output_size(meta: &Value) -> usize {
    OUTPUT_KEYS
        .iter()
        .filter_map(|k| meta.get(*k).and_then(Value::as_str))
        .map(str::len)
        .sum()
}

/// Recorded output kept in memory, capped overall: running commands
/// reserve what they keep as they read it; finished operations hold theirs,
/// oldest first, until newer output needs the room. Then the oldest loses
/// its `stdout` and `stderr` and says `output_expired: true`.
struct OutputBudget {
    cap: usize,
    used: usize,
    held: VecDeque<(Arc<Entry>, usize)>,
}

impl OutputBudget {
    /// Up to `n` more bytes, expiring the oldest finished output for room;
    /// less (down to none) when running commands hold the rest.
    fn reserve(&mut self, n: usize) -> usize {
        while self.used + n > self.cap {
            let Some((entry, bytes)) = self.held.pop_front() else {
                break;
            };
            self.used -= bytes;
            expire_output(&entry);
        }
        let granted = n.min(self.cap.saturating_sub(self.used));
        self.used += granted;
        granted
    }

    /// A finished operation: what it reserved becomes what its metadata
    /// holds (lossy UTF-8 may have made it a little larger), and older
    /// output goes while the total is over the cap.
    fn settle(&mut self, entry: &Arc<Entry>, reserved: usize, holds: usize) {
        self.used = self.used.saturating_sub(reserved) + holds;
        while self.used > self.cap {
            let Some((old, bytes)) = self.held.pop_front() else {
                break;
            };
            self.used -= bytes;
            expire_output(&old);
        }
        if holds > 0 {
            self.held.push_back((entry.clone(), holds));
        }
    }

    /// Operations forgotten: their output is no longer held.
    fn forget(&mut self, gone: &[Arc<Entry>]) {
        let mut freed = 0;
        self.held.retain(|(e, bytes)| {
            let keep = !gone.iter().any(|g| Arc::ptr_eq(g, e));
            if !keep {
                freed += bytes;
            }
            keep
        });
        self.used -= freed;
    }
}

fn expire_output(entry: &Entry) {
    entry.state.send_modify(|op| {
        if let Some(meta) = op.metadata.as_object_mut() {
            for k in OUTPUT_KEYS {
                meta.remove(k);
            }
            meta.insert("output_expired".into(), true.into());
        }
    });
}

/// Handed to the work: progress reports and the cancellation signal.
#[derive(Clone)]
pub struct OpCtx {
    entry: Arc<Entry>,
    bus: EventBus,
    budget: Arc<Mutex<OutputBudget>>,
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

    /// Room for `n` more bytes of recorded output: how many of them may be
    /// kept (fewer, down to 0, when the total cap is held by running work).
    pub fn reserve_output(&self, n: usize) -> usize {
        let granted = self.budget.lock().expect("output budget lock").reserve(n);
        *self.entry.reserved.lock().expect("reserved lock") += granted;
        granted
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

/// Operation events carry no recorded output (as Incus's do not): it is
/// read from the operation, and the bus keeps its last events in memory.
fn publish(bus: &EventBus, entry: &Entry) {
    let mut op = entry.state.borrow().clone();
    if let Some(meta) = op.metadata.as_object_mut() {
        for k in OUTPUT_KEYS {
            meta.remove(k);
        }
    }
    bus.publish(Event {
        kind: "operation".into(),
        timestamp: now(),
        metadata: serde_json::to_value(&op).unwrap_or(Value::Null),
        location: super::host::member_name().into(),
        project: entry.project.clone(),
    });
}

/// Publishes a lifecycle event (`instance-started`, `image-created`...).
pub fn lifecycle(bus: &EventBus, project: &str, action: &str, source: &str, context: Value) {
    bus.publish(Event {
        kind: "lifecycle".into(),
        timestamp: now(),
        metadata: json!({"action": action, "source": source, "context": context}),
        location: super::host::member_name().into(),
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
    budget: Arc<Mutex<OutputBudget>>,
}

impl Operations {
    /// `output_cap`: bytes of recorded output kept across all operations.
    pub fn new(bus: EventBus, output_cap: usize) -> Self {
        Self {
            entries: Arc::default(),
            bus,
            budget: Arc::new(Mutex::new(OutputBudget {
                cap: output_cap,
                used: 0,
                held: VecDeque::new(),
            })),
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
            location: super::host::member_name().into(),
            requested_by: None,
            project: project.to_owned(),
        };
        let entry = Arc::new(Entry {
            state: watch::Sender::new(op.clone()),
            cancel: watch::Sender::new(false),
            finished: Mutex::new(None),
            project: project.to_owned(),
            reserved: Mutex::new(0),
        });
        self.entries
            .lock()
            .expect("operations lock")
            .insert(op.id.clone(), entry.clone());
        publish(&self.bus, &entry);
        let ctx = OpCtx {
            entry: entry.clone(),
            bus: self.bus.clone(),
            budget: self.budget.clone(),
        };
        let bus = self.bus.clone();
        let budget = self.budget.clone();
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
            let reserved = std::mem::take(&mut *entry.reserved.lock().expect("reserved lock"));
            let holds = output_size(&entry.state.borrow().metadata);
            budget
                .lock()
                .expect("output budget lock")
                .settle(&entry, reserved, holds);
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
            .ok_or_else(|| BackendError::NotFound(Missing::operation(id)))
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
        // 409, as the API answers when it sees this first: the operation's
        // state, not the request, is what stands in the way (it may have
        // finished between the two looks).
        if op.is_done() {
            return Err(BackendError::Conflict(
                "The operation has already finished".into(),
            ));
        }
        if !op.may_cancel {
            return Err(BackendError::Conflict(
                "This operation cannot be cancelled".into(),
            ));
        }
        entry.cancel.send_replace(true);
        Ok(())
    }

    fn forget_old(&self) {
        let mut gone = Vec::new();
        self.entries
            .lock()
            .expect("operations lock")
            .retain(|_, e| {
                let keep = e
                    .finished
                    .lock()
                    .expect("finished lock")
                    .is_none_or(|t| t.elapsed() < KEEP_FINISHED);
                if !keep {
                    gone.push(e.clone());
                }
                keep
            });
        if !gone.is_empty() {
            self.budget
                .lock()
                .expect("output budget lock")
                .forget(&gone);
        }
    }
}

#[async_trait::async_trait]
impl crate::backend::Operations for EmbeddedBackend {
    async fn list_operations(&self, project: Option<&str>) -> Result<Vec<Operation>, BackendError> {
        Ok(self.ops.list(project))
    }

    async fn get_operation(&self, id: &str) -> Result<Operation, BackendError> {
        self.ops.get(id)
    }

    async fn wait_operation(&self, id: &str, timeout_secs: u64) -> Result<Operation, BackendError> {
        self.ops.wait(id, Duration::from_secs(timeout_secs)).await
    }

    async fn cancel_operation(&self, id: &str) -> Result<(), BackendError> {
        self.ops.cancel(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_failure_and_cancel() {
        let ops = Operations::new(EventBus::default(), 1024);
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

    #[tokio::test]
    async fn recorded_output_is_capped_across_operations() {
        let ops = Operations::new(EventBus::default(), 100);
        let printing = |n: usize| {
            move |ctx: OpCtx| async move {
                let kept = ctx.reserve_output(n);
                Ok(json!({"stdout": "x".repeat(kept), "stderr": ""}))
            }
        };
        let a = ops.start("p", "a", BTreeMap::new(), false, printing(60));
        ops.wait(&a.id, Duration::from_secs(5)).await.unwrap();
        let b = ops.start("p", "b", BTreeMap::new(), false, printing(60));
        let b = ops.wait(&b.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(b.metadata["stdout"].as_str().unwrap().len(), 60);
        // The oldest made room.
        let a = ops.get(&a.id).unwrap();
        assert_eq!(a.metadata.get("stdout"), None);
        assert_eq!(a.metadata["output_expired"], true);

        // Running work holding the whole budget leaves none for others.
        let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<usize>();
        let c = ops.start("p", "c", BTreeMap::new(), false, move |ctx| async move {
            let _ = held_tx.send(ctx.reserve_output(100));
            let _ = hold_rx.await;
            Ok(Value::Null)
        });
        assert_eq!(held_rx.await.unwrap(), 100);
        assert_eq!(ops.get(&b.id).unwrap().metadata["output_expired"], true);
        let d = ops.start("p", "d", BTreeMap::new(), false, printing(10));
        let d = ops.wait(&d.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(d.metadata["stdout"], "");
        // Finished without output, c gives it all back.
        hold_tx.send(()).unwrap();
        ops.wait(&c.id, Duration::from_secs(5)).await.unwrap();
        let e = ops.start("p", "e", BTreeMap::new(), false, printing(100));
        let e = ops.wait(&e.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(e.metadata["stdout"].as_str().unwrap().len(), 100);
    }
}
