//! The master's moving parts: the scheduler thread (dispatch to the interface), completion
//! handling (retry, final state, journaling before a result becomes collectable) and result
//! collection.
//!
//! It works on the master's state ([`super::State`]) under its one lock; it never knows
//! which platform the interface drives.

use super::{parse_stdout_limited, Inner, Live, MwError, State, TaskOutput, TaskState, TaskTimes};
use crate::interface::Completion;
use crate::journal::FinalRow;
use crate::task::{
    Execution, InterfaceError, PreparedTask, StdoutMode, TaskId, TaskSpec, WorkerId,
};
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
                return Ok(Some(take_outcome(st, id).0));
            }
            if let Some(reason) = &st.stopped {
                return Err(MwError::Stopped(reason.clone()));
            }
            Ok(None)
        }
        None => {
            while let Some(id) = st.finished.pop_front() {
                if !st.tasks[id.0 as usize].collected {
                    st.tasks[id.0 as usize].collected = true;
                    return Ok(Some(take_outcome(st, id).0));
                }
            }
            if let Some(reason) = &st.stopped {
                return Err(MwError::Stopped(reason.clone()));
            }
            let pending = st.counts[TaskState::Queued as usize]
                + st.counts[TaskState::Running as usize]
                + st.submitting;
            if pending == 0 {
                return Err(MwError::NothingPending);
            }
            Ok(None)
        }
    }
}

/// Hands out a collected task's outcome and times and drops its live part: from here the
/// master keeps only the task's compact record.
pub(super) fn take_outcome(st: &mut State, id: TaskId) -> (Result<TaskOutput, MwError>, TaskTimes) {
    st.collected += 1;
    let live = st.live.remove(&id.0);
    let raw = st.raw.remove(&id.0);
    let (times, outcome) = match live {
        Some(l) => {
            let mut outcome = l.outcome;
            if let (Some(raw), Some(Ok(out))) = (raw, outcome.as_deref_mut()) {
                // Checked when the attempt ended (`decode_success`): it parses.
                match serde_json::from_str(&raw) {
                    Ok(v) => out.value = v,
                    Err(e) => {
                        outcome = Some(Box::new(Err(MwError::BadOutput {
                            task: id,
                            reason: super::outcome::bad_stdout_reason(
                                &mw_bundle::JsonLimitError::Syntax(e.to_string()),
                            ),
                            host: std::mem::take(&mut out.host),
                        })))
                    }
                }
            }
            (Some(l.times), outcome)
        }
        None => (None, None),
    };
    let times = st.times_from(id, times);
    let outcome = match outcome {
        Some(o) => *o,
        // Cancelled in bulk (`cancel_all`), which keeps no live part.
        None if st.tasks[id.0 as usize].state == TaskState::Cancelled => {
            Err(MwError::Cancelled(id))
        }
        None => Err(MwError::Journal(format!("{id}: outcome lost"))),
    };
    (outcome, times)
}

pub(super) fn prepare(inner: &Inner, id: TaskId, attempt: u32, spec: TaskSpec) -> PreparedTask {
    PreparedTask {
        id,
        attempt: attempt.max(1),
        job: inner.options.job_name.clone(),
        spec,
        output_dir: inner
            .options
            .results_dir
            .as_ref()
            .map(|d| d.join(format!("task-{}", id.0))),
        staging_dir: inner.staging.clone(),
    }
}

/// The completion of one attempt of `task`: keeps the attempt's stdout and stderr (and, for
/// [`StdoutMode::File`], the stdout file) outside the master's lock, then records the outcome.
pub(super) fn completion(inner: &Arc<Inner>, task: &PreparedTask) -> Completion {
    let inner = inner.clone();
    let id = task.id;
    let attempt = task.attempt;
    let mode = task.spec.stdout;
    let decoding = Decoding {
        mode,
        max_output_bytes: task.spec.max_output_bytes,
    };
    let output_dir = task.output_dir.clone();
    Completion::new(id, move |mut outcome| {
        // A panic handling the outcome (keeping stdout, decoding it, writing the logs) on
        // the thread that reports it becomes the attempt's error: the task still gets its
        // outcome, instead of staying running with nobody left to report it.
        let handled = crate::guard::contain(|| {
            crate::crash::panic_point("completion", Some(id.0));
            if let Ok(exec) = &mut outcome {
                if mode == StdoutMode::File && exec.exit.success() {
                    keep_stdout_file(id, output_dir.as_deref(), exec);
                }
            }
            // A successful attempt's result is decoded here, outside the master's lock.
            let decoded = match &outcome {
                Ok(exec) if exec.exit.success() && exec.missing_outputs.is_empty() => {
                    Some(decode_success(decoding, exec))
                }
                _ => None,
            };
            if let (Ok(exec), Some(dir)) = (&outcome, &inner.options.logs_dir) {
                // The JSON result of a successful run is in the journal already: its stdout
                // file would only repeat it.
                let keep_stdout = mode != StdoutMode::Json
                    || !exec.exit.success()
                    || match &decoded {
                        Some(d) => d.is_err(),
                        // (Validated without building a tree: no memory beyond the text.)
                        None => {
                            !exec.stdout.iter().all(u8::is_ascii_whitespace)
                                && serde_json::from_slice::<serde::de::IgnoredAny>(&exec.stdout)
                                    .is_err()
                        }
                    };
                crate::task_logs::write(
                    dir,
                    id,
                    attempt,
                    keep_stdout,
                    &exec.stdout,
                    &exec.stderr_tail,
                );
            }
            (outcome, decoded)
        });
        let (outcome, decoded) = handled.unwrap_or_else(|p| {
            log::error!("{id}: internal error while handling its outcome: {p}");
            (
                Err(InterfaceError::new(format!(
                    "internal error while handling its outcome: {p}"
                ))),
                None,
            )
        });
        on_complete(&inner, id, outcome, decoded)
    })
}

/// A successful attempt's result: its value and, for a JSON result, its text as the program
/// printed it (what the journal stores, without serialising the value again).
pub(super) struct Decoded {
    value: serde_json::Value,
    text: Option<String>,
    /// `value` is a placeholder: the result is `text`, checked, and parsed when collected.
    deferred: bool,
}

/// Decodes a successful attempt's stdout by the task's stdout mode. A JSON result in UTF-8
/// is only checked here (the same verdict as parsing it); its tree is built when the task
/// is collected ([`take_outcome`]).
fn decode_success(decoding: Decoding, exec: &Execution) -> Result<Decoded, String> {
    if decoding.mode == StdoutMode::Json {
        if let Ok(text) = std::str::from_utf8(&exec.stdout) {
            let text = text.trim();
            if !text.is_empty() {
                super::outcome::check_stdout_limited(&exec.stdout, decoding.max_output_bytes)?;
                return Ok(Decoded {
                    value: serde_json::Value::Null,
                    text: Some(text.to_string()),
                    deferred: true,
                });
            }
        }
    }
    let value = success_value(decoding.mode, exec, decoding.max_output_bytes)?;
    let text = match decoding.mode {
        StdoutMode::Json => std::str::from_utf8(&exec.stdout)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        StdoutMode::Text | StdoutMode::File => None,
    };
    Ok(Decoded {
        value,
        text,
        deferred: false,
    })
}

/// How a successful attempt's stdout becomes its result (from the task's spec, which the
/// master does not keep: the completion carries it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Decoding {
    pub(super) mode: StdoutMode,
    pub(super) max_output_bytes: u64,
}

/// [`StdoutMode::File`]: writes the stdout as `stdout` among the task's output files.
fn keep_stdout_file(id: TaskId, output_dir: Option<&std::path::Path>, exec: &mut Execution) {
    let Some(dir) = output_dir else {
        exec.missing_outputs
            .push("stdout (the master has no results directory to keep it in: set MasterOptions::results_dir)".into());
        return;
    };
    let path = dir.join(STDOUT_FILE);
    let written = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &exec.stdout));
    match written {
        Ok(()) => exec.output_files.push((STDOUT_FILE.to_string(), path)),
        Err(e) => {
            log::warn!("{id}: keeping stdout as {}: {e}", path.display());
            exec.missing_outputs
                .push(format!("stdout ({}: {e})", path.display()));
        }
    }
}

/// The name of the stdout kept by [`StdoutMode::File`] among a task's output files.
pub const STDOUT_FILE: &str = "stdout";

/// A dispatched task: its id, its prepared form (or why its spec could not be built) and
/// whether a cancel is already pending.
type Dispatched = (TaskId, Result<Arc<PreparedTask>, String>, bool);

/// Takes the task at the front of the queue and marks it running (one critical section, so
/// a task is always either in the queue or running: `cancel` never sees it in between).
/// `built` is the task prepared (outside the lock) for the task that was at the front; if
/// another task is at the front now, its spec is built here.
pub(super) fn dispatch(
    st: &mut State,
    inner: &Inner,
    built: Option<(TaskId, Result<PreparedTask, String>)>,
) -> Option<Dispatched> {
    let task = st.queue.pop_front()?;
    st.set_state(task, TaskState::Running);
    let rec = &mut st.tasks[task.0 as usize];
    rec.attempts = rec.attempts.saturating_add(1);
    let (attempts, cancel) = (rec.attempts, rec.cancel_requested);
    let prepared = match built {
        Some((id, prepared)) if id == task => prepared.map(|mut p| {
            p.attempt = attempts.max(1);
            p
        }),
        _ => {
            // Contained as in the scheduler loop: the task is running already, and a
            // panic escaping here would leave it so with nobody to report it.
            let plan = st.spec_plan(task);
            crate::guard::contain(|| inner.realize(task, plan))
                .unwrap_or_else(|p| Err(format!("making the task's spec panicked: {p}")))
                .map(|spec| prepare(inner, task, attempts, spec))
        }
    };
    st.live(task).times.started = Some(SystemTime::now());
    if let Some(j) = &inner.journal {
        j.record_started(task, attempts);
    }
    let prepared = prepared.map(Arc::new);
    Some((task, prepared, cancel))
}

/// Final tasks whose journal rows may wait uncommitted before the scheduler stops
/// dispatching (see [`scheduler_loop`]): enough for several group commits of a fast job.
const MAX_UNCOMMITTED: usize = 32_768;

/// Runs [`scheduler_loop`]; if the thread dies anyway, stops the master with the panic's
/// message, so its waiters (`get_result`, `wait_all`, `next_outcome`) end with the reason
/// instead of waiting for ever, and gives back the task it had taken from the queue but not
/// yet handed to the interface (running, with nobody to report it, the stop would never
/// settle): it is queued again, for `resume`.
pub(super) fn run_scheduler(inner: Arc<Inner>) {
    let in_hand = std::cell::Cell::new(None);
    if let Err(panic) = crate::guard::contain(|| scheduler_loop(&inner, &in_hand)) {
        log::error!("the scheduler thread panicked: {panic}");
        super::stop_inner(
            &inner,
            format!("internal error: the scheduler thread panicked ({panic})"),
        );
        if let Some(task) = in_hand.take() {
            on_complete(
                &inner,
                task,
                Err(InterfaceError::new("the scheduler thread panicked")),
                None,
            );
        }
    }
}

/// Dispatches queued tasks to the interface. The caller's code it runs (a spec source,
/// the interface's `reserve_worker`, `execute_task` and `cancel`) is contained: a panic
/// there fails the task at hand with the panic's message and the loop goes on. `in_hand`
/// names the task taken from the queue (running) until a completion or its outcome holds it.
fn scheduler_loop(inner: &Arc<Inner>, in_hand: &std::cell::Cell<Option<TaskId>>) {
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
                let next_due = release_due(&mut st);
                // Back-pressure: while the journal has many final rows still to commit,
                // nothing more is dispatched (each waits in memory with its result until
                // then; the journal's commit wakes us). Never on results not collected: a
                // caller may collect only once everything is done.
                let uncommitted = st.finals().saturating_sub(st.durable);
                if inner.journal.is_some() && uncommitted >= MAX_UNCOMMITTED {
                    st = crate::guard::wait(&inner.cond, st);
                    continue;
                }
                if let Some(&id) = st.queue.front() {
                    break (id, st.spec_plan(id), st.tasks[id.0 as usize].attempts);
                }
                st = match next_due {
                    Some(due) => {
                        let left = due.saturating_duration_since(std::time::Instant::now());
                        crate::guard::wait_timeout(&inner.cond, st, left)
                    }
                    None => crate::guard::wait(&inner.cond, st),
                };
            }
        };
        // The spec is built outside the lock (it may read the journal and render templates).
        let (front, plan, attempt) = front;
        crate::crash::delay_point("dispatch");
        let realized = crate::guard::contain(|| inner.realize(front, plan))
            .unwrap_or_else(|p| Err(format!("making the task's spec panicked: {p}")));
        let (worker, built) = match realized {
            Ok(spec) => {
                let probe = prepare(inner, front, attempt.saturating_add(1), spec);
                let worker = match spare.take() {
                    Some(w) => Ok(w),
                    // The task stays queued (and cancellable) while we wait for a worker.
                    None => reserve(inner, &probe),
                };
                (Some(worker), Some((front, Ok(probe))))
            }
            // No worker for a task that cannot be built: it fails at once.
            Err(e) => (spare.take().map(Ok), Some((front, Err(e)))),
        };
        let mut st = inner.lock();
        if st.shutting_down || st.stopped.is_some() {
            return;
        }
        let Some((task, prepared, cancel_now)) = dispatch(&mut st, inner, built) else {
            // Everything queued was cancelled meanwhile.
            if let Some(Ok(w)) = worker {
                spare = Some(w);
            }
            continue;
        };
        drop(st);
        in_hand.set(Some(task));
        // Running, and not yet in the interface's (or a completion's) hands.
        crate::crash::panic_point("scheduler", Some(task.0));
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                if let Some(Ok(w)) = worker {
                    spare = Some(w);
                }
                on_complete(inner, task, Err(InterfaceError::new(e)), None);
                in_hand.set(None);
                continue;
            }
        };
        // Rare: the task at the front could not be built and another one took its place.
        let worker = match worker {
            Some(w) => w,
            None => reserve(inner, &prepared),
        };
        match worker {
            Ok(worker) => {
                let done = completion(inner, &prepared);
                // From here `done` reports the task, however this ends.
                in_hand.set(None);
                // A panic here drops `done` unreported, which fails the task.
                if let Err(p) =
                    crate::guard::contain(|| inner.interface.execute_task(prepared, worker, done))
                {
                    log::error!("{task}: the interface panicked starting it: {p}");
                }
                // A cancel that came after the task became Running but before the interface
                // knew it was lost on the interface: look again now that it knows the task.
                let cancel_now = cancel_now || inner.lock().tasks[task.0 as usize].cancel_requested;
                if cancel_now {
                    if let Err(p) = crate::guard::contain(|| inner.interface.cancel(task)) {
                        log::error!("{task}: the interface panicked cancelling it: {p}");
                    }
                }
            }
            Err(e) => {
                on_complete(inner, task, Err(e), None);
                in_hand.set(None);
            }
        }
    }
}

/// The interface's `reserve_worker`, a panic in it an interface error of the task.
fn reserve(inner: &Inner, task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
    crate::guard::contain(|| inner.interface.reserve_worker(task)).unwrap_or_else(|p| {
        Err(InterfaceError::new(format!(
            "the {} interface panicked reserving a worker: {p}",
            inner.interface.name()
        )))
    })
}

/// Moves tasks whose retry backoff has passed to the back of the queue; returns when the
/// next one is due.
fn release_due(st: &mut State) -> Option<std::time::Instant> {
    if st.delayed.is_empty() {
        return None;
    }
    let now = std::time::Instant::now();
    let mut next = None;
    let mut due = Vec::new();
    st.delayed.retain(|(at, id)| {
        if *at <= now {
            due.push(*id);
            false
        } else {
            next = Some(next.map_or(*at, |n: std::time::Instant| n.min(*at)));
            true
        }
    });
    st.queue.extend(due);
    next
}

/// The result of an attempt that exited 0, by the task's stdout mode.
fn success_value(
    mode: StdoutMode,
    exec: &Execution,
    max_output_bytes: u64,
) -> Result<serde_json::Value, String> {
    // Text and file results obey the same limit as JSON ones: a capture holds at most one
    // byte more than the limit, so a longer stdout is refused, never silently cut.
    let size = exec.stdout.len() as u64;
    if mode != StdoutMode::Json && size > max_output_bytes {
        return Err(super::outcome::bad_stdout_reason(
            &mw_bundle::JsonLimitError::TooLarge {
                size,
                limit: max_output_bytes,
            },
        ));
    }
    match mode {
        StdoutMode::Json => parse_stdout_limited(&exec.stdout, max_output_bytes),
        // Like the shell's `$(…)`: the text without its trailing newlines.
        StdoutMode::Text => Ok(serde_json::Value::String(
            String::from_utf8_lossy(&exec.stdout)
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        )),
        StdoutMode::File => Ok(exec
            .output_files
            .iter()
            .find(|(name, _)| name == STDOUT_FILE)
            .map(|(_, p)| serde_json::Value::String(p.display().to_string()))
            .unwrap_or(serde_json::Value::Null)),
    }
}

/// The first line of an error, for a log line per task: the stderr tail it may carry (up to
/// 4 KiB) is in the journal and the task's log already, and a detached master's `master.log`
/// grew by that much per failure (8 MB for 2,000 failures).
fn first_line(e: &MwError) -> String {
    let text = e.to_string();
    match text.split_once('\n') {
        Some((first, _)) => format!("{first} […]"),
        None => text,
    }
}

/// How much of a failed attempt's stderr its error carries (the whole kept stderr is in the
/// task's log).
const ERROR_STDERR_TAIL: usize = 4096;

/// Records the outcome of an attempt of `id`: retried, or final and journaled. `decoded` is
/// a successful attempt's decoded result (none: the attempt did not succeed, or nobody
/// decoded it; then it is decoded here as JSON).
pub(super) fn on_complete(
    inner: &Arc<Inner>,
    id: TaskId,
    outcome: Result<Execution, InterfaceError>,
    decoded: Option<Result<Decoded, String>>,
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
    let user_cancel = rec.cancel_requested;
    let live = st.live(id);
    let mut output_text = None;
    let mut deferred = false;
    let result: Result<TaskOutput, MwError> = match outcome {
        Err(InterfaceError(message, ran)) => {
            if let Some(r) = &ran {
                live.times.wall = r.wall;
                if let Some(s) = r.started {
                    live.times.started = Some(s);
                }
            }
            Err(MwError::Interface {
                task: id,
                message,
                attempts,
                ran: ran.map(|r| *r),
            })
        }
        Ok(exec) => {
            live.times.wall = exec.wall;
            live.times.cpu = exec.cpu;
            if let Some(s) = exec.started {
                live.times.started = Some(s);
            }
            if (user_cancel && !exec.exit.success()) || matches!(exec.exit, ExitInfo::Cancelled) {
                Err(MwError::Cancelled(id))
            } else if !exec.exit.success() {
                Err(MwError::TaskFailed {
                    task: id,
                    exit: exec.exit,
                    stderr_tail: mw_bundle::text::tail(&exec.stderr_tail, ERROR_STDERR_TAIL)
                        .to_string(),
                    attempts,
                    host: exec.host,
                })
            } else if !exec.missing_outputs.is_empty() {
                Err(MwError::MissingOutput {
                    task: id,
                    files: exec.missing_outputs,
                    attempts,
                    host: exec.host,
                })
            } else {
                let decoded = decoded.unwrap_or_else(|| {
                    let json = Decoding {
                        mode: StdoutMode::Json,
                        max_output_bytes: crate::task::DEFAULT_MAX_OUTPUT_BYTES,
                    };
                    decode_success(json, &exec)
                });
                match decoded {
                    Ok(d) => {
                        output_text = d.text;
                        deferred = d.deferred;
                        Ok(TaskOutput {
                            task: id,
                            value: d.value,
                            output_files: exec.output_files,
                            host: exec.host,
                            times: TaskTimes::default(),
                            attempts,
                        })
                    }
                    Err(reason) => Err(MwError::BadOutput {
                        task: id,
                        reason,
                        host: exec.host,
                    }),
                }
            }
        }
    };
    if result.is_err() && !user_cancel && st.stopped.is_some() {
        // Interrupted by a stop (Ctrl-C, a broken pipe, a failed journal, a dropped master):
        // not the task's fault and not the user's cancel. It is queued again in the journal,
        // so `resume` runs it.
        if let Some(j) = &inner.journal {
            j.record_requeued(id, "interrupted: the master stopped");
        }
        st.set_state(id, TaskState::Queued);
        drop(st);
        inner.cond.notify_all();
        return;
    }
    let cancelled = matches!(result, Err(MwError::Cancelled(_))) || user_cancel;
    let retry = match &result {
        // A count saturated at u32::MAX (a forged journal) allows no more attempts: the
        // attempts of this master, counted from it, would stay at 0 for ever.
        Err(e) if !cancelled => {
            st.attempts_here(id) <= retries && attempts < u32::MAX && inner.options.retryable(e)
        }
        _ => false,
    };
    if retry {
        let delay = inner.options.backoff_before(attempts.saturating_add(1));
        let why = result
            .as_ref()
            .err()
            .map(|e| e.exit_text())
            .unwrap_or_default();
        if let Err(e) = &result {
            log::info!(
                "{id}: attempt {attempts} failed, retrying in {delay:?}: {}",
                first_line(e)
            );
        }
        if let Some(j) = &inner.journal {
            j.record_requeued(
                id,
                &format!(
                    "attempt {attempts} failed ({why}); attempt {} in {:.1} s",
                    attempts.saturating_add(1),
                    delay.as_secs_f64()
                ),
            );
        }
        st.set_state(id, TaskState::Queued);
        st.retried += 1;
        if delay.is_zero() {
            // Back to the front of the queue.
            st.queue.push_front(id);
        } else {
            st.delayed.push((std::time::Instant::now() + delay, id));
        }
        drop(st);
        inner.cond.notify_all();
        return;
    }
    st.live(id).times.finished = Some(now);
    let times = st.times(id);
    let final_state = match &result {
        Ok(_) => TaskState::Done,
        Err(MwError::Cancelled(_)) => TaskState::Cancelled,
        Err(_) if cancelled => TaskState::Cancelled,
        Err(_) => TaskState::Failed,
    };
    let result = match (result, final_state) {
        (Ok(mut out), _) => {
            out.times = times;
            Ok(out)
        }
        (Err(_), TaskState::Cancelled) => Err(MwError::Cancelled(id)),
        (Err(e), _) => Err(e),
    };
    match &result {
        Ok(_) => log::debug!("{id}: done (attempt {attempts})"),
        Err(e) => log::info!("{id}: {}: {}", final_state.as_str(), first_line(e)),
    }
    if result.is_err() {
        output_text = None;
    }
    if deferred && result.is_ok() {
        if let Some(text) = output_text.as_deref() {
            st.raw.insert(id.0, Box::from(text));
        }
    }
    st.live(id).outcome = Some(Box::new(result));
    st.set_state(id, final_state);
    st.release(id);
    // Too many failures: stop once this outcome is handed on (the stop takes the lock).
    let halt = match (final_state, inner.options.max_failures) {
        (TaskState::Failed, Some(max)) => {
            st.failed_here += 1;
            let halt = st.failed_here >= max && st.stopped.is_none();
            st.halted |= halt;
            halt.then(|| format!("{} tasks failed (max_failures = {max})", st.failed_here))
        }
        _ => None,
    };
    finish_durably(inner, st, id, output_text);
    if let Some(reason) = halt {
        super::stop_inner(inner, reason);
    }
}

/// Makes a final task collectable: at once without a journal; with one, only after its row
/// is committed, so a result handed to the user is never lost in a crash.
/// `output` is the result's JSON text when the caller has it (else it is serialised from the
/// value).
pub(super) fn finish_durably(
    inner: &Arc<Inner>,
    mut st: MutexGuard<'_, State>,
    id: TaskId,
    output: Option<String>,
) {
    match &inner.journal {
        None => {
            super::mark_durable(&mut st, &[id.0]);
            drop(st);
            inner.cond.notify_all();
        }
        Some(j) => {
            // Collectable once its row is committed: the journal's durable hook (installed
            // by `Master::build`) marks it, for a whole group commit at once.
            let rec = st.tasks[id.0 as usize];
            let row = final_row(id, rec.state, rec.attempts, st.live.get(&id.0), output);
            // Nothing runs and nothing waits: no later result can share this commit.
            let idle = st.counts[TaskState::Running as usize] == 0
                && st.queue.is_empty()
                && st.delayed.is_empty();
            drop(st);
            j.record_final(id, row);
            if idle {
                j.hurry();
            }
        }
    }
}

pub(super) fn unix_secs(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

/// A task's final state as the plain row the journal stores. No live part: cancelled in
/// bulk, now.
pub(super) fn final_row(
    id: TaskId,
    state: TaskState,
    attempts: u32,
    live: Option<&Live>,
    output: Option<String>,
) -> FinalRow {
    let none;
    let rec = match live {
        Some(live) => live,
        None => {
            none = Live {
                outcome: (state == TaskState::Cancelled)
                    .then(|| Box::new(Err(MwError::Cancelled(id)))),
                times: TaskTimes {
                    finished: Some(SystemTime::now()),
                    ..TaskTimes::default()
                },
            };
            &none
        }
    };
    let (output, exit, error, host, files) = match rec.outcome.as_deref() {
        Some(Ok(out)) => (
            Some(output.unwrap_or_else(|| out.value.to_string())),
            Some("exit status 0".to_string()),
            None,
            out.host.clone(),
            if out.output_files.is_empty() {
                "[]".into()
            } else {
                serde_json::to_string(
                    &out.output_files
                        .iter()
                        .map(|(_, p)| p.display().to_string())
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_else(|_| "[]".into())
            },
        ),
        Some(Err(e)) => (
            None,
            Some(e.exit_text()),
            Some(e.to_string()),
            e.host().to_string(),
            "[]".into(),
        ),
        None => (None, None, None, String::new(), "[]".into()),
    };
    FinalRow {
        state,
        attempts,
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
