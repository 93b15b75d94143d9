//! What a task ends with: its times, its result ([`TaskOutput`]) or its error ([`MwError`]),
//! and how a program's stdout becomes the result value.
//!
//! This module knows nothing of scheduling, interfaces or the journal's storage.

use crate::journal::JournalError;
use crate::task::TaskId;
use mw_bundle::ExitInfo;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Time accounting of one task, and how many attempts it took.
#[derive(Debug, Clone, Default)]
pub struct TaskTimes {
    /// When it was submitted.
    pub submitted: Option<SystemTime>,
    /// When its last attempt started.
    pub started: Option<SystemTime>,
    /// When it finished.
    pub finished: Option<SystemTime>,
    /// Wall-clock time of the last attempt.
    pub wall: Duration,
    /// CPU time (user + system) of the last attempt.
    pub cpu: Duration,
    /// Attempts started so far (a task cancelled while queued has 0).
    pub attempts: u32,
}

/// A successful task's result.
#[derive(Debug, Clone)]
pub struct TaskOutput {
    /// Which task.
    pub task: TaskId,
    /// The result JSON (the program's stdout; `null` when it printed nothing).
    pub value: serde_json::Value,
    /// Declared output files kept: (name, path).
    pub output_files: Vec<(String, PathBuf)>,
    /// Host it ran on.
    pub host: String,
    /// Times.
    pub times: TaskTimes,
    /// Attempts made.
    pub attempts: u32,
}

/// Errors of the master's API; a failed task arrives as one of these from `get_result`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MwError {
    /// The task's program ran and failed (non-zero exit, signal, timeout, bad stdout).
    #[error(
        "{task} failed: {exit}{} (attempt {attempts}, host {host}){}",
        signal_name(exit),
        tail(stderr_tail)
    )]
    TaskFailed {
        /// Which task.
        task: TaskId,
        /// How it ended.
        exit: ExitInfo,
        /// Tail of its stderr.
        stderr_tail: String,
        /// Attempts made.
        attempts: u32,
        /// Host of the last attempt.
        host: String,
    },
    /// The platform could not run the task.
    #[error("{task} failed: {message} (attempt {attempts})")]
    Interface {
        /// Which task.
        task: TaskId,
        /// What the interface said.
        message: String,
        /// Attempts made.
        attempts: u32,
        /// What the platform knows of a run it ended (host, start, wall), if it started.
        ran: Option<crate::task::RunFacts>,
    },
    /// The program exited 0 but its stdout is not a result: not JSON, or over the task's
    /// output limit (`reason` says which, see `bad_stdout_reason`).
    #[error("{task} failed: the program exited 0 but {reason}")]
    BadOutput {
        /// Which task.
        task: TaskId,
        /// The parse error.
        reason: String,
        /// Host of the attempt.
        host: String,
    },
    /// The program exited 0 but did not write some of its declared output files.
    #[error("{task} failed: the program exited 0 but did not write its declared output file(s) {} as regular files (attempt {attempts})", quoted(files))]
    MissingOutput {
        /// Which task.
        task: TaskId,
        /// The declared names that were not written.
        files: Vec<String>,
        /// Attempts made.
        attempts: u32,
        /// Host of the attempt.
        host: String,
    },
    /// The task was cancelled.
    #[error("{0} was cancelled")]
    Cancelled(TaskId),
    /// No such task in this master.
    #[error("{0} does not exist in this master")]
    UnknownTask(TaskId),
    /// The task's result was already taken by an earlier `get_result`.
    #[error("the result of {0} was already collected")]
    AlreadyCollected(TaskId),
    /// `get_result(None)` with nothing submitted and not collected.
    #[error("no task is pending: every submitted task's result was already collected")]
    NothingPending,
    /// The result JSON does not have the type asked for.
    #[error("{task}: result does not have the expected type: {reason}")]
    WrongType {
        /// Which task.
        task: TaskId,
        /// The decode error.
        reason: String,
    },
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(String),
    /// The master was stopped ([`crate::Master::stop`], or its journal failed for good):
    /// nothing more is dispatched or reported.
    #[error("the master stopped: {0}")]
    Stopped(String),
    /// An input given to [`crate::Master::submit`] or [`crate::Master::map`] cannot be
    /// serialised as JSON (e.g. a map with keys that are not strings). A NaN or infinite
    /// float is not an error: it becomes `null`, as `serde_json` writes it.
    #[error("input cannot be serialised as JSON: {0}")]
    BadInput(String),
}

/// ` (SIGSEGV)` etc. for an exit by a signal, so the error names it.
fn signal_name(exit: &ExitInfo) -> String {
    let ExitInfo::Signaled { signal } = exit else {
        return String::new();
    };
    match mw_bundle::signal_name(i64::from(*signal)) {
        Some(name) => format!(" ({name})"),
        None => String::new(),
    }
}

fn quoted(files: &[String]) -> String {
    files
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn tail(stderr: &str) -> String {
    let t = stderr.trim_end();
    if t.is_empty() {
        String::new()
    } else {
        format!("; stderr tail:\n{t}")
    }
}

impl MwError {
    /// The task this error is about, if any.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            MwError::TaskFailed { task, .. }
            | MwError::Interface { task, .. }
            | MwError::BadOutput { task, .. }
            | MwError::MissingOutput { task, .. }
            | MwError::WrongType { task, .. } => Some(*task),
            MwError::Cancelled(t) | MwError::UnknownTask(t) | MwError::AlreadyCollected(t) => {
                Some(*t)
            }
            MwError::NothingPending
            | MwError::Journal(_)
            | MwError::BadInput(_)
            | MwError::Stopped(_) => None,
        }
    }
}

impl MwError {
    /// Attempts made, for errors about a task that ran (0 for a cancelled task).
    pub fn attempts(&self) -> Option<u32> {
        match self {
            MwError::TaskFailed { attempts, .. }
            | MwError::Interface { attempts, .. }
            | MwError::MissingOutput { attempts, .. } => Some(*attempts),
            _ => None,
        }
    }

    /// How the task ended, in the words results and the journal use: `exit status 3`,
    /// `timed out after 5 s`, `cancelled`, `not run` (the platform never ran it),
    /// `exit status 0` (it ran, but its output was unusable).
    pub fn exit_text(&self) -> String {
        match self {
            MwError::TaskFailed { exit, .. } => exit.to_string(),
            MwError::Interface { ran: Some(r), .. } => r.exit.clone(),
            MwError::Cancelled(_) => "cancelled".into(),
            MwError::BadOutput { .. } | MwError::MissingOutput { .. } => "exit status 0".into(),
            _ => "not run".into(),
        }
    }

    /// The host of the failed attempt, when known.
    pub fn host(&self) -> &str {
        match self {
            MwError::TaskFailed { host, .. }
            | MwError::BadOutput { host, .. }
            | MwError::MissingOutput { host, .. } => host,
            MwError::Interface { ran: Some(r), .. } => &r.host,
            _ => "",
        }
    }
}

impl From<JournalError> for MwError {
    fn from(e: JournalError) -> Self {
        MwError::Journal(e.to_string())
    }
}

/// Parses a program's stdout as the result JSON; empty output is `null`.
pub fn parse_stdout(stdout: &[u8]) -> Result<serde_json::Value, String> {
    parse_stdout_limited(stdout, u64::MAX)
}

/// What [`MwError::BadOutput`] says of a stdout that [`parse_stdout_limited`] or a stdout
/// mode's own size check refused: a result over the limit, or one that is not JSON (with the
/// hint for a program that prints text, which only that case needs).
pub(crate) fn bad_stdout_reason(e: &mw_bundle::JsonLimitError) -> String {
    match e {
        mw_bundle::JsonLimitError::Syntax(why) => format!(
            "its stdout is not JSON ({why}); a program that prints text needs \
             `stdout = \"text\"` in the job file's [program] table (library: \
             `TaskSpec::stdout = StdoutMode::Text`)"
        ),
        other => format!("its stdout is not a result: {other}"),
    }
}

/// [`parse_stdout`] with the task's output limit: a result over `limit` bytes, or with so
/// many JSON values that its parsed tree would take far more memory than its text, is
/// refused before any tree is built ([`mw_bundle::parse_json_limited`], shared with the
/// BOINC validator).
pub fn parse_stdout_limited(stdout: &[u8], limit: u64) -> Result<serde_json::Value, String> {
    mw_bundle::parse_json_limited(stdout, limit).map_err(|e| bad_stdout_reason(&e))
}

/// [`parse_stdout_limited`]'s verdict without the tree (the same errors).
pub(crate) fn check_stdout_limited(stdout: &[u8], limit: u64) -> Result<(), String> {
    mw_bundle::check_json_limited(stdout, limit).map_err(|e| bad_stdout_reason(&e))
}
