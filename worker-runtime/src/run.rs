//! Executing a task bundle against a program bundle and producing a result bundle.
//!
//! This is what `mw-worker run` does on a Condor execute node or in a BOINC slot, and what an
//! MPI worker rank does for each task. The program bundle is checked (its archive SHA-256
//! must equal the one the task names) and unpacked once; each task gets a private scratch
//! directory with its input files, symbolic links to the program's top-level files, the
//! input JSON on stdin. Nothing runs until every checksum has been verified.
//!
//! This module knows nothing of platforms: callers decide where bundles come from and go.

use crate::exec::{collect_outputs, execute, host_name, ExecRequest, ProcessControl};
use mw_bundle::{
    BundleBuilder, BundleError, BundleKind, Limits, Manifest, ResultInfo, TaskInfo,
    RESULT_OUTPUTS_PREFIX, RESULT_STDOUT_NAME, TASK_FILES_PREFIX, TASK_INPUT_NAME,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Errors that stop a task before or after its program ran (not failures of the program,
/// which are reported inside the result bundle).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bundle is malformed, hostile or fails its checksums.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The task names another program than the one supplied.
    #[error("task bundle {task}: wants program {wanted}, but the program bundle is {actual}")]
    WrongProgram {
        /// Task bundle label.
        task: String,
        /// SHA-256 the task names.
        wanted: String,
        /// SHA-256 of the supplied program bundle.
        actual: String,
    },
    /// The program bundle's manifest names an executable it does not contain.
    #[error("program bundle {0}: its executable `{1}` is not one of its members")]
    NoExecutable(String, String),
    /// A filesystem error in the scratch area.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Running the program failed for a reason outside the program.
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let context = context.into();
    move |source| RunError::Io { context, source }
}

/// Options for running bundles.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Limits applied when unpacking bundles.
    pub limits: Limits,
    /// Where scratch directories are made (default: the system temp dir).
    pub scratch_root: Option<PathBuf>,
    /// How many bytes of a pack's task results are kept in memory before the rest go to
    /// scratch files (default: [`crate::pack::RESULTS_IN_MEMORY`]).
    pub pack_results_in_memory: Option<u64>,
}

/// A program bundle unpacked into a private directory, ready to serve many tasks.
pub struct UnpackedProgram {
    dir: tempfile::TempDir,
    manifest: Manifest,
    sha256: String,
}

impl std::fmt::Debug for UnpackedProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnpackedProgram")
            .field("dir", &self.dir.path())
            .field("sha256", &self.sha256)
            .finish()
    }
}

pub(crate) fn scratch_dir(opts: &RunOptions, prefix: &str) -> Result<tempfile::TempDir, RunError> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    match &opts.scratch_root {
        Some(root) => b.tempdir_in(root),
        None => b.tempdir(),
    }
    .map_err(io("creating a scratch directory"))
}

impl UnpackedProgram {
    /// Verifies and unpacks the program bundle at `archive`.
    pub fn unpack(archive: &Path, opts: &RunOptions) -> Result<Self, RunError> {
        let sha256 = mw_bundle::sha256_file(archive)
            .map_err(io(format!("reading {}", archive.display())))?;
        let dir = scratch_dir(opts, "mw-program-")?;
        let manifest = mw_bundle::unpack(
            archive,
            &dir.path().join("p"),
            Some(BundleKind::Program),
            &opts.limits,
        )?;
        let unpacked = UnpackedProgram {
            dir,
            manifest,
            sha256,
        };
        unpacked.check_executable(&archive.display().to_string())?;
        Ok(unpacked)
    }

    /// Verifies and unpacks a program bundle held in memory.
    pub fn from_bytes(bytes: &[u8], label: &str, opts: &RunOptions) -> Result<Self, RunError> {
        let sha256 = mw_bundle::sha256_hex(bytes);
        let dir = scratch_dir(opts, "mw-program-")?;
        let archive = dir.path().join(".bundle.tar.gz");
        std::fs::write(&archive, bytes).map_err(io("staging the program bundle"))?;
        let dest = dir.path().join("p");
        let manifest = mw_bundle::unpack(&archive, &dest, Some(BundleKind::Program), &opts.limits)?;
        let _ = std::fs::remove_file(&archive);
        let unpacked = UnpackedProgram {
            dir,
            manifest,
            sha256,
        };
        unpacked.check_executable(label)?;
        Ok(unpacked)
    }

    fn check_executable(&self, label: &str) -> Result<(), RunError> {
        let exe = self.executable_name();
        if self.manifest.member(&exe).is_none() {
            return Err(RunError::NoExecutable(label.to_string(), exe));
        }
        Ok(())
    }

    fn executable_name(&self) -> String {
        self.manifest
            .program
            .as_ref()
            .map(|p| p.executable.clone())
            .unwrap_or_default()
    }

    /// Directory holding the program's files.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("p")
    }

    /// SHA-256 of the program bundle archive.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The program bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Absolute path of the executable.
    pub fn executable(&self) -> PathBuf {
        self.root().join(self.executable_name())
    }

    /// Arguments the program always gets first.
    pub fn base_args(&self) -> Vec<String> {
        self.manifest
            .program
            .as_ref()
            .map(|p| p.base_args.clone())
            .unwrap_or_default()
    }
}

/// Puts symbolic links to every top-level entry of `program_root` into `workdir`, skipping
/// names the task's own input files already use. On Windows, where symbolic links need a
/// privilege volunteers' accounts lack, files are hard-linked (copied across volumes) and
/// directories copied.
pub fn link_program_files(program_root: &Path, workdir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(program_root)? {
        let entry = entry?;
        let target = workdir.join(entry.file_name());
        if std::fs::symlink_metadata(&target).is_err() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(entry.path(), &target)?;
            #[cfg(not(unix))]
            copy_or_link(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Hard-links a file (copies it when that fails), or copies a directory tree.
#[cfg(not(unix))]
fn copy_or_link(source: &Path, target: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(source)?.is_dir() {
        std::fs::create_dir(target)?;
        for entry in std::fs::read_dir(source)? {
            let entry = entry?;
            copy_or_link(&entry.path(), &target.join(entry.file_name()))?;
        }
        return Ok(());
    }
    if std::fs::hard_link(source, target).is_err() {
        std::fs::copy(source, target)?;
    }
    Ok(())
}

/// Runs one task bundle (bytes) with an unpacked program and returns the result bundle
/// bytes together with its metadata. A failing program is a normal result (its exit is in
/// the metadata); only problems outside the program are errors.
pub fn run_task_bytes(
    program: &UnpackedProgram,
    task_bundle: &[u8],
    label: &str,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<(ResultInfo, Vec<u8>), RunError> {
    let scratch = scratch_dir(opts, "mw-task-")?;
    run_task_bytes_in(program, task_bundle, label, scratch.path(), control, opts)
}

/// [`run_task_bytes`] in `scratch`, a private directory the caller owns and may reuse for
/// task after task: the task runs in its `work` sub-directory, emptied first (one directory
/// reused, rather than one made and removed per task: on filesystems mounted with `discard`
/// every released directory block costs a synchronous device trim).
pub(crate) fn run_task_bytes_in(
    program: &UnpackedProgram,
    task_bundle: &[u8],
    label: &str,
    scratch: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<(ResultInfo, Vec<u8>), RunError> {
    let bundle =
        mw_bundle::open_in_memory(task_bundle, label, Some(BundleKind::Task), &opts.limits)?;
    // The top-level names of the task's input files: a link to a program file left under
    // one of them by an earlier task goes, so no input is written through it.
    let input_names: std::collections::HashSet<&str> = bundle
        .manifest
        .members
        .iter()
        .filter_map(|m| m.path.strip_prefix(TASK_FILES_PREFIX))
        .filter_map(|rel| rel.split('/').next())
        .collect();
    let workdir = empty_workdir(scratch, &program.root(), &input_names)?;
    for member in &bundle.manifest.members {
        let Some(rel) = member.path.strip_prefix(TASK_FILES_PREFIX) else {
            continue;
        };
        let Some(data) = bundle.members.get(&member.path) else {
            continue;
        };
        // `rel` was checked by the bundle reader (relative, no `..`); the directory is ours
        // and was emptied of everything but links to program files under names no input
        // file uses, so no link can redirect the write.
        let dest = workdir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating input directories"))?;
        }
        std::fs::write(&dest, data).map_err(io(format!("writing input file {rel}")))?;
        #[cfg(unix)]
        if member.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                .map_err(io(format!("writing input file {rel}")))?;
        }
    }
    let input = bundle
        .members
        .get(TASK_INPUT_NAME)
        .cloned()
        .unwrap_or_else(|| b"null".to_vec());
    let info = bundle.manifest.task.clone().unwrap_or_default();
    run_prepared(program, info, input, label, &workdir, scratch, control)
}

/// `<scratch>/work`, created or emptied of whatever an earlier task left in it, except the
/// links to the program's own top-level files ([`link_program_files`]) that are still exactly
/// what it made (a link named like the file, to that file in `program_root`) and whose name
/// no input file of the next task uses (`input_names`): those are reused, not removed and
/// made again. On ext4 every symbolic link made is an inode allocated and every one removed
/// an inode freed; per task of a pack that was a tenth of the worker's own CPU time.
fn empty_workdir(
    scratch: &Path,
    program_root: &Path,
    input_names: &std::collections::HashSet<&str>,
) -> Result<PathBuf, RunError> {
    let work = scratch.join("work");
    let ctx = || format!("preparing the working directory {}", work.display());
    match std::fs::symlink_metadata(&work) {
        Ok(m) if m.is_dir() => {
            for entry in std::fs::read_dir(&work).map_err(io(ctx()))? {
                let entry = entry.map_err(io(ctx()))?;
                let path = entry.path();
                let file_type = entry.file_type().ok();
                if file_type.is_some_and(|t| t.is_symlink())
                    && is_program_link(&path, &entry.file_name(), program_root, input_names)
                {
                    continue;
                }
                remove_tree(&path).map_err(io(ctx()))?;
            }
        }
        Ok(_) => {
            std::fs::remove_file(&work).map_err(io(ctx()))?;
            std::fs::create_dir(&work).map_err(io(ctx()))?;
        }
        Err(_) => std::fs::create_dir(&work).map_err(io(ctx()))?,
    }
    Ok(work)
}

/// Removes `path`: a file, a link (never followed) or a whole directory tree, also one a task
/// left unwritable (`chmod 555` on a directory anywhere in it; on Windows read-only files).
/// Only when a plain removal fails is the tree walked and made removable, then removed again.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let is_dir = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.is_dir());
    let remove = |p: &Path| {
        if is_dir(p)? {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        }
    };
    match remove(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_removable(path);
            remove(path)
        }
        ok => ok,
    }
}

/// Makes every directory under `root` (itself included) writable and searchable by its owner,
/// and on Windows clears the read-only attribute of every file, so the tree can be removed.
/// Links are never followed (their targets are not the task's); the walk keeps its own stack,
/// so a deep tree cannot overflow ours. Best effort: what cannot be changed is left.
fn make_removable(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        #[cfg(unix)]
        if meta.is_dir() {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() | 0o700;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        }
        #[cfg(windows)]
        if meta.permissions().readonly() {
            let mut perms = meta.permissions();
            // Windows only: clears the read-only attribute (no mode bits to widen).
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            let _ = std::fs::set_permissions(&path, perms);
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
}

/// True for the symbolic link `path` named `name` when it is the link [`link_program_files`]
/// makes for `name` (to `program_root/name`, an entry of the program) and no input file of the
/// next task is named `name`.
fn is_program_link(
    path: &Path,
    name: &std::ffi::OsStr,
    program_root: &Path,
    input_names: &std::collections::HashSet<&str>,
) -> bool {
    if name.to_str().is_none_or(|n| input_names.contains(n)) {
        return false;
    }
    let wanted = program_root.join(name);
    std::fs::read_link(path).is_ok_and(|target| target == wanted)
        && std::fs::symlink_metadata(&wanted).is_ok()
}

/// Task bundles up to this size are read into memory (fewer files written per task);
/// larger ones are unpacked to disk.
pub(crate) const IN_MEMORY_TASK_MAX: u64 = 64 * 1024 * 1024;

/// Runs the task bundle at `task_archive` with an unpacked program.
pub fn run_task_file(
    program: &UnpackedProgram,
    task_archive: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<(ResultInfo, Vec<u8>), RunError> {
    let label = task_archive.display().to_string();
    let size = std::fs::metadata(task_archive)
        .map_err(io(format!("reading {label}")))?
        .len();
    if size <= IN_MEMORY_TASK_MAX {
        let bytes = std::fs::read(task_archive).map_err(io(format!("reading {label}")))?;
        return run_task_bytes(program, &bytes, &label, control, opts);
    }
    let scratch = scratch_dir(opts, "mw-task-")?;
    run_task_in(program, task_archive, &label, scratch.path(), control, opts)
}

fn run_task_in(
    program: &UnpackedProgram,
    task_archive: &Path,
    label: &str,
    scratch: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<(ResultInfo, Vec<u8>), RunError> {
    let unpacked = scratch.join("task");
    let manifest = mw_bundle::unpack(
        task_archive,
        &unpacked,
        Some(BundleKind::Task),
        &opts.limits,
    )?;
    let info: TaskInfo = manifest.task.clone().unwrap_or_default();
    let files = unpacked.join(TASK_FILES_PREFIX.trim_end_matches('/'));
    let workdir = scratch.join("work");
    if files.is_dir() {
        std::fs::rename(&files, &workdir).map_err(io("preparing the working directory"))?;
    } else {
        std::fs::create_dir(&workdir).map_err(io("creating the working directory"))?;
    }
    let input = std::fs::read(unpacked.join(TASK_INPUT_NAME)).unwrap_or_else(|_| b"null".to_vec());
    run_prepared(program, info, input, label, &workdir, scratch, control)
}

/// Runs a task whose working directory holds its input files; `io_dir` is a directory
/// outside it for the runtime's own files.
fn run_prepared(
    program: &UnpackedProgram,
    info: TaskInfo,
    input: Vec<u8>,
    label: &str,
    workdir: &Path,
    io_dir: &Path,
    control: &ProcessControl,
) -> Result<(ResultInfo, Vec<u8>), RunError> {
    if info.program_sha256 != program.sha256() {
        return Err(RunError::WrongProgram {
            task: label.to_string(),
            wanted: info.program_sha256.clone(),
            actual: program.sha256().to_string(),
        });
    }
    link_program_files(&program.root(), workdir).map_err(io("linking program files"))?;
    let workdir = workdir.to_path_buf();
    let io_dir = io_dir.to_path_buf();

    let mut req = ExecRequest::new(program.executable(), workdir.clone(), io_dir);
    req.args = program.base_args();
    req.args.extend(info.args.iter().cloned());
    req.env = info.env.clone();
    req.stdin = input;
    req.die_with_parent = true;
    // One byte more than a result carries tells whether the stderr was cut.
    req.stderr_tail_bytes = RESULT_STDERR_BYTES + 1;
    req.timeout = info
        .timeout_secs
        .filter(|t| *t > 0.0)
        // Too large for a Duration (a forged manifest): no limit, not a panic.
        .and_then(|t| Duration::try_from_secs_f64(t).ok());
    let outcome = execute(&req, control)?;

    let (found, mut missing) = collect_outputs(&workdir, &info.outputs);
    // Output files are read into the result bundle, in memory: no more than a result may
    // carry (the master refuses a larger one anyway), so a task that writes gigabytes fails
    // naming its file instead of exhausting a volunteer's memory.
    let mut room = mw_bundle::MAX_RESULT_FILES_BYTES;
    let mut outputs = Vec::with_capacity(found.len());
    // Names that differ only in case are one file on Windows, and no result bundle holds
    // both: the first found is kept, a later one is missing (the finished run is not lost).
    let mut folded = std::collections::HashMap::new();
    for out in found {
        let key = mw_bundle::case_fold_key(&out.name);
        if let Some(other) = folded.get(&key) {
            missing.push(format!(
                "{} (differs from output `{other}` only in case: one file on Windows)",
                out.name
            ));
            continue;
        }
        folded.insert(key, out.name.clone());
        match read_output(&out.path, room) {
            Ok(bytes) => {
                room = room.saturating_sub(bytes.len() as u64);
                outputs.push((out.name, bytes));
            }
            Err(why) => missing.push(format!("{} ({why})", out.name)),
        }
    }
    let result = ResultInfo {
        job: info.job.clone(),
        task: info.task,
        attempt: info.attempt,
        exit: outcome.exit.clone(),
        wall_secs: outcome.wall.as_secs_f64(),
        user_secs: outcome.user.as_secs_f64(),
        sys_secs: outcome.sys.as_secs_f64(),
        host: host_name(),
        started_unix: outcome
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        stderr_tail: result_stderr(&outcome.stderr_tail),
        missing_outputs: missing,
        comparison: info.comparison.clone(),
    };
    let mut builder = BundleBuilder::result(result.clone(), "result bundle");
    builder.add_bytes(RESULT_STDOUT_NAME, outcome.stdout, false)?;
    for (name, bytes) in outputs {
        builder.add_bytes(&format!("{RESULT_OUTPUTS_PREFIX}{name}"), bytes, false)?;
    }
    let bytes = builder.to_bytes()?;
    Ok((result, bytes))
}

/// How much of a task's stderr its result carries: the last bytes, after [`STDERR_CUT`] when
/// there was more (the master keeps it as the attempt's stderr log: `mw logs`).
pub const RESULT_STDERR_BYTES: usize = 4096;

/// The first line of a result's stderr that was cut to [`RESULT_STDERR_BYTES`].
pub const STDERR_CUT: &str = "[mw: stderr cut: only its last 4096 bytes came back]\n";

/// `tail` as a result carries it: its last [`RESULT_STDERR_BYTES`], marked when cut.
fn result_stderr(tail: &str) -> String {
    if tail.len() <= RESULT_STDERR_BYTES {
        return tail.to_string();
    }
    format!(
        "{STDERR_CUT}{}",
        mw_bundle::text::tail(tail, RESULT_STDERR_BYTES)
    )
}

/// The content of output file `path` if it takes at most `room` bytes (read no further
/// than that, even if the file grows meanwhile); otherwise why not.
fn read_output(path: &Path, room: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let over = |size: String| {
        format!(
            "{size}: the task's output files would pass the {} MiB a result may carry",
            mw_bundle::MAX_RESULT_FILES_BYTES >> 20
        )
    };
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > room {
        return Err(over(format!("{size} bytes")));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(room.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > room {
        return Err(over(format!("more than {room} bytes (it grew while read)")));
    }
    Ok(bytes)
}

/// `mw-worker run`: program bundle + task bundle files in, result bundle file out.
pub fn run_bundles(
    program_archive: &Path,
    task_archive: &Path,
    result_out: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<ResultInfo, RunError> {
    let program = UnpackedProgram::unpack(program_archive, opts)?;
    let (info, bytes) = run_task_file(&program, task_archive, control, opts)?;
    write_atomically(result_out, &bytes)?;
    Ok(info)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync'd and
/// renamed, so readers never see a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    mw_bundle::write_atomic(path, bytes, None)
        .map_err(io(format!("writing {} atomically", path.display())))
}
