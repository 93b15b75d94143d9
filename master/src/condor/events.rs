//! Job events: turns what a batch's event log (and, where the log says too little, the
//! schedd) reports about a job into its task's phase and, at the end, its outcome.
//! This module must never know about the journal or the job-file format.

use super::*;
use crate::task::RunFacts;
use mw_condor_kit::JobAd;
use std::time::UNIX_EPOCH;

/// Follows the job events until the watcher stops. A panic while handling one event fails
/// only that job's task (with the panic's message); the thread goes on.
pub(super) fn event_loop(shared: &Shared, rx: Receiver<WatchMessage>) {
    for msg in rx {
        crate::crash::panic_point("condor-event-loop", None);
        match msg {
            Ok(ev) => {
                let h = ev.handle();
                if let Err(panic) = crate::guard::contain(|| on_event(shared, ev)) {
                    if let Some(h) = h {
                        super::fail_task_of(shared, h, &panic);
                    }
                }
            }
            Err(e) => {
                shared.lock().log_problems += 1;
                eprintln!("mw: condor: skipped a job event log record: {e}");
            }
        }
    }
}

/// What an event means for its task.
pub(super) enum Outcome {
    /// Read the result bundle (return value of mw-worker).
    Exited(i64),
    Signal(i64),
    Error(String),
    /// Held with this hold code: remove and fail.
    HeldFail(String, Option<i64>),
    /// A shadow exception: fail unless the job is still queued (it will run again).
    CheckQueue(String),
}

pub(super) fn on_event(shared: &Shared, ev: LogEvent) {
    let Some(h) = ev.handle() else { return };
    let mut st = shared.lock();
    let Some(&id) = st.by_handle.get(&h) else {
        st.unclaimed.entry(h).or_default().push(ev);
        return;
    };
    let outcome = apply(&mut st, shared.settings.on_hold, id, h, &ev);
    drop(st);
    if let Some(o) = outcome {
        conclude(shared, id, h, o);
    }
}

/// Updates the task's phase; returns an outcome when the event ends the task.
pub(super) fn apply(
    st: &mut State,
    on_hold: OnHold,
    id: TaskId,
    h: JobHandle,
    ev: &LogEvent,
) -> Option<Outcome> {
    let t = st.tasks.get_mut(&id)?;
    if t.handle != Some(h) {
        return None; // an earlier attempt's job
    }
    let at = format!("HTCondor job {h} ({}:{})", ev.log.display(), ev.line);
    match &ev.kind {
        EventKind::Executing { host } => {
            t.phase = Phase::Running;
            t.ran_on = Some(host.clone());
        }
        EventKind::Reconnected => t.phase = Phase::Running,
        EventKind::Submitted { .. }
        | EventKind::Evicted { .. }
        | EventKind::Released { .. }
        | EventKind::ReconnectFailed { .. } => t.phase = Phase::Idle,
        EventKind::ShadowException { message } => {
            t.phase = Phase::Idle;
            let m = format!(
                "{at}: shadow exception: {}",
                message.as_deref().unwrap_or("(no message)")
            );
            t.shadow = Some(m.clone());
            return Some(Outcome::CheckQueue(m));
        }
        EventKind::Terminated(Termination::Normal { return_value }) => {
            return Some(Outcome::Exited(*return_value))
        }
        EventKind::Terminated(Termination::Abnormal { signal, .. }) => {
            return Some(Outcome::Signal(*signal))
        }
        EventKind::Aborted { reason } => {
            let why = reason.as_deref().unwrap_or("no reason given");
            return Some(Outcome::Error(if t.cancel_requested {
                format!("cancelled: {at} was removed ({why})")
            } else {
                format!("{at} was removed from the queue (aborted: {why})")
            }));
        }
        EventKind::Held {
            reason,
            code,
            subcode,
        } => {
            let m = format!(
                "{at} was held: {} (hold code {}, subcode {})",
                reason.as_deref().unwrap_or("reason unspecified"),
                code.map_or("?".into(), |c| c.to_string()),
                subcode.map_or("?".into(), |c| c.to_string()),
            );
            match on_hold {
                OnHold::Fail => return Some(Outcome::HeldFail(m, *code)),
                OnHold::Wait => {
                    eprintln!(
                        "mw: condor: {m}; waiting for it to be released (on_hold = \"wait\")"
                    );
                    t.phase = Phase::Held;
                }
            }
        }
        EventKind::ExecutableError { message } => {
            t.shadow = Some(format!("{at}: executable error: {message}"));
        }
        _ => {}
    }
    None
}

pub(super) fn take_task(shared: &Shared, id: TaskId, h: JobHandle) -> Option<Tracked> {
    let mut st = shared.lock();
    if st.tasks.get(&id).map(|t| t.handle) != Some(Some(h)) {
        return None;
    }
    let t = st.tasks.remove(&id)?;
    st.finished += 1;
    Some(t)
}

pub(super) fn conclude(shared: &Shared, id: TaskId, h: JobHandle, outcome: Outcome) {
    if let Outcome::CheckQueue(msg) = &outcome {
        // Still queued: HTCondor will run it again; keep waiting.
        match shared.settings.cli.query_jobs(&[h.cluster]) {
            Ok(ads) if ads.iter().any(|a| a.handle == h) => return,
            Ok(_) => {}
            Err(e) => {
                eprintln!("mw: condor: {msg}; condor_q failed ({e}); waiting for more events");
                return;
            }
        }
    }
    let Some(mut t) = take_task(shared, id, h) else {
        return;
    };
    // What came back from the pool is read under a guard: a panic fails this task with its
    // message, and the event thread goes on.
    let result =
        crate::guard::contain(|| outcome_of(shared, &t, h, outcome)).unwrap_or_else(|panic| {
            Err(InterfaceError::new(format!(
                "HTCondor job {h}: internal error while reading its outcome: {panic}"
            )))
        });
    if let Some(d) = t.done.take() {
        d.finish(result);
    }
}

/// The task's outcome from what the event said and what came back.
fn outcome_of(
    shared: &Shared,
    t: &Tracked,
    h: JobHandle,
    outcome: Outcome,
) -> Result<Execution, InterfaceError> {
    let cli = &shared.settings.cli;
    // A job the pool ended after it had started: what the schedd knows of that run.
    let ad = match (&outcome, &t.ran_on) {
        (Outcome::Exited(_), _) | (_, None) => None,
        _ if t.cancel_requested => None,
        _ => job_ad(cli, h),
    };
    let facts = |exit: String| RunFacts {
        exit,
        host: ad
            .as_ref()
            .and_then(|a| {
                ["LastRemoteHost", "RemoteHost"]
                    .iter()
                    .find_map(|k| a.attributes.get(*k).and_then(|v| v.as_str()))
            })
            .map(str::to_string)
            .or_else(|| t.ran_on.clone())
            .unwrap_or_default(),
        started: ad
            .as_ref()
            .and_then(|a| unix_attr(a, "JobCurrentStartDate"))
            .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        wall: ad
            .as_ref()
            .and_then(|a| {
                let start = unix_attr(a, "JobCurrentStartDate")?;
                let end = unix_attr(a, "EnteredCurrentStatus")?;
                end.checked_sub(start)
            })
            .map(Duration::from_secs)
            .unwrap_or_default(),
    };
    let ended = |m: String, exit: String| {
        if t.ran_on.is_some() {
            InterfaceError::after_run(m, facts(exit))
        } else {
            InterfaceError::new(m)
        }
    };
    let result = match outcome {
        Outcome::Exited(rv) => from_exit(t, h, rv),
        Outcome::Signal(sig) => Err(ended(
            format!(
                "HTCondor job {h}: mw-worker was killed by signal {sig}{}{}",
                signal_name(sig),
                stderr_tail(&t.files.stderr)
            ),
            format!("signal {sig}"),
        )),
        Outcome::Error(m) | Outcome::CheckQueue(m) => Err(ended(m, "removed".into())),
        Outcome::HeldFail(m, code) => {
            // A worker that died (e.g. SIGKILL) sends no result bundle: the job is then held
            // for its missing output (code 12/13), and only the job ad tells the signal.
            let signal = match (&ad, code) {
                (Some(a), c) if c != Some(1) => {
                    let by_signal =
                        a.attributes.get("ExitBySignal") == Some(&serde_json::Value::Bool(true));
                    a.exit_signal.filter(|_| by_signal)
                }
                _ => None,
            };
            let removed = match cli.remove(&[h]) {
                Ok(()) => "; removed it with condor_rm (on_hold = \"fail\")".to_string(),
                Err(e) => format!("; condor_rm failed: {e}"),
            };
            match signal {
                Some(sig) => Err(ended(
                    format!(
                        "HTCondor job {h}: mw-worker was killed by signal {sig}{} before it wrote its result; {m}{removed}{}",
                        signal_name(sig),
                        stderr_tail(&t.files.stderr)
                    ),
                    format!("signal {sig}"),
                )),
                None => Err(ended(
                    format!("{m}{removed}{}", stderr_tail(&t.files.stderr)),
                    "held".into(),
                )),
            }
        }
    };
    match (result, &t.shadow) {
        (Err(InterfaceError(e, ran)), Some(note)) => {
            Err(InterfaceError(format!("{e} (earlier: {note})"), ran))
        }
        (r, _) => r,
    }
}

/// The job's ad from the queue, else from the history.
fn job_ad(cli: &CondorCli, h: JobHandle) -> Option<JobAd> {
    let find = |ads: Vec<JobAd>| ads.into_iter().find(|a| a.handle == h);
    cli.query_jobs(&[h.cluster])
        .ok()
        .and_then(find)
        .or_else(|| cli.history(&[h.cluster], None).ok().and_then(find))
}

/// A non-negative integer attribute (a unix time).
fn unix_attr(ad: &JobAd, key: &str) -> Option<u64> {
    ad.attributes
        .get(key)
        .and_then(|v| v.as_u64())
        .filter(|t| *t > 0)
}

pub(super) fn signal_name(sig: i64) -> String {
    match mw_bundle::signal_name(sig) {
        Some(name) => format!(" ({name})"),
        None => String::new(),
    }
}

/// The last lines of a job's stderr file, formatted for an error message.
pub(super) fn stderr_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => {
            let start = bytes.len().saturating_sub(2000);
            let text = String::from_utf8_lossy(&bytes[start..]);
            format!("; job stderr ({}):\n{}", path.display(), text.trim_end())
        }
        _ => String::new(),
    }
}

/// The outcome of a job that terminated with `rv` (mw-worker's exit status).
pub(super) fn from_exit(t: &Tracked, h: JobHandle, rv: i64) -> Result<Execution, InterfaceError> {
    let path = &t.files.result;
    let label = path.display().to_string();
    crate::crash::panic_point("condor-result", Some(t.task.id.0));
    // What came back from the pool is read only up to what the task may return.
    let cap = mw_bundle::max_result_upload_bytes(t.task.spec.max_output_bytes);
    let bundle = match crate::task::read_bounded(path, cap) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(InterfaceError::new(format!(
                "HTCondor job {h}: cannot read the result bundle {label}: {e}"
            )))
        }
    };
    match (rv, bundle) {
        (0 | 1, Some(bytes)) => Execution::from_result_bundle_of(&bytes, &label, &t.task).map_err(|e| {
            InterfaceError::new(format!(
                "HTCondor job {h} (mw-worker exit {rv}): bad result bundle: {e}{}",
                stderr_tail(&t.files.stderr)
            ))
        }),
        (0 | 1, None) => Err(InterfaceError::new(format!(
            "HTCondor job {h}: mw-worker exited {rv} but no result bundle came back (expected {label}){}",
            stderr_tail(&t.files.stderr)
        ))),
        (rv, _) => Err(InterfaceError::new(format!(
            "HTCondor job {h}: mw-worker exited {rv} without running the task{}",
            stderr_tail(&t.files.stderr)
        ))),
    }
}
