//! Where each attempt's stdout and stderr are kept: `<logs dir>/task-<N>.<attempt>.stdout`
//! and `….stderr`, each cut to [`LOG_CAP_BYTES`] (stdout keeps its head, stderr its tail,
//! which is all an interface reports of it; a cut log says so). The one home of these file
//! names: the master writes them, `mw logs` reads them.
//!
//! This module knows nothing of the journal, platforms or terminals.

use crate::task::TaskId;
use std::path::{Path, PathBuf};

/// The largest log file kept per stream and attempt.
pub const LOG_CAP_BYTES: usize = 1024 * 1024;

/// Which stream of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Its standard output.
    Stdout,
    /// Its standard error (the tail its interface reported).
    Stderr,
}

impl Stream {
    fn suffix(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The log file of `stream` of `attempt` (1 for the first) of `task`.
pub fn log_path(logs_dir: &Path, task: TaskId, attempt: u32, stream: Stream) -> PathBuf {
    logs_dir.join(format!("task-{}.{attempt}.{}", task.0, stream.suffix()))
}

/// Marker of a log cut at the cap: after stdout's head, before stderr's tail (without its
/// leading newline there).
const CUT: &[u8] = b"\n[mw: cut at the log size cap]\n";

/// Keeps one attempt's streams (empty streams leave no file; the directory is made with the
/// first file). Failures are logged, never fatal: a task's outcome does not depend on its log.
pub(crate) fn write(
    logs_dir: &Path,
    task: TaskId,
    attempt: u32,
    keep_stdout: bool,
    stdout: &[u8],
    stderr: &str,
) {
    if keep_stdout && !stdout.is_empty() {
        let mut bytes = stdout[..stdout.len().min(LOG_CAP_BYTES)].to_vec();
        if stdout.len() > LOG_CAP_BYTES {
            bytes.extend_from_slice(CUT);
        }
        put(
            &log_path(logs_dir, task, attempt, Stream::Stdout),
            &bytes,
            task,
        );
    }
    if !stderr.is_empty() {
        // The tail, after the marker when anything before it was cut.
        let tail = mw_bundle::text::tail(stderr, LOG_CAP_BYTES);
        let mut bytes = Vec::with_capacity(tail.len() + CUT.len());
        if tail.len() < stderr.len() {
            bytes.extend_from_slice(&CUT[1..]);
        }
        bytes.extend_from_slice(tail.as_bytes());
        put(
            &log_path(logs_dir, task, attempt, Stream::Stderr),
            &bytes,
            task,
        );
    }
}

/// Writes one log file; the logs directory is created when it is missing (not checked
/// before every write: most attempts of a fast job write no log at all).
fn put(path: &Path, bytes: &[u8], task: TaskId) {
    let mut written = std::fs::write(path, bytes);
    if matches!(&written, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        if let Some(dir) = path.parent() {
            written = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(path, bytes));
        }
    }
    if let Err(e) = written {
        log::warn!("{task}: cannot keep {}: {e}", path.display());
    }
}

/// Reads a kept log, at most [`LOG_CAP_BYTES`] plus the cut marker (the file may have been
/// replaced by something huge). `None` when there is none.
pub fn read(logs_dir: &Path, task: TaskId, attempt: u32, stream: Stream) -> Option<Vec<u8>> {
    use std::io::Read;
    let path = log_path(logs_dir, task, attempt, stream);
    // Only a regular file: a FIFO put in its place would block the reader for ever.
    if !std::fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let f = std::fs::File::open(path).ok()?;
    let mut out = Vec::new();
    f.take((LOG_CAP_BYTES + CUT.len()) as u64)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed expectation is a test failure
    use super::*;

    /// Each stream is kept up to the cap; a cut one says so: stdout after its head, stderr
    /// before its tail (cut at a character boundary). What fits is kept as it is.
    #[test]
    fn logs_past_the_cap_are_cut_and_marked() {
        let d = tempfile::tempdir().unwrap();
        let over = format!("é{}END", "x".repeat(LOG_CAP_BYTES));
        write(d.path(), TaskId(1), 1, true, over.as_bytes(), &over);
        let out = read(d.path(), TaskId(1), 1, Stream::Stdout).unwrap();
        assert_eq!(out.len(), LOG_CAP_BYTES + CUT.len());
        assert!(out.starts_with("éx".as_bytes()) && out.ends_with(CUT));
        let err = read(d.path(), TaskId(1), 1, Stream::Stderr).unwrap();
        assert!(
            err.starts_with(b"[mw: cut at the log size cap]\nxxx"),
            "{:?}",
            &err[..40]
        );
        assert!(err.ends_with(b"xEND"));
        assert_eq!(err.len(), LOG_CAP_BYTES + CUT.len() - 1);

        let fits = "x".repeat(LOG_CAP_BYTES);
        write(d.path(), TaskId(2), 1, true, fits.as_bytes(), &fits);
        for stream in [Stream::Stdout, Stream::Stderr] {
            assert_eq!(
                read(d.path(), TaskId(2), 1, stream).unwrap(),
                fits.as_bytes()
            );
        }
    }

    /// A FIFO (or anything but a regular file) where a log should be is no log: reading it
    /// once blocked `mw logs` for ever.
    #[test]
    fn a_fifo_in_place_of_a_log_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let path = log_path(d.path(), TaskId(3), 1, Stream::Stdout);
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(read(d.path(), TaskId(3), 1, Stream::Stdout), None);
        std::fs::write(log_path(d.path(), TaskId(4), 1, Stream::Stdout), "out").unwrap();
        assert_eq!(
            read(d.path(), TaskId(4), 1, Stream::Stdout).as_deref(),
            Some(&b"out"[..])
        );
    }
}
