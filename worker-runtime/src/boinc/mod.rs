//! `mw-worker` as a BOINC application (no BOINC library linked).
//!
//! In a BOINC slot the client starts `mw-worker` with the slot as its working directory.
//! [`run_in_slot`] then resolves the logical names [`LOGICAL_PROGRAM`], [`LOGICAL_TASK`] and
//! [`LOGICAL_RESULT`] through the client's `<soft_link>` files ([`names`]), obeys the
//! shared-memory control channel ([`shm`]: suspend, resume, quit, abort; CPU time and
//! fraction done reported back), runs the task like everywhere else (scratch space inside the
//! slot), writes the result bundle atomically to the resolved output path and, as its very
//! last step, `boinc_finish_called`. The client restarts a task in the same slot (after a
//! temporary exit, a quit, a kill), so a run first removes what an earlier one left there:
//! the finish and temporary-exit files and any scratch directory ([`SCRATCH_PREFIX`]) of a
//! run that was killed. Exit statuses are in [`SlotExit::code`]. A pack bundle
//! (many tasks in one workunit) runs task by task ([`crate::pack`]) and succeeds whenever its
//! pack result was written: the failures of single tasks travel inside it.
//!
//! It reads `init_data.xml` only through [`init_data`], which never keeps its text: the file
//! holds the volunteer's account authenticator and must never reach a log.
//!
//! This module knows nothing of the master, the BOINC server or how bundles were staged.

pub mod init_data;
pub mod names;
pub mod shm;

pub use names::{LOGICAL_PROGRAM, LOGICAL_RESULT, LOGICAL_TASK};

use crate::exec::ProcessControl;
use crate::pack::{run_task_or_pack_file, Ran};
use crate::run::{RunError, RunOptions, UnpackedProgram};
#[cfg(unix)]
use shm::MMAP_FILE;
use shm::{ControlThread, SharedMem, Stop};
use std::path::Path;

/// The file whose presence (with exit status 0) tells the client the task succeeded.
pub const FINISH_FILE: &str = "boinc_finish_called";
/// The file that, with exit status 0, asks the client to restart the task later.
pub const TEMPORARY_EXIT_FILE: &str = "boinc_temporary_exit";
/// The prefix of the scratch directory a run makes in the slot. One app runs in a slot at a
/// time, so any such directory found at start is a killed run's leftover and goes.
pub const SCRATCH_PREFIX: &str = "mw-scratch-";
/// Exit status: the task's program failed (the result bundle was still written).
pub const EXIT_TASK_FAILED: i32 = 1;
/// Exit status: the task cannot be run here and never will (bad or missing bundle).
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit status after `<abort/>` (BOINC's `EXIT_ABORTED_BY_CLIENT`).
pub const EXIT_ABORTED: i32 = 194;
/// Seconds the client waits before restarting after a transient problem.
pub const TEMPORARY_DELAY_SECS: u32 = 300;
/// Seconds the client waits before restarting after it asked the task to quit.
pub const QUIT_DELAY_SECS: u32 = 10;

/// How a run in a slot ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotExit {
    /// The task succeeded and its result bundle is written.
    Success,
    /// The task's program failed; its result bundle is written.
    TaskFailed(String),
    /// A permanent problem (bad bundle, missing input, wrong program).
    BadInput(String),
    /// A transient problem: the client should retry after `delay_secs`.
    Temporary {
        /// Seconds before the retry.
        delay_secs: u32,
        /// Why (one line).
        reason: String,
    },
    /// The client aborted the task.
    Aborted,
}

impl SlotExit {
    /// The process exit status for this outcome: 0 for success and temporary exits,
    /// [`EXIT_TASK_FAILED`], [`EXIT_BAD_INPUT`] or [`EXIT_ABORTED`] otherwise.
    pub fn code(&self) -> i32 {
        match self {
            SlotExit::Success | SlotExit::Temporary { .. } => 0,
            SlotExit::TaskFailed(_) => EXIT_TASK_FAILED,
            SlotExit::BadInput(_) => EXIT_BAD_INPUT,
            SlotExit::Aborted => EXIT_ABORTED,
        }
    }
}

/// True when `dir` looks like a BOINC slot (it holds `init_data.xml`).
pub fn is_slot(dir: &Path) -> bool {
    dir.join(init_data::INIT_DATA_FILE).is_file()
}

/// Runs the slot's task and performs the client's exit protocol (finish or temporary-exit
/// file, messages on stderr). Returns the status the process must exit with.
pub fn run_in_slot(slot: &Path) -> i32 {
    let info = init_data::read(slot);
    eprintln!(
        "mw-worker: BOINC mode in slot {} (workunit {}, result {})",
        info.slot.map_or_else(|| "?".to_string(), |s| s.to_string()),
        info.wu_name.as_deref().unwrap_or("?"),
        info.result_name.as_deref().unwrap_or("?"),
    );
    // Left by an earlier run in this slot (the client restarts a task in the same slot):
    // a stale temporary-exit file would make this run's exit look temporary too.
    let _ = std::fs::remove_file(slot.join(FINISH_FILE));
    let _ = std::fs::remove_file(slot.join(TEMPORARY_EXIT_FILE));
    remove_stale_scratch(slot);
    let outcome = run_slot_task(slot, &info);
    let code = outcome.code();
    match &outcome {
        SlotExit::Success => {
            eprintln!("mw-worker: task succeeded; writing {FINISH_FILE}");
            if let Err(e) = std::fs::write(slot.join(FINISH_FILE), "0\n") {
                eprintln!("mw-worker: error: cannot write {FINISH_FILE}: {e}");
                return EXIT_BAD_INPUT;
            }
        }
        SlotExit::TaskFailed(why) => eprintln!("mw-worker: task failed: {why}"),
        SlotExit::BadInput(why) => eprintln!("mw-worker: error: {why}"),
        SlotExit::Aborted => eprintln!("mw-worker: aborted by the BOINC client"),
        SlotExit::Temporary { delay_secs, reason } => {
            let reason = one_line(reason);
            eprintln!("mw-worker: temporary exit, retry in {delay_secs} s: {reason}");
            let body = format!("{delay_secs}\n{reason}\n");
            if let Err(e) = std::fs::write(slot.join(TEMPORARY_EXIT_FILE), body) {
                eprintln!("mw-worker: error: cannot write {TEMPORARY_EXIT_FILE}: {e}");
                return EXIT_BAD_INPUT;
            }
        }
    }
    code
}

/// Removes the scratch directories ([`SCRATCH_PREFIX`]) earlier runs left in the slot: a run
/// the client killed (a quit ignored, a suspend left unread, the host shut down) never
/// removed its own, and each restart would add another copy until the client aborts the
/// task for its disk usage. What cannot be removed is reported and left.
fn remove_stale_scratch(slot: &Path) {
    let Ok(entries) = std::fs::read_dir(slot) else {
        return;
    };
    for entry in entries.flatten() {
        let is_scratch = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        // A real directory only: a link of that name is not ours to follow.
        if !is_scratch || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        eprintln!(
            "mw-worker: removing {} left by an earlier run",
            path.display()
        );
        if let Err(e) = crate::run::remove_tree(&path) {
            eprintln!("mw-worker: warning: cannot remove {}: {e}", path.display());
        }
    }
}

fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if s.trim().is_empty() {
        "transient problem".into()
    } else {
        s
    }
}

/// Everything that holds files in the slot lives here, so it is all dropped (scratch space
/// removed) before the caller writes the finish file.
fn run_slot_task(slot: &Path, info: &init_data::InitData) -> SlotExit {
    let control = ProcessControl::new();
    let channel = match open_segment(slot, info) {
        Ok(shm) => match ControlThread::start(shm, control.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                return SlotExit::Temporary {
                    delay_secs: TEMPORARY_DELAY_SECS,
                    reason: format!("cannot start the control thread: {e}"),
                }
            }
        },
        Err(e) => {
            eprintln!(
                "mw-worker: warning: no control channel ({e}); \
                 suspend/quit will not reach the task"
            );
            None
        }
    };
    let outcome = run_resolved(slot, &control);
    let fraction = if outcome == SlotExit::Success {
        1.0
    } else {
        0.0
    };
    let stop = channel.and_then(|c| c.finish(fraction));
    match stop {
        Some(Stop::Abort) => SlotExit::Aborted,
        Some(Stop::Quit) => SlotExit::Temporary {
            delay_secs: QUIT_DELAY_SECS,
            reason: "quit requested by the BOINC client".into(),
        },
        Some(Stop::NoHeartbeat) => SlotExit::Temporary {
            delay_secs: QUIT_DELAY_SECS,
            reason: "no heartbeat from the BOINC client".into(),
        },
        None => outcome,
    }
}

/// The client's shared-memory segment: `boinc_mmap_file` in the slot (Unix), or the
/// named mapping for `<comm_obj_name>` (Windows).
fn open_segment(slot: &Path, info: &init_data::InitData) -> std::io::Result<SharedMem> {
    #[cfg(unix)]
    {
        let _ = info;
        SharedMem::open(&slot.join(MMAP_FILE))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{MMAP_FILE}: {e}")))
    }
    #[cfg(windows)]
    {
        let _ = slot;
        match &info.comm_obj_name {
            Some(name) => SharedMem::open_named(name),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "init_data.xml names no <comm_obj_name>",
            )),
        }
    }
}

fn run_resolved(slot: &Path, control: &ProcessControl) -> SlotExit {
    let resolve = |name: &str| {
        names::resolve(slot, name)
            .map_err(|e| SlotExit::BadInput(format!("logical file `{name}`: {e}")))
    };
    let (program, task, result) = match (
        resolve(LOGICAL_PROGRAM),
        resolve(LOGICAL_TASK),
        resolve(LOGICAL_RESULT),
    ) {
        (Ok(p), Ok(t), Ok(r)) => (p, t, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
    };
    for (name, path) in [(LOGICAL_PROGRAM, &program), (LOGICAL_TASK, &task)] {
        if !path.is_file() {
            return SlotExit::BadInput(format!(
                "input `{name}` ({}) is missing in the slot",
                path.display()
            ));
        }
    }
    let scratch = match tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir_in(slot)
    {
        Ok(d) => d,
        Err(e) => {
            return SlotExit::Temporary {
                delay_secs: TEMPORARY_DELAY_SECS,
                reason: format!("no scratch space in the slot: {e}"),
            }
        }
    };
    let opts = RunOptions {
        scratch_root: Some(scratch.path().to_path_buf()),
        ..RunOptions::default()
    };
    let run = UnpackedProgram::unpack(&program, &opts)
        .and_then(|p| run_task_or_pack_file(&p, &task, &result, control, &opts))
        .and_then(|(info, pending)| {
            // A task stopped on the client's request leaves no result behind (a pack's
            // temporary file goes with `pending`): it is rerun.
            if !control.is_cancelled() {
                pending.persist()?;
            }
            Ok(info)
        });
    // What the task left unwritable in its scratch space goes too (a dropped TempDir would
    // leave it in the slot).
    if let Err(e) = crate::run::remove_tree(scratch.path()) {
        eprintln!(
            "mw-worker: warning: cannot remove {}: {e}",
            scratch.path().display()
        );
    }
    match run {
        Ok(_) if control.is_cancelled() => SlotExit::TaskFailed("stopped on request".into()),
        // A pack reports each task's failure inside its result: the workunit succeeded when
        // its result was written, so the failing task's neighbours keep their results.
        Ok(Ran::Pack(p)) => {
            if !p.all_succeeded() {
                eprintln!(
                    "mw-worker: pack: tasks {:?} failed and {} could not run (reported in the result)",
                    p.failed,
                    p.info.not_run.len()
                );
            }
            SlotExit::Success
        }
        Ok(Ran::Task(info)) if info.exit.success() => SlotExit::Success,
        Ok(Ran::Task(info)) => {
            let mut why = format!("task {} of job {}: {}", info.task, info.job, info.exit);
            if !info.missing_outputs.is_empty() {
                why.push_str(&format!(
                    "; missing outputs: {}",
                    info.missing_outputs.join(", ")
                ));
            }
            if !info.stderr_tail.is_empty() {
                why.push_str(&format!("\n--- task stderr tail ---\n{}", info.stderr_tail));
            }
            SlotExit::TaskFailed(why)
        }
        Err(e) if is_transient(&e) => SlotExit::Temporary {
            delay_secs: TEMPORARY_DELAY_SECS,
            reason: e.to_string(),
        },
        Err(e) => SlotExit::BadInput(e.to_string()),
    }
}

/// Disk full, quota and similar local conditions are worth retrying later.
fn is_transient(e: &RunError) -> bool {
    let io = match e {
        RunError::Io { source, .. } => source,
        RunError::Exec(crate::exec::ExecError::Io { source, .. }) => source,
        _ => return false,
    };
    #[cfg(unix)]
    return matches!(
        io.raw_os_error(),
        Some(
            libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN
        )
    );
    // ERROR_TOO_MANY_OPEN_FILES, ERROR_NOT_ENOUGH_MEMORY, ERROR_OUTOFMEMORY,
    // ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL, ERROR_DISK_QUOTA_EXCEEDED.
    #[cfg(windows)]
    return matches!(io.raw_os_error(), Some(4 | 8 | 14 | 39 | 112 | 1295));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(SlotExit::Success.code(), 0);
        assert_eq!(
            SlotExit::Temporary {
                delay_secs: 1,
                reason: "x".into()
            }
            .code(),
            0
        );
        assert_eq!(SlotExit::TaskFailed("x".into()).code(), 1);
        assert_eq!(SlotExit::BadInput("x".into()).code(), 2);
        assert_eq!(SlotExit::Aborted.code(), 194);
    }

    #[test]
    fn missing_inputs_are_a_permanent_error_and_no_finish_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("init_data.xml"),
            "<authenticator>zz</authenticator>",
        )
        .unwrap();
        std::fs::write(
            d.path().join("mw_program"),
            "<soft_link>../nope</soft_link>\n",
        )
        .unwrap();
        assert!(is_slot(d.path()));
        assert_eq!(run_in_slot(d.path()), EXIT_BAD_INPUT);
        assert!(!d.path().join(FINISH_FILE).exists());
    }

    /// A slot as the client prepares it with `<copy_file/>`: `init_data.xml` and the program
    /// and task bundles under their logical names; the program is the shell script `script`.
    #[cfg(unix)]
    fn slot_with_task(script: &str) -> tempfile::TempDir {
        use mw_bundle::{BundleBuilder, ProgramInfo, TaskInfo};
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(init_data::INIT_DATA_FILE),
            "<app_init_data>\n<slot>0</slot>\n</app_init_data>\n",
        )
        .unwrap();
        let mut p = BundleBuilder::program(
            ProgramInfo {
                executable: "prog.sh".into(),
                base_args: vec![],
            },
            "program",
        );
        p.add_bytes("prog.sh", script.as_bytes().to_vec(), true)
            .unwrap();
        let sha = p.write_to(&d.path().join(LOGICAL_PROGRAM)).unwrap();
        let info = TaskInfo {
            job: "slotjob".into(),
            task: 1,
            program_sha256: sha,
            ..TaskInfo::default()
        };
        let mut t = BundleBuilder::task(info, "task");
        t.add_bytes(mw_bundle::TASK_INPUT_NAME, b"1".to_vec(), false)
            .unwrap();
        t.write_to(&d.path().join(LOGICAL_TASK)).unwrap();
        d
    }

    #[test]
    #[cfg(unix)]
    fn a_stale_temporary_exit_file_is_removed_and_a_success_is_a_normal_finish() {
        let d = slot_with_task("#!/bin/sh\necho '{}'\n");
        // Left by an earlier run of this task in the same slot.
        std::fs::write(d.path().join(TEMPORARY_EXIT_FILE), "10\nquit requested\n").unwrap();
        assert_eq!(run_in_slot(d.path()), 0);
        assert!(!d.path().join(TEMPORARY_EXIT_FILE).exists());
        assert!(d.path().join(FINISH_FILE).is_file());
        assert!(d.path().join(LOGICAL_RESULT).is_file());
    }

    #[test]
    #[cfg(unix)]
    fn scratch_directories_left_by_a_killed_run_are_removed_at_start() {
        let d = slot_with_task("#!/bin/sh\necho '{}'\n");
        let old = d.path().join(format!("{SCRATCH_PREFIX}old"));
        std::fs::create_dir_all(old.join("sub")).unwrap();
        std::fs::write(old.join("x"), "left by a killed run").unwrap();
        std::fs::write(old.join("sub/y"), "and this").unwrap();
        assert_eq!(run_in_slot(d.path()), 0);
        assert!(!old.exists());
        // Nothing else was taken for a leftover.
        assert!(d.path().join(LOGICAL_RESULT).is_file());
        assert!(d.path().join(init_data::INIT_DATA_FILE).is_file());
    }

    #[test]
    fn temporary_exit_file_has_delay_and_one_line_reason() {
        assert_eq!(one_line("a\nb"), "a b");
        assert_eq!(one_line("\n"), "transient problem");
    }
}
