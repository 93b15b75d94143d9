//! The helper that makes a Rust task program three lines: read the input JSON from stdin,
//! call a function, write its result as JSON to stdout (the task contract of DESIGN.md).
//!
//! ```no_run
//! mw_worker_runtime::task::serve(|n: u64| Ok::<_, String>(n * 2));
//! ```
//!
//! This module knows nothing of bundles or platforms.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};

/// Reads the input from stdin, calls `f`, prints its result to stdout and exits: status 0 on
/// success, 1 when `f` returns an error (printed to stderr), 2 on unreadable input.
pub fn serve<I, O, E, F>(f: F) -> !
where
    I: DeserializeOwned,
    O: Serialize,
    E: std::fmt::Display,
    F: FnOnce(I) -> Result<O, E>,
{
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("error: cannot read the task input from stdin: {e}");
        std::process::exit(2);
    }
    let input: I = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: the task input is not the expected JSON: {e}");
            std::process::exit(2);
        }
    };
    match f(input) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if serde_json::to_writer(&mut stdout, &out).is_err() || stdout.flush().is_err() {
                eprintln!("error: cannot write the result to stdout");
                std::process::exit(2);
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
