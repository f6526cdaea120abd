use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use lxgate::cli::{Cli, Command};
use lxgate::config::{Config, ConfigErrors};

/// mimalloc rather than glibc's malloc: a request allocates and frees many
/// small objects on whichever worker thread runs it, and glibc's arenas
/// took about a fifth of the server's CPU on `auth/me` (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` and `mi_option_purge_delay`
/// (`mimalloc.h`; their numbers are kept stable across versions, retired
/// options keep their places).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory is given back to the system as soon as it is free, and arenas
/// are committed as they are used: with mimalloc's defaults a login burst
/// (argon2id takes 19 MiB per hash) and lists of a hundred instances left
/// the resident size twice as high for good.
fn return_free_memory_to_the_os() {
    // SAFETY: mi_option_set only tunes the allocator; called first thing
    // in main, before any thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

fn fail_config(e: ConfigErrors) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    return_free_memory_to_the_os();
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
