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
    /// Largest request body, in bytes [default: 16 MiB].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Most new tokens one choice may ask for [default: 4096].
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Most choices (`n`) per prompt [default: 8].
    #[arg(long)]
    max_choices: Option<u64>,
    /// Most prompts or embedding inputs in one request [default: 256].
    #[arg(long)]
    max_inputs: Option<usize>,
    /// Longest side of a generated image, in pixels [default: 1024].
    #[arg(long)]
    max_image_side: Option<usize>,
    /// Most images per request [default: 4].
    #[arg(long)]
    max_images: Option<u64>,
    /// Most denoising steps per image [default: 150].
    #[arg(long)]
    max_steps: Option<u64>,
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

impl Args {
    fn limit_flags(&self) -> LimitOverrides {
        LimitOverrides {
            max_body_bytes: self.max_body_bytes,
            max_tokens: self.max_tokens,
            max_choices: self.max_choices,
            max_inputs: self.max_inputs,
            max_image_side: self.max_image_side,
            max_images: self.max_images,
            max_steps: self.max_steps,
        }
    }
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
    let flags = args.limit_flags();
    check_overrides(&flags)?;
    let limits = flags.apply(file.limits.apply(Limits::default()));
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
