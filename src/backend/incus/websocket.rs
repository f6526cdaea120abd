//! Websockets to Incus (`/1.0/events`, operation websockets) over the same
//! transport as the REST client: the unix socket, or TLS with lxgate's
//! client certificate.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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

/// How long one member gets to accept the connection (as the REST client's
/// `connect_timeout`), and then to finish the TLS and websocket handshakes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn unavailable(endpoint: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("{endpoint}: websocket: {e}"))
}

impl IncusClient {
    /// Opens a websocket to `/1.0/<segments>?<query>`: on the current
    /// member, or on the next ones while a member cannot be reached (the
    /// connection refused or timed out), as the REST requests do.
    pub async fn websocket(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<IncusSocket, BackendError> {
        super::client::check_segments(segments)?;
        let mut last = None;
        for (member, base) in self.members() {
            let endpoint = base.to_string();
            let http_url = self.url_on(base, segments, query);
            match self.connect(&http_url).await {
                Ok(stream) => {
                    self.settle_on(member);
                    return tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        self.handshake(&http_url, stream),
                    )
                    .await
                    .map_err(|_| {
                        BackendError::Timeout(format!("{endpoint}: websocket handshake"))
                    })?;
                }
                Err(e) if self.clustered() => {
                    tracing::warn!(member = %endpoint, error = %e, "cannot reach an Incus member");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| unavailable(&self.endpoint(), "no member could be reached")))
    }

    /// The transport to the member of `url`: the unix socket, or a TCP
    /// connection (TLS comes in `handshake`).
    async fn connect(&self, url: &Url) -> Result<Connected, BackendError> {
        let endpoint = self.endpoint();
        let connect = async {
            match &self.ws {
                WsTransport::Unix(path) => UnixStream::connect(path)
                    .await
                    .map(Connected::Unix)
                    .map_err(|e| unavailable(&endpoint, e)),
                WsTransport::Tls(_) => {
                    let host = url.host_str().unwrap_or_default();
                    let port = url.port_or_known_default().unwrap_or(8443);
                    TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
                        .await
                        .map(Connected::Tcp)
                        .map_err(|e| unavailable(url.as_str(), e))
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unavailable(url.as_str(), "connect timed out"))?
    }

    /// TLS (remote) and the websocket upgrade on a connected transport.
    async fn handshake(
        &self,
        http_url: &Url,
        conn: Connected,
    ) -> Result<IncusSocket, BackendError> {
        let endpoint = self.endpoint();
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
        let stream = match (conn, &self.ws) {
            (Connected::Unix(s), _) => Stream::Unix(s),
            (Connected::Tcp(tcp), WsTransport::Tls(config)) => {
                let host = http_url.host_str().unwrap_or_default();
                let name = ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                )
                .map_err(|e| BackendError::Internal(anyhow::anyhow!("server name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| BackendError::TlsFailure(format!("{endpoint}: {e}")))?;
                Stream::Tls(Box::new(tls))
            }
            (Connected::Tcp(_), WsTransport::Unix(_)) => {
                return Err(BackendError::Internal(anyhow::anyhow!(
                    "a TCP connection on the unix socket transport"
                )));
            }
        };
        let (socket, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) if resp.status() == 403 => {
                    BackendError::Forbidden(format!("{endpoint}: websocket refused"))
                }
                tokio_tungstenite::tungstenite::Error::Http(resp) if resp.status() == 404 => {
                    BackendError::NotFound(Missing::Other("the websocket no longer exists".into()))
                }
                other => unavailable(&endpoint, other),
            })?;
        Ok(socket)
    }
}

/// A transport connection before any handshake.
enum Connected {
    Unix(UnixStream),
    Tcp(TcpStream),
}
