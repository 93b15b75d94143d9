//! Running a pack: many tasks of one job in one grid job (an HTCondor job, a BOINC workunit).
//!
//! The pack bundle is read (every checksum verified, within the limits; into memory when it is
//! small, else unpacked to disk), then each task's own task bundle runs exactly as a lone task
//! would (its own process, its own timeout, an empty private working directory: one reused
//! and emptied between tasks), one after the other in the pack's order. Each task's result bundle becomes a member of one pack result bundle. A task whose
//! program fails is an ordinary result (its exit is inside its result bundle); a task the
//! worker cannot run at all (a malformed inner bundle, a disk problem) has no result and is
//! listed in `not_run` with the reason, and the pack goes on with the next task: one bad
//! task never costs its neighbours their results.
//!
//! A pack of a streaming program (`stream` in its manifest) runs its tasks through one
//! long-lived process of it ([`crate::stream`]) instead of one process each.
//!
//! Nothing in the pack is trusted: the pack must name the program it came with, list each
//! task once, and each inner task bundle must be the task its member name says.
//!
//! This module knows nothing of platforms or the master.

use crate::exec::{host_name, ProcessControl};
use crate::run::{
    run_task_bytes_in, run_task_file, scratch_dir, RunError, RunOptions, UnpackedProgram,
    IN_MEMORY_TASK_MAX,
};
use crate::stream::{StreamInput, StreamProgram, StreamRunner};
use mw_bundle::{
    pack_result_member, pack_task_member, BundleBuilder, BundleError, BundleKind, NotRun, PackInfo,
    PackResultInfo, ResultInfo, TaskInfo, RESULT_STDOUT_NAME, TASK_FILES_PREFIX, TASK_INPUT_NAME,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Longest reason kept for a task the worker could not run.
const MAX_REASON: usize = 500;

/// What a pack run produced (its result bundle carries the same, per task).
#[derive(Debug, Clone)]
pub struct PackSummary {
    /// The pack result's metadata: tasks that ran, tasks that could not.
    pub info: PackResultInfo,
    /// Tasks that ran and did not succeed (their exit is in their result bundle).
    pub failed: Vec<u64>,
}

impl PackSummary {
    /// True when every task of the pack ran and succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.failed.is_empty() && self.info.not_run.is_empty()
    }
}

fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    mw_bundle::text::clip(&mut out, MAX_REASON);
    out
}

/// Runs every task of the pack bundle at `pack_archive` with an unpacked program; returns the
/// summary and the pack result bundle, written to a temporary file beside `result_out` as it
/// is built (never held in memory whole). Errors only when the pack itself is unusable
/// (malformed, another program's); the failures of single tasks are inside the result.
pub fn run_pack_file(
    program: &UnpackedProgram,
    pack_archive: &Path,
    result_out: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<(PackSummary, PendingResult), RunError> {
    let label = pack_archive.display().to_string();
    let scratch = scratch_dir(opts, "mw-pack-")?;
    let size = std::fs::metadata(pack_archive)
        .map_err(|source| RunError::Io {
            context: format!("reading {label}"),
            source,
        })?
        .len();
    // A pack of small tasks is read into memory (no file written or removed per task); a
    // large one is unpacked to disk and its tasks are read from there.
    let (manifest, in_memory) = if size <= IN_MEMORY_TASK_MAX {
        let bytes = std::fs::read(pack_archive).map_err(|source| RunError::Io {
            context: format!("reading {label}"),
            source,
        })?;
        let b = mw_bundle::open_in_memory(&bytes, &label, Some(BundleKind::Pack), &opts.limits)?;
        (b.manifest, Some(b.members))
    } else {
        let m = mw_bundle::unpack(
            pack_archive,
            &scratch.path().join("pack"),
            Some(BundleKind::Pack),
            &opts.limits,
        )?;
        (m, None)
    };
    let info = manifest.pack.clone().unwrap_or_default();
    if info.program_sha256 != program.sha256() {
        return Err(RunError::WrongProgram {
            task: label,
            wanted: info.program_sha256,
            actual: program.sha256().to_string(),
        });
    }
    let mut seen = HashSet::new();
    for t in &info.tasks {
        if !seen.insert(*t) || manifest.member(&pack_task_member(*t)).is_none() {
            return Err(RunError::Bundle(BundleError::Manifest {
                archive: label,
                reason: format!(
                    "task {t} is listed twice or has no member {}",
                    pack_task_member(*t)
                ),
            }));
        }
    }
    let task_scratch = scratch.path().join("task");
    std::fs::create_dir(&task_scratch).map_err(|source| RunError::Io {
        context: "creating the pack's scratch directory".into(),
        source,
    })?;
    if info.stream {
        let members = match in_memory {
            Some(m) => m,
            None => read_members(&scratch.path().join("pack"), &info.tasks, opts)?,
        };
        let (summary, results) = run_pack_stream(
            program,
            &info,
            members,
            &task_scratch,
            control,
            opts,
            &label,
        )?;
        let pending = results.write_pack_result(summary.info.clone(), result_out)?;
        return Ok((summary, pending));
    }
    let mut summary = PackSummary {
        info: PackResultInfo {
            job: info.job.clone(),
            host: host_name(),
            tasks: Vec::new(),
            not_run: Vec::new(),
        },
        failed: Vec::new(),
    };
    let mut results = Results::new(scratch.path().join("results"), opts);
    let mut members = in_memory;
    for &task in &info.tasks {
        if control.is_cancelled() {
            summary.info.not_run.push(NotRun {
                task,
                reason: "the pack was stopped before this task ran".into(),
            });
            continue;
        }
        let member = pack_task_member(task);
        let inner_label = format!("{label}#{member}");
        let ran = match members.as_mut() {
            // Taken out of the map: each task's bundle is freed once it ran.
            Some(m) => {
                let bytes = m.remove(&member).unwrap_or_default();
                run_task_bytes_in(program, &bytes, &inner_label, &task_scratch, control, opts)
            }
            None => {
                let path = scratch.path().join("pack").join(&member);
                let r = run_task_file(program, &path, control, opts);
                let _ = std::fs::remove_file(&path);
                r
            }
        }
        .and_then(|(r, bytes)| {
            if r.task != task || r.job != info.job {
                return Err(RunError::Bundle(BundleError::Manifest {
                    archive: inner_label.clone(),
                    reason: format!(
                        "it is task {} of job `{}`, but the pack lists it as task {task} of job `{}`",
                        r.task, r.job, info.job
                    ),
                }));
            }
            results.add(task, bytes)?;
            Ok(r)
        });
        match ran {
            Ok(r) => {
                if !r.exit.success() || !r.missing_outputs.is_empty() {
                    summary.failed.push(task);
                }
                summary.info.tasks.push(task);
            }
            Err(e) => {
                eprintln!("mw-worker: pack {label}: task {task} could not run: {e}");
                summary.info.not_run.push(NotRun {
                    task,
                    reason: one_line(&e.to_string()),
                });
            }
        }
    }
    let pending = results.write_pack_result(summary.info.clone(), result_out)?;
    Ok((summary, pending))
}

/// The task bundles of an unpacked pack, read back (a streaming pack's tasks are small: its
/// program takes no input files).
fn read_members(
    dir: &Path,
    tasks: &[u64],
    opts: &RunOptions,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, RunError> {
    let mut out = std::collections::BTreeMap::new();
    for t in tasks {
        let member = pack_task_member(*t);
        let path = dir.join(&member);
        let bytes = read_capped(&path, opts.limits.max_total_bytes)?;
        out.insert(member, bytes);
    }
    Ok(out)
}

/// A file of at most `cap` bytes (it was unpacked within the limits; checked again).
fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, RunError> {
    use std::io::Read;
    let io = |source| RunError::Io {
        context: format!("reading {}", path.display()),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(io(std::io::Error::other(format!(
            "larger than {cap} bytes"
        ))));
    }
    Ok(bytes)
}

/// One task of a streaming pack, read from its task bundle.
struct StreamTask {
    task: u64,
    info: TaskInfo,
    line: Vec<u8>,
}

/// Reads one task of a streaming pack: its bundle must be the task it is filed under, for
/// this program, with a JSON input and neither input files nor declared outputs (one
/// process serves every task in one directory).
fn stream_task(
    program: &UnpackedProgram,
    pack: &PackInfo,
    task: u64,
    bytes: &[u8],
    label: &str,
    opts: &RunOptions,
) -> Result<StreamTask, RunError> {
    let bad = |reason: String| {
        RunError::Bundle(BundleError::Manifest {
            archive: label.to_string(),
            reason,
        })
    };
    let b = mw_bundle::open_in_memory(bytes, label, Some(BundleKind::Task), &opts.limits)?;
    let info = b.manifest.task.clone().unwrap_or_default();
    if info.task != task || info.job != pack.job {
        return Err(bad(format!(
            "it is task {} of job `{}`, but the pack lists it as task {task} of job `{}`",
            info.task, info.job, pack.job
        )));
    }
    if info.program_sha256 != program.sha256() {
        return Err(RunError::WrongProgram {
            task: label.to_string(),
            wanted: info.program_sha256,
            actual: program.sha256().to_string(),
        });
    }
    if !info.outputs.is_empty() || b.members.keys().any(|m| m.starts_with(TASK_FILES_PREFIX)) {
        return Err(bad(
            "a streaming program's task cannot have input files or declared outputs".into(),
        ));
    }
    let input = b.members.get(TASK_INPUT_NAME).map_or(&b"null"[..], |v| v);
    // Re-serialised compactly: one line, whatever the bundle held.
    let value: serde_json::Value =
        serde_json::from_slice(input).map_err(|e| bad(format!("its input is not JSON: {e}")))?;
    let line = serde_json::to_vec(&value).map_err(|e| bad(format!("its input: {e}")))?;
    Ok(StreamTask { task, info, line })
}

/// Runs a streaming pack: its tasks, in order, through one long-lived process of the
/// program per run of tasks with the same arguments and environment (the stream contract
/// of [`crate::stream`]: a task that fails, hangs or breaks the stream fails alone, the
/// program is restarted for the next). Each task's result bundle is what a lone task's
/// would be (its answer line as stdout; no CPU time of its own); the caller writes them out.
fn run_pack_stream(
    program: &UnpackedProgram,
    pack: &PackInfo,
    mut members: std::collections::BTreeMap<String, Vec<u8>>,
    scratch: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
    label: &str,
) -> Result<(PackSummary, Results), RunError> {
    let mut summary = PackSummary {
        info: PackResultInfo {
            job: pack.job.clone(),
            host: host_name(),
            tasks: Vec::new(),
            not_run: Vec::new(),
        },
        failed: Vec::new(),
    };
    let mut results = Results::new(scratch.join("results"), opts);
    let mut tasks = Vec::with_capacity(pack.tasks.len());
    for &task in &pack.tasks {
        let member = pack_task_member(task);
        let bytes = members.remove(&member).unwrap_or_default();
        match stream_task(
            program,
            pack,
            task,
            &bytes,
            &format!("{label}#{member}"),
            opts,
        ) {
            Ok(t) => tasks.push(t),
            Err(e) => {
                eprintln!("mw-worker: pack {label}: task {task} could not run: {e}");
                summary.info.not_run.push(NotRun {
                    task,
                    reason: one_line(&e.to_string()),
                });
            }
        }
    }
    let workdir = scratch.join("work");
    let mut rest = tasks.as_slice();
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|t| t.info.args == first.info.args && t.info.env == first.info.env)
            .count();
        let (run, after) = rest.split_at(same);
        rest = after;
        if control.is_cancelled() {
            for t in run {
                summary.info.not_run.push(NotRun {
                    task: t.task,
                    reason: "the pack was stopped before this task ran".into(),
                });
            }
            continue;
        }
        // A fresh, empty working directory (with the program's files) for each process.
        let _ = crate::run::remove_tree(&workdir);
        std::fs::create_dir(&workdir).map_err(|source| RunError::Io {
            context: format!("creating {}", workdir.display()),
            source,
        })?;
        crate::run::link_program_files(&program.root(), &workdir).map_err(|source| {
            RunError::Io {
                context: "linking program files".into(),
                source,
            }
        })?;
        let mut p = StreamProgram::new(program.executable(), workdir.clone());
        p.args = program.base_args();
        p.args.extend(first.info.args.iter().cloned());
        p.env = first.info.env.clone();
        p.die_with_parent = true;
        let mut runner = StreamRunner::new(p);
        let inputs: Vec<StreamInput> = run
            .iter()
            .map(|t| StreamInput {
                line: t.line.clone(),
                timeout: t
                    .info
                    .timeout_secs
                    .filter(|s| *s > 0.0)
                    // Too large for a Duration (a forged manifest): no limit, not a panic.
                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                control: control.clone(),
                // The task's max_output is checked where its result is read (the master).
                max_answer_bytes: None,
            })
            .collect();
        // Each result goes into the pack's results (memory up to a bound, then files) as it
        // arrives, not after the whole run.
        let mut pending = inputs.into_iter().enumerate();
        let mut failure: Option<RunError> = None;
        runner.serve(
            || pending.next().map(|(i, input)| (input, i)),
            |i, o| {
                let Some(t) = run.get(i) else { return };
                if failure.is_none() {
                    if let Err(e) = add_stream_result(&mut results, &mut summary, &pack.job, t, o) {
                        failure = Some(e);
                    }
                }
            },
        );
        drop(runner);
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok((summary, results))
}

/// Adds the result bundle of streaming task `t` of job `job`, from its outcome `o`.
fn add_stream_result(
    results: &mut Results,
    summary: &mut PackSummary,
    job: &str,
    t: &StreamTask,
    o: crate::stream::StreamOutcome,
) -> Result<(), RunError> {
    let result = ResultInfo {
        job: job.to_string(),
        task: t.task,
        attempt: t.info.attempt,
        exit: o.exit,
        wall_secs: o.wall.as_secs_f64(),
        // A long-lived process's CPU time is not split per task.
        user_secs: 0.0,
        sys_secs: 0.0,
        host: summary.info.host.clone(),
        started_unix: o
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        stderr_tail: o.stderr_tail,
        missing_outputs: Vec::new(),
        comparison: t.info.comparison.clone(),
    };
    if !result.exit.success() {
        summary.failed.push(t.task);
    }
    let mut b = BundleBuilder::result(result, "result bundle");
    b.add_bytes(RESULT_STDOUT_NAME, o.result, false)?;
    results.add(t.task, b.to_bytes()?)?;
    summary.info.tasks.push(t.task);
    Ok(())
}

/// The result bundles of a pack's tasks: kept in memory up to [`RESULTS_IN_MEMORY`] bytes
/// (or [`RunOptions::pack_results_in_memory`]), then written to files in a scratch directory.
struct Results {
    dir: PathBuf,
    in_memory: u64,
    max_in_memory: u64,
    kept: Vec<(u64, Kept)>,
}

enum Kept {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// How many bytes of a pack's result bundles are kept in memory by default.
pub const RESULTS_IN_MEMORY: u64 = 256 << 20;

impl Results {
    fn new(dir: PathBuf, opts: &RunOptions) -> Results {
        Results {
            dir,
            in_memory: 0,
            max_in_memory: opts.pack_results_in_memory.unwrap_or(RESULTS_IN_MEMORY),
            kept: Vec::new(),
        }
    }

    fn add(&mut self, task: u64, bytes: Vec<u8>) -> Result<(), RunError> {
        let n = bytes.len() as u64;
        if self.in_memory.saturating_add(n) <= self.max_in_memory {
            self.in_memory += n;
            self.kept.push((task, Kept::Bytes(bytes)));
            return Ok(());
        }
        let io = |source| RunError::Io {
            context: format!("writing the result of task {task}"),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let path = self.dir.join(format!("{task}.tar.gz"));
        std::fs::write(&path, &bytes).map_err(io)?;
        self.kept.push((task, Kept::File(path)));
        Ok(())
    }

    /// Writes the pack result bundle holding every kept result to a temporary file beside
    /// `result_out`, streamed: results kept in files are copied, not read into memory.
    fn write_pack_result(
        self,
        info: PackResultInfo,
        result_out: &Path,
    ) -> Result<PendingResult, RunError> {
        let mut builder = BundleBuilder::pack_result(info, "pack result bundle");
        for (task, kept) in self.kept {
            match kept {
                Kept::Bytes(b) => builder.add_bytes(&pack_result_member(task), b, false)?,
                Kept::File(p) => builder.add_file(&pack_result_member(task), &p)?,
            }
        }
        let io = |source| RunError::Io {
            context: format!("writing the pack result beside {}", result_out.display()),
            source,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".mw-tmp-")
            .tempfile_in(parent_dir(result_out))
            .map_err(io)?;
        let out = builder.write_into(std::io::BufWriter::new(tmp.as_file_mut()))?;
        out.into_inner().map_err(|e| io(e.into_error()))?;
        Ok(PendingResult {
            path: result_out.to_path_buf(),
            content: Pending::File(tmp),
        })
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A result bundle not yet at its path: a lone task's bytes, or a pack's archive already
/// written to a temporary file beside that path. Dropped, it leaves nothing behind.
#[derive(Debug)]
pub struct PendingResult {
    path: PathBuf,
    content: Pending,
}

#[derive(Debug)]
enum Pending {
    Bytes(Vec<u8>),
    File(tempfile::NamedTempFile),
}

impl PendingResult {
    /// Where [`persist`](Self::persist) puts the result bundle.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the result bundle at its path atomically and durably: fsync'd, renamed into
    /// place, its directory fsync'd. Readers never see a partial file.
    pub fn persist(self) -> Result<(), RunError> {
        let tmp = match self.content {
            Pending::Bytes(bytes) => return crate::run::write_atomically(&self.path, &bytes),
            Pending::File(tmp) => tmp,
        };
        let io = |source| RunError::Io {
            context: format!("writing {} atomically", self.path.display()),
            source,
        };
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        mw_bundle::sync_dir(&parent_dir(&self.path)).map_err(io)
    }
}

/// What a bundle run produced: one task's result, or a pack's.
#[derive(Debug, Clone)]
pub enum Ran {
    /// A lone task.
    Task(mw_bundle::ResultInfo),
    /// A pack of tasks.
    Pack(PackSummary),
}

impl Ran {
    /// True when every task exited 0 (what `mw-worker run`'s exit status says) and, in a
    /// pack, every task ran and wrote its declared outputs.
    pub fn succeeded(&self) -> bool {
        match self {
            Ran::Task(r) => r.exit.success(),
            Ran::Pack(p) => p.all_succeeded(),
        }
    }
}

/// Runs the task or pack bundle at `archive` (its manifest says which) with an unpacked
/// program; returns what ran and its result (or pack result) bundle for `result_out`, put
/// there by [`PendingResult::persist`]. A pack's is already in a file beside `result_out`.
pub fn run_task_or_pack_file(
    program: &UnpackedProgram,
    archive: &Path,
    result_out: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<(Ran, PendingResult), RunError> {
    // A bundle whose manifest cannot be read goes the lone task's way, which names the problem.
    let kind = mw_bundle::read_manifest(archive, &opts.limits).map(|m| m.kind);
    if matches!(kind, Ok(BundleKind::Pack)) {
        let (summary, pending) = run_pack_file(program, archive, result_out, control, opts)?;
        return Ok((Ran::Pack(summary), pending));
    }
    let (info, bytes) = run_task_file(program, archive, control, opts)?;
    let pending = PendingResult {
        path: result_out.to_path_buf(),
        content: Pending::Bytes(bytes),
    };
    Ok((Ran::Task(info), pending))
}

/// `mw-worker run` for a task or a pack bundle: program bundle + task (or pack) bundle in,
/// result (or pack result) bundle file out.
pub fn run_any_bundles(
    program_archive: &Path,
    archive: &Path,
    result_out: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<Ran, RunError> {
    let program = UnpackedProgram::unpack(program_archive, opts)?;
    let (ran, pending) = run_task_or_pack_file(&program, archive, result_out, control, opts)?;
    pending.persist()?;
    Ok(ran)
}
