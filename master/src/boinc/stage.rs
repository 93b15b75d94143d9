//! Staging input files into the project's download hierarchy, as `create_work` expects them
//! (a task's bundle, or a pack's):
//! `download/<h>/<name>` with BOINC's md5 fanout and a `<name>.md5` cache file
//! (`"<md5> <nbytes as %e>"`). Files are immutable by name: an existing file with other
//! content is an error, never overwritten. Files are written atomically but synced once per
//! batch (`mw_bundle::sync_filesystem`, before `create_work` refers to them), not one by one.
//! It must never run BOINC's tools.

use super::Shared;
use crate::task::{InterfaceError, PreparedTask, ResultError};
use md5::{Digest, Md5};
use mw_boinc_kit::names::{is_safe_name, program_file_name};
use mw_boinc_kit::{ProjectLayout, WuName};
use std::path::{Path, PathBuf};

/// A number as C's `printf("%e")` prints it (e.g. `1.234000e+03`).
pub fn c_exp(x: f64) -> String {
    let s = format!("{x:.6e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let e: i32 = e.parse().unwrap_or(0);
            let sign = if e < 0 { '-' } else { '+' };
            format!("{m}e{sign}{:02}", e.abs())
        }
        None => s,
    }
}

/// What [`stage_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// The file was written now.
    Written(PathBuf),
    /// The same content was already there.
    Present(PathBuf),
}

impl Staged {
    /// The staged file's path.
    pub fn path(&self) -> &Path {
        match self {
            Staged::Written(p) | Staged::Present(p) => p,
        }
    }
}

/// Stages `bytes` as `<download>/<h>/<name>` plus its `.md5` cache file. Idempotent;
/// refuses to replace a file of that name with other content. The files are durable only
/// after a later `mw_bundle::sync_filesystem` of the download directory. A project disk
/// that is full (or read-only) is a [`ResultError::Local`].
pub fn stage_file(layout: &ProjectLayout, name: &str, bytes: &[u8]) -> Result<Staged, ResultError> {
    if !is_safe_name(name) {
        return Err(
            InterfaceError::new(format!("staged file name {name:?} is not shell-safe")).into(),
        );
    }
    let dir = layout.download_dir_for(name);
    let path = dir.join(name);
    let md5 = hex::encode(Md5::digest(bytes));
    let md5_path = dir.join(format!("{name}.md5"));
    let md5_text = format!("{md5} {}\n", c_exp(bytes.len() as f64));
    let io = |what: &str, p: &Path, e: std::io::Error| {
        let why = format!("staging {name}: {what} {}: {e}", p.display());
        if crate::task::is_storage_error(&e) {
            ResultError::Local(why)
        } else {
            ResultError::Bad(InterfaceError::new(why))
        }
    };
    // What is there is read only as far as it could equal what we stage (whatever is in
    // its place: a FIFO is refused, not waited on).
    let read_upto = |p: &Path, n: usize| crate::task::read_prefix(p, n as u64 + 1);
    match read_upto(&path, bytes.len()) {
        Ok(existing) if existing == bytes => {
            if read_upto(&md5_path, md5_text.len()).ok().as_deref() != Some(md5_text.as_bytes()) {
                mw_bundle::write_atomic_deferred(&md5_path, md5_text.as_bytes(), Some(0o644))
                    .map_err(|e| io("writing", &md5_path, e))?;
            }
            return Ok(Staged::Present(path));
        }
        Ok(_) => {
            return Err(InterfaceError::new(format!(
                "{} exists with other content; BOINC files are immutable by name",
                path.display()
            ))
            .into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", &path, e)),
    }
    std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    mw_bundle::write_atomic_deferred(&path, bytes, Some(0o644))
        .map_err(|e| io("writing", &path, e))?;
    // The .md5 must be newer than the data file for create_work to trust it.
    mw_bundle::write_atomic_deferred(&md5_path, md5_text.as_bytes(), Some(0o644))
        .map_err(|e| io("writing", &md5_path, e))?;
    Ok(Staged::Written(path))
}

/// Removes a staged file and its `.md5` (best effort).
pub(super) fn unstage(path: &Path) {
    let _ = std::fs::remove_file(path);
    let mut md5 = path.as_os_str().to_owned();
    md5.push(".md5");
    let _ = std::fs::remove_file(PathBuf::from(md5));
}

/// One task staged for `create_work`.
pub(super) struct StagedTask {
    /// The workunit's name.
    pub wu: WuName,
    /// Its `create_work --stdin` line.
    pub line: String,
    /// The task bundle, when this call wrote it (removed again if the workunit turns out to
    /// exist already: BOINC may have deleted it after that workunit was done).
    pub fresh_task_file: Option<PathBuf>,
}

/// The error of a file that could not be staged. When the project's disk is full, a
/// journaled master is told to stop first (the task is then queued again for `mw resume`)
/// rather than fail every task after this one the same way.
fn stop_if_full(shared: &Shared, e: ResultError) -> InterfaceError {
    if let ResultError::Local(why) = &e {
        let sink = crate::guard::lock(&shared.sink).clone();
        if let Some(sink) = sink {
            sink.cannot_store(why);
        }
    }
    e.into()
}

/// Stages the program bundle of `task` (once per master) and returns it with its name.
fn stage_program(
    shared: &Shared,
    task: &PreparedTask,
) -> Result<(crate::task::ProgramBundle, String), InterfaceError> {
    let program = task
        .spec
        .program
        .bundle(&task.staging_dir)
        .map_err(|e| InterfaceError::new(format!("packing the program bundle: {e}")))?;
    let prog_name = program_file_name(&program.sha256);
    let already = shared.lock().staged_programs.contains(&prog_name);
    if !already {
        let bytes = std::fs::read(&program.path)
            .map_err(|e| InterfaceError::new(format!("reading {}: {e}", program.path.display())))?;
        stage_file(&shared.layout, &prog_name, &bytes).map_err(|e| stop_if_full(shared, e))?;
        shared.lock().staged_programs.insert(prog_name.clone());
    }
    Ok((program, prog_name))
}

/// Stages the program (once) and the task bundle of `task` under workunit name `wu`.
pub(super) fn stage_task(
    shared: &Shared,
    task: &PreparedTask,
    wu: WuName,
) -> Result<StagedTask, InterfaceError> {
    let (program, prog_name) = stage_program(shared, task)?;
    let task_name = wu.task_file_name();
    let bytes = task
        .task_bundle_bytes(&program)
        .map_err(|e| InterfaceError::new(format!("packing the task bundle: {e}")))?;
    let staged =
        stage_file(&shared.layout, &task_name, &bytes).map_err(|e| stop_if_full(shared, e))?;
    staged_task(wu, &prog_name, &task_name, staged)
}

/// Stages the program (once) and the pack bundle of `tasks` under workunit name `wu`. For a
/// resumed pending pack (`resumed`), a pack bundle already staged under that name is used as
/// it is: it may list members that have finished since, whose results are then ignored.
pub(super) fn stage_pack(
    shared: &Shared,
    tasks: &[std::sync::Arc<PreparedTask>],
    wu: WuName,
    resumed: bool,
) -> Result<StagedTask, InterfaceError> {
    let first = tasks
        .first()
        .ok_or_else(|| InterfaceError::new("an empty pack"))?;
    let (program, prog_name) = stage_program(shared, first)?;
    let task_name = wu.task_file_name();
    let existing = shared.layout.download_dir_for(&task_name).join(&task_name);
    let staged = if resumed && existing.is_file() {
        Staged::Present(existing)
    } else {
        let bytes = crate::pack::pack_bundle_bytes(tasks, &program)?;
        stage_file(&shared.layout, &task_name, &bytes).map_err(|e| stop_if_full(shared, e))?
    };
    staged_task(wu, &prog_name, &task_name, staged)
}

/// The `create_work` line of workunit `wu` (program `prog_name`, task file `task_name`, which
/// `staged` says was written or found): every word is checked shell-safe first.
fn staged_task(
    wu: WuName,
    prog_name: &str,
    task_name: &str,
    staged: Staged,
) -> Result<StagedTask, InterfaceError> {
    for word in [wu.as_str(), prog_name, task_name] {
        if !is_safe_name(word) {
            return Err(InterfaceError::new(format!(
                "{word:?} is not shell-safe; refusing to pass it to create_work"
            )));
        }
    }
    let line = format!("--wu_name {wu} {prog_name} {task_name}\n");
    Ok(StagedTask {
        wu,
        line,
        fresh_task_file: match staged {
            Staged::Written(p) => Some(p),
            Staged::Present(_) => None,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn c_style_exponent() {
        assert_eq!(c_exp(1234.0), "1.234000e+03");
        assert_eq!(c_exp(0.0), "0.000000e+00");
    }
}
