//! Websockets to Incus (`/1.0/events`, operation websockets) over the same
//! transport as the REST client: the unix socket, or TLS with lxgate's
//! client certificate.

use std::pin::Pin;
use std::task::{Context, Poll};

use reqwest::Url;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::client::{IncusClient, WsTransport};
use crate::backend::{BackendError, Missing};

/// Either transport, so one websocket type serves both modes.
pub enum Stream {
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type IncusSocket = WebSocketStream<Stream>;

fn unavailable(client: &IncusClient, e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("{}: websocket: {e}", client.endpoint))
}

impl IncusClient {
    /// Opens a websocket to `/1.0/<segments>?<query>`.
    pub async fn websocket(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<IncusSocket, BackendError> {
        let http_url = self.url(segments, query);
        let mut ws_url: Url = http_url.clone();
        let scheme = if http_url.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        ws_url
            .set_scheme(scheme)
            .map_err(|()| BackendError::Internal(anyhow::anyhow!("cannot make a websocket URL")))?;
        let request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("websocket request: {e}")))?;
        let connect = async {
            let stream = match &self.ws {
                WsTransport::Unix(path) => Stream::Unix(
                    UnixStream::connect(path)
                        .await
                        .map_err(|e| unavailable(self, e))?,
                ),
                WsTransport::Tls(config) => {
                    let host = http_url.host_str().unwrap_or_default().to_owned();
                    let port = http_url.port_or_known_default().unwrap_or(8443);
                    let tcp = TcpStream::connect((host.as_str(), port))
                        .await
                        .map_err(|e| unavailable(self, e))?;
                    let name = ServerName::try_from(
                        host.trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_owned(),
                    )
                    .map_err(|e| BackendError::Internal(anyhow::anyhow!("server name: {e}")))?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| BackendError::TlsFailure(format!("{}: {e}", self.endpoint)))?;
                    Stream::Tls(Box::new(tls))
                }
            };
            let (socket, _) = tokio_tungstenite::client_async(request, stream)
                .await
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(resp) if resp.status() == 403 => {
                        BackendError::Forbidden(format!("{}: websocket refused", self.endpoint))
                    }
                    tokio_tungstenite::tungstenite::Error::Http(resp) if resp.status() == 404 => {
                        BackendError::NotFound(Missing::Other(
                            "the websocket no longer exists".into(),
                        ))
                    }
                    other => unavailable(self, other),
                })?;
            Ok::<_, BackendError>(socket)
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), connect)
            .await
            .map_err(|_| BackendError::Timeout(format!("{}: websocket connect", self.endpoint)))?
    }
}
