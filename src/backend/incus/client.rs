//! The Incus REST client, layered like Incus's own Go client:
//! `raw` (one HTTP request, transport errors mapped) -> `query` (`/1.0`,
//! project, the response envelope parsed once into data or a typed
//! `BackendError`) -> `query_struct` (typed JSON).
//!
//! Remote mode may name several members of an Incus cluster (every member
//! serves the whole API): requests go to the member that answered last and
//! fail over to the next when it cannot be reached (`send`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use super::tls::{self, ServerTrust};
use crate::backend::types::Operation;
use crate::backend::{BackendError, Missing};
use crate::config::{IncusConfig, IncusMode};

/// Where lxgate keeps its Incus client identity unless configured otherwise.
pub struct IdentityPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_cert: PathBuf,
}

impl IdentityPaths {
    pub fn resolve(cfg: &IncusConfig, data_dir: &std::path::Path) -> Self {
        let dir = data_dir.join("incus");
        Self {
            cert: cfg
                .client_cert_path
                .clone()
                .unwrap_or_else(|| dir.join("client.crt")),
            key: cfg
                .client_key_path
                .clone()
                .unwrap_or_else(|| dir.join("client.key")),
            server_cert: cfg
                .server_cert_path
                .clone()
                .unwrap_or_else(|| dir.join("server.crt")),
        }
    }
}

/// The Incus response envelope (sync, async or error).
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_code: u16,
    #[serde(default)]
    pub operation: String,
    /// Kept as Incus wrote it and read once, straight into the type the
    /// caller wants: a list of a hundred instances built as a `Value` and
    /// then converted cost as much again.
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
}

impl Envelope {
    /// The metadata as a `T` (`null` when Incus sent none).
    pub fn metadata<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.metadata.as_deref().map_or("null", RawValue::get))
    }
}

pub struct Response {
    pub envelope: Envelope,
    pub etag: Option<String>,
}

impl Response {
    /// The background operation an async answer describes; it runs in
    /// `project` (Incus's operation objects do not say).
    pub fn into_operation(self, project: &str) -> Result<Operation, BackendError> {
        if self.envelope.kind != "async" {
            return Err(BackendError::Upstream(format!(
                "expected a background operation from Incus, got a {} response",
                self.envelope.kind
            )));
        }
        let mut op: Operation = self
            .envelope
            .metadata()
            .map_err(|e| BackendError::Upstream(format!("unexpected Incus operation: {e}")))?;
        op.project = project.to_owned();
        Ok(op)
    }

    /// The operation of an answer that may be sync (`None`) or async.
    pub fn into_maybe_operation(self, project: &str) -> Result<Option<Operation>, BackendError> {
        if self.envelope.kind == "async" {
            self.into_operation(project).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The project a request's `query` names (`default` when it names none).
pub fn project_in<'a>(query: &[(&str, &'a str)]) -> &'a str {
    query
        .iter()
        .find(|(k, _)| *k == "project")
        .map_or("default", |(_, v)| v)
}

/// How websockets reach Incus (reqwest does not do websockets).
#[derive(Clone)]
pub enum WsTransport {
    Unix(PathBuf),
    Tls(std::sync::Arc<rustls::ClientConfig>),
}

#[derive(Clone)]
pub struct IncusClient {
    http: reqwest::Client,
    /// Where Incus answers: one base URL for the unix socket, each member's
    /// for a cluster (in the order `INCUS_REMOTE_URL` lists them).
    bases: Arc<[Url]>,
    /// The index in `bases` requests go to first: the member that answered
    /// last. Shared by every clone (the event stream's too), so the first
    /// request to find a member down spares the others the wait.
    current: Arc<AtomicUsize>,
    pub(super) ws: WsTransport,
    /// For the unix socket, its path (shown instead of the placeholder URL).
    socket: Option<PathBuf>,
    /// Told of every request that may have changed something (see
    /// `on_write`).
    writes: Option<WriteHook>,
}

/// Hears of a request that may have changed something once Incus answered
/// it: its path under `/1.0` (`["instances", "c1"]`) and the project it
/// named (`default` when none).
pub type WriteHook = Arc<dyn Fn(&[&str], &str) + Send + Sync>;

/// A transport error that means the member was never reached: the
/// connection was refused or timed out, so nothing of the request was sent
/// and another member may take it. A TLS failure is no such error (every
/// member presents the same cluster certificate: it would fail there too).
fn unreachable(e: &reqwest::Error) -> bool {
    e.is_connect() && find_tls_error(e).is_none()
}

/// Also worth another member for a request that changes nothing: a pooled
/// connection the member closed as it went down.
fn lost_idempotent(e: &reqwest::Error) -> bool {
    !e.is_timeout() && find_tls_error(e).is_none() && (e.is_request() || e.is_body())
}

impl IncusClient {
    pub fn new(cfg: &IncusConfig, data_dir: &std::path::Path) -> Result<Self, String> {
        let builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(std::time::Duration::from_secs(5))
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("lxgate/", env!("CARGO_PKG_VERSION")));
        match cfg.mode {
            IncusMode::Local => {
                // No idle pooling on the unix socket: incusd peeks at the first
                // bytes of each new connection inside its accept loop, so a pooled
                // connection that was opened (a connect race) but never written to
                // stalls incusd for every client until it is closed.
                let http = builder
                    .pool_max_idle_per_host(0)
                    .unix_socket(cfg.socket_path.clone())
                    .build()
                    .map_err(|e| format!("Incus client: {e}"))?;
                Ok(Self {
                    http,
                    ws: WsTransport::Unix(cfg.socket_path.clone()),
                    bases: vec![Url::parse("http://incus").expect("static URL")].into(),
                    current: Arc::default(),
                    socket: Some(cfg.socket_path.clone()),
                    writes: None,
                })
            }
            IncusMode::Remote => {
                if cfg.remote_urls.is_empty() {
                    return Err("INCUS_REMOTE_URL is required in remote mode".into());
                }
                let bases = cfg
                    .remote_urls
                    .iter()
                    .map(|url| {
                        let base =
                            Url::parse(url).map_err(|e| format!("INCUS_REMOTE_URL {url}: {e}"))?;
                        if base.scheme() != "https" {
                            return Err(format!(
                                "INCUS_REMOTE_URL must list https:// URLs (got {url})"
                            ));
                        }
                        Ok(base)
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let paths = IdentityPaths::resolve(cfg, data_dir);
                let trust = match &cfg.trusted_ca_path {
                    Some(ca) => ServerTrust::Ca(
                        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_file_iter(ca)
                            .map_err(|e| format!("INCUS_TRUSTED_CA_PATH {}: {e}", ca.display()))?
                            .collect::<Result<_, _>>()
                            .map_err(|e| format!("INCUS_TRUSTED_CA_PATH {}: {e}", ca.display()))?,
                    ),
                    None => ServerTrust::Pinned(tls::read_cert(&paths.server_cert).map_err(|e| {
                        format!("server certificate (INCUS_SERVER_CERT_PATH; `lxgate remote trust` pins it): {e}")
                    })?),
                };
                let config = tls::client_config(
                    trust,
                    tls::read_cert(&paths.cert)
                        .map_err(|e| format!("client certificate (INCUS_CLIENT_CERT_PATH): {e}"))?,
                    tls::read_key(&paths.key)
                        .map_err(|e| format!("client key (INCUS_CLIENT_KEY_PATH): {e}"))?,
                    cfg.insecure_tls,
                )?;
                Ok(Self::remote_with(builder, bases, config)?)
            }
        }
    }

    /// A remote client of the members at `bases` (one or more) from a ready
    /// TLS configuration (also used by `remote trust`).
    pub fn remote_with(
        builder: reqwest::ClientBuilder,
        bases: Vec<Url>,
        config: rustls::ClientConfig,
    ) -> Result<Self, String> {
        if bases.is_empty() {
            return Err("no Incus URL".into());
        }
        let ws = WsTransport::Tls(std::sync::Arc::new(config.clone()));
        let http = builder
            .tls_backend_preconfigured(config)
            .build()
            .map_err(|e| format!("Incus client: {e}"))?;
        Ok(Self {
            ws,
            http,
            bases: bases.into(),
            current: Arc::default(),
            socket: None,
            writes: None,
        })
    }

    /// The member requests go to first (shown in errors, logs and
    /// `system/info`; never contains secrets).
    pub fn endpoint(&self) -> String {
        self.endpoint_of(self.current.load(Ordering::Relaxed))
    }

    fn endpoint_of(&self, member: usize) -> String {
        match &self.socket {
            Some(path) => format!("unix://{}", path.display()),
            None => self.bases[member % self.bases.len()].to_string(),
        }
    }

    /// The members in the order to try them: the current one, then the
    /// others as listed.
    pub(super) fn members(&self) -> impl Iterator<Item = (usize, &Url)> {
        let n = self.bases.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| {
            let m = (start + i) % n;
            (m, &self.bases[m])
        })
    }

    /// Makes `member` the one requests go to first (it answered).
    pub(super) fn settle_on(&self, member: usize) {
        let before = self.current.swap(member, Ordering::Relaxed);
        if before != member {
            tracing::warn!(
                from = %self.endpoint_of(before),
                to = %self.endpoint_of(member),
                "an Incus member could not be reached: failed over to the next"
            );
        }
    }

    /// Whether there is another member to fail over to.
    pub(super) fn clustered(&self) -> bool {
        self.bases.len() > 1
    }

    /// `/1.0/<segments...>?<query>` on the current member, each segment
    /// percent-encoded, so a name can never change the path it is placed in.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let member = self.current.load(Ordering::Relaxed) % self.bases.len();
        self.url_on(&self.bases[member], segments, query)
    }

    pub(super) fn url_on(&self, base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
        url_under(base, segments, query)
    }

    /// Sends the request `build` makes for a member's URL (`None` once it
    /// cannot make another: a streamed body is sent once), to the current
    /// member first and then to the others while a member cannot be reached
    /// (`unreachable`; for GETs also a connection lost on the way). The
    /// member that answers becomes the current one. Transport failures
    /// become 503 / 502 / 504 errors (the last member's, when none answered).
    async fn send(
        &self,
        idempotent: bool,
        mut build: impl FnMut(&Url) -> Option<reqwest::RequestBuilder>,
    ) -> Result<reqwest::Response, BackendError> {
        let mut last = None;
        for (member, base) in self.members() {
            let Some(req) = build(base) else {
                // A streamed body went to a member that could not be
                // reached: this request fails, the next starts with the
                // member after it.
                self.current.store(member, Ordering::Relaxed);
                break;
            };
            match req.send().await {
                Ok(resp) => {
                    self.settle_on(member);
                    return Ok(resp);
                }
                Err(e)
                    if self.clustered()
                        && (unreachable(&e) || idempotent && lost_idempotent(&e)) =>
                {
                    tracing::warn!(member = %self.endpoint_of(member), error = %error_chain(&e), "cannot reach an Incus member");
                    last = Some(self.transport_error(member, e));
                }
                Err(e) => return Err(self.transport_error(member, e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            BackendError::Unavailable(format!("{}: no member could be reached", self.endpoint()))
        }))
    }

    /// One HTTP request under `/1.0`; transport failures become 503 / 502 /
    /// 504 errors.
    pub async fn raw(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<reqwest::Response, BackendError> {
        self.raw_with_timeout(method, segments, query, body, if_match, None)
            .await
    }

    async fn raw_with_timeout(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        if_match: Option<&str>,
        timeout: Option<std::time::Duration>,
    ) -> Result<reqwest::Response, BackendError> {
        check_segments(segments)?;
        let idempotent = method == Method::GET;
        self.send(idempotent, |base| {
            let mut req = self
                .http
                .request(method.clone(), self.url_on(base, segments, query));
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(etag) = if_match {
                req = req.header(reqwest::header::IF_MATCH, etag);
            }
            Some(req)
        })
        .await
    }

    fn transport_error(&self, member: usize, e: reqwest::Error) -> BackendError {
        let endpoint = self.endpoint_of(member);
        let chain = error_chain(&e);
        if e.is_timeout() {
            return BackendError::Timeout(format!("{endpoint}: {chain}"));
        }
        // TLS failures surface as connect errors: tell them apart by their cause.
        if let Some(tls) = find_tls_error(&e) {
            return BackendError::TlsFailure(format!("{endpoint}: {tls}"));
        }
        BackendError::Unavailable(format!("{endpoint}: {chain}"))
    }

    /// A request under `/1.0`, with the envelope parsed and errors typed.
    pub async fn query(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Response, BackendError> {
        self.query_inner(method, segments, query, body, if_match, None)
            .await
    }

    /// A query that may legitimately take longer than `INCUS_TIMEOUT` (waits).
    pub async fn query_long(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        timeout: std::time::Duration,
    ) -> Result<Response, BackendError> {
        self.query_inner(method, segments, query, None, None, Some(timeout))
            .await
    }

    async fn query_inner(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        if_match: Option<&str>,
        timeout: Option<std::time::Duration>,
    ) -> Result<Response, BackendError> {
        let writes = method != Method::GET;
        let resp = self
            .raw_with_timeout(method, segments, query, body, if_match, timeout)
            .await;
        // Once Incus answered (whatever it said, and before the caller
        // hears of it): a list read after the caller's change must show it.
        if writes && let Some(hook) = &self.writes {
            hook(segments, project_in(query));
        }
        self.envelope_of(resp?).await
    }

    /// `hook` hears of every request through `query` that may change
    /// something (any method but GET), in every clone made after this.
    pub fn on_write(mut self, hook: WriteHook) -> Self {
        self.writes = Some(hook);
        self
    }

    /// A POST with a streamed `multipart/form-data` body (image uploads) and
    /// extra headers. `timeout` replaces `INCUS_TIMEOUT`, which would cut a
    /// large upload short.
    pub async fn query_multipart(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        form: reqwest::multipart::Form,
        headers: &[(&'static str, String)],
        timeout: std::time::Duration,
    ) -> Result<Response, BackendError> {
        check_segments(segments)?;
        // The form streams its parts: it can go to one member only (a
        // member that cannot be reached still hands it to the next).
        let mut form = Some(form);
        let resp = self
            .send(false, |base| {
                let mut req = self
                    .http
                    .post(self.url_on(base, segments, query))
                    .timeout(timeout)
                    .multipart(form.take()?);
                for (name, value) in headers {
                    req = req.header(*name, value);
                }
                Some(req)
            })
            .await?;
        self.envelope_of(resp).await
    }

    /// The envelope of an Incus answer, errors typed.
    async fn envelope_of(&self, resp: reqwest::Response) -> Result<Response, BackendError> {
        let status = resp.status();
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(self.current.load(Ordering::Relaxed), e))?;
        let envelope: Envelope = serde_json::from_slice(&bytes).map_err(|_| {
            BackendError::Upstream(format!(
                "unexpected answer from Incus (HTTP {status}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        if envelope.kind == "error" || !status.is_success() {
            let code = if envelope.error_code != 0 {
                envelope.error_code
            } else {
                status.as_u16()
            };
            return Err(typed_error(code, &envelope.error));
        }
        Ok(Response { envelope, etag })
    }

    /// A request that starts a background operation, and that operation, in
    /// the project `query` names (as Incus's Go client's `queryOperation`).
    pub async fn query_operation(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Operation, BackendError> {
        self.query(method, segments, query, body, if_match)
            .await?
            .into_operation(project_in(query))
    }

    pub async fn query_struct<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<(T, Option<String>), BackendError> {
        let r = self.query(Method::GET, segments, query, None, None).await?;
        let value = r
            .envelope
            .metadata()
            .map_err(|e| BackendError::Upstream(format!("unexpected Incus data: {e}")))?;
        Ok((value, r.etag))
    }

    /// A request under `/1.0` whose body and answer are streamed (backup
    /// export, file push and pull), bounded by `timeout` rather than
    /// `INCUS_TIMEOUT`. An error answer is read and typed as in `query`; a
    /// successful one is returned unread.
    pub async fn raw_stream(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        headers: reqwest::header::HeaderMap,
        body: Option<reqwest::Body>,
        timeout: std::time::Duration,
    ) -> Result<reqwest::Response, BackendError> {
        check_segments(segments)?;
        let idempotent = method == Method::GET;
        // A body in memory can go to any member; one that streams is sent
        // once (to the first member that can be reached).
        let has_body = body.is_some();
        let mut body = body;
        let resp = self
            .send(idempotent, |base| {
                let mut req = self
                    .http
                    .request(method.clone(), self.url_on(base, segments, query))
                    .headers(headers.clone())
                    .timeout(timeout);
                if has_body {
                    let b = body.take()?;
                    body = b
                        .as_bytes()
                        .map(|bytes| reqwest::Body::from(bytes.to_vec()));
                    req = req.body(b);
                }
                Some(req)
            })
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(self.current.load(Ordering::Relaxed), e))?;
        Err(match serde_json::from_slice::<Envelope>(&bytes) {
            Ok(env) if env.error_code != 0 => typed_error(env.error_code, &env.error),
            Ok(env) => typed_error(status.as_u16(), &env.error),
            Err(_) => typed_error(
                status.as_u16(),
                &String::from_utf8_lossy(&bytes[..bytes.len().min(200)]),
            ),
        })
    }
}

/// The rustls error behind a transport error, if any. rustls errors travel
/// inside (possibly nested) `io::Error`s, whose `source()` skips the wrapped
/// error itself, so those are unwrapped with `get_ref()`.
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        cur = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What a path segment keeps as it is: RFC 3986's unreserved characters.
/// Everything else is percent-encoded here, tabs and line breaks included:
/// `Url`'s own segment setter drops those (as the URL standard strips them
/// from any input), which would turn `\t..\t` into a `..` that climbs.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Refuses segments no URL can carry as themselves: `.` and `..` are
/// resolved away by every URL parser, encoded or not. Names are checked
/// before they get here (no name parser takes them); this keeps any path
/// that forgot from reaching another resource.
pub(crate) fn check_segments(segments: &[&str]) -> Result<(), BackendError> {
    match segments.iter().find(|s| matches!(**s, "." | "..")) {
        Some(s) => Err(BackendError::BadRequest(format!(
            "{s:?} cannot name a resource"
        ))),
        None => Ok(()),
    }
}

/// `/1.0/<segments...>?<query>` under `base` (an http(s) URL): each segment
/// and query value percent-encoded, never spliced. `check_segments` must
/// have passed.
pub(crate) fn url_under(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    debug_assert!(check_segments(segments).is_ok(), "{segments:?}");
    let mut url = base.clone();
    let mut path = base.path().trim_end_matches('/').to_owned();
    path.push_str("/1.0");
    for s in segments {
        path.push('/');
        path.extend(utf8_percent_encode(s, SEGMENT));
    }
    url.set_path(&path);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// Incus's error codes keep their meaning (DESIGN §2), except where its
/// words say more than its status: it answers state conflicts ("in use",
/// "busy") as 400 and many refusals of the request's own values as 500 (plain
/// errors its `SmartError` cannot type). A 404 has only Incus's words: the
/// resource method that asked names what is missing (`ReportMissing`).
pub fn typed_error(code: u16, message: &str) -> BackendError {
    let msg = message.to_owned();
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    if status == StatusCode::NOT_FOUND {
        return BackendError::NotFound(Missing::Other(msg));
    }
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::INTERNAL_SERVER_ERROR
    ) && let Some(e) = by_message(&msg)
    {
        return e;
    }
    match status {
        StatusCode::CONFLICT => BackendError::Conflict(msg),
        StatusCode::PRECONDITION_FAILED => BackendError::PreconditionFailed(msg),
        StatusCode::BAD_REQUEST => BackendError::BadRequest(msg),
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => BackendError::Forbidden(msg),
        StatusCode::NOT_IMPLEMENTED => BackendError::NotSupported(msg),
        StatusCode::SERVICE_UNAVAILABLE => BackendError::Unavailable(msg),
        _ => BackendError::Upstream(msg),
    }
}

/// What an Incus 400 or 500 means by its message (Incus 6's wording).
fn by_message(msg: &str) -> Option<BackendError> {
    let has = |s: &str| msg.contains(s);
    // A restricted project's refusals ("Failed checking if instance
    // creation allowed: ... Privileged containers are forbidden"): the
    // policy's answer, said by Incus.
    if (has("Failed checking if instance") || has("Failed checking if volume"))
        && (has("forbidden") || has("not allowed"))
    {
        return Some(BackendError::Restricted(msg.to_owned()));
    }
    // The state of what the request is about, which the client can change:
    // name clashes from Incus's database, project limits, non-empty
    // projects, pools and networks in use, running or busy instances.
    if has("already exists")
        || has("UNIQUE constraint failed")
        || has("Reached maximum number of")
        || has("Reached maximum aggregate value")
        || has("still in use")
        || has("Only empty projects can be removed")
        || has("currently in use")
        || has("Instance is running")
        || has("is busy running")
        || has("used by running instances")
        // A state change, exec, delete or rename that meets the instance's
        // current state.
        || has("is currently running")
        || has("Renaming of running instance not allowed")
        || has("The instance is already")
        || has("Instance is not running")
        || has("The instance is not running")
        || has("The instance is not frozen")
        || has("Instance is frozen")
        || has("The instance is frozen")
    {
        return Some(BackendError::Conflict(msg.to_owned()));
    }
    // A member still starting (or catching up after a restart): come back.
    if has("Server isn't ready yet") {
        return Some(BackendError::Unavailable(msg.to_owned()));
    }
    // What this Incus server cannot do (a storage driver it lacks, or whose
    // tools are not installed).
    if has("Required tool") || msg.starts_with("Unknown driver") || has("isn't currently supported")
    {
        return Some(BackendError::NotSupported(msg.to_owned()));
    }
    // A profile the request names that the project lacks.
    if has("Requested profile") && has("doesn't exist") {
        return Some(BackendError::NotFound(Missing::Other(msg.to_owned())));
    }
    // The request's own values, refused by Incus's validation.
    if has("Invalid value for")
        || has("Unknown configuration key")
        || has("Device validation failed")
        || has("validation for device")
        || has("Invalid option")
        || has("Invalid config")
        || has("Invalid project configuration key")
        || has("Invalid filter")
        || has("Invalid type")
        || has("cannot be changed")
        || has("cannot be shrunk")
        || has("Overflow")
        // A profile change an instance using the profile could not run
        // with (its root disk taken away), which Incus answers with a 500.
        || has("relies on this profile")
    {
        return Some(BackendError::BadRequest(msg.to_owned()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_of(urls: &[&str]) -> IncusClient {
        IncusClient {
            ws: WsTransport::Unix(PathBuf::from("/x")),
            http: reqwest::Client::new(),
            bases: urls.iter().map(|u| Url::parse(u).unwrap()).collect(),
            current: Arc::default(),
            socket: None,
            writes: None,
        }
    }

    #[tokio::test]
    async fn writes_are_told_once_incus_answered_and_reads_are_not() {
        let incus = axum::Router::new().fallback(|| async {
            axum::Json(serde_json::json!({"type": "sync", "status": "Success",
                "status_code": 200, "error_code": 0, "error": "", "metadata": {}}))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, incus).await });
        let told = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let t = told.clone();
        let client =
            client_of(&[&format!("http://{addr}")]).on_write(Arc::new(move |segments, project| {
                t.lock().unwrap().push((segments.join("/"), project.into()))
            }));
        let body = serde_json::json!({});
        client
            .query(Method::GET, &["instances"], &[("project", "p")], None, None)
            .await
            .unwrap();
        client
            .query(
                Method::PATCH,
                &["instances", "c1"],
                &[("project", "p")],
                Some(&body),
                None,
            )
            .await
            .unwrap();
        client
            .query(Method::PUT, &["profiles", "x"], &[], Some(&body), None)
            .await
            .unwrap();
        assert_eq!(
            *told.lock().unwrap(),
            [
                ("instances/c1".to_owned(), "p".to_owned()),
                ("profiles/x".to_owned(), "default".to_owned())
            ]
        );
    }

    #[test]
    fn members_are_tried_from_the_one_that_answered_last() {
        let client = client_of(&["https://m1:8443", "https://m2:8443", "https://m3:8443"]);
        let order = |c: &IncusClient| c.members().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(order(&client), [0, 1, 2]);
        assert_eq!(client.endpoint(), "https://m1:8443/");
        // A clone (the event stream's) shares where requests go.
        let clone = client.clone();
        clone.settle_on(2);
        assert_eq!(order(&client), [2, 0, 1]);
        assert_eq!(client.endpoint(), "https://m3:8443/");
        assert!(
            client
                .url(&["instances"], &[])
                .as_str()
                .starts_with("https://m3:8443/1.0/")
        );
    }

    /// Members that refuse connections: each is tried once, the answer is
    /// 503 naming the last, and the current member stays where it was.
    #[tokio::test]
    async fn when_no_member_answers_the_request_is_503() {
        let closed = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            drop(l);
            format!("http://127.0.0.1:{port}")
        };
        let (a, b) = (closed(), closed());
        let client = client_of(&[&a, &b]);
        let e = client
            .raw(Method::GET, &["instances"], &[], None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, BackendError::Unavailable(m) if m.starts_with(&b)),
            "{e:?}"
        );
        assert_eq!(client.current.load(Ordering::Relaxed), 0);

        // A streamed body is sent once: the request fails with the first
        // member, and the next one starts with the second.
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from("x"))]);
        let e = client
            .raw_stream(
                Method::POST,
                &["instances", "x", "files"],
                &[],
                reqwest::header::HeaderMap::new(),
                Some(reqwest::Body::wrap_stream(stream)),
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, BackendError::Unavailable(m) if m.starts_with(&a)),
            "{e:?}"
        );
        assert_eq!(client.current.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn names_are_escaped_into_path_segments() {
        let client = client_of(&["https://incus.example:8443"]);
        let url = client.url(&["instances", "../../etc?x=1#y"], &[("project", "a&b")]);
        assert_eq!(
            url.as_str(),
            "https://incus.example:8443/1.0/instances/..%2F..%2Fetc%3Fx%3D1%23y?project=a%26b"
        );
        // A URL parser drops tabs and line breaks from what it is given:
        // encoded first, they stay, and `..` never forms.
        let url = client.url(&["profiles", "\t..\r\n", "x"], &[]);
        assert_eq!(
            url.as_str(),
            "https://incus.example:8443/1.0/profiles/%09..%0D%0A/x"
        );
        for climbing in [".", ".."] {
            assert!(matches!(
                check_segments(&["profiles", climbing]),
                Err(BackendError::BadRequest(_))
            ));
        }
    }

    #[test]
    fn incus_error_codes_keep_their_meaning() {
        assert!(matches!(
            typed_error(404, "x"),
            BackendError::NotFound(Missing::Other(m)) if m == "x"
        ));
        assert!(matches!(
            typed_error(412, "x"),
            BackendError::PreconditionFailed(_)
        ));
        assert!(matches!(typed_error(403, "x"), BackendError::Forbidden(_)));
        assert!(matches!(typed_error(500, "x"), BackendError::Upstream(_)));
    }

    /// Incus's words decide where its status is too coarse (messages as
    /// Incus 6.0 words them; seen in the contract run against it).
    #[test]
    fn incus_messages_refine_400_and_500() {
        let conflict = |c, m| matches!(typed_error(c, m), BackendError::Conflict(_));
        assert!(conflict(400, "The storage pool is currently in use"));
        assert!(conflict(400, "Instance is running"));
        assert!(conflict(400, "The instance is already stopped"));
        assert!(conflict(400, "Instance is not running"));
        assert!(matches!(
            typed_error(500, "Server isn't ready yet"),
            BackendError::Unavailable(_)
        ));
        assert!(matches!(
            typed_error(500, "Unknown configuration key: x"),
            BackendError::BadRequest(_)
        ));
        assert!(matches!(
            typed_error(
                500,
                "Failed add validation for device \"A\": Custom filesystem volumes require a path to be defined"
            ),
            BackendError::BadRequest(_)
        ));
        assert!(matches!(
            typed_error(
                400,
                "Compression algorithm \"lz4\" isn't currently supported"
            ),
            BackendError::NotSupported(_)
        ));
        assert!(conflict(
            500,
            "Failed to create instance update operation: Instance is busy running a \"stop\" operation"
        ));
        assert!(matches!(
            typed_error(
                500,
                "Invalid value for network \"A\" option \"parent\": Required value"
            ),
            BackendError::BadRequest(_)
        ));
        assert!(matches!(
            typed_error(
                500,
                "At least one instance relies on this profile's root disk device"
            ),
            BackendError::BadRequest(_)
        ));
        assert!(matches!(
            typed_error(500, "Required tool 'lvm' is missing"),
            BackendError::NotSupported(_)
        ));
        assert!(matches!(
            typed_error(500, "Requested profile \"x\" doesn't exist"),
            BackendError::NotFound(_)
        ));
        // Not the request's fault: still Incus's own failure.
        assert!(matches!(
            typed_error(500, "Failed to mount: no space left on device"),
            BackendError::Upstream(_)
        ));
        // A 409 stays a 409, a 403 never turns into a conflict.
        assert!(matches!(
            typed_error(403, "already exists"),
            BackendError::Forbidden(_)
        ));
    }
}
