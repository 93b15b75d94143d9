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
/// expected input. Exits 0 at the end of input, 2 when stdout is gone.
///
/// Every answer reaches stdout within about [`FLUSH_DELAY`] of being written (to mw a task
/// runs, and its timeout counts, until its answer arrives): answers are flushed at once when no
/// further input is already buffered, and otherwise by a flusher thread at most
/// [`FLUSH_DELAY`] later, so a pipelined stream of fast tasks costs one write per batch,
/// never one per answer, and a fast answer is never held back by a slow task after it.
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
    let out = std::sync::Arc::new(Answers::default());
    {
        let out = out.clone();
        // Without the thread, answers are still flushed when input runs dry (and at exit).
        let _ = std::thread::Builder::new()
            .name("mw-flush".into())
            .spawn(move || out.flusher());
    }
    let mut line = Vec::new();
    let mut answer = Vec::with_capacity(1024);
    let mut spare = Vec::new();
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
        answer.clear();
        let result = match serde_json::from_slice::<I>(&line) {
            Ok(i) => match f(i) {
                Ok(o) => serde_json::to_writer(&mut answer, &o).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(format!("the task input is not the expected JSON: {e}")),
        };
        if let Err(msg) = result {
            answer.clear();
            if serde_json::to_writer(&mut answer, &serde_json::json!({ "error": msg })).is_err() {
                answer.clear();
                answer.extend_from_slice(br#"{"error":"cannot serialise the error"}"#);
            }
        }
        answer.push(b'\n');
        out.push(&answer);
        // Flush before waiting for more input (never hold an answer back while idle).
        if input.buffer().is_empty() {
            out.flush(&mut spare);
        }
        if out.failed() {
            eprintln!("error: cannot write the result to stdout");
            std::process::exit(2);
        }
    }
    out.flush(&mut spare);
    if out.failed() {
        std::process::exit(2);
    }
    std::process::exit(0);
}

/// The longest an answer of [`serve_stream`] waits in its buffer.
pub const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// [`serve_stream`]'s answers not yet written, shared with its flusher thread.
#[derive(Default)]
struct Answers {
    state: std::sync::Mutex<AnswersState>,
    dirty: std::sync::Condvar,
}

#[derive(Default)]
struct AnswersState {
    pending: Vec<u8>,
    failed: bool,
}

impl Answers {
    fn state(&self) -> std::sync::MutexGuard<'_, AnswersState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds one answer line; wakes the flusher when the buffer was clean.
    fn push(&self, line: &[u8]) {
        let mut st = self.state();
        let was_clean = st.pending.is_empty();
        st.pending.extend_from_slice(line);
        drop(st);
        if was_clean {
            self.dirty.notify_one();
        }
    }

    fn failed(&self) -> bool {
        self.state().failed
    }

    /// Writes out what is pending (`spare` is an empty buffer to swap in). Writers take
    /// stdout's lock before the pending bytes, so answers leave in order.
    fn flush(&self, spare: &mut Vec<u8>) {
        let mut stdout = std::io::stdout().lock();
        std::mem::swap(&mut self.state().pending, spare);
        if spare.is_empty() {
            return;
        }
        let ok = stdout.write_all(spare).is_ok() && stdout.flush().is_ok();
        spare.clear();
        if !ok {
            self.state().failed = true;
        }
    }

    /// Flushes a dirty buffer [`FLUSH_DELAY`] after it became dirty, for ever.
    fn flusher(&self) {
        let mut spare = Vec::new();
        loop {
            {
                let mut st = self.state();
                while st.pending.is_empty() && !st.failed {
                    st = self
                        .dirty
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if st.failed {
                    return;
                }
            }
            // Answers written meanwhile join this write.
            std::thread::sleep(FLUSH_DELAY);
            self.flush(&mut spare);
        }
    }
}
