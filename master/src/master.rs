//! The master: run queue, scheduler thread, result collection, retries, time accounting
//! (paper §3: `submit_task`, `get_result`, `get_status`), plus cancellation.
//!
//! One mutex guards the task table; one condition variable wakes the scheduler (work queued)
//! and result waiters (task finished). Interfaces report completions through a callback that
//! takes the same lock. Several masters may live in one program: each has its own state,
//! scheduler thread and interface.
//!
//! This module never knows which platform it drives, and never touches files except through
//! the optional journal.

use crate::interface::{Completion, HandleSink, Interface};
use crate::journal::{Journal, JournalError};
use crate::task::{Execution, InterfaceError, PreparedTask, TaskId, TaskSpec, WorkerId};
use mw_bundle::ExitInfo;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// States a task goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Handed to the interface.
    Running,
    /// Finished with exit status 0.
    Done,
    /// Finished otherwise, retries used up.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl TaskState {
    /// Lower-case name, as in the journal and `mw status`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "done" => TaskState::Done,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }

    /// True for done, failed and cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// Time accounting of one task.
#[derive(Debug, Clone, Default)]
pub struct TaskTimes {
    /// When it was submitted.
    pub submitted: Option<SystemTime>,
    /// When its last attempt started.
    pub started: Option<SystemTime>,
    /// When it finished.
    pub finished: Option<SystemTime>,
    /// Wall-clock time of the last attempt.
    pub wall: Duration,
    /// CPU time (user + system) of the last attempt.
    pub cpu: Duration,
}

/// A successful task's result.
#[derive(Debug, Clone)]
pub struct TaskOutput {
    /// Which task.
    pub task: TaskId,
    /// The result JSON (the program's stdout; `null` when it printed nothing).
    pub value: serde_json::Value,
    /// Declared output files kept: (name, path).
    pub output_files: Vec<(String, PathBuf)>,
    /// Host it ran on.
    pub host: String,
    /// Times.
    pub times: TaskTimes,
    /// Attempts made.
    pub attempts: u32,
}

/// Errors of the master's API; a failed task arrives as one of these from `get_result`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MwError {
    /// The task's program ran and failed (non-zero exit, signal, timeout, bad stdout).
    #[error(
        "{task} failed: {exit}{} (attempt {attempts}, host {host}){}",
        signal_name(exit),
        tail(stderr_tail)
    )]
    TaskFailed {
        /// Which task.
        task: TaskId,
        /// How it ended.
        exit: ExitInfo,
        /// Tail of its stderr.
        stderr_tail: String,
        /// Attempts made.
        attempts: u32,
        /// Host of the last attempt.
        host: String,
    },
    /// The platform could not run the task.
    #[error("{task} failed: {message} (attempt {attempts})")]
    Interface {
        /// Which task.
        task: TaskId,
        /// What the interface said.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The program exited 0 but its stdout is not JSON.
    #[error("{task}: the program exited 0 but its stdout is not JSON: {reason}")]
    BadOutput {
        /// Which task.
        task: TaskId,
        /// The parse error.
        reason: String,
    },
    /// The task was cancelled.
    #[error("{0} was cancelled")]
    Cancelled(TaskId),
    /// No such task in this master.
    #[error("{0} does not exist in this master")]
    UnknownTask(TaskId),
    /// The task's result was already taken by an earlier `get_result`.
    #[error("the result of {0} was already collected")]
    AlreadyCollected(TaskId),
    /// `get_result(None)` with nothing submitted and not collected.
    #[error("no task is pending: every submitted task's result was already collected")]
    NothingPending,
    /// The result JSON does not have the type asked for.
    #[error("{task}: result does not have the expected type: {reason}")]
    WrongType {
        /// Which task.
        task: TaskId,
        /// The decode error.
        reason: String,
    },
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(String),
}

/// ` (SIGSEGV)` etc. for an exit by a signal, so the error names it.
fn signal_name(exit: &ExitInfo) -> String {
    let ExitInfo::Signaled { signal } = exit else {
        return String::new();
    };
    match mw_bundle::signal_name(i64::from(*signal)) {
        Some(name) => format!(" ({name})"),
        None => String::new(),
    }
}

fn tail(stderr: &str) -> String {
    let t = stderr.trim_end();
    if t.is_empty() {
        String::new()
    } else {
        format!("; stderr tail:\n{t}")
    }
}

impl MwError {
    /// The task this error is about, if any.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            MwError::TaskFailed { task, .. }
            | MwError::Interface { task, .. }
            | MwError::BadOutput { task, .. }
            | MwError::WrongType { task, .. } => Some(*task),
            MwError::Cancelled(t) | MwError::UnknownTask(t) | MwError::AlreadyCollected(t) => {
                Some(*t)
            }
            MwError::NothingPending | MwError::Journal(_) => None,
        }
    }
}

impl From<JournalError> for MwError {
    fn from(e: JournalError) -> Self {
        MwError::Journal(e.to_string())
    }
}

/// Settings of a master.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// Extra attempts after a failure (default 0).
    pub retries: u32,
    /// Job name (in bundles, Condor batch names, BOINC workunit names).
    pub job_name: String,
    /// Where declared output files go (`<dir>/task-<N>/`); none: not kept.
    pub results_dir: Option<PathBuf>,
    /// Where interfaces stage bundles; default: a temp dir owned by the master.
    pub staging_dir: Option<PathBuf>,
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            retries: 0,
            job_name: "mw".into(),
            results_dir: None,
            staging_dir: None,
        }
    }
}

/// What [`Master::next_outcome`] found.
// Few of these exist at a time (one per finished task, moved out at once): boxing the
// big variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum NextOutcome {
    /// A task finished (successfully or not).
    Finished(TaskId, Result<TaskOutput, MwError>, TaskTimes),
    /// Nothing finished within the timeout.
    Pending,
    /// Every task's outcome has been collected.
    AllCollected,
}

/// Per-state counts plus the interface's own status.
#[derive(Debug, Clone, Default)]
pub struct MasterStatus {
    /// Tasks queued.
    pub queued: usize,
    /// Tasks running.
    pub running: usize,
    /// Tasks done.
    pub done: usize,
    /// Tasks failed.
    pub failed: usize,
    /// Tasks cancelled.
    pub cancelled: usize,
    /// Finished results not yet collected.
    pub uncollected: usize,
    /// Interface name.
    pub interface: String,
    /// Interface key/values.
    pub interface_status: BTreeMap<String, String>,
}

impl MasterStatus {
    /// All tasks submitted.
    pub fn total(&self) -> usize {
        self.queued + self.running + self.done + self.failed + self.cancelled
    }
}

pub(crate) struct TaskRecord {
    pub(crate) spec: TaskSpec,
    pub(crate) state: TaskState,
    pub(crate) attempts: u32,
    pub(crate) times: TaskTimes,
    pub(crate) outcome: Option<Result<TaskOutput, MwError>>,
    pub(crate) collected: bool,
    pub(crate) cancel_requested: bool,
    /// Final and (with a journal) committed: may be handed out.
    pub(crate) durable: bool,
}

struct State {
    tasks: Vec<TaskRecord>,
    queue: VecDeque<TaskId>,
    finished: VecDeque<TaskId>,
    counts: [usize; 5],
    shutting_down: bool,
    /// Final tasks whose journal row is committed (all final tasks without a journal).
    durable: usize,
}

impl State {
    fn set_state(&mut self, id: TaskId, to: TaskState) {
        let rec = &mut self.tasks[id.0 as usize];
        self.counts[rec.state as usize] -= 1;
        self.counts[to as usize] += 1;
        rec.state = to;
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    cond: Condvar,
    interface: Arc<dyn Interface>,
    options: MasterOptions,
    staging: PathBuf,
    _staging_tmp: Option<tempfile::TempDir>,
    journal: Option<Arc<Journal>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The master. Dropping it cancels what still runs and stops its scheduler.
pub struct Master {
    inner: Arc<Inner>,
    scheduler: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Master({})", self.inner.interface.name())
    }
}

struct JournalHandles(Arc<Journal>);

impl HandleSink for JournalHandles {
    fn record_handle(&self, task: TaskId, handle: &str) {
        self.0.record_handle(task, handle);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

impl Master {
    /// A master over `interface` with default options and no journal.
    pub fn new(interface: impl Interface) -> Result<Master, MwError> {
        Self::with_options(Arc::new(interface), MasterOptions::default())
    }

    /// A master with options and no journal.
    pub fn with_options(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
    ) -> Result<Master, MwError> {
        Self::build(interface, options, None, Vec::new())
    }

    pub(crate) fn build(
        interface: Arc<dyn Interface>,
        options: MasterOptions,
        journal: Option<Arc<Journal>>,
        restored: Vec<TaskRecord>,
    ) -> Result<Master, MwError> {
        let (staging, tmp) = match &options.staging_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| {
                    MwError::Journal(format!("creating staging dir {}: {e}", d.display()))
                })?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("mw-staging-")
                    .tempdir()
                    .map_err(|e| MwError::Journal(format!("creating a staging dir: {e}")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut state = State {
            tasks: Vec::new(),
            queue: VecDeque::new(),
            finished: VecDeque::new(),
            counts: [0; 5],
            shutting_down: false,
            durable: 0,
        };
        for rec in restored {
            let id = TaskId(state.tasks.len() as u64);
            state.counts[rec.state as usize] += 1;
            if rec.state.is_final() {
                state.durable += 1;
            }
            match rec.state {
                TaskState::Queued => state.queue.push_back(id),
                s if s.is_final() && !rec.collected => state.finished.push_back(id),
                _ => {}
            }
            state.tasks.push(rec);
        }
        if let Some(j) = &journal {
            interface.set_handle_sink(Arc::new(JournalHandles(j.clone())));
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            cond: Condvar::new(),
            interface,
            options,
            staging,
            _staging_tmp: tmp,
            journal,
        });
        let sched_inner = inner.clone();
        let scheduler = std::thread::Builder::new()
            .name("mw-scheduler".into())
            .spawn(move || scheduler_loop(sched_inner))
            .map_err(|e| MwError::Journal(format!("cannot start the scheduler thread: {e}")))?;
        Ok(Master {
            inner,
            scheduler: Some(scheduler),
        })
    }

    /// Submits a task; returns at once with its id.
    pub fn submit_task(&self, spec: TaskSpec) -> Result<TaskId, MwError> {
        Ok(self.submit_many(vec![spec])?[0])
    }

    /// Submits many tasks under one lock (and one journal transaction).
    pub fn submit_many(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, MwError> {
        let mut st = self.inner.lock();
        let first = st.tasks.len() as u64;
        if let Some(j) = &self.inner.journal {
            j.record_submitted(first, &specs)?;
        }
        let now = SystemTime::now();
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = TaskId(st.tasks.len() as u64);
            st.tasks.push(TaskRecord {
                spec,
                state: TaskState::Queued,
                attempts: 0,
                times: TaskTimes {
                    submitted: Some(now),
                    ..TaskTimes::default()
                },
                outcome: None,
                collected: false,
                cancel_requested: false,
                durable: false,
            });
            st.counts[TaskState::Queued as usize] += 1;
            st.queue.push_back(id);
            ids.push(id);
        }
        drop(st);
        self.inner.cond.notify_all();
        Ok(ids)
    }

    /// Waits for a result: of `which` task, or of the next task to finish (`None`).
    /// The result JSON is decoded as `T`. A failed task arrives as `Err` naming it.
    pub fn get_result<T: DeserializeOwned>(
        &self,
        which: Option<TaskId>,
    ) -> Result<(TaskId, T), MwError> {
        let out = self.get_output(which)?;
        decode(out)
    }

    /// Like [`get_result`](Self::get_result) but returns the whole record.
    pub fn get_output(&self, which: Option<TaskId>) -> Result<TaskOutput, MwError> {
        let mut st = self.inner.lock();
        loop {
            if let Some(r) = take_result(&mut st, which)? {
                return r;
            }
            st = self.inner.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`get_output`](Self::get_output) but gives up after `timeout` with `Ok(None)`.
    pub fn get_output_timeout(
        &self,
        which: Option<TaskId>,
        timeout: Duration,
    ) -> Result<Option<TaskOutput>, MwError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            if let Some(r) = take_result(&mut st, which)? {
                return r.map(Some);
            }
            st = match self.wait_until(st, deadline) {
                Some(st) => st,
                None => return Ok(None),
            };
        }
    }

    /// Waits for a state change until `deadline`; `None` once the deadline has passed.
    fn wait_until<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        deadline: std::time::Instant,
    ) -> Option<MutexGuard<'a, State>> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        Some(
            self.inner
                .cond
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0,
        )
    }

    /// Waits up to `timeout` for the next finished task and returns its outcome whatever it
    /// is (for drivers such as the CLI that report failures rather than stop at them).
    pub fn next_outcome(&self, timeout: Duration) -> NextOutcome {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            while let Some(id) = st.finished.pop_front() {
                let rec = &mut st.tasks[id.0 as usize];
                if !rec.collected {
                    rec.collected = true;
                    let times = rec.times.clone();
                    return NextOutcome::Finished(id, take_outcome(rec, id), times);
                }
            }
            if st.tasks.len() == st.durable {
                return NextOutcome::AllCollected;
            }
            st = match self.wait_until(st, deadline) {
                Some(st) => st,
                None => return NextOutcome::Pending,
            };
        }
    }

    /// Non-blocking [`get_result`](Self::get_result): `Ok(None)` when not finished yet.
    pub fn try_get_result<T: DeserializeOwned>(
        &self,
        which: Option<TaskId>,
    ) -> Result<Option<(TaskId, T)>, MwError> {
        match self.try_get_output(which)? {
            Some(out) => decode(out).map(Some),
            None => Ok(None),
        }
    }

    /// Non-blocking [`get_output`](Self::get_output).
    pub fn try_get_output(&self, which: Option<TaskId>) -> Result<Option<TaskOutput>, MwError> {
        let mut st = self.inner.lock();
        match take_result(&mut st, which)? {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }

    /// Counts per state and the interface's status.
    pub fn status(&self) -> MasterStatus {
        let mut status = self.counts();
        status.interface = self.inner.interface.name().to_string();
        status.interface_status = self.inner.interface.status();
        status
    }

    /// Counts per state only: cheap (no call into the interface), for progress displays.
    pub fn counts(&self) -> MasterStatus {
        let st = self.inner.lock();
        let uncollected = st
            .finished
            .iter()
            .filter(|id| !st.tasks[id.0 as usize].collected)
            .count();
        MasterStatus {
            queued: st.counts[TaskState::Queued as usize],
            running: st.counts[TaskState::Running as usize],
            done: st.counts[TaskState::Done as usize],
            failed: st.counts[TaskState::Failed as usize],
            cancelled: st.counts[TaskState::Cancelled as usize],
            uncollected,
            ..MasterStatus::default()
        }
    }

    /// The state of one task.
    pub fn task_state(&self, task: TaskId) -> Option<TaskState> {
        self.inner
            .lock()
            .tasks
            .get(task.0 as usize)
            .map(|r| r.state)
    }

    /// Cancels a task: a queued task is dropped from the queue, a running one is stopped
    /// by its interface. Its `get_result` then returns [`MwError::Cancelled`]. Cancelling a
    /// finished task does nothing.
    pub fn cancel(&self, task: TaskId) -> Result<(), MwError> {
        let mut st = self.inner.lock();
        let Some(rec) = st.tasks.get_mut(task.0 as usize) else {
            return Err(MwError::UnknownTask(task));
        };
        match rec.state {
            TaskState::Queued => {
                rec.cancel_requested = true;
                rec.outcome = Some(Err(MwError::Cancelled(task)));
                rec.times.finished = Some(SystemTime::now());
                st.queue.retain(|t| *t != task);
                st.set_state(task, TaskState::Cancelled);
                finish_durably(&self.inner, st, task);
            }
            TaskState::Running => {
                rec.cancel_requested = true;
                drop(st);
                self.inner.interface.cancel(task);
            }
            _ => {}
        }
        Ok(())
    }

    /// Cancels every task not finished yet.
    pub fn cancel_all(&self) {
        let ids: Vec<TaskId> = {
            let st = self.inner.lock();
            (0..st.tasks.len() as u64)
                .map(TaskId)
                .filter(|t| !st.tasks[t.0 as usize].state.is_final())
                .collect()
        };
        for id in ids {
            let _ = self.cancel(id);
        }
    }

    /// Blocks until no task is queued or running.
    pub fn wait_all(&self) {
        let mut st = self.inner.lock();
        while st.durable < st.tasks.len() {
            st = self.inner.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The interface's name.
    pub fn interface_name(&self) -> &'static str {
        self.inner.interface.name()
    }

    /// The journal, when this master has one.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.inner.journal.as_ref()
    }

    /// Re-attaches tasks that were in flight on a remote backend when the previous master
    /// died (called by `resume`). Tasks the interface cannot re-attach are queued again.
    pub(crate) fn reattach(&self, tasks: Vec<(TaskId, String)>) {
        for (id, handle) in tasks {
            let prepared = {
                let mut st = self.inner.lock();
                let rec = &mut st.tasks[id.0 as usize];
                Arc::new(prepare(&self.inner, id, rec))
            };
            let done = completion(&self.inner, id);
            if let Some(done) = self.inner.interface.reattach(prepared, &handle, done) {
                // Could not re-attach: queue the task again.
                done.abandon();
                let mut st = self.inner.lock();
                st.set_state(id, TaskState::Queued);
                st.queue.push_front(id);
                drop(st);
                self.inner.cond.notify_all();
            }
        }
    }

    /// Ids of every task and their states, in order.
    pub fn task_states(&self) -> Vec<(TaskId, TaskState)> {
        let st = self.inner.lock();
        st.tasks
            .iter()
            .enumerate()
            .map(|(i, r)| (TaskId(i as u64), r.state))
            .collect()
    }
}

fn decode<T: DeserializeOwned>(out: TaskOutput) -> Result<(TaskId, T), MwError> {
    let task = out.task;
    serde_json::from_value(out.value)
        .map(|v| (task, v))
        .map_err(|e| MwError::WrongType {
            task,
            reason: e.to_string(),
        })
}

type Taken = Option<Result<TaskOutput, MwError>>;

fn take_result(st: &mut State, which: Option<TaskId>) -> Result<Taken, MwError> {
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
                return Ok(Some(take_outcome(rec, id)));
            }
            Ok(None)
        }
        None => {
            while let Some(id) = st.finished.pop_front() {
                let rec = &mut st.tasks[id.0 as usize];
                if !rec.collected {
                    rec.collected = true;
                    return Ok(Some(take_outcome(rec, id)));
                }
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

fn take_outcome(rec: &mut TaskRecord, id: TaskId) -> Result<TaskOutput, MwError> {
    rec.outcome
        .take()
        .unwrap_or(Err(MwError::Journal(format!("{id}: outcome lost"))))
}

fn prepare(inner: &Inner, id: TaskId, rec: &TaskRecord) -> PreparedTask {
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

fn completion(inner: &Arc<Inner>, id: TaskId) -> Completion {
    let inner = inner.clone();
    Completion::new(id, move |outcome| on_complete(&inner, id, outcome))
}

/// Takes the task at the front of the queue and marks it running (one critical section, so
/// a task is always either in the queue or running: `cancel` never sees it in between).
fn dispatch(st: &mut State, inner: &Inner) -> Option<(TaskId, Arc<PreparedTask>, bool)> {
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

fn scheduler_loop(inner: Arc<Inner>) {
    // A worker reserved for a task that was cancelled while we waited for the worker: it
    // serves the next task instead (interfaces have no way to give a worker back).
    let mut spare: Option<WorkerId> = None;
    loop {
        let front = {
            let mut st = inner.lock();
            loop {
                if st.shutting_down {
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
        if st.shutting_down {
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

fn on_complete(inner: &Arc<Inner>, id: TaskId, outcome: Result<Execution, InterfaceError>) {
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
    let cancelled = matches!(result, Err(MwError::Cancelled(_))) || rec.cancel_requested;
    if result.is_err() && !cancelled && attempts <= retries {
        // Retry: back to the front of the queue.
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
    rec.outcome = Some(result);
    st.set_state(id, final_state);
    finish_durably(inner, st, id);
}

/// Makes a final task collectable: at once without a journal; with one, only after its row
/// is committed, so a result handed to the user is never lost in a crash.
fn finish_durably(inner: &Arc<Inner>, mut st: MutexGuard<'_, State>, id: TaskId) {
    match &inner.journal {
        None => {
            st.finished.push_back(id);
            st.durable += 1;
            st.tasks[id.0 as usize].durable = true;
            drop(st);
            inner.cond.notify_all();
        }
        Some(j) => {
            let inner2 = inner.clone();
            j.record_final(
                id,
                &st.tasks[id.0 as usize],
                Some(Box::new(move || {
                    let mut st = inner2.lock();
                    st.finished.push_back(id);
                    st.durable += 1;
                    st.tasks[id.0 as usize].durable = true;
                    drop(st);
                    inner2.cond.notify_all();
                })),
            );
            drop(st);
            inner.cond.notify_all();
        }
    }
}

/// Parses a program's stdout as the result JSON; empty output is `null`.
pub fn parse_stdout(stdout: &[u8]) -> Result<serde_json::Value, String> {
    let text = String::from_utf8_lossy(stdout);
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(text.trim()).map_err(|e| e.to_string())
}

impl Drop for Master {
    fn drop(&mut self) {
        {
            let mut st = self.inner.lock();
            st.shutting_down = true;
        }
        self.inner.cond.notify_all();
        // Stop what still runs: nobody will collect it (unless a journaled master of a remote
        // backend leaves it running for `mw resume`).
        let running: Vec<TaskId> = {
            let st = self.inner.lock();
            (0..st.tasks.len() as u64)
                .map(TaskId)
                .filter(|t| st.tasks[t.0 as usize].state == TaskState::Running)
                .collect()
        };
        let detach =
            self.inner.journal.is_some() && self.inner.interface.keeps_running_without_master();
        if !detach {
            for t in running {
                self.inner.interface.cancel(t);
            }
        }
        // After shutdown, reserve_worker must return promptly (an error is fine), so the
        // scheduler thread can be joined.
        self.inner.interface.shutdown();
        if let Some(h) = self.scheduler.take() {
            let _ = h.join();
        }
        if let Some(j) = &self.inner.journal {
            j.flush();
        }
    }
}
