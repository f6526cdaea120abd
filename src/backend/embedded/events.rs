//! Events on the embedded backend: its own in-process bus.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::EmbeddedBackend;
use crate::backend::types::Event;
use crate::backend::{BackendError, Events};

#[async_trait::async_trait]
impl Events for EmbeddedBackend {
    fn subscribe(&self) -> Result<broadcast::Receiver<Arc<Event>>, BackendError> {
        Ok(self.bus.subscribe())
    }

    /// lxgate's own log is the embedded backend's: there is no other.
    async fn subscribe_logging(&self) -> Result<mpsc::Receiver<Event>, BackendError> {
        Err(BackendError::NotSupported(
            "logging events is not supported by this backend yet".into(),
        ))
    }
}
