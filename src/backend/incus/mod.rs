//! The Incus backend: a real Incus (or LXD) server over its unix socket or
//! over HTTPS with mutual TLS.

pub mod backups;
pub mod client;
pub mod cluster;
pub mod events;
pub mod exec;
pub mod files;
pub mod images;
pub mod instances;
pub mod list_cache;
pub mod networks;
pub mod operations;
pub mod profiles;
pub mod projects;
pub mod snapshots;
pub mod storage;
pub mod system;
pub mod tls;
pub mod trust;
pub mod volume_snapshots;
pub mod websocket;

use std::sync::Arc;

use super::events::{AbortOnDrop, EventBus};
pub use client::IncusClient;
use list_cache::ListCache;

pub struct IncusBackend {
    client: IncusClient,
    bus: EventBus,
    /// Bytes of a recorded exec's stdout, and of its stderr, read back
    /// (`EXEC_OUTPUT_MAX_BYTES`).
    exec_output_max: usize,
    /// Lists answered from memory while the event stream is up.
    lists: Arc<ListCache>,
    _upstream: Option<AbortOnDrop>,
}

impl IncusBackend {
    /// A backend without the event stream (for one-off commands).
    pub fn new(client: IncusClient) -> Self {
        Self {
            client,
            bus: EventBus::default(),
            exec_output_max: super::types::OutputLimits::default().per_stream,
            lists: Arc::new(ListCache::new(0)),
            _upstream: None,
        }
    }

    /// A backend whose event stream runs in the background (needs a runtime),
    /// keeping up to `list_cache_bytes` of lists per kind in memory
    /// (`list_cache`; 0 keeps none).
    pub fn with_events(client: IncusClient, list_cache_bytes: u64) -> Self {
        let bus = EventBus::default();
        let lists = Arc::new(ListCache::new(list_cache_bytes));
        let told = lists.clone();
        let client = client.on_write(Arc::new(move |segments, project| {
            told.wrote(segments, project)
        }));
        let upstream = tokio::spawn(events::run_upstream(
            client.clone(),
            bus.clone(),
            lists.clone(),
        ));
        Self {
            client,
            bus,
            exec_output_max: super::types::OutputLimits::default().per_stream,
            lists,
            _upstream: Some(AbortOnDrop(upstream)),
        }
    }

    /// Recorded exec output caps other than the defaults. Incus keeps the
    /// output in its own files, so only the per-stream cap applies here.
    pub fn with_output_limits(mut self, limits: super::types::OutputLimits) -> Self {
        self.exec_output_max = limits.per_stream;
        self
    }
}
