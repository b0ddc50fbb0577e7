//! Write a tiny random-weight Stable Diffusion (the real architecture, in
//! the diffusers folder layout) for trying the image paths where no real
//! weights can be fetched.
//!
//! Usage: `write-tiny-sd DIR [SEED]`. Prints the folder.

use std::path::PathBuf;
use std::process::ExitCode;

use switchyard_testkit::tiny::{self, TinyStableDiffusion};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: write-tiny-sd DIR [SEED]");
        return ExitCode::from(2);
    };
    let seed = match args.get(1).map(|s| s.parse::<u64>()) {
        None => 7,
        Some(Ok(seed)) => seed,
        Some(Err(_)) => {
            eprintln!("the seed must be a whole number");
            return ExitCode::from(2);
        }
    };
    match tiny::write_stable_diffusion(&dir, &TinyStableDiffusion::default(), seed) {
        Ok(()) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("writing {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
