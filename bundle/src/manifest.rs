//! The TOML manifest carried as the first entry (`MANIFEST.toml`) of every bundle.
//!
//! The manifest says what kind of bundle this is, carries the kind-specific metadata
//! (program, task or result) and lists every other member with its SHA-256 and size.
//! It must never know about platforms (Condor, BOINC, MPI): it is plain data.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the manifest entry; always the first entry of the archive.
pub const MANIFEST_NAME: &str = "MANIFEST.toml";

/// Current bundle format version. Readers refuse newer formats.
pub const FORMAT_VERSION: u32 = 1;

/// Which of the three bundle kinds an archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    /// An executable and the files it needs; content-addressed.
    Program,
    /// One task: its input JSON, input files, arguments, environment, limits.
    Task,
    /// What one task produced: exit status, times, host, stdout, output files.
    Result,
    /// Many tasks of one job for one grid job: a task bundle per task (see [`PackInfo`]).
    Pack,
    /// What a pack produced: a result bundle per task it ran (see [`PackResultInfo`]).
    #[serde(rename = "pack_result")]
    PackResult,
}

impl std::fmt::Display for BundleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BundleKind::Program => "program",
            BundleKind::Task => "task",
            BundleKind::Result => "result",
            BundleKind::Pack => "pack",
            BundleKind::PackResult => "pack_result",
        })
    }
}

/// One member of a bundle other than the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Relative path inside the bundle (forward slashes, no `..`).
    pub path: String,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether the file gets the executable bit when unpacked.
    #[serde(default)]
    pub executable: bool,
}

/// Metadata of a program bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProgramInfo {
    /// Bundle-relative path of the file to execute.
    pub executable: String,
    /// Arguments always passed before the task's own (e.g. a script for an interpreter).
    #[serde(default)]
    pub base_args: Vec<String>,
}

/// How two results of the same task are compared (BOINC redundancy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "rule", rename_all = "lowercase")]
pub enum Comparison {
    /// The result payloads (stdout and output files) must be byte-identical.
    #[default]
    Bitwise,
    /// Both stdouts must parse as JSON with the same structure; numbers may differ by
    /// at most `abs` or by `rel` relative to the larger magnitude.
    Json {
        /// Relative tolerance.
        #[serde(default)]
        rel: f64,
        /// Absolute tolerance.
        #[serde(default)]
        abs: f64,
    },
}

/// Metadata of a task bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TaskInfo {
    /// Job identifier (free text, for humans and the spool).
    pub job: String,
    /// Task index within the job.
    pub task: u64,
    /// Which attempt of the task this bundle is (1 for the first), when the master says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// SHA-256 of the program bundle archive this task runs.
    pub program_sha256: String,
    /// Arguments after the program's base arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit in seconds; none means unlimited.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Files the program writes that are returned with the result (relative paths).
    #[serde(default)]
    pub outputs: Vec<String>,
    /// How redundant results of this task are compared.
    #[serde(default)]
    pub comparison: Comparison,
}

/// Bundle-relative name of the input JSON inside a task bundle.
pub const TASK_INPUT_NAME: &str = "input.json";
/// Prefix of task input files inside a task bundle.
pub const TASK_FILES_PREFIX: &str = "files/";
/// Bundle-relative name of the program's stdout inside a result bundle.
pub const RESULT_STDOUT_NAME: &str = "stdout.json";
/// Prefix of declared output files inside a result bundle.
pub const RESULT_OUTPUTS_PREFIX: &str = "outputs/";

/// How a task's process ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitInfo {
    /// The process exited with this status.
    Exited {
        /// Exit status.
        code: i32,
    },
    /// The process was killed by this signal (not by mw).
    Signaled {
        /// Signal number.
        signal: i32,
    },
    /// mw killed the process group because the timeout passed.
    TimedOut {
        /// The limit that passed, in seconds.
        limit_secs: f64,
    },
    /// mw killed the process group because the task was cancelled.
    Cancelled,
    /// The program could not be started.
    SpawnFailed {
        /// Why.
        reason: String,
    },
    /// A streaming program answered this task with an error line (`{"error": ...}`).
    ErrorReported {
        /// The error as the program gave it (a string, or the JSON text of another value).
        error: String,
    },
    /// The program broke the output contract on this task: a streaming program's result
    /// line that is not JSON or too long, or it ended without answering; or its stdout or
    /// stderr, going to a file (kernels without pidfd, Windows), passed its limit and mw
    /// stopped it (the reason names the stream and the limit).
    StreamBroken {
        /// What went wrong.
        reason: String,
    },
}

impl ExitInfo {
    /// True only for a clean exit with status 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitInfo::Exited { code: 0 })
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Exited { code } => write!(f, "exit status {code}"),
            ExitInfo::Signaled { signal } => write!(f, "killed by signal {signal}"),
            ExitInfo::TimedOut { limit_secs } => write!(f, "timed out after {limit_secs} s"),
            ExitInfo::Cancelled => write!(f, "cancelled"),
            ExitInfo::SpawnFailed { reason } => write!(f, "could not start: {reason}"),
            ExitInfo::ErrorReported { error } => {
                write!(f, "the program reported an error: {error}")
            }
            ExitInfo::StreamBroken { reason } => write!(f, "{reason}"),
        }
    }
}

/// Metadata of a result bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultInfo {
    /// Job identifier, copied from the task bundle.
    pub job: String,
    /// Task index, copied from the task bundle.
    pub task: u64,
    /// Attempt, copied from the task bundle (absent when the task bundle names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// How the process ended.
    pub exit: ExitInfo,
    /// Wall-clock seconds.
    pub wall_secs: f64,
    /// User CPU seconds (process and reaped descendants).
    pub user_secs: f64,
    /// System CPU seconds.
    pub sys_secs: f64,
    /// Host name of the machine that ran it.
    pub host: String,
    /// Unix time (seconds) the program started.
    pub started_unix: f64,
    /// Last bytes of stderr (lossy UTF-8).
    #[serde(default)]
    pub stderr_tail: String,
    /// Declared outputs the program did not write.
    #[serde(default)]
    pub missing_outputs: Vec<String>,
    /// Comparison rule copied from the task (used by validators).
    #[serde(default)]
    pub comparison: Comparison,
}

/// Metadata of a pack bundle: tasks of one job that one grid job (an HTCondor job, a BOINC
/// workunit) runs one after the other. Each task is a whole task bundle, the member
/// [`pack_task_member`]`(task)`, checked like any task bundle when it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PackInfo {
    /// Job identifier (the tasks' own bundles name it too).
    pub job: String,
    /// SHA-256 of the program bundle archive every task of the pack runs.
    pub program_sha256: String,
    /// The tasks, in the order they run.
    pub tasks: Vec<u64>,
    /// Run the tasks through one long-lived streaming program (one JSON input per line on
    /// its stdin, one JSON answer per line on its stdout), not one process per task.
    #[serde(default)]
    pub stream: bool,
}

/// A task of a pack that its worker could not run (no result bundle for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotRun {
    /// The task.
    pub task: u64,
    /// Why, in one line.
    pub reason: String,
}

/// Metadata of a pack result bundle: one result bundle per task that ran, the member
/// [`pack_result_member`]`(task)`, each as the task alone would have returned it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PackResultInfo {
    /// Job identifier, copied from the pack.
    pub job: String,
    /// Host name of the machine that ran the pack.
    pub host: String,
    /// Tasks whose result bundle is a member, in the order they ran.
    pub tasks: Vec<u64>,
    /// Tasks of the pack without a result bundle, and why.
    #[serde(default)]
    pub not_run: Vec<NotRun>,
}

/// Prefix of the task bundles inside a pack bundle.
pub const PACK_TASKS_PREFIX: &str = "tasks/";
/// Prefix of the result bundles inside a pack result bundle.
pub const PACK_RESULTS_PREFIX: &str = "results/";

/// The member of a pack bundle holding `task`'s task bundle.
pub fn pack_task_member(task: u64) -> String {
    format!("{PACK_TASKS_PREFIX}{task}.tar.gz")
}

/// The member of a pack result bundle holding `task`'s result bundle.
pub fn pack_result_member(task: u64) -> String {
    format!("{PACK_RESULTS_PREFIX}{task}.tar.gz")
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Bundle kind.
    pub kind: BundleKind,
    /// Present in program bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramInfo>,
    /// Present in task bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInfo>,
    /// Present in result bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultInfo>,
    /// Present in pack bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackInfo>,
    /// Present in pack result bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_result: Option<PackResultInfo>,
    /// Every member except the manifest, sorted by path.
    #[serde(default, rename = "member")]
    pub members: Vec<Member>,
}

impl Manifest {
    /// Looks a member up by path.
    pub fn member(&self, path: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.path == path)
    }
}
