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
//! Nothing in the pack is trusted: the pack must name the program it came with, list each
//! task once, and each inner task bundle must be the task its member name says.
//!
//! This module knows nothing of platforms or the master.

use crate::exec::{host_name, ProcessControl};
use crate::run::{
    run_task_bytes_in, run_task_file, scratch_dir, RunError, RunOptions, UnpackedProgram,
    IN_MEMORY_TASK_MAX,
};
use mw_bundle::{
    pack_result_member, pack_task_member, BundleBuilder, BundleError, BundleKind, NotRun,
    PackResultInfo,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

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
    if out.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" […]");
    }
    out
}

/// Runs every task of the pack bundle at `pack_archive` with an unpacked program; returns the
/// summary and the pack result bundle's bytes. Errors only when the pack itself is unusable
/// (malformed, another program's); the failures of single tasks are inside the result.
pub fn run_pack_file(
    program: &UnpackedProgram,
    pack_archive: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<(PackSummary, Vec<u8>), RunError> {
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
    let mut summary = PackSummary {
        info: PackResultInfo {
            job: info.job.clone(),
            host: host_name(),
            tasks: Vec::new(),
            not_run: Vec::new(),
        },
        failed: Vec::new(),
    };
    let mut results = Results::new(scratch.path().join("results"));
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
    let mut builder = BundleBuilder::pack_result(summary.info.clone(), "pack result bundle");
    results.into_bundle(&mut builder)?;
    let bytes = builder.to_bytes()?;
    Ok((summary, bytes))
}

/// The result bundles of a pack's tasks: kept in memory up to [`RESULTS_IN_MEMORY`] bytes,
/// then written to files in a scratch directory.
struct Results {
    dir: PathBuf,
    in_memory: u64,
    kept: Vec<(u64, Kept)>,
}

enum Kept {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// How many bytes of a pack's result bundles are kept in memory.
const RESULTS_IN_MEMORY: u64 = 256 << 20;

impl Results {
    fn new(dir: PathBuf) -> Results {
        Results {
            dir,
            in_memory: 0,
            kept: Vec::new(),
        }
    }

    fn add(&mut self, task: u64, bytes: Vec<u8>) -> Result<(), RunError> {
        let n = bytes.len() as u64;
        if self.in_memory.saturating_add(n) <= RESULTS_IN_MEMORY {
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

    fn into_bundle(self, builder: &mut BundleBuilder) -> Result<(), RunError> {
        for (task, kept) in self.kept {
            match kept {
                Kept::Bytes(b) => builder.add_bytes(&pack_result_member(task), b, false)?,
                Kept::File(p) => builder.add_file(&pack_result_member(task), &p)?,
            }
        }
        Ok(())
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
/// program; returns what ran and the result (or pack result) bundle's bytes.
pub fn run_task_or_pack_file(
    program: &UnpackedProgram,
    archive: &Path,
    control: &ProcessControl,
    opts: &RunOptions,
) -> Result<(Ran, Vec<u8>), RunError> {
    // A bundle whose manifest cannot be read goes the lone task's way, which names the problem.
    let kind = mw_bundle::read_manifest(archive, &opts.limits).map(|m| m.kind);
    if matches!(kind, Ok(BundleKind::Pack)) {
        let (summary, bytes) = run_pack_file(program, archive, control, opts)?;
        return Ok((Ran::Pack(summary), bytes));
    }
    let (info, bytes) = run_task_file(program, archive, control, opts)?;
    Ok((Ran::Task(info), bytes))
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
    let (ran, bytes) = run_task_or_pack_file(&program, archive, control, opts)?;
    crate::run::write_atomically(result_out, &bytes)?;
    Ok(ran)
}
