//! Journaled masters for library users: [`Master::with_journal`] and [`Master::resume`].
//!
//! The CLI's `mw run`/`mw resume` are built on the same pieces; a library user who wants a
//! purely in-memory master simply uses [`Master::new`] / [`Master::with_options`].

use crate::interface::Interface;
use crate::journal::{JobMeta, Journal, StoredTask};
use crate::master::{Master, MasterOptions, MwError, TaskRecord, TaskState, TaskTimes};
use crate::task::{TaskId, TaskSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn at(s: Option<f64>) -> Option<SystemTime> {
    s.filter(|v| v.is_finite() && *v >= 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .and_then(|d| UNIX_EPOCH.checked_add(d))
}

/// Rebuilds the in-memory record of a stored task (used by resume).
pub(crate) fn restored_record(spec: TaskSpec, state: TaskState, t: &StoredTask) -> TaskRecord {
    TaskRecord {
        spec,
        state,
        attempts: t.attempts,
        times: TaskTimes {
            submitted: at(t.submitted),
            started: at(t.started),
            finished: at(t.finished),
            wall: Duration::try_from_secs_f64(t.wall_secs).unwrap_or_default(),
            cpu: Duration::try_from_secs_f64(t.cpu_secs).unwrap_or_default(),
            attempts: t.attempts,
        },
        outcome: None,
        // Final tasks were reported by the previous master (their results are in the
        // journal): never hand them out again.
        collected: state.is_final(),
        cancel_requested: false,
        durable: state.is_final(),
        attempts_before: t.attempts,
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
        Master::build(interface, options, Some(journal), Vec::new())
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
        let (journal, _meta, stored) = Journal::open(dir)?;
        let remote = interface.keeps_running_without_master();
        let mut records = Vec::with_capacity(stored.len());
        let mut reattach = Vec::new();
        for t in &stored {
            let spec = rebuild(t.index, t.input.clone())?;
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
            records.push(restored_record(spec, state, t));
        }
        let master = Master::build(interface, options, Some(journal), records)?;
        master.reattach(reattach);
        Ok(master)
    }
}
