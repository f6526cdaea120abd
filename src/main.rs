use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use lxgate::cli::{Cli, Command};
use lxgate::config::{Config, ConfigErrors};

fn fail_config(e: ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

/// Every argon2id hash needs a 19 MiB buffer. glibc raises its mmap threshold
/// after the first such buffer is freed, so later ones come from per-thread
/// heaps that keep the memory: a login burst left RSS above 1 GiB. A fixed
/// threshold keeps big buffers on mmap, returned to the system when freed.
fn return_big_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    }
}

fn main() -> ExitCode {
    return_big_buffers_to_the_os();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run())
}

async fn run() -> ExitCode {
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
