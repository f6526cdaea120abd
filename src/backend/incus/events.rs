//! Events on Incus: one upstream `/1.0/events` websocket (all projects, all
//! types) feeding the event bus, reconnecting with backoff when Incus goes
//! away, and a websocket of its own for each `logging` subscriber.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;

use super::IncusBackend;
use super::client::IncusClient;
use super::list_cache::ListCache;
use crate::backend::events::EventBus;
use crate::backend::types::Event;
use crate::backend::{BackendError, Events};

const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long after connecting the stream is trusted to keep lists current.
const LIVE_AFTER: Duration = Duration::from_millis(250);

/// How often lxgate pings incusd on the stream, and how long it goes
/// without any frame back before it takes the connection for lost.
const PING_EVERY: Duration = Duration::from_secs(15);
const SILENT_FOR: Duration = Duration::from_secs(40);

/// `lists` hears of the stream's state and of every event, before any
/// subscriber does.
pub async fn run_upstream(client: IncusClient, bus: EventBus, lists: Arc<ListCache>) {
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
                tracing::info!(endpoint = %client.endpoint(), "connected to the Incus event stream");
                metrics::gauge!("lxgate_events_upstream_connected").set(1.0);
                was_connected = true;
                backoff = Duration::from_millis(250);
                // incusd adds the listener only after the upgrade: a change
                // in between sends it no event. Lists are kept only from a
                // moment later, and read afresh then.
                let live = tokio::time::sleep(LIVE_AFTER);
                tokio::pin!(live);
                let mut announced = false;
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut heard = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        msg = socket.next() => {
                            heard = tokio::time::Instant::now();
                            match msg {
                                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Event>(&text) {
                                    Ok(event) => {
                                        lists.observe(&event);
                                        bus.publish(event);
                                    }
                                    Err(e) => {
                                        // It might have said anything changed.
                                        lists.changed_somewhere();
                                        tracing::debug!(error = %e, "unparseable Incus event");
                                    }
                                },
                                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                                Some(Ok(_)) => {}
                            }
                        }
                        () = &mut live, if !announced => {
                            lists.connected();
                            announced = true;
                        }
                        _ = ping.tick() => {
                            // A connection dropped on the way (a NAT or a
                            // balancer forgetting it) closes nothing: without
                            // a word from incusd, not even a pong, it is over.
                            if heard.elapsed() > SILENT_FOR {
                                tracing::warn!(endpoint = %client.endpoint(), "the Incus event stream went silent");
                                break;
                            }
                            if socket.send(Message::Ping(Default::default())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                lists.disconnected();
                metrics::gauge!("lxgate_events_upstream_connected").set(0.0);
                tracing::warn!(endpoint = %client.endpoint(), "the Incus event stream ended; reconnecting");
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

#[async_trait::async_trait]
impl Events for IncusBackend {
    /// The one upstream connection's events (`run_upstream`).
    fn subscribe(&self) -> Result<broadcast::Receiver<Arc<Event>>, BackendError> {
        Ok(self.bus.subscribe())
    }

    /// A dedicated `logging` event stream for one subscriber. The connection
    /// closes when the receiver is dropped or cannot keep up.
    async fn subscribe_logging(&self) -> Result<mpsc::Receiver<Event>, BackendError> {
        let mut socket = self
            .client
            .websocket(
                &["events"],
                &[("type", "logging"), ("all-projects", "true")],
            )
            .await?;
        let (tx, rx) = mpsc::channel(crate::backend::events::BUFFER);
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
}
