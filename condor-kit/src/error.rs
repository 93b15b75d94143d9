//! Errors of the HTCondor kit. Every variant names the file, line, command or field involved.
//! This module must never know about mw's master, journal or bundles.

use std::path::PathBuf;

/// Everything that can go wrong in `mw-condor-kit`.
#[derive(Debug, thiserror::Error)]
pub enum CondorError {
    /// A path or name that cannot be written safely into a submit description or item list.
    #[error("unsafe {field} for a submit description: {value:?} ({why})")]
    UnsafeValue {
        /// The submit-description field.
        field: String,
        /// The refused value.
        value: String,
        /// Why it is unsafe.
        why: &'static str,
    },
    /// The submit template could not be read, parsed or rendered.
    #[error("submit template {source_name}: {message}")]
    Template {
        /// The template's name.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// A `condor_*` command is not on PATH.
    #[error("`{command}` was not found on PATH; is HTCondor installed and on PATH?")]
    CommandMissing {
        /// The command's name.
        command: String,
    },
    /// A `condor_*` command could not be started for another reason.
    #[error("could not run `{command}`: {source}")]
    CommandSpawn {
        /// The command's name.
        command: String,
        /// The spawn error.
        source: std::io::Error,
    },
    /// A `condor_*` command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (bounded).
        stderr: String,
    },
    /// A `condor_*` command printed something we cannot understand.
    #[error("could not understand the output of `{command}`: {message}; output was {output:?}")]
    BadOutput {
        /// The command line.
        command: String,
        /// What did not parse.
        message: String,
        /// The output (bounded).
        output: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record of a job event log that is not a valid event.
    #[error("{path}:{line}: bad job event record: {message}")]
    BadRecord {
        /// The log file.
        path: PathBuf,
        /// The 1-based line of the record's header.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The file-system watcher could not be set up.
    #[error("cannot watch {path}: {message}")]
    Watch {
        /// The watched path.
        path: PathBuf,
        /// The watcher's error.
        message: String,
    },
}

/// Shorthand result type.
pub type Result<T, E = CondorError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CondorError {
    let path = path.into();
    move |source| CondorError::Io { path, source }
}
