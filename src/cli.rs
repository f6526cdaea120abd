//! The command line: `lxgate serve | migrate | openapi | user ...`.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::auth::{Role, Username, accounts, password};
use crate::config::Config;
use crate::db::{self, Db};
use crate::names::ProjectName;

#[derive(Debug, Parser)]
#[command(
    name = "lxgate",
    version,
    about = "API gateway for Linux containers and VMs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI document as JSON.
    Openapi,
    /// Manage users from the shell (works while lxgate is running).
    #[command(subcommand)]
    User(UserCommand),
    /// Connect lxgate to a remote Incus server.
    #[command(subcommand)]
    Remote(RemoteCommand),
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Generate lxgate's client certificate if missing, pin the server's
    /// certificate (checked against the token) and join its trust store.
    /// Get the token on the Incus server with `incus config trust add lxgate`.
    Trust {
        /// e.g. https://incus.example.internal:8443
        url: String,
        token: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is read from stdin (prompted on a terminal).
    Add {
        username: String,
        /// Global role: viewer, operator or admin. Omit for project-only users.
        #[arg(long)]
        role: Option<Role>,
    },
    /// Set a user's password (read from stdin); ends its sessions.
    Passwd { username: String },
    /// List users.
    List,
    /// Disable a user (or enable it again with --enable); ends its sessions.
    Disable {
        username: String,
        #[arg(long)]
        enable: bool,
    },
    /// Grant a role in a project, or remove it with --revoke.
    Grant {
        username: String,
        project: String,
        /// viewer, operator or admin (ignored with --revoke).
        role: Option<Role>,
        #[arg(long)]
        revoke: bool,
    },
}

fn read_password(prompt: &str) -> anyhow::Result<String> {
    let pw = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if pw.is_empty() {
        bail!("no password given (pipe it on stdin or type it at the prompt)");
    }
    Ok(pw)
}

async fn open_db(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&config.database_url, 2).await?;
    db.migrate().await?;
    Ok(db)
}

async fn find_user(db: &Db, name: &str) -> anyhow::Result<db::users::UserRow> {
    db::users::by_username(&db.pool, name)
        .await?
        .with_context(|| format!("user `{name}` does not exist"))
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    open_db(config).await?;
    println!("database is up to date");
    Ok(())
}

pub async fn user(config: &Config, cmd: UserCommand) -> anyhow::Result<()> {
    let db = open_db(config).await?;
    let pool = &db.pool;
    // Servers running on this database notice account changes within
    // `WATCH_EVERY`; waiting a little longer here means that once a command
    // has returned, what it revoked is revoked everywhere.
    let changes_access = matches!(
        cmd,
        UserCommand::Passwd { .. } | UserCommand::Disable { .. } | UserCommand::Grant { .. }
    );
    match cmd {
        UserCommand::Add { username, role } => {
            let username = Username::parse(&username).map_err(anyhow::Error::msg)?;
            let pw = read_password("Password: ")?;
            accounts::create(
                pool,
                config.password_min_length,
                accounts::NewAccount {
                    username: &username,
                    password: pw,
                    role,
                    disabled: false,
                },
            )
            .await?;
            println!("created user {username}");
        }
        UserCommand::Passwd { username } => {
            let user = find_user(&db, &username).await?;
            let pw = read_password("New password: ")?;
            password::check_policy(&username, &pw, config.password_min_length)
                .map_err(anyhow::Error::msg)?;
            let hash = password::hash(pw).await?;
            db::users::update(
                pool,
                &user.id,
                &db::users::Changes {
                    password_hash: Some(hash),
                    ..Default::default()
                },
            )
            .await?;
            println!("password changed for {username}; its sessions have ended");
        }
        UserCommand::List => {
            println!("{:<32} {:<9} {:<8} projects", "username", "role", "status");
            for u in db::users::list(pool, i64::MAX, 0).await? {
                let grants = db::project_roles::for_users(pool, std::slice::from_ref(&u.id))
                    .await?
                    .into_iter()
                    .map(|g| format!("{}={}", g.project, g.role))
                    .collect::<Vec<_>>()
                    .join(",");
                println!(
                    "{:<32} {:<9} {:<8} {}",
                    u.username,
                    u.role.as_deref().unwrap_or("-"),
                    if u.is_disabled() {
                        "disabled"
                    } else {
                        "active"
                    },
                    grants
                );
            }
        }
        UserCommand::Disable { username, enable } => {
            let user = find_user(&db, &username).await?;
            db::users::update(
                pool,
                &user.id,
                &db::users::Changes {
                    disabled: Some(!enable),
                    ..Default::default()
                },
            )
            .await?;
            println!(
                "{username} is now {}",
                if enable { "enabled" } else { "disabled" }
            );
        }
        UserCommand::Grant {
            username,
            project,
            role,
            revoke,
        } => {
            let project = ProjectName::parse(&project).map_err(anyhow::Error::msg)?;
            let user = find_user(&db, &username).await?;
            if revoke {
                db::project_roles::remove(pool, &user.id, project.as_str()).await?;
                println!("removed {username}'s role in {project}");
            } else {
                let role = role.context("give a role (viewer, operator, admin) or --revoke")?;
                db::project_roles::set(pool, &user.id, project.as_str(), role).await?;
                println!("{username} is now {role} in {project}");
            }
        }
    }
    if changes_access {
        tokio::time::sleep(crate::auth::view::SETTLE).await;
    }
    Ok(())
}

pub async fn remote(config: &Config, cmd: RemoteCommand) -> anyhow::Result<()> {
    match cmd {
        RemoteCommand::Trust { url, token } => {
            crate::backend::incus::trust::trust(&config.incus, &config.data_dir, &url, &token).await
        }
    }
}
