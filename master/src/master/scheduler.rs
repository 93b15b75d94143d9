//! The master's moving parts: the scheduler thread (dispatch to the interface), completion
//! handling (retry, final state, journaling before a result becomes collectable) and result
//! collection.
//!
//! It works on the master's state ([`super::State`]) under its one lock; it never knows
//! which platform the interface drives.

use super::{parse_stdout, Inner, MwError, State, TaskOutput, TaskRecord, TaskState, TaskTimes};
use crate::interface::Completion;
use crate::journal::FinalRow;
use crate::task::{Execution, InterfaceError, PreparedTask, TaskId, WorkerId};
use mw_bundle::ExitInfo;
use serde::de::DeserializeOwned;
use std::sync::{Arc, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub(super) fn decode<T: DeserializeOwned>(out: TaskOutput) -> Result<(TaskId, T), MwError> {
    let task = out.task;
    serde_json::from_value(out.value)
        .map(|v| (task, v))
        .map_err(|e| MwError::WrongType {
            task,
            reason: e.to_string(),
        })
}

pub(super) type Taken = Option<Result<TaskOutput, MwError>>;

pub(super) fn take_result(st: &mut State, which: Option<TaskId>) -> Result<Taken, MwError> {
    match which {
        Some(id) => {
            let Some(rec) = st.tasks.get_mut(id.0 as usize) else {
                return Err(MwError::UnknownTask(id));
            };
            if rec.collected {
                return Err(MwError::AlreadyCollected(id));
            }
            if rec.state.is_final() && rec.durable {
                rec.collected = true;
                st.uncollected -= 1;
                return Ok(Some(take_outcome(rec, id)));
            }
            if let Some(reason) = &st.stopped {
                return Err(MwError::Stopped(reason.clone()));
            }
            Ok(None)
        }
        None => {
            while let Some(id) = st.finished.pop_front() {
                let rec = &mut st.tasks[id.0 as usize];
                if !rec.collected {
                    rec.collected = true;
                    st.uncollected -= 1;
                    return Ok(Some(take_outcome(rec, id)));
                }
            }
            if let Some(reason) = &st.stopped {
                return Err(MwError::Stopped(reason.clone()));
            }
            let pending =
                st.counts[TaskState::Queued as usize] + st.counts[TaskState::Running as usize];
            if pending == 0 {
                return Err(MwError::NothingPending);
            }
            Ok(None)
        }
    }
}

pub(super) fn take_outcome(rec: &mut TaskRecord, id: TaskId) -> Result<TaskOutput, MwError> {
    rec.outcome
        .take()
        .unwrap_or(Err(MwError::Journal(format!("{id}: outcome lost"))))
}

pub(super) fn prepare(inner: &Inner, id: TaskId, rec: &TaskRecord) -> PreparedTask {
    PreparedTask {
        id,
        attempt: rec.attempts.max(1),
        job: inner.options.job_name.clone(),
        spec: rec.spec.clone(),
        output_dir: inner
            .options
            .results_dir
            .as_ref()
            .map(|d| d.join(format!("task-{}", id.0))),
        staging_dir: inner.staging.clone(),
    }
}

pub(super) fn completion(inner: &Arc<Inner>, id: TaskId) -> Completion {
    let inner = inner.clone();
    Completion::new(id, move |outcome| on_complete(&inner, id, outcome))
}

/// Takes the task at the front of the queue and marks it running (one critical section, so
/// a task is always either in the queue or running: `cancel` never sees it in between).
pub(super) fn dispatch(st: &mut State, inner: &Inner) -> Option<(TaskId, Arc<PreparedTask>, bool)> {
    let task = st.queue.pop_front()?;
    st.set_state(task, TaskState::Running);
    let rec = &mut st.tasks[task.0 as usize];
    rec.attempts += 1;
    rec.times.started = Some(SystemTime::now());
    if let Some(j) = &inner.journal {
        j.record_started(task, rec.attempts);
    }
    let prepared = Arc::new(prepare(inner, task, rec));
    Some((task, prepared, rec.cancel_requested))
}

pub(super) fn scheduler_loop(inner: Arc<Inner>) {
    // A worker reserved for a task that was cancelled while we waited for the worker: it
    // serves the next task instead (interfaces have no way to give a worker back).
    let mut spare: Option<WorkerId> = None;
    loop {
        let front = {
            let mut st = inner.lock();
            loop {
                if st.shutting_down || st.stopped.is_some() {
                    return;
                }
                if let Some(&id) = st.queue.front() {
                    break id;
                }
                st = inner.cond.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        let worker = match spare.take() {
            Some(w) => Ok(w),
            None => {
                // The task stays queued (and cancellable) while we wait for a worker.
                let probe = {
                    let st = inner.lock();
                    prepare(&inner, front, &st.tasks[front.0 as usize])
                };
                inner.interface.reserve_worker(&probe)
            }
        };
        let mut st = inner.lock();
        if st.shutting_down || st.stopped.is_some() {
            return;
        }
        let Some((task, prepared, cancel_now)) = dispatch(&mut st, &inner) else {
            // Everything queued was cancelled meanwhile.
            if let Ok(w) = worker {
                spare = Some(w);
            }
            continue;
        };
        drop(st);
        match worker {
            Ok(worker) => {
                inner
                    .interface
                    .execute_task(prepared, worker, completion(&inner, task));
                // A cancel that came after the task became Running but before the interface
                // knew it was lost on the interface: look again now that it knows the task.
                let cancel_now = cancel_now || inner.lock().tasks[task.0 as usize].cancel_requested;
                if cancel_now {
                    inner.interface.cancel(task);
                }
            }
            Err(e) => on_complete(&inner, task, Err(e)),
        }
    }
}

pub(super) fn on_complete(
    inner: &Arc<Inner>,
    id: TaskId,
    outcome: Result<Execution, InterfaceError>,
) {
    let mut st = inner.lock();
    let retries = inner.options.retries;
    let rec = &mut st.tasks[id.0 as usize];
    if rec.state != TaskState::Running {
        // A late or duplicate report (e.g. after a cancel raced with completion): ignore.
        return;
    }
    let now = SystemTime::now();
    let attempts = rec.attempts;
    let result: Result<TaskOutput, MwError> = match outcome {
        Err(e) => Err(MwError::Interface {
            task: id,
            message: e.0,
            attempts,
        }),
        Ok(exec) => {
            rec.times.wall = exec.wall;
            rec.times.cpu = exec.cpu;
            if let Some(s) = exec.started {
                rec.times.started = Some(s);
            }
            if (rec.cancel_requested && !exec.exit.success())
                || matches!(exec.exit, ExitInfo::Cancelled)
            {
                Err(MwError::Cancelled(id))
            } else if !exec.exit.success() {
                Err(MwError::TaskFailed {
                    task: id,
                    exit: exec.exit,
                    stderr_tail: exec.stderr_tail,
                    attempts,
                    host: exec.host,
                })
            } else {
                parse_stdout(&exec.stdout)
                    .map(|value| TaskOutput {
                        task: id,
                        value,
                        output_files: exec.output_files,
                        host: exec.host,
                        times: TaskTimes::default(),
                        attempts,
                    })
                    .map_err(|reason| MwError::BadOutput { task: id, reason })
            }
        }
    };
    let user_cancel = rec.cancel_requested;
    if result.is_err() && !user_cancel && st.stopped.is_some() {
        // Interrupted by a stop (Ctrl-C, a broken pipe, a failed journal, a dropped master):
        // not the task's fault and not the user's cancel. It is queued again in the journal,
        // so `resume` runs it.
        if let Some(j) = &inner.journal {
            j.record_requeued(id);
        }
        st.set_state(id, TaskState::Queued);
        drop(st);
        inner.cond.notify_all();
        return;
    }
    let cancelled = matches!(result, Err(MwError::Cancelled(_))) || user_cancel;
    if result.is_err() && !cancelled && attempts <= retries {
        // Retry: back to the front of the queue.
        if let Err(e) = &result {
            log::info!("{id}: attempt {attempts} failed, retrying: {e}");
        }
        if let Some(j) = &inner.journal {
            j.record_requeued(id);
        }
        st.set_state(id, TaskState::Queued);
        st.queue.push_front(id);
        drop(st);
        inner.cond.notify_all();
        return;
    }
    let rec = &mut st.tasks[id.0 as usize];
    rec.times.finished = Some(now);
    let final_state = match &result {
        Ok(_) => TaskState::Done,
        Err(MwError::Cancelled(_)) => TaskState::Cancelled,
        Err(_) if cancelled => TaskState::Cancelled,
        Err(_) => TaskState::Failed,
    };
    let result = match (result, final_state) {
        (Ok(mut out), _) => {
            out.times = rec.times.clone();
            Ok(out)
        }
        (Err(_), TaskState::Cancelled) => Err(MwError::Cancelled(id)),
        (Err(e), _) => Err(e),
    };
    match &result {
        Ok(_) => log::debug!("{id}: done (attempt {attempts})"),
        Err(e) => log::info!("{id}: {}: {e}", final_state.as_str()),
    }
    rec.outcome = Some(result);
    st.set_state(id, final_state);
    finish_durably(inner, st, id);
}

/// Makes a final task collectable: at once without a journal; with one, only after its row
/// is committed, so a result handed to the user is never lost in a crash.
pub(super) fn finish_durably(inner: &Arc<Inner>, mut st: MutexGuard<'_, State>, id: TaskId) {
    mark_final(inner, &mut st, id);
    drop(st);
    inner.cond.notify_all();
}

/// The part of [`finish_durably`] done under the lock (the caller notifies waiters).
pub(super) fn mark_final(inner: &Arc<Inner>, st: &mut State, id: TaskId) {
    match &inner.journal {
        None => {
            st.finished.push_back(id);
            st.uncollected += 1;
            st.durable += 1;
            st.tasks[id.0 as usize].durable = true;
        }
        Some(j) => {
            let inner2 = inner.clone();
            j.record_final(
                id,
                final_row(&st.tasks[id.0 as usize]),
                Some(Box::new(move || {
                    let mut st = inner2.lock();
                    st.finished.push_back(id);
                    st.uncollected += 1;
                    st.durable += 1;
                    st.tasks[id.0 as usize].durable = true;
                    drop(st);
                    inner2.cond.notify_all();
                })),
            );
        }
    }
}

pub(super) fn unix_secs(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

/// A task's final state as the plain row the journal stores.
pub(super) fn final_row(rec: &TaskRecord) -> FinalRow {
    let (output, exit, error, host, files) = match &rec.outcome {
        Some(Ok(out)) => (
            Some(out.value.to_string()),
            Some("exit status 0".to_string()),
            None,
            out.host.clone(),
            serde_json::to_string(
                &out.output_files
                    .iter()
                    .map(|(_, p)| p.display().to_string())
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_else(|_| "[]".into()),
        ),
        Some(Err(e)) => {
            let (exit, host) = match e {
                MwError::TaskFailed { exit, host, .. } => (exit.to_string(), host.clone()),
                MwError::Cancelled(_) => ("cancelled".to_string(), String::new()),
                _ => ("not run".to_string(), String::new()),
            };
            (None, Some(exit), Some(e.to_string()), host, "[]".into())
        }
        None => (None, None, None, String::new(), "[]".into()),
    };
    FinalRow {
        state: rec.state,
        attempts: rec.attempts,
        started: unix_secs(rec.times.started),
        finished: unix_secs(rec.times.finished),
        wall: rec.times.wall.as_secs_f64(),
        cpu: rec.times.cpu.as_secs_f64(),
        host,
        output,
        exit,
        error,
        files,
    }
}
