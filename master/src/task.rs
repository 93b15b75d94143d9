//! Tasks as the master sees them: typed ids, the program, the task spec a user submits, the
//! prepared task an interface executes, and the record of one execution.
//!
//! This module knows nothing of any particular platform; interfaces build on it.

use mw_bundle::{
    BundleBuilder, Comparison, ExitInfo, ProgramInfo, TaskInfo, RESULT_OUTPUTS_PREFIX,
    RESULT_STDOUT_NAME, TASK_FILES_PREFIX, TASK_INPUT_NAME,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Identifies a task within one master (its submission index, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {}", self.0)
    }
}

/// Hashes task indices (sequential `u64`s) with one multiplication: cheaper than the default
/// SipHash, and the product's high bits, which the table's control bytes use, differ from one
/// index to the next. Keys are the master's own indices, never outside data.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Identifies a worker slot of an interface (a core, an MPI rank, a Condor/BOINC submission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u64);

/// How a program serves its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ProgramMode {
    /// One process per task: input JSON on stdin, result JSON on stdout, exit 0 = success.
    #[default]
    Process,
    /// One long-lived process serves many tasks: one JSON input per line on stdin, one
    /// JSON result per line on stdout, in order (`{"error": ...}` fails a task); the stream
    /// contract of [`mw_worker_runtime::stream`]. Tasks may not have input files or outputs,
    /// and tasks with different arguments or environment run in different processes.
    /// Answers are matched to inputs by their order: a program that prints one line too
    /// many shifts every later answer onto the next task, which mw cannot see.
    Stream,
}

impl ProgramMode {
    /// `process` or `stream`, as in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            ProgramMode::Process => "process",
            ProgramMode::Stream => "stream",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<ProgramMode> {
        match s {
            "process" => Some(ProgramMode::Process),
            "stream" => Some(ProgramMode::Stream),
            _ => None,
        }
    }
}

/// A program: an executable plus the files it needs (PyMW's `modules`/`dep_funcs`).
#[derive(Debug)]
pub struct Program {
    executable: PathBuf,
    base_args: Vec<String>,
    files: Vec<(String, PathBuf)>,
    mode: ProgramMode,
    bundle: Mutex<Option<ProgramBundle>>,
    /// The hash of what [`Program::same_as`] compares, once asked for (every builder
    /// method forgets it).
    identity: std::sync::OnceLock<u64>,
}

impl Clone for Program {
    /// A copy with the same executable, arguments, files and mode (and the bundle already packed,
    /// if any; the copies then pack separately).
    fn clone(&self) -> Self {
        Program {
            executable: self.executable.clone(),
            base_args: self.base_args.clone(),
            files: self.files.clone(),
            mode: self.mode,
            bundle: Mutex::new(crate::guard::lock(&self.bundle).clone()),
            identity: self.identity.clone(),
        }
    }
}

/// Anything [`Master::submit`](crate::Master::submit) and [`Master::map`](crate::Master::map)
/// take as a program: a `&Program` (copied once per call), or an `Arc<Program>` (shared, so
/// a remote platform packs its bundle once for every task).
pub trait ToProgram {
    /// The program as the task spec holds it.
    fn to_program(self) -> Arc<Program>;
}

impl ToProgram for &Program {
    fn to_program(self) -> Arc<Program> {
        Arc::new(self.clone())
    }
}

impl ToProgram for Arc<Program> {
    fn to_program(self) -> Arc<Program> {
        self
    }
}

impl ToProgram for &Arc<Program> {
    fn to_program(self) -> Arc<Program> {
        self.clone()
    }
}

/// A program packed as a content-addressed bundle.
#[derive(Debug, Clone)]
pub struct ProgramBundle {
    /// Where the archive is.
    pub path: PathBuf,
    /// SHA-256 of the archive (its content address).
    pub sha256: String,
}

/// Problems with a program definition.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// An input file's name in a task's working directory is not a plain file name.
    #[error("input file name `{0}` is not a plain file name (no `/`, `\\`, `.` or `..`)")]
    BadInputFileName(String),
    /// The executable does not exist.
    #[error("program `{0}` does not exist")]
    Missing(PathBuf),
    /// The executable is not a regular file with an execute bit.
    #[error(
        "program `{0}` is not executable (chmod +x it, or name its interpreter as the program)"
    )]
    NotExecutable(PathBuf),
    /// An extra file is missing or unreadable.
    #[error("program file `{0}` does not exist or is not a regular file")]
    MissingFile(PathBuf),
    /// Two extra files would take the same name in the task's working directory.
    #[error("program files `{0}` and `{1}` would both be `{2}` in the task's directory")]
    DuplicateFile(PathBuf, PathBuf, String),
    /// Packing the program bundle failed.
    #[error(transparent)]
    Bundle(#[from] mw_bundle::BundleError),
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into())
}

impl Program {
    /// Whether `other` runs the same way: the same executable, arguments, files and mode
    /// (two copies of one `Program`, e.g. each `&Program` given to `submit`).
    pub(crate) fn same_as(&self, other: &Program) -> bool {
        std::ptr::eq(self, other)
            || (self.executable == other.executable
                && self.base_args == other.base_args
                && self.files == other.files
                && self.mode == other.mode)
    }

    /// A hash of what [`same_as`](Self::same_as) compares.
    pub(crate) fn identity_hash(&self) -> u64 {
        *self.identity.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            self.executable.hash(&mut h);
            self.base_args.hash(&mut h);
            self.files.hash(&mut h);
            self.mode.hash(&mut h);
            h.finish()
        })
    }

    /// A program from an executable file. Relative paths are taken from the current
    /// directory; the path is made absolute.
    pub fn new(executable: impl AsRef<Path>) -> Result<Program, ProgramError> {
        let path = std::path::absolute(executable.as_ref())
            .unwrap_or_else(|_| executable.as_ref().to_path_buf());
        let meta = std::fs::metadata(&path).map_err(|_| ProgramError::Missing(path.clone()))?;
        use std::os::unix::fs::PermissionsExt;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(ProgramError::NotExecutable(path));
        }
        Ok(Program {
            executable: path,
            base_args: Vec::new(),
            files: Vec::new(),
            mode: ProgramMode::Process,
            bundle: Mutex::new(None),
            identity: std::sync::OnceLock::new(),
        })
    }

    /// Sets how the program serves tasks ([`ProgramMode::Stream`]: one long-lived process
    /// per worker slot).
    pub fn with_mode(mut self, mode: ProgramMode) -> Self {
        self.mode = mode;
        self.identity = std::sync::OnceLock::new();
        self
    }

    /// How the program serves tasks.
    pub fn mode(&self) -> ProgramMode {
        self.mode
    }

    /// Adds arguments the program always gets first (e.g. the script for an interpreter).
    pub fn with_base_args(mut self, args: impl IntoIterator<Item = String>) -> Self {
        self.base_args.extend(args);
        self.identity = std::sync::OnceLock::new();
        self
    }

    /// Adds a file the program needs; it appears under its file name in the task's
    /// working directory.
    pub fn with_file(mut self, path: impl AsRef<Path>) -> Result<Self, ProgramError> {
        let path = std::path::absolute(path.as_ref()).unwrap_or_else(|_| path.as_ref().into());
        if !path.is_file() {
            return Err(ProgramError::MissingFile(path));
        }
        let name = file_name_of(&path);
        if let Some((_, first)) = self.files.iter().find(|(n, _)| *n == name) {
            return Err(ProgramError::DuplicateFile(first.clone(), path, name));
        }
        self.files.push((name, path));
        self.identity = std::sync::OnceLock::new();
        Ok(self)
    }

    /// The executable's absolute path.
    pub fn executable(&self) -> &Path {
        &self.executable
    }

    /// Arguments always passed first.
    pub fn base_args(&self) -> &[String] {
        &self.base_args
    }

    /// Extra files: (name in the working directory, path on this machine).
    pub fn files(&self) -> &[(String, PathBuf)] {
        &self.files
    }

    /// Packs the program as a bundle in `dir` (once; later calls return the same bundle).
    /// The archive is named by its SHA-256, so identical programs share one file.
    pub fn bundle(&self, dir: &Path) -> Result<ProgramBundle, ProgramError> {
        let mut slot = crate::guard::lock(&self.bundle);
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        let exe_name = file_name_of(&self.executable);
        let info = ProgramInfo {
            executable: exe_name.clone(),
            base_args: self.base_args.clone(),
        };
        let mut builder = BundleBuilder::program(info, "program bundle");
        builder.add_file(&exe_name, &self.executable)?;
        for (name, path) in &self.files {
            if name != &exe_name {
                builder.add_file(name, path)?;
            }
        }
        let bytes = builder.to_bytes()?;
        let sha256 = mw_bundle::sha256_hex(&bytes);
        std::fs::create_dir_all(dir).map_err(|e| mw_bundle::BundleError::Io {
            archive: dir.display().to_string(),
            context: "creating the bundle directory".into(),
            source: e,
        })?;
        let path = dir.join(format!("program-{}.tar.gz", &sha256[..16]));
        if !path.exists() {
            std::fs::write(&path, &bytes).map_err(|e| mw_bundle::BundleError::Io {
                archive: path.display().to_string(),
                context: "writing".into(),
                source: e,
            })?;
        }
        let b = ProgramBundle { path, sha256 };
        *slot = Some(b.clone());
        Ok(b)
    }
}

/// What a user submits: a program and an input, plus per-task settings.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The program to run.
    pub program: Arc<Program>,
    /// The input JSON (on the program's stdin).
    pub input: serde_json::Value,
    /// Input files: (name in the working directory, path on this machine).
    pub input_files: Vec<(String, PathBuf)>,
    /// Arguments after the program's base arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Files the program writes that come back with the result.
    pub outputs: Vec<String>,
    /// How redundant results are compared (BOINC).
    pub comparison: Comparison,
    /// Largest result (the program's stdout) accepted, in bytes: a larger one fails the
    /// task with a message naming the limit. Also bounds what a result bundle from a pool
    /// or a volunteer may hold. Default [`DEFAULT_MAX_OUTPUT_BYTES`].
    pub max_output_bytes: u64,
    /// How the program's stdout becomes the result (default: it is JSON).
    pub stdout: StdoutMode,
}

/// How a task's stdout becomes its result value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdoutMode {
    /// The stdout is one JSON value (empty stdout is `null`); anything else fails the task.
    #[default]
    Json,
    /// The stdout is text: the result is a JSON string holding it (lossy UTF-8, without
    /// its trailing newlines).
    Text,
    /// The stdout is kept as the file `stdout` among the task's output files, and the
    /// result is that file's path (a JSON string). Needs a results directory.
    File,
}

impl StdoutMode {
    /// Parses `json`, `text` or `file`.
    pub fn parse(s: &str) -> Option<StdoutMode> {
        Some(match s {
            "json" => StdoutMode::Json,
            "text" => StdoutMode::Text,
            "file" => StdoutMode::File,
            _ => return None,
        })
    }
}

pub use mw_bundle::{DEFAULT_MAX_OUTPUT_BYTES, MAX_RESULT_FILES_BYTES};

impl TaskSpec {
    /// A task with only a program and an input.
    pub fn new(program: Arc<Program>, input: serde_json::Value) -> Self {
        TaskSpec {
            program,
            input,
            input_files: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            timeout: None,
            outputs: Vec::new(),
            comparison: Comparison::default(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            stdout: StdoutMode::Json,
        }
    }
}

/// A task handed to an interface: the spec plus its identity and destination.
#[derive(Debug)]
pub struct PreparedTask {
    /// The task.
    pub id: TaskId,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// The job's name (for bundle manifests, Condor batch names, BOINC workunit names).
    pub job: String,
    /// The spec.
    pub spec: TaskSpec,
    /// Where declared output files should end up (none: they are not kept).
    pub output_dir: Option<PathBuf>,
    /// A directory the interface may use for this job's staging files.
    pub staging_dir: PathBuf,
}

impl PreparedTask {
    /// The task-bundle metadata for this task.
    pub fn task_info(&self, program_sha256: &str) -> TaskInfo {
        TaskInfo {
            job: self.job.clone(),
            task: self.id.0,
            attempt: Some(self.attempt),
            program_sha256: program_sha256.to_string(),
            args: self.spec.args.clone(),
            env: self.spec.env.clone(),
            timeout_secs: self.spec.timeout.map(|t| t.as_secs_f64()),
            outputs: self.spec.outputs.clone(),
            comparison: self.spec.comparison.clone(),
        }
    }

    /// Builds the task bundle's bytes against a program bundle.
    pub fn task_bundle_bytes(&self, program: &ProgramBundle) -> Result<Vec<u8>, ProgramError> {
        let mut b = BundleBuilder::task(self.task_info(&program.sha256), "task bundle");
        let input = serde_json::to_vec(&self.spec.input).unwrap_or_else(|_| b"null".to_vec());
        b.add_bytes(TASK_INPUT_NAME, input, false)?;
        for (name, path) in &self.spec.input_files {
            check_input_file_name(name)?;
            b.add_file(&format!("{TASK_FILES_PREFIX}{name}"), path)?;
        }
        Ok(b.to_bytes()?)
    }
}

/// Refuses an input file's name (in [`TaskSpec::input_files`]) that is not one plain file
/// name: a path (`a/b`, `/tmp/x`), `.`, `..` or empty would put the file outside the task's
/// working directory or nowhere.
pub(crate) fn check_input_file_name(name: &str) -> Result<(), ProgramError> {
    let plain =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if plain {
        Ok(())
    } else {
        Err(ProgramError::BadInputFileName(name.to_string()))
    }
}

/// What one execution of a task produced, as an interface reports it.
#[derive(Debug, Clone)]
pub struct Execution {
    /// How the program ended.
    pub exit: ExitInfo,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Tail of its stderr.
    pub stderr_tail: String,
    /// Wall-clock time.
    pub wall: Duration,
    /// User + system CPU time.
    pub cpu: Duration,
    /// Host it ran on.
    pub host: String,
    /// When it started.
    pub started: Option<SystemTime>,
    /// Declared outputs kept: (name, path under the task's output dir).
    pub output_files: Vec<(String, PathBuf)>,
    /// Declared outputs the program did not write.
    pub missing_outputs: Vec<String>,
}

/// Errors an interface reports instead of an execution (the task never ran to an exit): the
/// message, and what is known of a run the platform ended (held, removed, worker killed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct InterfaceError(pub String, pub Option<Box<RunFacts>>);

/// What a platform knows of a run it ended without an exit status (e.g. an HTCondor job held
/// or removed after it had started): kept in the journal instead of "not run".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFacts {
    /// How it ended, in a word or two (`held`, `removed`, `signal 9`).
    pub exit: String,
    /// Where it ran.
    pub host: String,
    /// When it started.
    pub started: Option<SystemTime>,
    /// How long it ran.
    pub wall: Duration,
}

impl InterfaceError {
    /// An error from anything printable.
    pub fn new(msg: impl std::fmt::Display) -> Self {
        InterfaceError(msg.to_string(), None)
    }

    /// An error for a run that started (on `facts.host`) and was ended by the platform.
    pub fn after_run(msg: impl std::fmt::Display, facts: RunFacts) -> Self {
        InterfaceError(msg.to_string(), Some(Box::new(facts)))
    }
}

/// The largest time a result bundle may report, in seconds (about 100 years): anything
/// larger (or negative, or not a number) is a malformed result, not a crash.
pub const MAX_REPORTED_SECS: f64 = 3.2e9;

/// A time from a result bundle as a `Duration`, refusing what no real task reports.
fn checked_secs(label: &str, field: &str, secs: f64) -> Result<Duration, InterfaceError> {
    if !(secs.is_finite() && (0.0..=MAX_REPORTED_SECS).contains(&secs)) {
        return Err(InterfaceError::new(format!(
            "{label}: malformed result: {field} = {secs} is out of range (0 to {MAX_REPORTED_SECS} s)"
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| {
        InterfaceError::new(format!("{label}: malformed result: {field} = {secs}: {e}"))
    })
}

/// Why what a task sends or produces could not be handled: its fault, or this machine's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResultError {
    /// What came back is unusable (a malformed, forged or oversized bundle), or the task's
    /// own files are wrong: the attempt failed.
    #[error(transparent)]
    Bad(#[from] InterfaceError),
    /// This machine could not store what the bundle holds (a full disk, an output path that
    /// cannot be written): not the task's fault. With a journal the master stops and keeps
    /// the result for `mw resume`; without one the task fails with this message.
    #[error("{0}")]
    Local(String),
}

impl From<ResultError> for InterfaceError {
    fn from(e: ResultError) -> InterfaceError {
        match e {
            ResultError::Bad(e) => e,
            ResultError::Local(msg) => InterfaceError::new(msg),
        }
    }
}

impl Execution {
    /// Reads a result bundle (hostile input: it may come from a volunteer's machine),
    /// verifying it, and places declared outputs under `output_dir`.
    pub fn from_result_bundle(
        bytes: &[u8],
        label: &str,
        expected_task: TaskId,
        output_dir: Option<&Path>,
    ) -> Result<Execution, InterfaceError> {
        Self::from_result_bundle_limited(
            bytes,
            label,
            expected_task,
            output_dir,
            DEFAULT_MAX_OUTPUT_BYTES,
        )
    }

    /// [`from_result_bundle`](Self::from_result_bundle) with the task's output limit: the
    /// bundle may unpack to at most the limit plus [`MAX_RESULT_FILES_BYTES`] of output
    /// files (a small upload cannot inflate into gigabytes), and its stdout member to at
    /// most the limit plus one byte (so the master can name the limit when it is exceeded).
    pub fn from_result_bundle_limited(
        bytes: &[u8],
        label: &str,
        expected_task: TaskId,
        output_dir: Option<&Path>,
        max_output_bytes: u64,
    ) -> Result<Execution, InterfaceError> {
        read_result(
            bytes,
            label,
            Expected {
                task: expected_task,
                job: None,
                attempt: None,
                outputs: None,
            },
            output_dir,
            max_output_bytes,
        )
        .map_err(InterfaceError::from)
    }

    /// Reads the result bundle that came back for `task` and trusts nothing in it that the
    /// task does not vouch for: the manifest must name this job, this task and (when it names
    /// one) this attempt, only the task's declared output files are kept (under its output
    /// directory), and the task's output limit bounds what is read.
    pub fn from_result_bundle_of(
        bytes: &[u8],
        label: &str,
        task: &PreparedTask,
    ) -> Result<Execution, ResultError> {
        read_result(
            bytes,
            label,
            Expected {
                task: task.id,
                job: Some(&task.job),
                attempt: Some(task.attempt),
                outputs: Some(&task.spec.outputs),
            },
            task.output_dir.as_deref(),
            task.spec.max_output_bytes,
        )
    }
}

/// Reads a file from outside (a result bundle a pool or a volunteer sent) of at most `cap`
/// bytes; a larger one is an error, not a read of everything.
pub fn read_bounded(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let bytes = read_prefix(path, cap.saturating_add(1))?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::other(format!(
            "{} is larger than the {cap} bytes a result may take",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The first `max` bytes (or fewer) of `path`, which must be a regular file
/// ([`open_regular`]): what is in a place mw reads may be anything.
pub(crate) fn read_prefix(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_regular(path)?.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens `path` for reading if it is a regular file; anything else (a FIFO, which would
/// block a plain `open` for ever, a device, a directory) is an error. Results and records
/// come from outside: what is found in their place may be anything.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never wait in open (a FIFO without a writer); reads of a regular file ignore it.
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Whether `e` says this machine's storage is full or cannot be written (a full disk, a
/// quota, a read-only file system): a failure of the place, not of what was written.
pub(crate) fn is_storage_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem | K::FileTooLarge
    )
}

/// Whether `e`, from opening or reading a file that came back (a result in the spool, a
/// job's output), is this machine's failure to read it (permissions, an I/O error): an
/// error of the system other than "not there". The errors mw makes itself (not a regular
/// file, over its size cap) are about the file, not the machine.
pub(crate) fn is_local_read_error(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some() && e.kind() != std::io::ErrorKind::NotFound
}

/// A declared output that came back but could not be stored on this machine.
fn cannot_store(name: &str, path: &Path, e: &std::io::Error) -> ResultError {
    ResultError::Local(format!(
        "cannot store output `{name}` of a result that came back as {}: {e}",
        path.display()
    ))
}

/// What a result bundle must match.
struct Expected<'a> {
    task: TaskId,
    job: Option<&'a str>,
    attempt: Option<u32>,
    outputs: Option<&'a [String]>,
}

fn read_result(
    bytes: &[u8],
    label: &str,
    expected: Expected<'_>,
    output_dir: Option<&Path>,
    max_output_bytes: u64,
) -> Result<Execution, ResultError> {
    let expected_task = expected.task;
    let limits = mw_bundle::result_limits(max_output_bytes);
    let bundle =
        mw_bundle::open_in_memory(bytes, label, Some(mw_bundle::BundleKind::Result), &limits)
            .map_err(InterfaceError::new)?;
    let info = bundle
        .manifest
        .result
        .clone()
        .ok_or_else(|| InterfaceError::new(format!("{label}: no [result] table")))?;
    if info.task != expected_task.0 {
        return Err(ResultError::Bad(InterfaceError::new(format!(
            "{label}: forged or misfiled result: it is for task {}, expected {expected_task}",
            info.task
        ))));
    }
    if let Some(job) = expected.job {
        if info.job != job {
            return Err(ResultError::Bad(InterfaceError::new(format!(
                "{label}: forged or misfiled result: it names job `{}`, expected `{job}`",
                info.job
            ))));
        }
    }
    // A worker copies the attempt from the task bundle; one that names another attempt is
    // a stale or misfiled result (an older worker names none).
    if let (Some(want), Some(got)) = (expected.attempt, info.attempt) {
        if want != got {
            return Err(ResultError::Bad(InterfaceError::new(format!(
                "{label}: forged or misfiled result: it is for attempt {got} of {expected_task}, \
                 expected attempt {want}"
            ))));
        }
    }
    let mut output_files = Vec::new();
    if let Some(dir) = output_dir {
        for (path, data) in &bundle.members {
            if let Some(name) = path.strip_prefix(RESULT_OUTPUTS_PREFIX) {
                if expected
                    .outputs
                    .is_some_and(|declared| !declared.iter().any(|d| d == name))
                {
                    log::warn!(
                        "{label}: ignoring `{name}`: not a declared output of {expected_task}"
                    );
                    continue;
                }
                let dest = dir.join(name);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| cannot_store(name, parent, &e))?;
                }
                std::fs::write(&dest, data).map_err(|e| cannot_store(name, &dest, &e))?;
                output_files.push((name.to_string(), dest));
            }
        }
    }
    let mut stdout = bundle
        .members
        .get(RESULT_STDOUT_NAME)
        .cloned()
        .unwrap_or_default();
    let cap = usize::try_from(max_output_bytes.saturating_add(1)).unwrap_or(usize::MAX);
    stdout.truncate(cap);
    let wall = checked_secs(label, "wall_secs", info.wall_secs)?;
    let user = checked_secs(label, "user_secs", info.user_secs)?;
    let sys = checked_secs(label, "sys_secs", info.sys_secs)?;
    let started = checked_secs(label, "started_unix", info.started_unix)?;
    let cpu = user.checked_add(sys).ok_or_else(|| {
        InterfaceError::new(format!("{label}: user_secs + sys_secs is out of range"))
    })?;
    let started = UNIX_EPOCH
        .checked_add(started)
        .ok_or_else(|| InterfaceError::new(format!("{label}: started_unix is out of range")))?;
    Ok(Execution {
        exit: info.exit,
        stdout,
        stderr_tail: info.stderr_tail,
        wall,
        cpu,
        host: info.host,
        started: Some(started),
        output_files,
        missing_outputs: info.missing_outputs,
    })
}

/// States a task goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Handed to the interface.
    Running,
    /// Finished with exit status 0.
    Done,
    /// Finished otherwise, retries used up.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl TaskState {
    /// Lower-case name, as in the journal and `mw status`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "done" => TaskState::Done,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }

    /// True for done, failed and cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }
}
