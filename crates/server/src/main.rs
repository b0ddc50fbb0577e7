//! `switchyard-server`: serves the models of a registry file over HTTP.
//!
//! ```text
//! cargo run --release -p switchyard-server -- --config models.toml --bind 127.0.0.1:8080
//! ```
//!
//! SIGTERM or Ctrl-C stops taking connections, lets open streams finish,
//! then shuts the engine down.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use switchyard::config::Registry;
use switchyard::{Engine, ShutdownMode};
use switchyard_server::config::check_overrides;
use switchyard_server::{
    ApiKeys, AppState, LimitOverrides, Limits, ServerConfig, ServerError, serve,
};

/// Serve a Switchyard model registry over HTTP (OpenAI-compatible).
///
/// Limits, the address and CORS origins may also be set in the registry
/// file's `[server]` table; a flag given here wins over the file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The model registry (`models.toml` or `models.json`).
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    bind: Option<String>,
    #[command(flatten)]
    limits: LimitOverrides,
    /// An API key requests must send as `Authorization: Bearer <key>`
    /// (repeatable; also read, comma-separated, from SWITCHYARD_API_KEYS).
    /// Without any key the service is open.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// A browser origin allowed to call the service (repeatable; replaces
    /// the file's `cors_origins`); without any, CORS is off.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
}

/// Where the service listens unless the flag or the file says.
const DEFAULT_BIND: &str = "127.0.0.1:8080";

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::from_file(&args.config)?;
    let file = ServerConfig::from_file(&args.config)?;
    check_overrides(&args.limits)?;
    let limits = args.limits.apply(file.limits.apply(Limits::default()));
    let bind = args
        .bind
        .clone()
        .or(file.bind)
        .unwrap_or_else(|| DEFAULT_BIND.to_owned());
    let cors_origins = if args.cors_origins.is_empty() {
        file.cors_origins
    } else {
        args.cors_origins.clone()
    };
    let engine = Arc::new(
        Engine::builder()
            .registry(registry)
            .build()
            .map_err(ServerError::from)?,
    );
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| ServerError::Bind {
            addr: bind.clone(),
            reason: e.to_string(),
        })?;
    eprintln!(
        "switchyard-server: {} model(s) on http://{}",
        engine.registry().models().len(),
        listener.local_addr()?
    );
    eprintln!("switchyard-server: {limits:?}");
    let from_env = std::env::var("SWITCHYARD_API_KEYS").unwrap_or_default();
    let keys = ApiKeys::new(
        args.api_keys
            .iter()
            .map(String::as_str)
            .chain(from_env.split(',')),
    );
    let state = AppState::new(engine.clone(), limits)
        .with_api_keys(keys)
        .with_cors_origins(&cors_origins)?;
    let stopping = engine.clone();
    let stop = async move {
        stop_signal().await;
        eprintln!(
            "switchyard-server: SIGTERM or Ctrl-C: no new connections; {} request(s) under way finish first",
            stopping.sessions().len()
        );
    };
    serve(listener, state, stop).await?;
    eprintln!("switchyard-server: streams drained; stopping the engine");
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.shutdown(ShutdownMode::FailQueued)).await?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-server: {e}");
            ExitCode::FAILURE
        }
    }
}
