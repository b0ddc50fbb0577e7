//! Fetch the real models into `$SWITCHYARD_MODELS` or `models/`.
//!
//! Usage: `fetch-models [all | NAME...]` where NAME is a model folder name
//! (`smollm2-135m-instruct-q4_1`, `all-minilm-l6-v2`). Prints each folder.

use std::process::ExitCode;

use switchyard_testkit::fetch::{self, ALL_MODELS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted: Vec<_> = if args.is_empty() || args.iter().any(|a| a == "all") {
        ALL_MODELS.to_vec()
    } else {
        let mut wanted = Vec::new();
        for arg in &args {
            match ALL_MODELS.iter().find(|m| m.name == arg) {
                Some(m) => wanted.push(*m),
                None => {
                    let names: Vec<_> = ALL_MODELS.iter().map(|m| m.name).collect();
                    eprintln!("unknown model {arg:?}; known: all, {}", names.join(", "));
                    return ExitCode::from(2);
                }
            }
        }
        wanted
    };
    for model in wanted {
        match fetch::fetch(&model) {
            Ok(dir) => println!("{}\t{}", model.name, dir.display()),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
