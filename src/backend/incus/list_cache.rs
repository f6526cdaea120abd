//! Lists kept in memory between changes, as Kubernetes clients keep theirs
//! (informers): instance, profile, network and volume lists are answered
//! from here while the one upstream event stream (`events::run_upstream`)
//! is connected, and fetched again after any event that can change them.
//!
//! Nothing is patched from the events themselves: an event only makes the
//! lists it may touch stale. Each list is kept under a stamp made of the
//! counters that such events bump, so a request computes the current stamp
//! and either finds the list fetched since the last relevant change or
//! fetches it (once, however many requests wait for it). A fetch that
//! raced an event is stored under the stamp it started with, which no
//! later request asks for. While the stream is down, or before it is first
//! up, nothing is kept and every request goes to Incus; a reconnection
//! starts a new epoch, since events missed in between are not resent.
//!
//! RBAC and owner-only filtering stay per request, above the backend.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;

use crate::backend::BackendError;
use crate::backend::types::{Event, Instance, Network, Profile, StorageVolume};

/// Project counters: projects hash onto these (a collision only costs a
/// needless fetch).
const STRIPES: usize = 64;

/// However quiet the stream, a list is fetched again after this long: a
/// change Incus sends no event for (a cluster member going away) is not
/// kept out of sight for longer.
const MAX_AGE: Duration = Duration::from_secs(30);

/// The counters a list's freshness depends on, read when it is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Stamp {
    epoch: u64,
    shared: u64,
    scope: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// `None`: every project.
    project: Option<String>,
    /// The filter expression, or the storage pool.
    detail: Option<String>,
    stamp: Stamp,
}

/// The kept lists of one kind.
struct Shelf<T> {
    kind: &'static str,
    lists: Cache<Key, Arc<Vec<T>>>,
}

impl<T: serde::Serialize + Send + Sync + 'static> Shelf<T> {
    fn new(kind: &'static str, bytes: u64) -> Self {
        Self {
            kind,
            lists: Cache::builder()
                // Weighed by what they hold (KiB of JSON, the key's filter
                // included), so that a few lists of large objects cannot
                // hide behind a count of entries or of objects.
                .weigher(|k: &Key, v: &Arc<Vec<T>>| {
                    let bytes = json_len(v.as_ref()) + k.detail.as_ref().map_or(0, String::len);
                    u32::try_from(bytes / 1024 + 1).unwrap_or(u32::MAX)
                })
                .max_capacity(bytes / 1024)
                .time_to_live(MAX_AGE)
                .build(),
        }
    }

    async fn get(
        &self,
        key: Key,
        fetch: impl Future<Output = Result<Vec<T>, BackendError>>,
    ) -> Result<Arc<Vec<T>>, BackendError> {
        let mut fetched = false;
        let got = self
            .lists
            .try_get_with(key, async {
                fetched = true;
                fetch.await.map(Arc::new)
            })
            .await;
        let result = if fetched { "miss" } else { "hit" };
        metrics::counter!("lxgate_list_cache_total", "kind" => self.kind, "result" => result)
            .increment(1);
        got.map_err(|e| e.duplicate())
    }
}

/// The length of `v` as JSON, counted without keeping it.
fn json_len<T: serde::Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

/// How Incus describes a recorded command's operation (`task` class when
/// its output is recorded; it changes nothing listed).
pub const EXEC_DESCRIPTION: &str = "Executing command";

/// Filter expressions longer than this are not kept (each distinct one
/// is a list of its own).
const MAX_KEPT_FILTER: usize = 256;

pub struct ListCache {
    enabled: bool,
    live: AtomicBool,
    /// Bumped when the stream connects and when it is lost.
    epoch: AtomicU64,
    /// Bumped by every change: what lists of every project, and lists
    /// whose entries name other projects' things (`used_by`), depend on.
    any: AtomicU64,
    /// Bumped by changes that reach into every project's instances: a
    /// profile (instances show its config expanded, and projects may use
    /// the default project's profiles), a cluster member, a pool, or
    /// anything that names no project.
    shared: AtomicU64,
    /// Bumped by any change in a project (hashed).
    projects: [AtomicU64; STRIPES],
    hasher: std::collections::hash_map::RandomState,
    instances: Shelf<Instance>,
    profiles: Shelf<Profile>,
    networks: Shelf<Network>,
    volumes: Shelf<StorageVolume>,
}

impl ListCache {
    /// Up to `bytes` (as JSON) kept per kind; 0 keeps nothing.
    pub fn new(bytes: u64) -> Self {
        Self {
            enabled: bytes > 0,
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            any: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            projects: std::array::from_fn(|_| AtomicU64::new(0)),
            hasher: Default::default(),
            instances: Shelf::new("instances", bytes),
            profiles: Shelf::new("profiles", bytes),
            networks: Shelf::new("networks", bytes),
            volumes: Shelf::new("volumes", bytes),
        }
    }

    /// The stream is up: what it says from now on is all that changes.
    pub fn connected(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.live.store(true, Ordering::SeqCst);
    }

    /// The stream is gone: nothing kept can be trusted until it is back.
    pub fn disconnected(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes stale what `event` may have changed.
    pub fn observe(&self, event: &Event) {
        if !changes_something(event) {
            return;
        }
        self.any.fetch_add(1, Ordering::SeqCst);
        let action = event.metadata["action"].as_str().unwrap_or_default();
        let reaches_all = event.project.is_empty()
            || (event.kind == "lifecycle" && !action.starts_with("instance-"));
        if reaches_all {
            self.shared.fetch_add(1, Ordering::SeqCst);
        }
        if !event.project.is_empty() {
            self.stripe(&event.project).fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Makes stale what a request lxgate sent may have changed (`segments`:
    /// its path under `/1.0`, `instances/c1`, `profiles/p`, ...): at once, so
    /// that the caller's next list shows its own change even before the
    /// event comes (Incus sends each listener its events on a goroutine of
    /// their own: one may come after the answer).
    pub fn wrote(&self, segments: &[&str], project: &str) {
        // Opening an exec or console session changes nothing listed.
        if let ["instances", _, "exec" | "console"] = segments {
            return;
        }
        let segment = segments.first().copied().unwrap_or_default();
        self.any.fetch_add(1, Ordering::SeqCst);
        if !matches!(segment, "instances" | "operations") {
            self.shared.fetch_add(1, Ordering::SeqCst);
        }
        self.stripe(project).fetch_add(1, Ordering::SeqCst);
    }

    /// Makes every list stale (an event that could not be read).
    pub fn changed_somewhere(&self) {
        self.any.fetch_add(1, Ordering::SeqCst);
        self.shared.fetch_add(1, Ordering::SeqCst);
    }

    fn stripe(&self, project: &str) -> &AtomicU64 {
        let i = self.hasher.hash_one(project) as usize % STRIPES;
        &self.projects[i]
    }

    /// The stamp to keep lists under now, or `None` if nothing may be kept.
    fn stamp(&self, scope: &AtomicU64) -> Option<Stamp> {
        // The epoch around the liveness: a stream lost after the first read
        // bumps it, so what is fetched now is filed under a stamp no one
        // asks for; one lost and found again between the reads (a task
        // stalled that long) is seen by the second.
        let epoch = self.epoch.load(Ordering::SeqCst);
        if !self.enabled || !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let stamp = Stamp {
            epoch,
            shared: self.shared.load(Ordering::SeqCst),
            scope: scope.load(Ordering::SeqCst),
        };
        (self.epoch.load(Ordering::SeqCst) == epoch).then_some(stamp)
    }

    fn key(&self, project: Option<&str>, detail: Option<&str>) -> Option<Key> {
        if detail.is_some_and(|d| d.len() > MAX_KEPT_FILTER) {
            return None;
        }
        // An instance list of one project changes with that project and with
        // what reaches every project; any other list with anything.
        let scope = project.map_or(&self.any, |p| self.stripe(p));
        Some(Key {
            project: project.map(str::to_owned),
            detail: detail.map(str::to_owned),
            stamp: self.stamp(scope)?,
        })
    }

    /// Instances (Incus recursion 1) of `project` (`None`: all), filtered
    /// by Incus with `filter`; `None` when nothing may be kept now.
    pub async fn instances(
        &self,
        project: Option<&str>,
        filter: Option<&str>,
        fetch: impl Future<Output = Result<Vec<Instance>, BackendError>>,
    ) -> Option<Result<Arc<Vec<Instance>>, BackendError>> {
        let key = self.key(project, filter)?;
        Some(self.instances.get(key, fetch).await)
    }

    /// Profiles of `project`: their `used_by` can name any project's
    /// instances, so any change makes them stale.
    pub async fn profiles(
        &self,
        project: &str,
        fetch: impl Future<Output = Result<Vec<Profile>, BackendError>>,
    ) -> Option<Result<Arc<Vec<Profile>>, BackendError>> {
        let key = self.everywhere(project, None)?;
        Some(self.profiles.get(key, fetch).await)
    }

    /// Networks of `project` (as profiles: `used_by`).
    pub async fn networks(
        &self,
        project: &str,
        fetch: impl Future<Output = Result<Vec<Network>, BackendError>>,
    ) -> Option<Result<Arc<Vec<Network>>, BackendError>> {
        let key = self.everywhere(project, None)?;
        Some(self.networks.get(key, fetch).await)
    }

    /// Custom volumes of `project` in `pool` (as profiles: `used_by`).
    pub async fn volumes(
        &self,
        project: &str,
        pool: &str,
        fetch: impl Future<Output = Result<Vec<StorageVolume>, BackendError>>,
    ) -> Option<Result<Arc<Vec<StorageVolume>>, BackendError>> {
        let key = self.everywhere(project, Some(pool))?;
        Some(self.volumes.get(key, fetch).await)
    }

    fn everywhere(&self, project: &str, detail: Option<&str>) -> Option<Key> {
        Some(Key {
            project: Some(project.to_owned()),
            detail: detail.map(str::to_owned),
            stamp: self.stamp(&self.any)?,
        })
    }
}

/// Whether an event can mean that a list changed: a lifecycle event other
/// than a read, and the end of a background task (a safety net for a change Incus
/// reports no lifecycle event for). Progress updates and the end of exec
/// and console sessions (`websocket` operations) change no list.
fn changes_something(event: &Event) -> bool {
    match event.kind.as_str() {
        // Reads and sessions are reported too (a log or file fetched, an
        // image exported, an exec or console opened): they change nothing
        // listed, and a dashboard tailing a log would otherwise empty the
        // kept lists on every read.
        "lifecycle" => {
            let action = event.metadata["action"].as_str().unwrap_or_default();
            !(action.ends_with("-retrieved")
                || matches!(action, "instance-exec" | "instance-console"))
        }
        "operation" => {
            let op = &event.metadata;
            op["class"].as_str() == Some("task")
                && op["status_code"].as_u64().is_some_and(|c| c >= 200)
                && op["description"].as_str() != Some(EXEC_DESCRIPTION)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, project: &str, metadata: serde_json::Value) -> Event {
        Event {
            kind: kind.into(),
            project: project.into(),
            metadata,
            ..Default::default()
        }
    }

    fn lifecycle(project: &str, action: &str) -> Event {
        event("lifecycle", project, json!({"action": action}))
    }

    fn live() -> ListCache {
        let c = ListCache::new(1 << 20);
        c.connected();
        c
    }

    #[test]
    fn nothing_is_kept_without_the_stream_or_when_off() {
        let c = ListCache::new(1 << 20);
        assert!(c.key(Some("p"), None).is_none(), "before the stream is up");
        c.connected();
        assert!(c.key(Some("p"), None).is_some());
        c.disconnected();
        assert!(c.key(Some("p"), None).is_none(), "while it is down");
        let off = ListCache::new(0);
        off.connected();
        assert!(off.key(Some("p"), None).is_none());
    }

    #[test]
    fn a_reconnection_makes_everything_stale() {
        let c = live();
        let before = c.key(Some("p"), None).unwrap();
        c.disconnected();
        c.connected();
        assert_ne!(before, c.key(Some("p"), None).unwrap());
    }

    #[test]
    fn an_instance_event_makes_its_project_stale_and_no_other() {
        let c = live();
        let p = c.key(Some("p"), None).unwrap();
        let all = c.key(None, None).unwrap();
        let profiles_q = c.everywhere("q", None).unwrap();
        // Find a project on another stripe than `p`.
        let q = (0..)
            .map(|i| format!("q{i}"))
            .find(|q| !std::ptr::eq(c.stripe(q), c.stripe("p")))
            .unwrap();
        let q_before = c.key(Some(&q), None).unwrap();
        c.observe(&lifecycle("p", "instance-started"));
        assert_ne!(p, c.key(Some("p"), None).unwrap());
        assert_ne!(all, c.key(None, None).unwrap(), "all projects include p");
        assert_ne!(
            profiles_q,
            c.everywhere("q", None).unwrap(),
            "used_by may name p's"
        );
        assert_eq!(q_before, c.key(Some(&q), None).unwrap());
    }

    #[test]
    fn a_profile_or_server_wide_event_makes_every_instance_list_stale() {
        let c = live();
        for ev in [
            lifecycle("default", "profile-updated"),
            lifecycle("", "storage-pool-updated"),
            lifecycle("", "cluster-member-renamed"),
        ] {
            let before = c.key(Some("elsewhere"), None).unwrap();
            c.observe(&ev);
            assert_ne!(before, c.key(Some("elsewhere"), None).unwrap(), "{ev:?}");
        }
    }

    #[test]
    fn only_finished_tasks_count_among_operations() {
        let c = live();
        let before = c.key(None, None).unwrap();
        for quiet in [
            json!({"class": "task", "status_code": 103}),
            json!({"class": "websocket", "status_code": 200}),
            json!({"class": "task", "status_code": 200, "description": "Executing command"}),
        ] {
            c.observe(&event("operation", "p", quiet));
        }
        c.observe(&event("logging", "", json!({})));
        assert_eq!(before, c.key(None, None).unwrap());
        c.observe(&event(
            "operation",
            "p",
            json!({"class": "task", "status_code": 400}),
        ));
        assert_ne!(before, c.key(None, None).unwrap());
    }

    #[test]
    fn lxgates_own_writes_make_lists_stale_at_once() {
        let c = live();
        let p = c.key(Some("p"), None).unwrap();
        c.wrote(&["instances", "c1", "exec"], "p");
        c.wrote(&["instances", "c1", "console"], "p");
        assert_eq!(
            p,
            c.key(Some("p"), None).unwrap(),
            "a session changes nothing"
        );
        c.wrote(&["instances", "c1"], "p");
        let after_instance = c.key(Some("p"), None).unwrap();
        assert_ne!(p, after_instance);
        let elsewhere = c.key(Some("elsewhere"), None).unwrap();
        c.wrote(&["profiles", "x"], "p");
        assert_ne!(
            elsewhere,
            c.key(Some("elsewhere"), None).unwrap(),
            "a profile reaches every project's instances"
        );
    }

    #[test]
    fn reads_reported_as_events_change_nothing() {
        let c = live();
        let before = c.key(Some("p"), None).unwrap();
        for action in [
            "instance-log-retrieved",
            "instance-file-retrieved",
            "image-retrieved",
            "instance-exec",
            "instance-console",
        ] {
            c.observe(&lifecycle("p", action));
        }
        assert_eq!(before, c.key(Some("p"), None).unwrap());
    }

    #[test]
    fn long_filters_are_not_kept() {
        let c = live();
        assert!(c.key(Some("p"), Some("status eq Running")).is_some());
        assert!(
            c.key(Some("p"), Some(&"x".repeat(MAX_KEPT_FILTER + 1)))
                .is_none()
        );
    }

    #[test]
    fn lists_are_weighed_by_their_json() {
        assert_eq!(json_len(&vec!["ab", "c"]), br#"["ab","c"]"#.len());
    }

    #[tokio::test]
    async fn concurrent_misses_fetch_once_and_errors_are_not_kept() {
        let c = live();
        let calls = AtomicU64::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, BackendError>(Vec::<Profile>::new())
        };
        let (a, b) = tokio::join!(c.profiles("p", fetch()), c.profiles("p", fetch()));
        assert!(a.unwrap().is_ok() && b.unwrap().is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let failing = async { Err(BackendError::Unavailable("away".into())) };
        let got = c.networks("p", failing).await.unwrap();
        assert!(matches!(got, Err(BackendError::Unavailable(_))));
        let again = c.networks("p", async { Ok(Vec::new()) }).await.unwrap();
        assert!(again.is_ok(), "a failed fetch is not kept");
    }
}
