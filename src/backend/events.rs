//! Events: the `Events` trait, and the in-process event bus behind it (one
//! producer, the backend, and any number of subscribers). A broadcast
//! channel never blocks the producer; a subscriber that falls too far behind
//! is told so and dropped.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::BackendError;
use super::types::Event;

#[async_trait::async_trait]
pub trait Events: Send + Sync {
    /// A subscription to every event of every project; the API layer filters
    /// by what the caller may see.
    fn subscribe(&self) -> Result<broadcast::Receiver<Arc<Event>>, BackendError>;

    /// The backend's log messages as `logging` events (admins only), on a
    /// stream of their own: they are many, and few want them.
    async fn subscribe_logging(&self) -> Result<mpsc::Receiver<Event>, BackendError>;
}

/// Events a subscriber may lag behind before it is dropped.
pub const BUFFER: usize = 1024;

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BUFFER).0,
        }
    }
}

impl EventBus {
    pub fn publish(&self, event: Event) {
        // No subscribers is fine: events are not stored.
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Aborts a background task when its owner is dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
