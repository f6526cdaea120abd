//! The in-process event bus: one producer (the backend) and any number of
//! subscribers. A broadcast channel never blocks the producer; a subscriber
//! that falls too far behind is told so and dropped.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::types::Event;

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
