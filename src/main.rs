use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use lxgate::cli::{Cli, Command};
use lxgate::config::{Config, ConfigErrors};

fn fail_config(e: ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Openapi = command {
        println!(
            "{}",
            lxgate::router::openapi()
                .to_pretty_json()
                .expect("the OpenAPI document serializes")
        );
        return ExitCode::SUCCESS;
    }
    let config = match command {
        Command::Serve => Config::from_env(),
        _ => Config::from_env_without_secret(),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail_config(e),
    };
    lxgate::telemetry::init(config.log_format, &config.log_level);

    let result = match command {
        Command::Serve => serve(config).await,
        Command::Migrate => lxgate::cli::migrate(&config).await,
        Command::User(cmd) => lxgate::cli::user(&config, cmd).await,
        Command::Remote(cmd) => lxgate::cli::remote(&config, cmd).await,
        Command::Openapi => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    lxgate::serve(listener, config, lxgate::shutdown_signal()).await
}
