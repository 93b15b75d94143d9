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
    /// A `condor_q` or `condor_history` ran longer than it may; it was stopped.
    #[error("`{command}` did not finish within {seconds}s; stopped it (is the schedd answering?)")]
    CommandTimedOut {
        /// The command line.
        command: String,
        /// The limit it ran into.
        seconds: f64,
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
    /// A job event log in a format mw does not read: HTCondor writes JSON or XML records when
    /// the pool's `DEFAULT_USERLOG_FORMAT_OPTIONS` has `JSON` or `XML` (or the submit
    /// description says `log_xml = True`); mw reads only the text format. Nothing in the log
    /// is read.
    #[error(
        "{path}: HTCondor wrote this job event log in {format}, which mw does not read; set \
         DEFAULT_USERLOG_FORMAT_OPTIONS in the submit machine's HTCondor configuration to text \
         options only (e.g. `DEFAULT_USERLOG_FORMAT_OPTIONS = ISO_DATE`, no JSON or XML), \
         leave `log_xml` out of the submit template, and submit again"
    )]
    LogFormat {
        /// The log file.
        path: PathBuf,
        /// `JSON` or `XML`.
        format: &'static str,
    },
    /// A job event log that was being read is gone (deleted or moved away). When the file
    /// appears again it is read from its start.
    #[error("{path}: the job event log was deleted or moved away")]
    LogGone {
        /// The log file.
        path: PathBuf,
    },
    /// A job event log was replaced by another file (or shrank) and is read again from its
    /// start: events already delivered may come again (the watcher's notice; not an error of
    /// any record).
    #[error("{path}: the job event log was replaced or shrank; reading it again from its start")]
    LogRewound {
        /// The log file.
        path: PathBuf,
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
