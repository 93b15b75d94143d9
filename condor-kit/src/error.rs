//! Errors of the HTCondor kit. Every variant names the file, line, command or field involved.
//! This module must never know about mw's master, journal or bundles.

use std::path::PathBuf;

/// Everything that can go wrong in `mw-condor-kit`.
#[derive(Debug, thiserror::Error)]
pub enum CondorError {
    /// A path or name that cannot be written safely into a submit description or item list.
    #[error("unsafe {field} for a submit description: {value:?} ({why})")]
    UnsafeValue {
        field: String,
        value: String,
        why: &'static str,
    },
    /// The submit template could not be read, parsed or rendered.
    #[error("submit template {source_name}: {message}")]
    Template {
        source_name: String,
        message: String,
    },
    /// A `condor_*` command is not on PATH.
    #[error("`{command}` was not found on PATH; is HTCondor installed and on PATH?")]
    CommandMissing { command: String },
    /// A `condor_*` command could not be started for another reason.
    #[error("could not run `{command}`: {source}")]
    CommandSpawn {
        command: String,
        source: std::io::Error,
    },
    /// A `condor_*` command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// A `condor_*` command printed something we cannot understand.
    #[error("could not understand the output of `{command}`: {message}; output was {output:?}")]
    BadOutput {
        command: String,
        message: String,
        output: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A record of a job event log that is not a valid event.
    #[error("{path}:{line}: bad job event record: {message}")]
    BadRecord {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The file-system watcher could not be set up.
    #[error("cannot watch {path}: {message}")]
    Watch { path: PathBuf, message: String },
}

/// Shorthand result type.
pub type Result<T, E = CondorError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CondorError {
    let path = path.into();
    move |source| CondorError::Io { path, source }
}
