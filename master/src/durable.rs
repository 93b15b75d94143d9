//! Journaled masters for library users: [`Master::with_journal`] and [`Master::resume`].
//!
//! The CLI's `mw run`/`mw resume` are built on the same pieces; a library user who wants a
//! purely in-memory master simply uses [`Master::new`] / [`Master::with_options`].

use crate::interface::Interface;
use crate::journal::{CancelRequest, JobMeta, Journal, TaskStatus};
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

/// What a resumed master does right after it starts, before anything else: re-attach the
/// tasks still running on a remote platform, then cancel those of them a pending `mw cancel`
/// names (the queued ones it names are cancelled in [`Restored`]).
struct Startup {
    reattach: Vec<(TaskId, String)>,
    cancel_running: Vec<TaskId>,
    requests: Vec<crate::journal::CancelRequest>,
}

/// Rebuilds the master's state from the stored statuses: compact records, one batch per
/// run of tasks recorded together (their submission time), every batch built by `source`
/// when given; the tasks pending cancel requests name are cancelled. Returns it with what
/// to do once the master runs.
fn restore(
    interface: &dyn Interface,
    stored: &[TaskStatus],
    source: Option<Arc<dyn SpecSource>>,
    cancels: &[CancelRequest],
) -> Result<(Restored, Startup), MwError> {
    let remote = interface.keeps_running_without_master();
    let cancel_all = cancels.iter().any(|(_, t)| t.is_none());
    let cancel_some: std::collections::HashSet<u64> =
        cancels.iter().filter_map(|(_, t)| *t).collect();
    let mut restored = Restored::default();
    let mut reattach = Vec::new();
    let mut cancel_running = Vec::new();
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
        if !state.is_final() && (cancel_all || cancel_some.contains(&t.index)) {
            match state {
                TaskState::Running => cancel_running.push(TaskId(t.index)),
                _ => restored.cancel_queued.push(t.index),
            }
        }
        if !state.is_final() && t.attempts > 0 {
            // The retry budget of this master counts from here.
            restored.attempts_before.insert(t.index, t.attempts);
        }
        restored.tasks.push(restored_record(state, t));
    }
    let startup = Startup {
        reattach,
        cancel_running,
        requests: cancels.to_vec(),
    };
    Ok((restored, startup))
}

impl Master {
    /// Re-attaches what a resumed master found running remotely, cancels what pending
    /// requests name among it, and acknowledges those requests (`mw cancel` waits for that).
    fn start_resumed(&self, startup: Startup) -> Result<(), MwError> {
        self.reattach(startup.reattach);
        for id in startup.cancel_running {
            self.cancel(id)?;
        }
        if let (Some(j), false) = (self.journal(), startup.requests.is_empty()) {
            // Acknowledged once the cancelled rows are committed; a request that stops a
            // running task stays pending until that task's end is (`mw`'s drive loop
            // acknowledges it then, and a master killed before leaves it to the next one).
            j.flush();
            let mut settled = Vec::new();
            for (id, task) in &startup.requests {
                if j.cancel_settled(*task)? {
                    settled.push(*id);
                }
            }
            j.ack_cancel_requests(&settled)?;
        }
        Ok(())
    }
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
        let (journal, _meta, stored, cancels) = Journal::open_for_master(dir)?;
        let (mut restored, startup) = restore(interface.as_ref(), &stored, None, &cancels)?;
        // The specs of unfinished tasks are built now, from their journaled inputs, and kept
        // until each task is final ([`Master::resume_with_source`] builds them on dispatch).
        for t in stored.iter().filter(|t| !t.state.is_final()) {
            let input = journal.read_input(t.index)?;
            let spec = rebuild(t.index, input)?;
            restored.specs.insert(t.index, spec);
        }
        drop(stored);
        let master = Master::build(interface, options, Some(journal), restored)?;
        master.start_resumed(startup)?;
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
        let (journal, _meta, stored, cancels) = Journal::open_for_master(dir)?;
        let (restored, startup) = restore(interface.as_ref(), &stored, Some(source), &cancels)?;
        drop(stored);
        let master = Master::build(interface, options, Some(journal), restored)?;
        master.start_resumed(startup)?;
        Ok(master)
    }
}
