//! lxgate: an API gateway for Linux containers and virtual machines.

pub mod api;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod names;
pub mod openapi;
pub mod policy;
pub mod router;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

pub use app::{App, AppState};
pub use config::Config;

/// Serves lxgate on `listener` until `shutdown` completes, then drains open
/// requests. Tests call this with a port-0 listener and a fresh database.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = App::build(config).await?;
    serve_state(listener, state, shutdown).await
}

/// Like [`serve`], for callers that built the state themselves. Serves
/// HTTPS when `TLS_CERT_PATH` / `TLS_KEY_PATH` are set.
pub async fn serve_state(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let tls = state
        .config
        .tls_cert_path
        .clone()
        .zip(state.config.tls_key_path.clone());
    let drain_for = state.config.request_timeout;
    let app = router::build(state).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            tracing::info!(%addr, "lxgate listening (http)");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS_CERT_PATH={} / TLS_KEY_PATH={}",
                        cert.display(),
                        key.display()
                    )
                })?;
            let handle = axum_server::Handle::new();
            let on_signal = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                on_signal.graceful_shutdown(Some(drain_for));
            });
            tracing::info!(%addr, "lxgate listening (https)");
            axum_server::from_tcp_rustls(listener.into_std()?, tls)?
                .handle(handle)
                .serve(app)
                .await?;
        }
    }
    tracing::info!("lxgate stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining requests");
}
