//! Settings read from the environment (and `.env`), validated once at startup.
//!
//! Every problem is collected so an operator sees all of them at once, one line
//! each, instead of fixing them one restart at a time.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use crate::fetch::Allowlist;

/// `SEED_ADMIN_PASSWORD` in `.env.example`, refused outside dev mode.
pub const EXAMPLE_ADMIN_PASSWORD: &str = "change-me-please-now";

/// Which backend drives containers and VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Embedded,
    Incus,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "incus" => Ok(Self::Incus),
            _ => Err("expected `embedded` or `incus`".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err("expected `json` or `pretty`".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAccel {
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for VmAccel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err("expected `auto`, `kvm` or `tcg`".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncusMode {
    Local,
    Remote,
}

impl FromStr for IncusMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::Local),
            "remote" => Ok(Self::Remote),
            _ => Err("expected `local` or `remote`".into()),
        }
    }
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct IncusConfig {
    pub mode: IncusMode,
    pub socket_path: PathBuf,
    /// `INCUS_REMOTE_URL`: one server, or several members of one cluster
    /// (a comma list; lxgate fails over between them).
    pub remote_urls: Vec<String>,
    pub client_cert_path: Option<PathBuf>,
    pub client_key_path: Option<PathBuf>,
    pub server_cert_path: Option<PathBuf>,
    pub trusted_ca_path: Option<PathBuf>,
    pub insecure_tls: bool,
    pub timeout: Duration,
}

pub const METRICS_TOKEN_MIN_LEN: usize = 16;

/// `MAX_IMAGE_BYTES` unless set: room for a desktop distribution's rootfs
/// or VM disk, far below what a compression bomb unpacks to.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 8 << 30;

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub dev_mode: bool,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub database_max_connections: u32,
    /// `None` only in dev mode before the generated secret is loaded.
    pub jwt_secret: Option<Secret>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub seed_admin_username: String,
    pub seed_admin_password: Option<Secret>,
    pub password_min_length: usize,
    pub auth_rate_limit_per_minute: u32,
    pub auth_rate_limit_burst: u32,
    pub login_max_failures: u32,
    pub login_lockout: Duration,
    /// Audit rows per minute (and burst) one client IP may cause without
    /// authenticating; past that its requests are answered but not recorded.
    pub audit_unauthenticated_per_minute: u32,
    /// Audit rows older than this many days are purged; 0 keeps them all.
    pub audit_retention_days: u64,
    /// WebSockets (exec, console, events) one user may have open at once.
    pub max_websockets_per_user: usize,
    /// Operations one user may have running at once (counted per replica).
    pub max_running_operations_per_user: usize,
    /// Bytes of stdout, and of stderr, one recorded exec keeps.
    pub exec_output_max_bytes: usize,
    /// Bytes of recorded exec output the embedded backend keeps in memory
    /// across all operations; past it, the oldest finished outputs go.
    pub exec_output_total_bytes: usize,
    /// Incus backend: bytes (as JSON) per kind its instance, profile,
    /// network and volume lists keep in memory between changes
    /// (`LIST_CACHE_MIB`; 0 turns the list cache off).
    pub list_cache_bytes: u64,
    pub trusted_proxies: Vec<IpNet>,
    pub cors_origins: Vec<String>,
    /// Image servers that may be fetched over http or from non-public
    /// addresses (see `fetch`).
    pub image_server_allowlist: Allowlist,
    /// The largest image lxgate takes: an upload's files, and on the
    /// embedded backend a download, the unpacked rootfs (or kernel and
    /// initrd) and a VM disk's virtual size.
    pub max_image_bytes: u64,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// Bearer token `/metrics` requires; `None` leaves it open.
    pub metrics_token: Option<Secret>,
    pub backend: BackendKind,
    pub embedded_vm_accel: VmAccel,
    pub incus: IncusConfig,
    /// Single sign-on through an OpenID Connect provider (`OIDC_*`).
    pub oidc: Option<crate::auth::oidc::OidcConfig>,
}

/// All configuration problems found, one per line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads variables through a lookup function so tests can feed a map instead
/// of mutating the process environment.
struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<String>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.raw(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|e| {
                self.errors.push(format!("{name}={v:?} is invalid: {e}"));
                default
            }),
        }
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        self.raw(name).map(PathBuf::from)
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.raw(name).as_deref() {
            None | Some("0" | "false" | "no" | "off") => false,
            Some("1" | "true" | "yes" | "on") => true,
            Some(v) => {
                self.errors.push(format!(
                    "{name}={v:?} is invalid: expected 1/0 or true/false"
                ));
                false
            }
        }
    }

    fn positive<T: FromStr + PartialOrd + Default + Copy + fmt::Display>(
        &mut self,
        name: &str,
        default: T,
    ) -> T
    where
        T::Err: fmt::Display,
    {
        let v = self.parse(name, default);
        if v <= T::default() {
            self.errors
                .push(format!("{name}={v} must be greater than 0"));
            return default;
        }
        v
    }
}

impl Config {
    /// Loads `.env` (if present) into the process environment, then reads it.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        // A missing .env is normal; a malformed one is worth a clear error.
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            return Err(ConfigErrors(vec![format!(".env could not be read: {e}")]));
        }
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// For shell commands that only touch the database (`migrate`, `user ...`):
    /// a missing `JWT_SECRET` is not an error there.
    pub fn from_env_without_secret() -> Result<Self, ConfigErrors> {
        let _ = dotenvy::dotenv();
        Self::load(&|k| std::env::var(k).ok(), false)
    }

    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        Self::load(get, true)
    }

    fn load(
        get: &dyn Fn(&str) -> Option<String>,
        needs_secret: bool,
    ) -> Result<Self, ConfigErrors> {
        let mut r = Reader {
            get,
            errors: Vec::new(),
        };

        let host = r.parse("APP_HOST", IpAddr::from([0, 0, 0, 0]));
        let port = r.parse("APP_PORT", 8000u16);
        let dev_mode = r.flag("LXGATE_DEV");
        // Absolute from here on: the path reaches LXC and QEMU, which resolve
        // a relative one against their own working directory (lxc-start
        // failed on `data/lxc/<ct>/rootfs` after `make run`).
        let data_dir = PathBuf::from(r.string("DATA_DIR", "./data"));
        let data_dir = match std::path::absolute(&data_dir) {
            Ok(abs) => abs,
            Err(e) => {
                r.errors.push(format!(
                    "DATA_DIR={:?} cannot be made absolute: {e}",
                    data_dir.display()
                ));
                data_dir
            }
        };
        let database_url = r.string("DATABASE_URL", "sqlite://data/lxgate.db");
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            r.errors.push(format!(
                "DATABASE_URL must start with sqlite: or postgres:// (got {:?})",
                database_url.split(':').next().unwrap_or_default()
            ));
        }
        let database_max_connections = r.positive("DATABASE_MAX_CONNECTIONS", 10u32);

        let jwt_secret = r.raw("JWT_SECRET").map(Secret::new);
        match &jwt_secret {
            Some(s) if s.expose().len() < 32 => r
                .errors
                .push("JWT_SECRET must be at least 32 characters (try `openssl rand -hex 32`)".into()),
            None if !dev_mode && needs_secret => r.errors.push(
                "JWT_SECRET is required (at least 32 characters; `openssl rand -hex 32`), or set LXGATE_DEV=1 to generate one for development"
                    .into(),
            ),
            _ => {}
        }
        let jwt_issuer = r.string("JWT_ISSUER", "lxgate");
        let jwt_audience = r.string("JWT_AUDIENCE", "lxgate-api");
        let access_minutes = r.positive("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", 30u64);
        let refresh_days = r.positive("JWT_REFRESH_TOKEN_EXPIRE_DAYS", 7u64);

        let seed_admin_username = r.string("SEED_ADMIN_USERNAME", "admin");
        if let Err(e) = crate::auth::Username::parse(&seed_admin_username) {
            r.errors
                .push(format!("SEED_ADMIN_USERNAME is invalid: {e}"));
        }
        let seed_admin_password = r.raw("SEED_ADMIN_PASSWORD").map(Secret::new);
        // The example's password is public: fine on a laptop in dev mode, an
        // open door anywhere else. Only `serve` (needs_secret) seeds the admin.
        if needs_secret
            && !dev_mode
            && seed_admin_password
                .as_ref()
                .is_some_and(|p| p.expose() == EXAMPLE_ADMIN_PASSWORD)
        {
            r.errors.push(format!(
                "SEED_ADMIN_PASSWORD is still the example's ({EXAMPLE_ADMIN_PASSWORD}): choose another one, or set LXGATE_DEV=1 for development"
            ));
        }
        let password_min_length = r.positive("PASSWORD_MIN_LENGTH", 12usize);
        if let Some(p) = &seed_admin_password
            && let Err(e) = crate::auth::password::check_policy(
                &seed_admin_username,
                p.expose(),
                password_min_length,
            )
        {
            r.errors
                .push(format!("SEED_ADMIN_PASSWORD is too weak: {e}"));
        }

        let auth_rate_limit_per_minute = r.positive("AUTH_RATE_LIMIT_PER_MINUTE", 10u32);
        let auth_rate_limit_burst = r.positive("AUTH_RATE_LIMIT_BURST", 5u32);
        let login_max_failures = r.positive("LOGIN_MAX_FAILURES", 5u32);
        let login_lockout = Duration::from_secs(r.positive("LOGIN_LOCKOUT_SECONDS", 300u64));
        let audit_unauthenticated_per_minute =
            r.positive("AUDIT_UNAUTHENTICATED_PER_MINUTE", 60u32);
        let audit_retention_days = r.parse("AUDIT_RETENTION_DAYS", 90u64);
        let max_websockets_per_user = r.positive("MAX_WEBSOCKETS_PER_USER", 32usize);
        let max_running_operations_per_user =
            r.positive("MAX_RUNNING_OPERATIONS_PER_USER", 32usize);
        let exec_output_max_bytes = r.positive("EXEC_OUTPUT_MAX_BYTES", 1024 * 1024usize);
        let exec_output_total_bytes = r.positive("EXEC_OUTPUT_TOTAL_BYTES", 64 * 1024 * 1024usize);
        let list_cache_bytes = r.parse("LIST_CACHE_MIB", 64u64).saturating_mul(1 << 20);

        let mut trusted_proxies = Vec::new();
        for item in r.string("TRUSTED_PROXIES", "").split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            match item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => r.errors.push(format!(
                    "TRUSTED_PROXIES entry {item:?} is not an IP address or CIDR"
                )),
            }
        }
        let image_server_allowlist = r
            .string("IMAGE_SERVER_ALLOWLIST", "")
            .parse::<Allowlist>()
            .unwrap_or_else(|e| {
                r.errors.push(format!("IMAGE_SERVER_ALLOWLIST {e}"));
                Allowlist::default()
            });
        let oidc = r.raw("OIDC_ISSUER_URL").map(|issuer| {
            use crate::auth::oidc::OidcConfig;
            if let Err(e) = OidcConfig::check_issuer(&issuer) {
                r.errors.push(format!("OIDC_ISSUER_URL {e}"));
            }
            let audience = r.string("OIDC_AUDIENCE", "");
            if audience.is_empty() {
                r.errors
                    .push("OIDC_AUDIENCE is required with OIDC_ISSUER_URL".into());
            }
            let role_map = OidcConfig::parse_role_map(&r.string("OIDC_ROLE_MAP", ""))
                .unwrap_or_else(|e| {
                    r.errors.push(format!("OIDC_ROLE_MAP {e}"));
                    Vec::new()
                });
            OidcConfig {
                issuer,
                audience,
                groups_claim: r.string("OIDC_GROUPS_CLAIM", "groups"),
                role_map,
            }
        });
        let max_image_bytes = r.positive("MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES);
        let cors_origins: Vec<String> = r
            .string("CORS_ORIGINS", "")
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        for origin in &cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                r.errors.push(format!(
                    "CORS_ORIGINS entry {origin:?} must be `*` or start with http:// or https://"
                ));
            }
        }

        let request_timeout = Duration::from_secs(r.positive("REQUEST_TIMEOUT_SECONDS", 30u64));
        let max_body_bytes = r.positive("MAX_BODY_BYTES", 1024 * 1024usize);
        let log_format = r.parse("LOG_FORMAT", LogFormat::Json);
        let log_level = r.string("LOG_LEVEL", "info");
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            r.errors.push(format!(
                "LOG_LEVEL={log_level:?} is not a valid filter (e.g. info, debug, lxgate=debug)"
            ));
        }
        let tls_cert_path = r.path("TLS_CERT_PATH");
        let tls_key_path = r.path("TLS_KEY_PATH");
        if tls_cert_path.is_some() != tls_key_path.is_some() {
            r.errors
                .push("TLS_CERT_PATH and TLS_KEY_PATH must be set together".into());
        }

        let metrics_token = r
            .raw("METRICS_TOKEN")
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        if let Some(t) = &metrics_token {
            // Short tokens can be guessed; anything else could not be sent in
            // an Authorization header.
            if t.expose().len() < METRICS_TOKEN_MIN_LEN
                || !t.expose().bytes().all(|b| b.is_ascii_graphic())
            {
                r.errors.push(format!(
                    "METRICS_TOKEN must be at least {METRICS_TOKEN_MIN_LEN} printable ASCII \
                     characters without spaces (or empty to leave /metrics open)"
                ));
            }
        }

        let backend = r.parse("BACKEND", BackendKind::Embedded);
        let embedded_vm_accel = r.parse("EMBEDDED_VM_ACCEL", VmAccel::Auto);
        let incus = IncusConfig {
            mode: r.parse("INCUS_CONNECTION_MODE", IncusMode::Local),
            socket_path: PathBuf::from(r.string("INCUS_SOCKET_PATH", "/var/lib/incus/unix.socket")),
            remote_urls: r
                .raw("INCUS_REMOTE_URL")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            client_cert_path: r.path("INCUS_CLIENT_CERT_PATH"),
            client_key_path: r.path("INCUS_CLIENT_KEY_PATH"),
            server_cert_path: r.path("INCUS_SERVER_CERT_PATH"),
            trusted_ca_path: r.path("INCUS_TRUSTED_CA_PATH"),
            insecure_tls: r.flag("INCUS_INSECURE_TLS"),
            timeout: Duration::from_secs(r.positive("INCUS_TIMEOUT", 30u64)),
        };
        if backend == BackendKind::Incus
            && incus.mode == IncusMode::Remote
            && incus.remote_urls.is_empty()
        {
            r.errors
                .push("INCUS_REMOTE_URL is required when INCUS_CONNECTION_MODE=remote".into());
        }

        if !r.errors.is_empty() {
            return Err(ConfigErrors(r.errors));
        }
        Ok(Self {
            host,
            port,
            dev_mode,
            data_dir,
            database_url,
            database_max_connections,
            jwt_secret,
            jwt_issuer,
            jwt_audience,
            access_token_ttl: Duration::from_secs(access_minutes * 60),
            refresh_token_ttl: Duration::from_secs(refresh_days * 86_400),
            seed_admin_username,
            seed_admin_password,
            password_min_length,
            auth_rate_limit_per_minute,
            auth_rate_limit_burst,
            login_max_failures,
            login_lockout,
            audit_unauthenticated_per_minute,
            audit_retention_days,
            max_websockets_per_user,
            max_running_operations_per_user,
            exec_output_max_bytes,
            exec_output_total_bytes,
            list_cache_bytes,
            trusted_proxies,
            cors_origins,
            image_server_allowlist,
            max_image_bytes,
            request_timeout,
            max_body_bytes,
            log_format,
            log_level,
            tls_cert_path,
            tls_key_path,
            metrics_token,
            backend,
            embedded_vm_accel,
            incus,
            oidc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_need_a_jwt_secret_outside_dev_mode() {
        let err = load(&[]).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].contains("JWT_SECRET is required"));
        let cfg = load(&[("LXGATE_DEV", "1")]).unwrap();
        assert_eq!(cfg.port, 8000);
        assert_eq!(cfg.backend, BackendKind::Embedded);
        assert_eq!(cfg.access_token_ttl, Duration::from_secs(1800));
        assert_eq!(cfg.max_image_bytes, 8 << 30);
    }

    #[test]
    fn every_invalid_value_is_reported_on_its_own_line() {
        let err = load(&[
            ("JWT_SECRET", "short"),
            ("APP_PORT", "99999"),
            ("BACKEND", "docker"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, nonsense"),
            ("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
            ("IMAGE_SERVER_ALLOWLIST", "127.0.0.1:8443, http://x"),
            ("MAX_IMAGE_BYTES", "8G"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 7, "{err}");
        assert_eq!(err.to_string().lines().count(), 7);
    }

    #[test]
    fn the_example_admin_password_is_for_dev_mode_only() {
        let secret = ("JWT_SECRET", "0123456789abcdef0123456789abcdef-secret");
        let example = ("SEED_ADMIN_PASSWORD", EXAMPLE_ADMIN_PASSWORD);
        let err = load(&[secret, example]).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.to_string().contains("still the example's"), "{err}");
        let err = load(&[secret, example, ("LXGATE_DEV", "0")]).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(load(&[example, ("LXGATE_DEV", "1")]).is_ok());
        assert!(load(&[secret, ("SEED_ADMIN_PASSWORD", "another-long-password")]).is_ok());
    }

    #[test]
    fn a_relative_data_dir_becomes_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let cfg = load(&[("LXGATE_DEV", "1")]).unwrap();
        assert_eq!(cfg.data_dir, cwd.join("data"));
        let cfg = load(&[("LXGATE_DEV", "1"), ("DATA_DIR", "state/../x")]).unwrap();
        assert!(cfg.data_dir.is_absolute());
        assert!(cfg.data_dir.starts_with(&cwd), "{}", cfg.data_dir.display());
        let cfg = load(&[("LXGATE_DEV", "1"), ("DATA_DIR", "/srv/lxgate")]).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/lxgate"));
        // The SQLite URL stays as given (sqlx resolves it from the same directory).
        assert_eq!(cfg.database_url, "sqlite://data/lxgate.db");
    }

    #[test]
    fn incus_remote_url_lists_cluster_members() {
        let remote = [
            ("LXGATE_DEV", "1"),
            ("BACKEND", "incus"),
            ("INCUS_CONNECTION_MODE", "remote"),
        ];
        let cfg = load(
            &[
                &remote[..],
                &[(
                    "INCUS_REMOTE_URL",
                    "https://10.0.0.11:8443, https://10.0.0.12:8443,",
                )],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            cfg.incus.remote_urls,
            ["https://10.0.0.11:8443", "https://10.0.0.12:8443"]
        );
        let err = load(&[&remote[..], &[("INCUS_REMOTE_URL", " , ")]].concat()).unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|e| e.contains("INCUS_REMOTE_URL is required")),
            "{err:?}"
        );
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let cfg = load(&[("JWT_SECRET", "0123456789abcdef0123456789abcdef-secret")]).unwrap();
        assert!(!format!("{cfg:?}").contains("secret\""));
        assert!(!format!("{cfg:?}").contains("0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn exec_and_operation_caps_have_defaults_and_must_be_positive() {
        let cfg = load(&[("LXGATE_DEV", "1")]).unwrap();
        assert_eq!(cfg.max_running_operations_per_user, 32);
        assert_eq!(cfg.exec_output_max_bytes, 1024 * 1024);
        assert_eq!(cfg.exec_output_total_bytes, 64 * 1024 * 1024);
        assert_eq!(cfg.list_cache_bytes, 64 << 20);
        let err = load(&[
            ("LXGATE_DEV", "1"),
            ("MAX_RUNNING_OPERATIONS_PER_USER", "0"),
            ("EXEC_OUTPUT_MAX_BYTES", "0"),
            ("EXEC_OUTPUT_TOTAL_BYTES", "lots"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{:?}", err.0);
    }
}
