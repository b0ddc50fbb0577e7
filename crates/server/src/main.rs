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
use switchyard_server::{ApiKeys, AppState, Limits, ServerError, serve};

/// Serve a Switchyard model registry over HTTP (OpenAI-compatible).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The model registry (`models.toml` or `models.json`).
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Most new tokens one choice may ask for.
    #[arg(long, default_value_t = Limits::default().max_tokens)]
    max_tokens: u64,
    /// Most choices (`n`) per prompt.
    #[arg(long, default_value_t = Limits::default().max_choices)]
    max_choices: u64,
    /// Most prompts or embedding inputs in one request.
    #[arg(long, default_value_t = Limits::default().max_inputs)]
    max_inputs: usize,
    /// Longest side of a generated image, in pixels.
    #[arg(long, default_value_t = Limits::default().max_image_side)]
    max_image_side: usize,
    /// Most images per request.
    #[arg(long, default_value_t = Limits::default().max_images)]
    max_images: u64,
    /// Most denoising steps per image.
    #[arg(long, default_value_t = Limits::default().max_steps)]
    max_steps: u64,
    /// An API key requests must send as `Authorization: Bearer <key>`
    /// (repeatable; also read, comma-separated, from SWITCHYARD_API_KEYS).
    /// Without any key the service is open.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// A browser origin allowed to call the service (repeatable); without
    /// any, CORS is off.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
}

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
    let engine = Arc::new(
        Engine::builder()
            .registry(registry)
            .build()
            .map_err(ServerError::from)?,
    );
    let listener = tokio::net::TcpListener::bind(&args.bind)
        .await
        .map_err(|e| ServerError::Bind {
            addr: args.bind.clone(),
            reason: e.to_string(),
        })?;
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        max_tokens: args.max_tokens,
        max_choices: args.max_choices,
        max_inputs: args.max_inputs,
        max_image_side: args.max_image_side,
        max_images: args.max_images,
        max_steps: args.max_steps,
    };
    eprintln!(
        "switchyard-server: {} model(s) on http://{}",
        engine.registry().models().len(),
        listener.local_addr()?
    );
    let from_env = std::env::var("SWITCHYARD_API_KEYS").unwrap_or_default();
    let keys = ApiKeys::new(
        args.api_keys
            .iter()
            .map(String::as_str)
            .chain(from_env.split(',')),
    );
    let state = AppState::new(engine.clone(), limits)
        .with_api_keys(keys)
        .with_cors_origins(&args.cors_origins)?;
    serve(listener, state, stop_signal()).await?;
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
