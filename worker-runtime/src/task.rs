//! The helpers that make a Rust task program three lines: [`serve`] reads the input JSON
//! from stdin, calls a function, writes its result as JSON to stdout (the task contract);
//! [`serve_stream`] does the same for every line of a stream (the stream contract of
//! [`crate::stream`]).
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

/// The streaming counterpart of [`serve`] (`[program] mode = "stream"`): reads one input
/// per line from stdin until it closes and answers each with one line on stdout, in order:
/// the result JSON, or `{"error": "..."}` when `f` returns an error or the line is not the
/// expected input. Output is flushed whenever no further input is already buffered, so a
/// pipelined stream costs one write per batch. Exits 0 at the end of input, 2 when stdout
/// is gone.
///
/// ```no_run
/// mw_worker_runtime::task::serve_stream(|n: u64| Ok::<_, String>(n * 2));
/// ```
pub fn serve_stream<I, O, E, F>(mut f: F) -> !
where
    I: DeserializeOwned,
    O: Serialize,
    E: std::fmt::Display,
    F: FnMut(I) -> Result<O, E>,
{
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::with_capacity(64 * 1024, stdin.lock());
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: cannot read the task input from stdin: {e}");
                std::process::exit(2);
            }
        }
        let answer = match serde_json::from_slice::<I>(&line) {
            Ok(i) => match f(i) {
                Ok(o) => serde_json::to_writer(&mut out, &o).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(format!("the task input is not the expected JSON: {e}")),
        };
        let written = match answer {
            Ok(()) => out.write_all(b"\n"),
            Err(msg) => serde_json::to_writer(&mut out, &serde_json::json!({ "error": msg }))
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n")),
        };
        // Flush before waiting for more input (never hold an answer back while idle).
        let flushed = if input.buffer().is_empty() {
            out.flush()
        } else {
            Ok(())
        };
        if written.is_err() || flushed.is_err() {
            eprintln!("error: cannot write the result to stdout");
            std::process::exit(2);
        }
    }
    if out.flush().is_err() {
        std::process::exit(2);
    }
    std::process::exit(0);
}
