//! Journaled masters for library users: [`Master::with_journal`] and [`Master::resume`].
//!
//! The CLI's `mw run`/`mw resume` are built on the same pieces; a library user who wants a
//! purely in-memory master simply uses [`Master::new`] / [`Master::with_options`].

use crate::interface::Interface;
use crate::journal::{JobMeta, Journal, TaskStatus};
use crate::master::{
    Batch, Master, MasterOptions, MwError, Restored, SpecSource, TaskRecord, TaskState,
};
use crate::task::{TaskId, TaskSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn at(s: Option<f64>) -> Option<SystemTime> {
    s.filter(|v| v.is_finite() && *v >= 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .and_then(|d| UNIX_EPOCH.checked_add(d))
}

/// The compact record of a stored task (used by resume).
pub(crate) fn restored_record(state: TaskState, t: &TaskStatus) -> TaskRecord {
    TaskRecord {
        state,
        attempts: t.attempts,
        // Final tasks were reported by the previous master (their results are in the
        // journal): never hand them out again.
        collected: state.is_final(),
        cancel_requested: false,
        durable: state.is_final(),
    }
}

/// Rebuilds the master's state from the stored statuses: compact records, one batch per
/// run of tasks recorded together (their submission time), every batch built by `source`
/// when given. Returns it with the tasks to re-attach.
fn restore(
    interface: &dyn Interface,
    stored: &[TaskStatus],
    source: Option<Arc<dyn SpecSource>>,
) -> Result<(Restored, Vec<(TaskId, String)>), MwError> {
    let remote = interface.keeps_running_without_master();
    let mut restored = Restored::default();
    let mut reattach = Vec::new();
    let mut last_submitted = None;
    for (i, t) in stored.iter().enumerate() {
        if t.index != i as u64 {
            return Err(MwError::Journal(format!(
                "the journal's tasks are not numbered 0, 1, 2, ... (found task {} at position {i})",
                t.index
            )));
        }
        let state = match t.state {
            s if s.is_final() => s,
            TaskState::Running if remote && t.handle.is_some() => {
                reattach.push((TaskId(t.index), t.handle.clone().unwrap_or_default()));
                TaskState::Running
            }
            _ => {
                // Stop what the dead master may have left running before it runs again.
                if let Some(h) = &t.handle {
                    interface.stop_leftover(h);
                }
                TaskState::Queued
            }
        };
        if i == 0 || t.submitted != last_submitted {
            restored.batches.push(Batch {
                first: t.index,
                at: at(t.submitted),
                source: source.clone(),
            });
            last_submitted = t.submitted;
        }
        if !state.is_final() && t.attempts > 0 {
            // The retry budget of this master counts from here.
            restored.attempts_before.insert(t.index, t.attempts);
        }
        restored.tasks.push(restored_record(state, t));
    }
    Ok((restored, reattach))
}

impl Master {
    /// A master whose tasks and results are journaled in `dir` (created if missing; it must
    /// not hold a journal yet). Results are durable before `get_result` returns them.
    pub fn with_journal(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
        dir: &Path,
    ) -> Result<Master, MwError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| MwError::Journal(format!("creating {}: {e}", dir.display())))?;
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| options.job_name.clone());
        let meta = JobMeta {
            id,
            name: options.job_name.clone(),
            interface: interface.name().to_string(),
            workers: None,
            job_text: String::new(),
            job_path: String::new(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        };
        let journal = Journal::create(dir, &meta)?;
        Master::build(interface, options, Some(journal), Restored::default())
    }

    /// Reopens the journal in `dir` after a crash. Finished tasks keep their results (read
    /// them with `mw results` or [`crate::journal::read_tasks`]) and are not run again;
    /// unfinished tasks are rebuilt with `rebuild(index, input)` and queued again, except
    /// tasks in flight on a remote platform, which are re-attached by their backend handle.
    pub fn resume(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
        dir: &Path,
        mut rebuild: impl FnMut(u64, serde_json::Value) -> Result<TaskSpec, MwError>,
    ) -> Result<Master, MwError> {
        let (journal, _meta, stored) = Journal::open_status(dir)?;
        let (mut restored, reattach) = restore(interface.as_ref(), &stored, None)?;
        // The specs of unfinished tasks are built now, from their journaled inputs, and kept
        // until each task is final ([`Master::resume_with_source`] builds them on dispatch).
        for t in stored.iter().filter(|t| !t.state.is_final()) {
            let input = journal.read_input(t.index)?;
            let spec = rebuild(t.index, input)?;
            restored.specs.insert(t.index, spec);
        }
        drop(stored);
        let master = Master::build(interface, options, Some(journal), restored)?;
        master.reattach(reattach);
        Ok(master)
    }
}

impl Master {
    /// Like [`resume`](Self::resume), for jobs of any size: keeps a few bytes per task and
    /// builds each unfinished task's spec with `source` from its journaled input when it is
    /// dispatched (tasks submitted later through [`submit_many`](Self::submit_many) or
    /// [`submit_inputs`](Self::submit_inputs) keep their own spec or source).
    pub fn resume_with_source(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
        dir: &Path,
        source: Arc<dyn SpecSource>,
    ) -> Result<Master, MwError> {
        let (journal, _meta, stored) = Journal::open_status(dir)?;
        let (restored, reattach) = restore(interface.as_ref(), &stored, Some(source))?;
        drop(stored);
        let master = Master::build(interface, options, Some(journal), restored)?;
        master.reattach(reattach);
        Ok(master)
    }
}
