//! Switchyard's benchmark harness.
//!
//! Two ways to measure: criterion benches (`cargo bench -p switchyard-benches`)
//! for fine-grained timings, and the `report` binary
//! (`cargo run --release -p switchyard-benches --bin report -- SUITE`) which
//! runs one named comparison, prints a readable table and, as its very last
//! line, one JSON object:
//!
//! ```text
//! {"suite": NAME, "figures": {NAME: NUMBER, ...},
//!  "goals": {NAME: {"goal": "the issue's words", "value": NUMBER, "met": BOOL}, ...}}
//! ```
//!
//! Each issue with a speed goal adds a suite to [`suites::ALL`] and one goal
//! entry per goal it sets.
//!
//! # Example
//!
//! ```
//! use switchyard_benches::{Report, median};
//!
//! let mut report = Report::new("demo");
//! let mut samples = vec![3.0, 1.0, 2.0];
//! report.figure("step_ms", median(&mut samples), "ms");
//! report.goal("speedup", ">= 1.0x baseline", 1.2, true);
//! let json = report.json();
//! assert_eq!(json["figures"]["step_ms"], 2.0);
//! assert_eq!(json["goals"]["speedup"]["met"], true);
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod batch_suites;
pub mod decode_suite;
pub mod diffusion_suite;
pub mod embed_suite;
pub mod engine_suite;
pub mod kernels_suite;
pub mod llama_server;
pub mod memory_suites;
pub mod serve_suite;
pub mod suites;

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// The outcome of one suite: a table for people, figures and goals for machines.
#[derive(Debug, Clone)]
pub struct Report {
    suite: String,
    rows: Vec<(String, String)>,
    figures: Map<String, Value>,
    goals: Map<String, Value>,
}

impl Report {
    /// An empty report for `suite`.
    pub fn new(suite: &str) -> Self {
        Self {
            suite: suite.to_owned(),
            rows: Vec::new(),
            figures: Map::new(),
            goals: Map::new(),
        }
    }

    /// Record a measured number with its unit.
    pub fn figure(&mut self, name: &str, value: f64, unit: &str) {
        self.rows
            .push((name.to_owned(), format!("{value:.3} {unit}")));
        self.figures.insert(name.to_owned(), json!(value));
    }

    /// Record a goal the issue sets: its words, the measured value, whether met.
    pub fn goal(&mut self, name: &str, goal: &str, value: f64, met: bool) {
        let mark = if met { "met" } else { "NOT met" };
        self.rows.push((
            format!("goal {name}"),
            format!("{value:.3} ({goal}: {mark})"),
        ));
        self.goals.insert(
            name.to_owned(),
            json!({"goal": goal, "value": value, "met": met}),
        );
    }

    /// The machine-readable summary.
    pub fn json(&self) -> Value {
        json!({"suite": self.suite, "figures": self.figures, "goals": self.goals})
    }

    /// The table, one row per figure and goal.
    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("suite {}\n", self.suite);
        for (k, v) in &self.rows {
            out.push_str(&format!("  {k:width$}  {v}\n"));
        }
        out
    }

    /// Print the table, then the JSON summary as the very last line.
    pub fn print(&self) {
        print!("{}", self.table());
        println!("{}", self.json());
    }
}

/// A temporary folder, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempFolder(pub std::path::PathBuf);

impl TempFolder {
    /// `name` under the system's temp folder, suffixed with the process id.
    pub fn named(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("{name}-{}", std::process::id())))
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `q` quantile of samples (nearest rank, sorted in place); NaN for
/// no samples.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Median of samples (sorted in place); NaN for no samples.
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    }
}

/// Run `f` `warmup` times untimed, then `runs` times timed; durations of the timed runs.
pub fn time_runs<E>(
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Vec<Duration>, E> {
    for _ in 0..warmup {
        f()?;
    }
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        out.push(start.elapsed());
    }
    Ok(out)
}

/// Durations as milliseconds.
pub fn millis(durations: &[Duration]) -> Vec<f64> {
    durations.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn quantile_is_the_nearest_rank() {
        let mut v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&mut v, 0.5), 2.0);
        assert_eq!(quantile(&mut v, 0.95), 4.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert!(quantile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn report_json_is_one_line_and_table_lists_everything() {
        let mut r = Report::new("t");
        r.figure("a", 1.5, "ms");
        r.goal("g", ">= 2x", 1.0, false);
        let line = r.json().to_string();
        assert!(!line.contains('\n'));
        assert_eq!(r.json()["suite"], "t");
        assert_eq!(r.json()["goals"]["g"]["goal"], ">= 2x");
        let table = r.table();
        assert!(table.contains("1.500 ms") && table.contains("NOT met"));
    }

    #[test]
    fn time_runs_counts_and_propagates_errors() {
        let mut calls = 0;
        let d = time_runs::<()>(2, 3, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((d.len(), calls), (3, 5));
        assert_eq!(time_runs(0, 3, || Err("boom")), Err("boom"));
    }
}
