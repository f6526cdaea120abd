//! One upstream `/1.0/events` websocket (all projects, all types) feeding the
//! event bus, reconnecting with backoff when Incus goes away.

use std::time::Duration;

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::client::IncusClient;
use crate::backend::events::EventBus;
use crate::backend::types::Event;

const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub async fn run_upstream(client: IncusClient, bus: EventBus) {
    let mut backoff = Duration::from_millis(250);
    let mut was_connected = true;
    loop {
        match client
            .websocket(
                &["events"],
                &[
                    // Logging events are many and admins-only: they get a
                    // connection per subscriber (`logging_stream`) instead.
                    ("type", "operation,lifecycle"),
                    ("all-projects", "true"),
                ],
            )
            .await
        {
            Ok(mut socket) => {
                tracing::info!(endpoint = %client.endpoint, "connected to the Incus event stream");
                metrics::gauge!("lxgate_events_upstream_connected").set(1.0);
                was_connected = true;
                backoff = Duration::from_millis(250);
                while let Some(msg) = socket.next().await {
                    match msg {
                        Ok(Message::Text(text)) => match serde_json::from_str::<Event>(&text) {
                            Ok(event) => bus.publish(event),
                            Err(e) => tracing::debug!(error = %e, "unparseable Incus event"),
                        },
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                metrics::gauge!("lxgate_events_upstream_connected").set(0.0);
                tracing::warn!(endpoint = %client.endpoint, "the Incus event stream ended; reconnecting");
            }
            Err(e) => {
                // Say it once per outage, not on every retry.
                if was_connected {
                    tracing::warn!(error = %e, "cannot reach the Incus event stream; retrying with backoff");
                    was_connected = false;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A dedicated `logging` event stream for one subscriber. The connection
/// closes when the receiver is dropped or cannot keep up.
pub async fn logging_stream(
    client: &IncusClient,
) -> Result<tokio::sync::mpsc::Receiver<Event>, crate::backend::BackendError> {
    let mut socket = client
        .websocket(
            &["events"],
            &[("type", "logging"), ("all-projects", "true")],
        )
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(crate::backend::events::BUFFER);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = socket.next().await {
            if let Message::Text(text) = msg
                && let Ok(event) = serde_json::from_str::<Event>(&text)
                && tx.try_send(event).is_err()
            {
                break;
            }
        }
    });
    Ok(rx)
}
