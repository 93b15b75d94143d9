//! Job events: turns what a batch's event log (and, where the log says too little, the
//! schedd) reports about a job into its tasks' phase and, at the end, their outcomes (a
//! pack's members each get their own result from the pack result; a member without one is
//! queued again). This module must never know about the journal or the job-file format.

use super::*;
use crate::task::{ResultError, RunFacts};
use mw_condor_kit::{CondorError, JobAd};
use std::sync::mpsc::RecvTimeoutError;
use std::time::UNIX_EPOCH;

/// Follows the job events until the watcher stops. A panic while handling one event fails
/// only that job's task (with the panic's message); the thread goes on. Once it has read
/// every event delivered so far (and at least every poll interval) it settles the shadow
/// exceptions that nothing later in their logs followed, and asks the schedd about the jobs
/// of logs that are gone.
pub(super) fn event_loop(shared: &Shared, rx: Receiver<WatchMessage>) {
    loop {
        match rx.recv_timeout(shared.settings.poll_interval) {
            Ok(msg) => on_message(shared, msg),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(msg) = rx.try_recv() {
            on_message(shared, msg);
        }
        settle_shadow_exceptions(shared, &rx);
        recheck_gone_logs(shared);
    }
}

/// A job whose last event was a shadow exception (007), waiting to be asked about.
pub(super) struct ShadowCheck {
    /// The exception, for the task's error if the job ended with it.
    message: String,
    /// Not asked about before (after a failed `condor_q`).
    not_before: Instant,
}

/// Decides the jobs whose last event is a shadow exception (HTCondor puts such a job back to
/// idle, and a later 001/005/009/012 tells how it goes on). Every log is read to its end
/// first, so a job with later events in its log is decided by them, never by the schedd;
/// only a job whose log has nothing after its 007 is looked up: still queued, it runs again
/// (keep waiting); gone, `condor_history` says how it ended (a resumed master may meet the
/// 007 long after), else it fails with the exception.
fn settle_shadow_exceptions(shared: &Shared, rx: &Receiver<WatchMessage>) {
    let now = Instant::now();
    if !shared.lock().shadowed.values().any(|c| c.not_before <= now) {
        return;
    }
    if let Ok(w) = shared.watcher.lock() {
        if let Some(w) = w.as_ref() {
            w.sync();
        }
    }
    while let Ok(msg) = rx.try_recv() {
        on_message(shared, msg);
    }
    // Including the shadow exceptions the sync just delivered: nothing after them was read.
    let now = Instant::now();
    let due: Vec<(JobHandle, String)> = {
        let mut st = shared.lock();
        let due: Vec<JobHandle> = st
            .shadowed
            .iter()
            .filter(|(_, c)| c.not_before <= now)
            .map(|(h, _)| *h)
            .collect();
        due.into_iter()
            .filter_map(|h| st.shadowed.remove(&h).map(|c| (h, c.message)))
            .collect()
    };
    for (h, message) in due {
        if let Err(panic) = crate::guard::contain(|| check_shadowed(shared, h, message)) {
            super::fail_task_of(shared, h, &panic);
        }
    }
}

/// How long a shadow exception waits before `condor_q` is asked again after it failed.
const SHADOW_RECHECK: Duration = Duration::from_secs(30);

/// Job `h` had a shadow exception (`message`) and nothing after it in its log.
fn check_shadowed(shared: &Shared, h: JobHandle, message: String) {
    match shared.settings.cli.query_job(h) {
        // Still queued: HTCondor runs it again; its next events decide.
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => {
            log::warn!(
                "HTCondor: {message}; condor_q failed ({e}); asking again in {}s",
                SHADOW_RECHECK.as_secs()
            );
            let mut st = shared.lock();
            // Unless it has ended in the meantime.
            if st.by_handle.contains_key(&h) {
                st.shadowed.entry(h).or_insert(ShadowCheck {
                    message,
                    not_before: Instant::now() + SHADOW_RECHECK,
                });
            }
            return;
        }
    }
    // Left the queue since: it ran again and ended, as the history says.
    let outcome = match completed_per_history(shared, h) {
        Some(rv) => Outcome::Exited(rv),
        None => Outcome::CheckQueue(message),
    };
    conclude(shared, h, outcome);
}

fn on_message(shared: &Shared, msg: WatchMessage) {
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
            if !matches!(e, CondorError::LogGone { .. }) {
                shared.lock().log_problems += 1;
            }
            match e {
                CondorError::LogFormat { ref path, .. } => {
                    let msg = e.to_string();
                    if let Err(panic) = crate::guard::contain(|| fail_log(shared, path, &msg)) {
                        log::error!(
                            "condor: internal error while failing the jobs of {msg}: {panic}"
                        );
                    }
                }
                CondorError::LogGone { path } => {
                    let mut st = shared.lock();
                    // A log no task waits on any more may go.
                    if !jobs_of_log(&st, &path).is_empty() {
                        st.log_problems += 1;
                        log::warn!(
                            "HTCondor: the job event log {} was deleted or moved away; \
                             asking the schedd (condor_q, then condor_history) how its jobs \
                             are doing",
                            path.display()
                        );
                        st.gone_logs.insert(path, Instant::now());
                    }
                }
                // Events of jobs that have ended are ignored, and those of jobs still
                // followed are idempotent: the log is simply read again.
                CondorError::LogRewound { .. } => log::warn!(
                    "HTCondor: {e}; events already seen are ignored for jobs that have ended"
                ),
                e => log::warn!("HTCondor: skipped a job event log record: {e}"),
            }
        }
    }
}

/// How often the schedd is asked again about the jobs of a log that is gone while some of
/// them are still in the queue.
pub(super) const GONE_LOG_RECHECK: Duration = Duration::from_secs(30);

/// Asks the schedd about the jobs of every log that is gone and due for a check.
fn recheck_gone_logs(shared: &Shared) {
    let now = Instant::now();
    let due: Vec<PathBuf> = shared
        .lock()
        .gone_logs
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(p, _)| p.clone())
        .collect();
    for log in due {
        let waiting =
            crate::guard::contain(|| conclude_gone_log(shared, &log)).unwrap_or_else(|panic| {
                log::error!(
                    "condor: internal error while asking about the jobs of {}: {panic}",
                    log.display()
                );
                false
            });
        let mut st = shared.lock();
        if waiting {
            st.gone_logs.insert(log, now + GONE_LOG_RECHECK);
        } else {
            st.gone_logs.remove(&log);
        }
    }
}

/// The jobs whose tasks this interface follows through `log` (a batch's log is in its
/// batch directory with its tasks' files).
pub(super) fn jobs_of_log(st: &State, log: &Path) -> Vec<JobHandle> {
    let dir = log.parent();
    let mut jobs: Vec<JobHandle> = st
        .tasks
        .values()
        .filter(|t| Some(t.files.dir.as_path()) == dir)
        .filter_map(|t| t.handle)
        .collect();
    jobs.sort_unstable_by_key(|h| (h.cluster, h.proc));
    jobs.dedup();
    jobs
}

/// The log of a batch is gone: its jobs that left the queue end as `condor_history` says
/// (or fail when it does not know them); returns whether some are still queued (their events
/// are read if HTCondor writes the log again; the queue is asked again later).
fn conclude_gone_log(shared: &Shared, log: &Path) -> bool {
    if log.exists() {
        // Written again: the watcher reads it from its start.
        return false;
    }
    let jobs = jobs_of_log(&shared.lock(), log);
    if jobs.is_empty() {
        return false;
    }
    let cli = &shared.settings.cli;
    let mut clusters: Vec<u64> = jobs.iter().map(|h| h.cluster).collect();
    clusters.dedup();
    let queued: HashSet<JobHandle> = match cli.query_jobs(&clusters) {
        Ok(ads) => ads.into_iter().map(|a| a.handle).collect(),
        Err(e) => {
            log::warn!(
                "HTCondor: the job event log {} is gone and condor_q failed ({e}); asking \
                 again in {}s",
                log.display(),
                GONE_LOG_RECHECK.as_secs()
            );
            return true;
        }
    };
    let mut waiting = 0usize;
    for h in jobs {
        if queued.contains(&h) {
            waiting += 1;
            continue;
        }
        let outcome = match history_ad(cli, h) {
            Some(ad) => outcome_of_ad(h, &ad, log),
            None => Outcome::Error(format!(
                "HTCondor job {h}: its job event log {} is gone, and neither condor_q nor \
                 condor_history lists the job, so how it ended is unknown",
                log.display()
            )),
        };
        conclude(shared, h, outcome);
    }
    if waiting > 0 {
        log::warn!(
            "HTCondor: the job event log {} is gone; {waiting} of its job(s) are still in \
             the queue: their events are read if the log is written again, and the queue is \
             asked again in {}s",
            log.display(),
            GONE_LOG_RECHECK.as_secs()
        );
    }
    waiting > 0
}

/// How a job that left the queue ended, from its `condor_history` ad (its log being gone).
pub(super) fn outcome_of_ad(h: JobHandle, ad: &JobAd, log: &Path) -> Outcome {
    let by_signal = ad.attributes.get("ExitBySignal") == Some(&serde_json::Value::Bool(true));
    match (ad.status, ad.exit_code, ad.exit_signal) {
        (_, _, Some(sig)) if by_signal => Outcome::Signal(sig),
        (JobStatus::Completed, Some(rv), _) => Outcome::Exited(rv),
        (JobStatus::Removed, _, _) => Outcome::Error(format!(
            "HTCondor job {h} was removed from the queue (found in condor_history; its log {} \
             is gone)",
            log.display()
        )),
        (s, _, _) => Outcome::Error(format!(
            "HTCondor job {h} left the queue in state {s:?} (its log {} is gone)",
            log.display()
        )),
    }
}

/// `log` is in a format mw does not read (`msg` says which and what to set): the jobs
/// followed through it are removed and their tasks fail with `msg`; tasks re-attached to it
/// later fail at once.
fn fail_log(shared: &Shared, log: &Path, msg: &str) {
    let jobs = {
        let mut st = shared.lock();
        st.bad_logs.insert(log.to_path_buf(), msg.to_string());
        jobs_of_log(&st, log)
    };
    log::warn!("HTCondor: {msg}; failing its {} job(s)", jobs.len());
    fail_jobs_of_bad_log(shared, &jobs, msg);
}

/// Removes `jobs`, whose log mw cannot read, and fails their tasks with `msg`.
pub(super) fn fail_jobs_of_bad_log(shared: &Shared, jobs: &[JobHandle], msg: &str) {
    let removed = match shared.settings.cli.remove(jobs) {
        Ok(()) => "removed it with condor_rm".to_string(),
        Err(e) => format!("condor_rm failed: {e}"),
    };
    for h in jobs {
        conclude(
            shared,
            *h,
            Outcome::Error(format!("HTCondor job {h}: {msg}; {removed}")),
        );
    }
}

/// What an event means for its task.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// Read the result bundle (return value of mw-worker).
    Exited(i64),
    Signal(i64),
    Error(String),
    /// Held with this hold code: remove and fail.
    HeldFail(String, Option<i64>),
    /// Evicted more than [`MAX_EVICTIONS`] times: remove and fail.
    Evicted(String),
    /// A shadow exception: decided by the job's later events; with none, fail unless the
    /// job is still queued (it will run again) or its history says it completed.
    CheckQueue(String),
}

pub(super) fn on_event(shared: &Shared, ev: LogEvent) {
    let Some(h) = ev.handle() else { return };
    let mut st = shared.lock();
    let Some(members) = st.by_handle.get(&h).cloned() else {
        // A job of a batch being re-attached whose task has not been re-attached yet: its
        // events wait for it (bounded). Any other job has ended (or was never this
        // interface's): its events, repeated when a log is read again, are ignored.
        let expected = st
            .reattaching
            .get(&h.cluster)
            .is_some_and(|items| h.proc < *items);
        if expected {
            let kept = st.unclaimed.entry(h).or_default();
            if kept.len() >= MAX_UNCLAIMED_EVENTS {
                kept.remove(0);
            }
            kept.push(ev);
        }
        return;
    };
    // Any later event of the job decides instead of an earlier shadow exception.
    st.shadowed.remove(&h);
    // Every member of a job sees its events; the first outcome is the job's.
    let mut outcome = None;
    for id in members {
        if let Some(o) = apply(&mut st, shared.settings.on_hold, id, h, &ev) {
            outcome.get_or_insert(o);
        }
    }
    if let Some(Outcome::CheckQueue(message)) = outcome {
        // Decided once the log has been read to its end (`settle_shadow_exceptions`).
        st.shadowed.insert(
            h,
            ShadowCheck {
                message,
                not_before: Instant::now(),
            },
        );
        return;
    }
    drop(st);
    if let Some(o) = outcome {
        conclude(shared, h, o);
    }
}

/// The most events kept for one job whose task is not re-attached yet (the latest: they
/// decide where the job is).
const MAX_UNCLAIMED_EVENTS: usize = 64;

/// Evictions (and failed reconnects) a job may have before mw removes it and fails its
/// tasks: a pool that preempts a job for ever would otherwise keep it, and `mw run`, going.
pub const MAX_EVICTIONS: u32 = 20;

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
        EventKind::Evicted { .. } | EventKind::ReconnectFailed { .. } => {
            t.phase = Phase::Idle;
            t.evictions = t.evictions.saturating_add(1);
            if t.evictions > MAX_EVICTIONS {
                return Some(Outcome::Evicted(format!(
                    "{at} was evicted {} times without finishing (more than the {MAX_EVICTIONS} \
                     mw allows: a machine that keeps preempting it, or a pool policy)",
                    t.evictions
                )));
            }
        }
        EventKind::Submitted { .. } | EventKind::Released { .. } => t.phase = Phase::Idle,
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
                    log::warn!("HTCondor: {m}; waiting for it to be released (on_hold = \"wait\")");
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

/// Takes the tasks of job `h` that are still waiting for it (all members of a pack).
pub(super) fn take_members(st: &mut State, h: JobHandle) -> Vec<Tracked> {
    let ids = st.by_handle.remove(&h).unwrap_or_default();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if st.tasks.get(&id).map(|t| t.handle) == Some(Some(h)) {
            out.extend(st.tasks.remove(&id));
        }
    }
    out
}

pub(super) fn conclude(shared: &Shared, h: JobHandle, outcome: Outcome) {
    let members = {
        let mut st = shared.lock();
        let members = take_members(&mut st, h);
        st.shadowed.remove(&h);
        if st.reattached.contains(&h) {
            // Members of this pack re-attached later get the same outcome.
            st.concluded.insert(h, outcome.clone());
        }
        if !members.is_empty() {
            st.sizer.job_ended();
        }
        members
    };
    shared.cond.notify_all();
    finish_members(shared, h, members, outcome);
}

/// The exit code of job `h` when `condor_history` lists it completed (not by a signal).
fn completed_per_history(shared: &Shared, h: JobHandle) -> Option<i64> {
    let ad = history_ad(&shared.settings.cli, h)?;
    let by_signal = ad.attributes.get("ExitBySignal") == Some(&serde_json::Value::Bool(true));
    match (ad.status, ad.exit_code) {
        (JobStatus::Completed, Some(rv)) if !by_signal => Some(rv),
        _ => None,
    }
}

/// Reports the outcome of job `h` to `members` (its tasks): a lone task as always; a pack's
/// members each from the pack result, or all with the job's error.
pub(super) fn finish_members(
    shared: &Shared,
    h: JobHandle,
    mut members: Vec<Tracked>,
    outcome: Outcome,
) {
    if members.len() == 1 && !members[0].packed {
        if let Some(t) = members.pop() {
            // What came back from the pool is read under a guard: a panic fails this task
            // with its message, and the event thread goes on.
            let result = crate::guard::contain(|| job_result(shared, &t, h, outcome))
                .unwrap_or_else(|panic| {
                    Err(ResultError::Bad(InterfaceError::new(format!(
                        "HTCondor job {h}: internal error while reading its outcome: {panic}"
                    ))))
                });
            match result {
                Err(ResultError::Local(why)) => {
                    not_stored(shared, t, why);
                }
                result => report(shared, t, result.map_err(InterfaceError::from)),
            }
        }
        return;
    }
    let Some(first) = members.first() else { return };
    match outcome {
        Outcome::Exited(rv @ (0 | 1)) if first.files.result.exists() => {
            // Under a guard too: a panic drops the members still held, and each of them
            // fails ("dropped without an outcome") instead of waiting for ever.
            if let Err(panic) = crate::guard::contain(|| finish_pack(shared, h, rv, members)) {
                log::error!(
                    "HTCondor job {h}: internal error while reading its pack result: {panic}"
                );
            }
        }
        outcome => {
            let error = job_result(shared, first, h, outcome)
                .err()
                .map(InterfaceError::from)
                .unwrap_or_else(|| InterfaceError::new(format!("HTCondor job {h} ended")));
            for t in members {
                report(shared, t, Err(error.clone()));
            }
        }
    }
}

/// A task whose result came back but could not be stored here: the master stops and the
/// task stays in flight (its job's files are kept) for `mw resume`, or, without a journal,
/// it fails. True: left in flight.
fn not_stored(shared: &Shared, mut t: Tracked, why: String) -> bool {
    let sink = crate::guard::lock(&shared.sink).clone();
    let Some(d) = t.done.take() else { return false };
    let left = crate::interface::result_not_stored(sink.as_ref(), d, why);
    if !left {
        shared.lock().finished += 1;
    }
    left
}

/// Hands one task its outcome (recording its run time for pack sizes).
fn report(shared: &Shared, mut t: Tracked, result: Result<Execution, InterfaceError>) {
    {
        let mut st = shared.lock();
        st.finished += 1;
        if let Ok(e) = &result {
            st.sizer.record(e.wall);
        }
    }
    if let Some(d) = t.done.take() {
        d.finish(result);
    }
    // Killed here: the outcome is handed to the master, not yet committed; the job's result
    // file stays in its batch directory (mw never removes it), so a resumed master re-attaches
    // the task and reads it again.
    crate::crash::point("condor-result-delivered");
}

/// Reads the pack result of job `h` (which exited `rv`) for its `members`.
fn finish_pack(shared: &Shared, h: JobHandle, rv: i64, members: Vec<Tracked>) {
    let Some(first) = members.first() else { return };
    let path = first.files.result.clone();
    let stderr = first.files.stderr.clone();
    let scratch = first.files.dir.clone();
    crate::pack::deliver_pack_result(
        &path,
        &scratch,
        members,
        &format!("HTCondor job {h}: bad result in its pack result"),
        |e| {
            format!(
                "HTCondor job {h} (mw-worker exit {rv}): bad pack result: {e}{}",
                stderr_tail(&stderr)
            )
        },
        |t, result| report(shared, t, result),
        |t, why| requeue(shared, t, h, why),
        |t, why| not_stored(shared, t, format!("HTCondor job {h}: {why}")),
    );
}

/// A member of pack job `h` without a result in the pack result: submitted again in a later
/// pack, at most [`MAX_PACK_REQUEUES`] times, then failed.
fn requeue(shared: &Shared, mut t: Tracked, h: JobHandle, why: &str) {
    let id = t.task.id;
    t.requeues += 1;
    if t.requeues > MAX_PACK_REQUEUES {
        let msg = format!(
            "HTCondor job {h}: its pack came back without a result for {id} ({why}), \
             {MAX_PACK_REQUEUES} times before; not submitting it again"
        );
        return report(shared, t, Err(InterfaceError::new(msg)));
    }
    log::warn!(
        "HTCondor: job {h} came back without a result for {id} ({why}); submitting it again"
    );
    let mut st = shared.lock();
    if st.shut_down {
        drop(st);
        // Left for `mw resume`, which finds its pack again by its handle.
        if let Some(d) = t.done.take() {
            d.abandon();
        }
        return;
    }
    t.phase = Phase::Pending;
    t.handle = None;
    t.shadow = None;
    t.ran_on = None;
    t.packed = false;
    // Queued for a new pack: no bundle of its own yet (its old pack's files stay where they
    // are, for that job's record).
    t.files = TaskFiles::queued(std::mem::take(&mut t.files.program_bundle));
    st.add_pending(id, t);
    drop(st);
    // Killed here: the member is queued again in memory only; its journaled handle still
    // names the pack's job, whose result stays in the batch directory, so a resumed master
    // re-attaches it, reads the pack result again and queues it again.
    crate::crash::point("condor-pack-requeued");
    shared.cond.notify_all();
}

/// The outcome of lone task `t` of job `h`, or (for a pack) the error every member gets.
fn job_result(
    shared: &Shared,
    t: &Tracked,
    h: JobHandle,
    outcome: Outcome,
) -> Result<Execution, ResultError> {
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
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))),
        wall: ad
            .as_ref()
            .and_then(|a| {
                let start = unix_attr(a, "JobCurrentStartDate")?;
                let end = unix_attr(a, "EnteredCurrentStatus")?;
                end.checked_sub(start)
            })
            .filter(|w| *w as f64 <= crate::task::MAX_REPORTED_SECS)
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
        Outcome::Exited(rv) => match from_exit(t, h, rv) {
            Err(ResultError::Local(why)) => return Err(ResultError::Local(why)),
            result => result.map_err(InterfaceError::from),
        },
        Outcome::Signal(sig) => Err(ended(
            format!(
                "HTCondor job {h}: mw-worker was killed by signal {sig}{}{}",
                signal_name(sig),
                stderr_tail(&t.files.stderr)
            ),
            format!("signal {sig}"),
        )),
        Outcome::Error(m) | Outcome::CheckQueue(m) => Err(ended(m, "removed".into())),
        Outcome::Evicted(m) => {
            let removed = match cli.remove(&[h]) {
                Ok(()) => "; removed it with condor_rm".to_string(),
                Err(e) => format!("; condor_rm failed: {e}"),
            };
            Err(ended(format!("{m}{removed}"), "evicted".into()))
        }
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
        (Err(InterfaceError(e, ran)), Some(note)) => Err(ResultError::Bad(InterfaceError(
            format!("{e} (earlier: {note})"),
            ran,
        ))),
        (r, _) => r.map_err(ResultError::Bad),
    }
}

/// The job's ad from the queue, else from the history.
fn job_ad(cli: &CondorCli, h: JobHandle) -> Option<JobAd> {
    cli.query_job(h)
        .ok()
        .flatten()
        .or_else(|| history_ad(cli, h))
}

/// The ad of job `h` in the schedd's history (asked by its exact id, `-limit 1`).
pub(super) fn history_ad(cli: &CondorCli, h: JobHandle) -> Option<JobAd> {
    cli.job_history(h).ok().flatten()
}

/// A positive integer attribute that is a unix time a schedd could write (before 2^34 s,
/// the year 2514): the ad comes from outside, and a larger one cannot be a time.
fn unix_attr(ad: &JobAd, key: &str) -> Option<u64> {
    ad.attributes
        .get(key)
        .and_then(|v| v.as_u64())
        .filter(|t| (1..1 << 34).contains(t))
}

pub(super) fn signal_name(sig: i64) -> String {
    match mw_bundle::signal_name(sig) {
        Some(name) => format!(" ({name})"),
        None => String::new(),
    }
}

/// How much of the end of a job's stderr file an error message shows.
const STDERR_TAIL_BYTES: u64 = 2000;

/// The last lines of a job's stderr file, formatted for an error message. Only its end is
/// read: the file comes back from the pool and may be of any size.
pub(super) fn stderr_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let read_end = || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        f.take(STDERR_TAIL_BYTES).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read_end() {
        Ok(bytes) if !bytes.is_empty() => {
            let text = String::from_utf8_lossy(&bytes);
            format!("; job stderr ({}):\n{}", path.display(), text.trim_end())
        }
        _ => String::new(),
    }
}

/// The outcome of a job that terminated with `rv` (mw-worker's exit status).
pub(super) fn from_exit(t: &Tracked, h: JobHandle, rv: i64) -> Result<Execution, ResultError> {
    let path = &t.files.result;
    let label = path.display().to_string();
    crate::crash::panic_point("condor-result", Some(t.task.id.0));
    // What came back from the pool is read only up to what the task may return.
    let cap = mw_bundle::max_result_upload_bytes(t.task.spec.max_output_bytes);
    let bundle = match crate::task::read_bounded(path, cap) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(ResultError::Bad(InterfaceError::new(format!(
                "HTCondor job {h}: cannot read the result bundle {label}: {e}"
            ))))
        }
    };
    let result = match (rv, bundle) {
        (0 | 1, Some(bytes)) => {
            return Execution::from_result_bundle_of(&bytes, &label, &t.task).map_err(|e| match e {
                ResultError::Local(why) => ResultError::Local(format!("HTCondor job {h}: {why}")),
                ResultError::Bad(e) => ResultError::Bad(InterfaceError::new(format!(
                    "HTCondor job {h} (mw-worker exit {rv}): bad result bundle: {e}{}",
                    stderr_tail(&t.files.stderr)
                ))),
            })
        }
        (0 | 1, None) => Err(InterfaceError::new(format!(
            "HTCondor job {h}: mw-worker exited {rv} but no result bundle came back (expected {label}){}",
            stderr_tail(&t.files.stderr)
        ))),
        (rv, _) => Err(InterfaceError::new(format!(
            "HTCondor job {h}: mw-worker exited {rv} without running the task{}",
            stderr_tail(&t.files.stderr)
        ))),
    };
    result.map_err(ResultError::Bad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A forged `JobCurrentStartDate` of 2^63 s or more once panicked `UNIX_EPOCH + …`, in
    /// `mw resume` outside any guard: only times a schedd could write are taken.
    #[test]
    fn only_plausible_unix_times_are_read_from_an_ad() {
        let ad = |v: serde_json::Value| JobAd {
            handle: JobHandle::new(1, 0),
            status: mw_condor_kit::JobStatus::Held,
            exit_code: None,
            exit_signal: None,
            hold_reason: None,
            hold_reason_code: None,
            attributes: [("JobCurrentStartDate".to_string(), v)]
                .into_iter()
                .collect(),
        };
        let read = |v: serde_json::Value| unix_attr(&ad(v), "JobCurrentStartDate");
        assert_eq!(read(1_700_000_000u64.into()), Some(1_700_000_000));
        for forged in [u64::MAX.into(), (1u64 << 63).into(), 0.into(), (-5).into()] {
            assert_eq!(read(forged), None);
        }
    }
}
