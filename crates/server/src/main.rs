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
use switchyard_server::{AppState, Limits, ServerError, serve};

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
    };
    eprintln!(
        "switchyard-server: {} model(s) on http://{}",
        engine.registry().models().len(),
        listener.local_addr()?
    );
    serve(
        listener,
        AppState::new(engine.clone(), limits),
        stop_signal(),
    )
    .await?;
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
