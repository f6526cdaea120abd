//! Application state shared by every handler.

use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, bail};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::api::slots::{Held, UserSlots};
use crate::api::ws::SocketSlots;
use crate::auth::limit::{AuthLimiter, LoginThrottle};
use crate::auth::tokens::{TokenKeys, random_token};
use crate::auth::{Role, Username, accounts, password};
use crate::backend::Backend;
use crate::backend::embedded::EmbeddedBackend;
use crate::backend::incus::{IncusBackend, IncusClient};
use crate::backend::types::OutputLimits;
use crate::config::{BackendKind, Config, Secret};
use crate::db::{self, Db};
use crate::fetch::Fetcher;
use crate::telemetry;

pub struct App {
    pub config: Config,
    pub db: Db,
    pub tokens: TokenKeys,
    pub auth_limiter: AuthLimiter,
    pub login_throttle: LoginThrottle,
    /// Audit rows of unauthenticated requests, per client IP.
    pub audit_limiter: AuthLimiter,
    /// Open WebSockets per user.
    pub sockets: Arc<SocketSlots>,
    /// Running operations per user (those they started through this replica).
    pub running_operations: Arc<UserSlots>,
    /// Who started which operation, for the events that show it.
    pub requesters: Arc<crate::api::requesters::Requesters>,
    /// Owner-only projects' settings and instances' makers, as last read.
    pub ownership: crate::api::owners::Ownership,
    /// The single sign-on provider, when `OIDC_ISSUER_URL` is set.
    pub oidc: Option<Arc<crate::auth::oidc::Oidc>>,
    /// The callers as last read, kept current by `spawn_auth_watch`.
    pub auth_view: Arc<crate::auth::view::AuthView>,
    pub backend: Arc<dyn Backend>,
    pub metrics: PrometheusHandle,
}

#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// In dev mode without `JWT_SECRET`, a secret is generated once and kept in
/// the data dir (mode 0600) so tokens survive restarts.
async fn dev_jwt_secret(data_dir: &Path) -> anyhow::Result<Secret> {
    let path = data_dir.join("jwt_secret");
    match tokio::fs::read_to_string(&path).await {
        Ok(s) if s.trim().len() >= 32 => return Ok(Secret::new(s.trim())),
        Ok(_) => bail!(
            "{} is shorter than 32 characters; delete it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret = random_token();
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true).mode(0o600);
    let mut f = opts
        .open(&path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    tokio::io::AsyncWriteExt::write_all(&mut f, secret.as_bytes()).await?;
    tracing::warn!(path = %path.display(), "LXGATE_DEV=1: generated a JWT secret for development; set JWT_SECRET in production");
    Ok(Secret::new(secret))
}

/// Creates the first admin from `SEED_ADMIN_*` if that user does not exist yet.
pub async fn seed_admin(db: &Db, config: &Config) -> anyhow::Result<()> {
    let Some(pw) = &config.seed_admin_password else {
        return Ok(());
    };
    if db::users::by_username(&db.pool, &config.seed_admin_username)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let username = Username::parse(&config.seed_admin_username)
        .map_err(|e| anyhow::anyhow!("SEED_ADMIN_USERNAME: {e}"))?;
    let created = accounts::create(
        &db.pool,
        config.password_min_length,
        accounts::NewAccount {
            username: &username,
            password: pw.expose().to_owned(),
            role: Some(Role::Admin),
            disabled: false,
        },
    )
    .await;
    match created {
        Ok(_) => {
            tracing::info!(username = %config.seed_admin_username, "seeded the admin user");
            Ok(())
        }
        // Another replica seeded it at the same moment.
        Err(accounts::CreateError::Exists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Outside dev mode, the seeded admin must not still have the example's
/// password: an admin seeded in dev mode keeps it after LXGATE_DEV=0, whatever
/// SEED_ADMIN_PASSWORD says now, so the stored hash is what is checked.
async fn refuse_example_password(db: &Db, config: &Config) -> anyhow::Result<()> {
    let Some(user) = db::users::by_username(&db.pool, &config.seed_admin_username).await? else {
        return Ok(());
    };
    let example = crate::config::EXAMPLE_ADMIN_PASSWORD.to_owned();
    if password::verify(example, Some(user.password_hash.clone()))
        .await
        .unwrap_or(false)
    {
        anyhow::bail!(
            "the user `{}` still has the example's password ({}): change it \
             (`lxgate user passwd {}`, or PUT /api/v1/auth/me/password), or set LXGATE_DEV=1 for development",
            config.seed_admin_username,
            crate::config::EXAMPLE_ADMIN_PASSWORD,
            config.seed_admin_username
        );
    }
    Ok(())
}

impl App {
    pub async fn build(mut config: Config) -> anyhow::Result<AppState> {
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
        let secret = match config.jwt_secret.clone() {
            Some(s) => s,
            None => dev_jwt_secret(&config.data_dir).await?,
        };
        config.jwt_secret = Some(secret.clone());

        let db = Db::connect(&config.database_url, config.database_max_connections).await?;
        db.migrate().await?;
        seed_admin(&db, &config).await?;
        if !config.dev_mode {
            refuse_example_password(&db, &config).await?;
        }
        tokio::spawn(password::warm_up());

        let output_limits = OutputLimits {
            per_stream: config.exec_output_max_bytes,
            total: config.exec_output_total_bytes,
        };
        let backend: Arc<dyn Backend> = match config.backend {
            BackendKind::Embedded => {
                let embedded = EmbeddedBackend::new(
                    config.data_dir.clone(),
                    config.embedded_vm_accel,
                    db.pool.clone(),
                    Fetcher::new(config.image_server_allowlist.clone()),
                    config.max_image_bytes,
                )
                .lock_data_dir(std::time::Duration::from_secs(30))
                .await
                .map_err(anyhow::Error::msg)?;
                // Before anything else: what a killed lxgate left half done.
                embedded.recover().await;
                embedded.restore_networks().await;
                embedded.secure_data_dir().await;
                let embedded = Arc::new(embedded.with_output_limits(output_limits));
                EmbeddedBackend::spawn_expiry(&embedded);
                embedded
            }
            BackendKind::Incus => Arc::new(
                IncusBackend::with_events(
                    IncusClient::new(&config.incus, &config.data_dir)
                        .map_err(anyhow::Error::msg)?,
                    config.list_cache_bytes,
                )
                .with_output_limits(output_limits),
            ),
        };

        let tokens = TokenKeys::new(
            secret.expose().as_bytes(),
            &config.jwt_issuer,
            &config.jwt_audience,
            config.access_token_ttl,
        );
        let app = Arc::new(App {
            auth_limiter: AuthLimiter::new(
                config.auth_rate_limit_per_minute,
                config.auth_rate_limit_burst,
            ),
            login_throttle: LoginThrottle::new(config.login_max_failures, config.login_lockout),
            sockets: SocketSlots::new(config.max_websockets_per_user),
            running_operations: UserSlots::new(
                config.max_running_operations_per_user,
                Held::Operations,
            ),
            requesters: Arc::default(),
            ownership: Default::default(),
            auth_view: Default::default(),
            oidc: config
                .oidc
                .clone()
                .map(|c| Arc::new(crate::auth::oidc::Oidc::new(c))),
            audit_limiter: AuthLimiter::new(
                config.audit_unauthenticated_per_minute,
                config.audit_unauthenticated_per_minute,
            ),
            tokens,
            db,
            backend,
            metrics: telemetry::metrics_handle(),
            config,
        });
        purge_audit(&app).await;
        spawn_janitor(Arc::downgrade(&app));
        spawn_socket_watch(Arc::downgrade(&app));
        spawn_auth_watch(&app);
        Ok(AppState(app))
    }
}

/// Drops audit rows past `AUDIT_RETENTION_DAYS` (0: keep them all).
async fn purge_audit(app: &App) {
    let days = app.config.audit_retention_days;
    if days == 0 {
        return;
    }
    let before = crate::auth::tokens::now_secs()
        .saturating_sub(i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX));
    match db::audit::purge_before(&app.db.pool, before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, days, "purged old audit rows"),
        Err(e) => tracing::warn!(error = %e, "purging old audit rows failed"),
    }
}

/// Re-checks the users of open WebSockets every `REVOCATION_CHECK_EVERY`,
/// so that revocation (made on any replica) closes them. Ends when the app
/// is dropped.
fn spawn_socket_watch(app: Weak<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::api::ws::REVOCATION_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { break };
            if let Err(e) = app.sockets.check(&app.db.pool).await {
                tracing::warn!(error = %e, "checking open WebSockets for revocation failed");
            }
        }
    });
}

/// Keeps `auth_view` current (see `auth::view`). Ends when the app is dropped.
fn spawn_auth_watch(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    match app.db.dialect {
        db::Dialect::Postgres => {
            tokio::spawn(crate::auth::view::watch_postgres(
                app.config.database_url.clone(),
                move || weak.upgrade().map(|a| a.auth_view.clone()),
            ));
        }
        db::Dialect::Sqlite => {
            tokio::spawn(crate::auth::view::watch_sqlite(move || {
                weak.upgrade()
                    .map(|a| (a.auth_view.clone(), a.db.pool.clone()))
            }));
        }
    }
}

/// Periodic clean-up: limiter maps, spent tokens and tickets. Ends when the app is dropped.
fn spawn_janitor(app: Weak<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { break };
            app.auth_limiter.prune();
            app.audit_limiter.prune();
            app.login_throttle.prune(&app.db.pool).await;
            purge_audit(&app).await;
            if let Err(e) = db::refresh_tokens::purge_expired(&app.db.pool).await {
                tracing::warn!(error = %e, "purging expired refresh tokens failed");
            }
            if let Err(e) = db::ws_tickets::purge_expired(&app.db.pool).await {
                tracing::warn!(error = %e, "purging expired ws tickets failed");
            }
            if let Err(e) = db::revoked_tokens::purge_expired(&app.db.pool).await {
                tracing::warn!(error = %e, "purging expired logged-out tokens failed");
            }
            if let Err(e) = db::personal_tokens::purge_expired(&app.db.pool).await {
                tracing::warn!(error = %e, "purging expired personal access tokens failed");
            }
            if let Err(e) = db::idempotency::purge_expired(&app.db.pool).await {
                tracing::warn!(error = %e, "purging expired idempotency keys failed");
            }
            if let Err(e) = db::operations::purge_older_than(&app.db.pool, 30).await {
                tracing::warn!(error = %e, "purging old operation records failed");
            }
            // Creates an lxgate stopped in the middle of (an hour is longer
            // than any create's own bound).
            crate::api::owners::settle_stale(&app.backend, &app.db.pool, 3600).await;
        }
    });
}
