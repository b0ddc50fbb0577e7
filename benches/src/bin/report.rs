//! Run a benchmark suite and print its table and JSON summary.
//!
//! `report -- list` names the suites; `report -- SUITE` runs one.

use std::process::ExitCode;

use switchyard_benches::suites;

fn main() -> ExitCode {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: report SUITE | list");
        return ExitCode::from(2);
    };
    if name == "list" {
        for suite in suites::ALL {
            println!("{:12} {}", suite.name, suite.about);
        }
        return ExitCode::SUCCESS;
    }
    let Some(suite) = suites::find(&name) else {
        eprintln!("unknown suite {name:?}; `report list` names them");
        return ExitCode::from(2);
    };
    match (suite.run)() {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("suite {name} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
